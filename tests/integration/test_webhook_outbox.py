"""Webhook deliveries survive a stop and a kill -9 (the outbox), and a device's new site
takes its open alerts with it. Real mosquitto, real SQLite and PostgreSQL, real HTTP."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import threading
import time
import urllib.request
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
from prometheus_client import CollectorRegistry

from scripts.services import free_port
from telemetry.alerts import Alert, AuditEntry, Profile, Severity
from telemetry.alerts.lifecycle import SYSTEM, Action, resolved_by_hand
from telemetry.alerts.metrics import AlertMetrics
from telemetry.alerts.service import AlertService
from telemetry.alerts.settings import AlertServiceSettings, WebhookSettings
from telemetry.ingest import Ingester
from telemetry.metrics import IngestMetrics
from telemetry.settings import IngestSettings, MqttSettings, StorageSettings
from telemetry.storage import open_store
from telemetry.storage.alerts import AlertFilter, Device, WebhookDelivery, WebhookJob
from tests.integration.test_alerts import ZERO_DELAY, Events, ms, publish, reading
from tests.support.processes import REPO, wait_until
from web.api_alerts import ALERTS
from web.app import STORE, build_app
from web.config import load_config

SECRET = "outbox-secret"
TOKEN = "test-admin-token-outbox-0123456789"
T0 = datetime(2026, 11, 1, 8, 0, tzinfo=UTC)
FAR = datetime(2100, 1, 1, tzinfo=UTC)


@pytest.fixture(params=["sqlite", "postgres"])
def alert_db(request: pytest.FixtureRequest) -> str:
    return str(request.getfixturevalue({"sqlite": "sqlite_url", "postgres": "pg_url"}[request.param]))


@dataclass
class Call:
    path: str
    event: str | None
    body: bytes
    status: int


@dataclass
class Receiver:
    """A webhook receiver on loopback that refuses (500) until told to accept (204)."""

    accept: bool = False
    calls: list[Call] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)
    server: ThreadingHTTPServer | None = None

    def start(self) -> None:
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                status = 204 if receiver.accept else 500
                with receiver.lock:
                    receiver.calls.append(
                        Call(self.path, self.headers.get("X-Origincast-Event"), body, status)
                    )
                self.send_response(status)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args: Any) -> None:  # keep the test output quiet
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def url(self, path: str) -> str:
        assert self.server is not None
        return f"http://127.0.0.1:{self.server.server_address[1]}{path}"

    def snapshot(self) -> list[Call]:
        with self.lock:
            return list(self.calls)

    def accepted(self) -> list[Call]:
        return [c for c in self.snapshot() if c.status == 204]

    def stop(self) -> None:
        if self.server is not None:
            self.server.shutdown()
            self.server.server_close()


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    r = Receiver()
    r.start()
    yield r
    r.stop()


@pytest.fixture
def store(alert_db: str) -> Iterator[Any]:
    s = open_store(StorageSettings(url=alert_db))
    s.open()
    s.migrate()
    yield s
    s.close()


# -- the store's outbox ------------------------------------------------------------------------


def _alert(i: int, device: str = "truck-9") -> Alert:
    return Alert(
        id=i,
        device_id=device,
        profile_id="chilled",
        rule_id="upper",
        rule_kind="limit",
        severity=Severity.MAJOR,
        start=T0,
        raised_at=T0 + timedelta(minutes=10),
        metric="temp_c",
        threshold=4.0,
        peak=6.5,
        peak_at=T0 + timedelta(minutes=9),
        audit=(AuditEntry(T0 + timedelta(minutes=10), Action.RAISED, SYSTEM, "", 6.5),),
    )


def test_outbox_rows_come_with_a_new_alert_version_only(store) -> None:
    a = _alert(1)
    jobs = [
        WebhookJob(u, "1.1", b'{"id": "1.1"}', T0) for u in ("http://127.0.0.1:9/a", "http://127.0.0.1:9/b")
    ]
    store.record_alert(a, "fleet", T0, jobs)
    assert {(p.url, p.attempt, p.due_at, p.body) for p in store.pending_webhooks("1.1")} == {
        ("http://127.0.0.1:9/a", 1, T0, b'{"id": "1.1"}'),
        ("http://127.0.0.1:9/b", 1, T0, b'{"id": "1.1"}'),
    }
    # The same version again (a replay after a crash): recorded before, so not sent again.
    store.record_alert(a, "fleet", T0, [WebhookJob("http://127.0.0.1:9/c", "1.1", b"{}", T0)])
    assert len(store.pending_webhooks("1.1")) == 2
    # A new version (resolved) queues its own event.
    b = resolved_by_hand(a, "ops", "moved the load", T0 + timedelta(minutes=20))
    store.record_alert(b, "fleet", T0, [WebhookJob("http://127.0.0.1:9/a", "1.2", b"{}", T0)])
    assert [p.event_id for p in store.pending_webhooks("1.2")] == ["1.2"]


def test_claims_lease_finish_and_release(store) -> None:
    url = "http://127.0.0.1:9/hook"
    store.record_alert(_alert(1), None, T0, [WebhookJob(url, "1.1", b"x", T0)])
    now = T0 + timedelta(seconds=1)
    assert store.claim_webhooks([url], T0 - timedelta(seconds=1), "a", FAR, 5) == []  # not due yet
    assert store.claim_webhooks(["http://other"], now, "a", FAR, 5) == []  # not one of my URLs
    [job] = store.claim_webhooks([url], now, "a", now + timedelta(seconds=10), 5)
    assert (job.event_id, job.attempt) == ("1.1", 1)
    assert store.claim_webhooks([url], now, "b", FAR, 5) == []  # claimed: another sender skips it
    assert store.next_webhook_due([url]) == now + timedelta(seconds=10)  # when the claim lapses
    # The claim lapsed (a crashed sender): b takes it; a's late result leaves b's row alone.
    later = now + timedelta(seconds=11)
    [again] = store.claim_webhooks([url], later, "b", later + timedelta(seconds=10), 5)
    assert again.id == job.id
    store.finish_webhook(job, "a", WebhookDelivery(url, "1.1", 1, 500, "HTTP 500", later), FAR)
    assert store.pending_webhooks("1.1")[0].attempt == 1
    # b fails: attempt 2 is due at its retry time, unclaimed.
    retry = later + timedelta(seconds=4)
    store.finish_webhook(again, "b", WebhookDelivery(url, "1.1", 1, None, "refused", later), retry)
    [row] = store.pending_webhooks("1.1")
    assert (row.attempt, row.due_at) == (2, retry)
    assert store.next_webhook_due([url]) == retry
    # Released claims are due again as they were.
    store.claim_webhooks([url], retry, "c", FAR, 5)
    assert store.release_webhooks("c") == 1
    [row] = store.claim_webhooks([url], retry, "d", FAR, 5)
    store.finish_webhook(row, "d", WebhookDelivery(url, "1.1", 2, 204, None, retry), None)
    assert store.pending_webhooks("1.1") == []
    assert [(d.attempt, d.status) for d in reversed(store.webhook_deliveries("1.1"))] == [
        (1, 500),
        (1, None),
        (2, 204),
    ]


def test_two_senders_never_claim_one_row(store) -> None:
    url = "http://127.0.0.1:9/hook"
    for i in range(1, 41):
        store.record_alert(_alert(i), None, T0, [WebhookJob(url, f"{i}.1", b"x", T0)])
    got: dict[str, list[int]] = {"a": [], "b": []}

    def sender(owner: str) -> None:
        for _ in range(100):  # bounded: 40 rows between two senders
            rows = store.claim_webhooks([url], T0, owner, FAR, 3)
            if not rows:
                return
            got[owner] += [r.id for r in rows]

    threads = [threading.Thread(target=sender, args=(o,)) for o in got]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    claimed = got["a"] + got["b"]
    assert sorted(claimed) == sorted(set(claimed)) and len(claimed) == 40


def test_upsert_device_moves_only_unresolved_alerts(store) -> None:
    store.upsert_device(Device("truck-9", "farm-1", "chilled"))
    store.record_alert(_alert(1), "farm-1", T0)
    done = resolved_by_hand(_alert(2), "ops", "fixed", T0 + timedelta(minutes=30))
    store.record_alert(done, "farm-1", T0)
    store.upsert_device(Device("truck-9", "farm-2", "chilled"))
    assert {a.alert_id: a.site_id for a in store.list_alerts(AlertFilter(device_id="truck-9"))} == {
        1: "farm-2",
        2: "farm-1",
    }


# -- the service: restarts and crashes ---------------------------------------------------------


@pytest.fixture
def pipeline(mosquitto, store) -> Iterator[dict[str, Any]]:
    """Ingester + store + a swappable AlertService (a restart is a new service object)."""
    mq = MqttSettings(host=mosquitto.host, port=mosquitto.port)
    holder: dict[str, Any] = {"store": store, "mosquitto": mosquitto, "services": []}
    ingester = Ingester(
        IngestSettings(mqtt=mq, client_id=f"ingest-{uuid.uuid4().hex[:8]}"),
        store,
        IngestMetrics(CollectorRegistry()),
        on_committed=lambda rs, at: holder["service"].submit(rs, at) if "service" in holder else None,
    )

    def new_service(webhooks: WebhookSettings | None = None) -> AlertService:
        s = AlertService(
            AlertServiceSettings(
                mqtt=mq,
                client_id=f"alerts-{uuid.uuid4().hex[:8]}",
                tick_s=0.1,
                webhooks=webhooks or WebhookSettings(),
            ),
            store,
            AlertMetrics(CollectorRegistry()),
        )
        s.start()
        holder["services"].append(s)
        assert wait_until(lambda: s.connected, 10)
        holder["service"] = s
        return s

    holder["new_service"] = new_service
    ingester.start()
    assert wait_until(lambda: ingester.status().broker_connected, 10)
    yield holder
    ingester.stop()
    for s in holder["services"]:
        if s.started:
            s.stop()


def _raise_alert(pipeline: dict[str, Any], svc: AlertService, dev: str, site: str) -> str:
    """Assign ``dev`` to a zero-delay profile, publish an excursion; the raised event's id."""
    svc.save_profile(Profile.from_dict({"id": "zero", **ZERO_DELAY}))
    svc.assign(Device(dev, site, "zero"))
    mosq, store = pipeline["mosquitto"], pipeline["store"]
    t0 = ms(datetime.now(UTC))
    publish(
        mosq.host,
        mosq.port,
        f"origincast/{dev}/telemetry",
        [reading(t0, 3.0), reading(t0 + timedelta(seconds=1), 6.0)],
    )
    assert wait_until(lambda: bool(store.list_alerts(AlertFilter(device_id=dev))), 15)
    [a] = store.list_alerts(AlertFilter(device_id=dev))
    return f"{a.alert_id}.1"


def _check_delivered_once(receiver: Receiver, urls: list[str], eid: str) -> None:
    """Every call carried the event's id; each URL accepted it exactly once."""
    assert wait_until(lambda: len(receiver.accepted()) >= len(urls), 30), receiver.snapshot()
    time.sleep(1.5)  # anything sent twice would have come by now (backoff is shorter)
    calls = receiver.snapshot()
    assert {c.event for c in calls} == {eid}
    assert all(json.loads(c.body)["id"] == eid for c in calls)
    assert sorted(c.path for c in calls if c.status == 204) == sorted(urlsplit(u).path for u in urls)


def _attempts(store: Any, eid: str, url: str) -> list[tuple[int, int | None]]:
    return [(d.attempt, d.status) for d in reversed(store.webhook_deliveries(eid, 1000)) if d.url == url]


def test_clean_stop_with_retries_pending_then_restart_delivers_once(pipeline, receiver) -> None:
    store = pipeline["store"]
    urls = [receiver.url("/a"), receiver.url("/b")]
    hooks = WebhookSettings(urls=tuple(urls), secret=SECRET, attempts=10, backoff_s=0.3, timeout_s=2.0)
    svc = pipeline["new_service"](hooks)
    dev, site = f"dev-{uuid.uuid4().hex[:6]}", f"s-{uuid.uuid4().hex[:6]}"
    eid = _raise_alert(pipeline, svc, dev, site)
    # The receiver refuses every attempt while the engine runs.
    assert wait_until(lambda: all(len(_attempts(store, eid, u)) >= 2 for u in urls), 15)
    started = time.monotonic()
    svc.stop()
    assert time.monotonic() - started < 3.0, "the sender must stop promptly"
    # The retries are still pending, claimed by nobody, their due times kept.
    pending = {p.url: p for p in store.pending_webhooks(eid)}
    assert set(pending) == set(urls)
    for u in urls:
        tried = _attempts(store, eid, u)
        assert all(status == 500 for _, status in tried)
        assert pending[u].attempt == len(tried) + 1
    probe = store.claim_webhooks(urls, FAR, "probe", FAR, 10)
    assert {p.id for p in probe} == {p.id for p in pending.values()}
    store.release_webhooks("probe")
    calls_at_stop = len(receiver.snapshot())
    time.sleep(1.0)
    assert len(receiver.snapshot()) == calls_at_stop  # nothing goes out while stopped
    assert receiver.accepted() == []

    receiver.accept = True
    pipeline["new_service"](hooks)  # a new engine on the same database
    _check_delivered_once(receiver, urls, eid)
    for u in urls:
        tried = _attempts(store, eid, u)
        assert [n for n, _ in tried] == list(range(1, len(tried) + 1))  # attempts go on counting
        assert tried[-1] == (pending[u].attempt, 204)
        [ok] = [d for d in store.webhook_deliveries(eid, 1000) if d.url == u and d.status == 204]
        assert ok.at >= pending[u].due_at  # its due time was kept
    assert store.pending_webhooks(eid) == []


def test_kill_9_with_retries_pending_then_restart_delivers_once(
    alert_db, mosquitto, store, receiver, tmp_path: Path
) -> None:
    """`origincast serve` in a child process, killed with SIGKILL while a delivery waits
    for its retry; a new engine on the same database sends it."""
    urls = [receiver.url("/a"), receiver.url("/b")]
    port = free_port()
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("ORIGINCAST_")},
        "ORIGINCAST_DATABASE_URL": alert_db,
        "ORIGINCAST_MQTT_URL": mosquitto.url,
        "ORIGINCAST_INGEST_CLIENT_ID": f"kill-{uuid.uuid4().hex[:8]}",
        "ORIGINCAST_HTTP_HOST": "127.0.0.1",
        "ORIGINCAST_HTTP_PORT": str(port),
        "ORIGINCAST_ADMIN_TOKEN": TOKEN,
        "ORIGINCAST_STREAM_ICE_HOST_ADDRESSES": "127.0.0.1",
        "ORIGINCAST_FILES_DIR": str(tmp_path / "files"),
        "ORIGINCAST_ALERTS_WEBHOOKS": ",".join(urls),
        "ORIGINCAST_ALERTS_WEBHOOK_SECRET": SECRET,
    }
    log = tmp_path / "serve.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "web", "serve"], cwd=REPO, env=env, stdout=out, stderr=subprocess.STDOUT
        )
    base = f"http://127.0.0.1:{port}"

    def api(method: str, path: str, body: dict[str, Any]) -> int:
        req = urllib.request.Request(
            base + path,
            data=json.dumps(body).encode(),
            method=method,
            headers={"Authorization": f"Bearer {TOKEN}", "Content-Type": "application/json"},
        )
        with urllib.request.urlopen(req, timeout=10) as r:
            return r.status

    def ready() -> bool:
        assert proc.poll() is None, "origincast serve exited:\n" + log.read_text(errors="replace")[-3000:]
        try:
            return urllib.request.urlopen(f"{base}/readyz", timeout=1).status == 200
        except OSError:
            return False

    dev, site = f"dev-{uuid.uuid4().hex[:6]}", f"s-{uuid.uuid4().hex[:6]}"
    try:
        assert wait_until(ready, 60, 0.1), log.read_text(errors="replace")[-3000:]
        assert api("PUT", "/api/v1/alert-profiles/zero", ZERO_DELAY) == 200
        assert api("PUT", f"/api/v1/devices/{dev}", {"site_id": site, "profile_id": "zero"}) == 200
        t0 = ms(datetime.now(UTC))
        publish(
            mosquitto.host, mosquitto.port, f"origincast/{dev}/telemetry",
            [reading(t0, 3.0), reading(t0 + timedelta(seconds=1), 6.0)],
        )  # fmt: skip
        assert wait_until(lambda: bool(store.list_alerts(AlertFilter(device_id=dev))), 15)
        eid = f"{store.list_alerts(AlertFilter(device_id=dev))[0].alert_id}.1"
        # First attempts refused; the retries wait their backoff (4 s) in the outbox.
        assert wait_until(lambda: all(_attempts(store, eid, u) == [(1, 500)] for u in urls), 15)
    finally:
        proc.kill()  # SIGKILL: no stop, no snapshot, no goodbye
        proc.wait(10)
    assert proc.returncode == -9
    pending = {p.url: p for p in store.pending_webhooks(eid)}
    assert set(pending) == set(urls) and all(p.attempt == 2 for p in pending.values())
    assert receiver.accepted() == []

    receiver.accept = True
    mq = MqttSettings(host=mosquitto.host, port=mosquitto.port)
    svc = AlertService(
        AlertServiceSettings(
            mqtt=mq,
            client_id=f"alerts-{uuid.uuid4().hex[:8]}",
            webhooks=WebhookSettings(urls=tuple(urls), secret=SECRET),
        ),
        store,
        AlertMetrics(CollectorRegistry()),
    )
    svc.start()
    try:
        _check_delivered_once(receiver, urls, eid)
        for u in urls:
            assert _attempts(store, eid, u) == [(1, 500), (2, 204)]
            [ok] = [d for d in store.webhook_deliveries(eid) if d.url == u and d.status == 204]
            assert ok.at >= pending[u].due_at
        assert store.pending_webhooks(eid) == []
    finally:
        svc.stop()


# -- a device's new site ----------------------------------------------------------------------


def test_site_change_moves_the_open_alert_its_trail_and_its_events(pipeline) -> None:
    store, mosq = pipeline["store"], pipeline["mosquitto"]
    svc = pipeline["new_service"]()
    dev = f"dev-{uuid.uuid4().hex[:6]}"
    old, new = f"old-{uuid.uuid4().hex[:6]}", f"new-{uuid.uuid4().hex[:6]}"
    at_old, at_new = Events(mosq.host, mosq.port, old), Events(mosq.host, mosq.port, new)
    unassigned = Events(mosq.host, mosq.port, "unassigned")
    try:
        _raise_alert(pipeline, svc, dev, old)
        assert wait_until(lambda: at_old.kinds() == ["raised"], 10), at_old.kinds()
        [a] = store.list_alerts(AlertFilter(device_id=dev))
        assert a.site_id == old

        before = datetime.now(UTC)
        svc.assign(Device(dev, new, "zero"), "alice")
        [moved] = store.list_alerts(AlertFilter(device_id=dev))
        assert moved.site_id == new and moved.state == "open"
        assert store.list_alerts(AlertFilter(site_id=old, state="active")) == []
        trail = store.get_alert(a.alert_id).audit
        assert [e.action for e in trail] == ["raised", "site_changed"]
        change = trail[-1]
        assert (change.actor, change.detail) == ("alice", {"from": old, "to": new})
        assert change.at >= before - timedelta(seconds=1) and change.evidence_leaf is not None
        # The move itself is told on both sites' topics; then the new site hears the rest.
        assert wait_until(lambda: at_new.kinds() == ["updated"] and at_old.kinds()[-1:] == ["updated"], 10)
        ev = at_new.items[0]
        assert ev["id"] == f"{a.alert_id}.2" and ev["site_id"] == new
        assert ev["alert"]["audit"][-1]["detail"] == {"from": old, "to": new}
        assert Alert.from_dict({k: v for k, v in ev["alert"].items() if k != "site_id"}).audit[-1].detail == {
            "from": old,
            "to": new,
        }  # the engine's snapshot keeps it too

        t1 = ms(datetime.now(UTC))
        publish(mosq.host, mosq.port, f"origincast/{dev}/telemetry", [reading(t1, 9.0)])  # a new peak
        assert wait_until(lambda: len(at_new.items) == 2, 10), at_new.kinds()
        assert at_new.items[1]["site_id"] == new and at_new.items[1]["alert"]["peak"] == 9.0
        assert [e["event"] for e in at_old.items] == ["raised", "updated"]  # nothing more on the old site

        # A later change of name only, same site: the trail does not grow.
        svc.assign(Device(dev, new, "zero", "Truck nine"), "alice")
        assert [e.action for e in store.get_alert(a.alert_id).audit] == ["raised", "site_changed", "peak"]
        assert [e for e in unassigned.items if e["alert"]["device_id"] == dev] == []  # only the two sites
    finally:
        unassigned.close()
        at_old.close()
        at_new.close()


async def test_site_change_through_the_api_is_in_the_callers_name(
    aiohttp_client, mosquitto, sqlite_url, tmp_path: Path
):
    config = load_config(
        env={
            "ORIGINCAST_DATABASE_URL": sqlite_url,
            "ORIGINCAST_MQTT_URL": mosquitto.url,
            "ORIGINCAST_INGEST_CLIENT_ID": f"serve-{uuid.uuid4().hex[:8]}",
            "ORIGINCAST_ADMIN_TOKEN": TOKEN,
            "ORIGINCAST_FILES_DIR": str(tmp_path / "files"),
        }
    )
    app = build_app(config)
    client = await aiohttp_client(app)
    auth = {"Authorization": f"Bearer {TOKEN}"}
    dev = f"dev-{uuid.uuid4().hex[:6]}"
    assert await asyncio.to_thread(wait_until, lambda: app[ALERTS].connected, 10)
    for _ in range(100):
        if (await client.get("/readyz")).status == 200:
            break
        await asyncio.sleep(0.1)
    assert (await client.put("/api/v1/alert-profiles/zero", json=ZERO_DELAY, headers=auth)).status == 200
    r = await client.put(
        f"/api/v1/devices/{dev}", json={"site_id": "dock-1", "profile_id": "zero"}, headers=auth
    )
    assert r.status == 200
    t0 = ms(datetime.now(UTC))
    await asyncio.to_thread(
        publish, mosquitto.host, mosquitto.port, f"origincast/{dev}/telemetry",
        [reading(t0, 3.0), reading(t0 + timedelta(seconds=1), 6.0)],
    )  # fmt: skip
    store = app[STORE]
    assert await asyncio.to_thread(
        wait_until, lambda: bool(store.list_alerts(AlertFilter(device_id=dev))), 15
    )
    # Without a credential nothing moves.
    r = await client.put(f"/api/v1/devices/{dev}", json={"site_id": "dock-2", "profile_id": "zero"})
    assert r.status == 401
    [a] = store.list_alerts(AlertFilter(device_id=dev))
    assert a.site_id == "dock-1"
    r = await client.put(
        f"/api/v1/devices/{dev}", json={"site_id": "dock-2", "profile_id": "zero"}, headers=auth
    )
    assert r.status == 200
    listed = (await (await client.get("/api/v1/alerts?site=dock-2", headers=auth)).json())["alerts"]
    assert [x["id"] for x in listed] == [a.alert_id]
    audit = (await (await client.get(f"/api/v1/alerts/{a.alert_id}", headers=auth)).json())["audit"]
    assert audit[-1]["action"] == "site_changed" and audit[-1]["actor"] == "admin-token"
    assert (
        audit[-1]["detail"] == {"from": "dock-1", "to": "dock-2"}
        and audit[-1]["comment"] == "dock-1 → dock-2"
    )
