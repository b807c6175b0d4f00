"""Alerts end to end: broker → ingest → engine → alerts table, MQTT events, webhooks, API.

Real mosquitto, real databases (SQLite and PostgreSQL), real time (short delays).
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import re
import socket
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any

import paho.mqtt.client as mqtt
import pytest
from aiohttp import web
from paho.mqtt.enums import CallbackAPIVersion
from prometheus_client import CollectorRegistry

from telemetry.alerts.metrics import AlertMetrics
from telemetry.alerts.service import AlertService
from telemetry.alerts.settings import AlertServiceSettings
from telemetry.ingest import Ingester
from telemetry.metrics import IngestMetrics
from telemetry.settings import IngestSettings, MqttSettings, StorageSettings
from telemetry.storage import open_store
from telemetry.storage.alerts import AlertFilter, Device
from tests.support.processes import wait_until
from web.api_alerts import ALERTS
from web.app import STORE, build_app
from web.config import load_config

TOKEN = "test-admin-token-0123456789"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
SECRET = "webhook-secret"


@pytest.fixture(params=["sqlite", "postgres"])
def alert_db(request: pytest.FixtureRequest) -> str:
    return str(request.getfixturevalue({"sqlite": "sqlite_url", "postgres": "pg_url"}[request.param]))


class Events:
    """Subscribes to origincast/alerts/<site> and keeps what arrives."""

    def __init__(self, host: str, port: int, site: str) -> None:
        self.items: list[dict[str, Any]] = []
        self._c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"ev-{uuid.uuid4().hex[:8]}")
        ready = threading.Event()
        self._c.on_connect = lambda c, *_: c.subscribe(f"origincast/alerts/{site}", qos=1)
        self._c.on_subscribe = lambda *_: ready.set()
        self._c.on_message = lambda _c, _u, m: self.items.append(json.loads(m.payload))
        self._c.connect(host, port)
        self._c.loop_start()
        assert ready.wait(10)

    def kinds(self) -> list[str]:
        return [e["event"] for e in self.items]

    def close(self) -> None:
        self._c.disconnect()
        self._c.loop_stop()


def publish(host: str, port: int, topic: str, payloads: list[bytes | str], retain: bool = False) -> None:
    c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"p-{uuid.uuid4().hex[:8]}")
    c.connect(host, port)
    c.loop_start()
    for p in payloads:
        c.publish(topic, p, qos=1, retain=retain).wait_for_publish(10)
    c.disconnect()
    c.loop_stop()


def reading(ts: datetime, temp: float) -> bytes:
    return json.dumps({"ts": int(ts.timestamp() * 1000), "temp_c": temp}).encode()


def ms(t: datetime) -> datetime:
    return t.replace(microsecond=t.microsecond // 1000 * 1000)


async def metric(client: Any, name: str) -> float:
    text = await (await client.get("/metrics")).text()
    m = re.search(rf"^{re.escape(name)} (\S+)$", text, re.M)
    return float(m.group(1)) if m else -1.0


async def until(cond: Any, within: float = 15.0) -> None:
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        if await cond():
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"not within {within} s")


async def start_receiver(
    fail_first: int,
) -> tuple[web.AppRunner, str, list[tuple[bytes, dict[str, str]]], list[int]]:
    """A webhook receiver that answers 500 to its first ``fail_first`` requests."""
    got: list[tuple[bytes, dict[str, str]]] = []
    calls = [0]

    async def hook(request: web.Request) -> web.Response:
        calls[0] += 1
        body = await request.read()
        if calls[0] <= fail_first:
            return web.Response(status=500, text="not today")
        got.append((body, dict(request.headers)))
        return web.Response(status=204)

    app = web.Application()
    app.router.add_post("/hook", hook)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    return runner, f"http://127.0.0.1:{port}/hook", got, calls


ZERO_DELAY = {
    "name": "Zero delay (test)",
    "rules": [
        {"kind": "limit", "id": "upper", "direction": "above", "threshold": 4.0, "delay_s": 0,
         "clear_hysteresis": 0.5, "clear_for_s": 0},
        {"kind": "offline", "id": "offline", "timeout_s": 600, "will_grace_s": 0},
    ],
}  # fmt: skip


async def test_excursion_to_alert_row_event_webhook_and_lifecycle(aiohttp_client, mosquitto, alert_db):
    runner, hook_url, got, _calls = await start_receiver(fail_first=2)
    site, dev = f"site-{uuid.uuid4().hex[:6]}", f"truck-{uuid.uuid4().hex[:6]}"
    config = load_config(
        env={
            "ORIGINCAST_DATABASE_URL": alert_db,
            "ORIGINCAST_MQTT_URL": mosquitto.url,
            "ORIGINCAST_INGEST_CLIENT_ID": f"serve-{uuid.uuid4().hex[:8]}",
            "ORIGINCAST_ADMIN_TOKEN": TOKEN,
            "ORIGINCAST_ALERTS_WEBHOOKS": hook_url,
            "ORIGINCAST_ALERTS_WEBHOOK_SECRET": SECRET,
        }
    )
    # Fast retries, so two failures cost a second, not twelve.
    config = replace(
        config, alerts=replace(config.alerts, webhooks=replace(config.alerts.webhooks, backoff_s=0.2))
    )
    app = build_app(config)
    client = await aiohttp_client(app)
    events = Events(mosquitto.host, mosquitto.port, site)
    try:
        await until(lambda: asyncio.sleep(0, app[ALERTS].connected))

        async def ready() -> bool:
            return (await client.get("/readyz")).status == 200

        await until(ready)  # the ingester is subscribed: nothing published is lost
        r = await client.put("/api/v1/alert-profiles/zero", json=ZERO_DELAY)
        assert r.status == 401
        r = await client.put(
            "/api/v1/alert-profiles/zero", json={**ZERO_DELAY, "rules": [{"kind": "nope"}]}, headers=AUTH
        )
        assert r.status == 400 and "error" in await r.json()
        r = await client.put("/api/v1/alert-profiles/zero", json=ZERO_DELAY, headers=AUTH)
        assert r.status == 200, await r.text()
        r = await client.put(
            f"/api/v1/devices/{dev}", json={"site_id": site, "profile_id": "nope"}, headers=AUTH
        )
        assert r.status == 400
        r = await client.put(
            f"/api/v1/devices/{dev}", json={"site_id": site, "profile_id": "zero", "name": "T"}, headers=AUTH
        )
        assert r.status == 200
        assert {"device_id": dev, "site_id": site, "profile_id": "zero", "name": "T"} in (
            await (await client.get("/api/v1/devices", headers=AUTH)).json()
        )["devices"]
        profiles = {
            p["id"]: p
            for p in (await (await client.get("/api/v1/alert-profiles", headers=AUTH)).json())["profiles"]
        }
        assert profiles["zero"]["builtin"] is False and profiles["chilled"]["builtin"] is True

        # Event time after the assignment: readings before it fall in the new profile's ignore period.
        t0 = ms(datetime.now(UTC))
        await asyncio.to_thread(
            publish, mosquitto.host, mosquitto.port, f"origincast/{dev}/telemetry",
            [reading(t0, 3.0), reading(t0 + timedelta(seconds=1), 6.0)],
        )  # fmt: skip

        async def listed() -> list[dict[str, Any]]:
            return (await (await client.get(f"/api/v1/alerts?device={dev}", headers=AUTH)).json())["alerts"]

        await until(lambda: _nonempty(listed()))
        [a] = await listed()
        assert (a["status"], a["site_id"], a["rule_id"], a["peak"]) == ("open", site, "upper", 6.0)
        assert a["start"] == (t0 + timedelta(seconds=1)).isoformat() == a["raised_at"]
        detail = await (await client.get(f"/api/v1/alerts/{a['id']}", headers=AUTH)).json()
        assert [e["action"] for e in detail["audit"]] == ["raised"]
        assert wait_until(lambda: "raised" in events.kinds(), 10)
        raised = events.items[0]
        assert raised["site_id"] == site and raised["alert"]["device_id"] == dev

        # The webhook: two 500s, then delivered, signed; every attempt on record.
        await until(lambda: asyncio.sleep(0, bool(got)))
        body, headers = got[0]
        assert json.loads(body)["id"] == raised["id"]
        assert (
            headers["X-Origincast-Signature"]
            == "sha256=" + hmac.new(SECRET.encode(), body, hashlib.sha256).hexdigest()
        )
        store = app[STORE]
        tries = await asyncio.to_thread(store.webhook_deliveries, raised["id"])
        assert [(d.attempt, d.status) for d in reversed(tries)] == [(1, 500), (2, 500), (3, 204)]
        assert await metric(client, "origincast_alert_webhook_failures_total") == 2

        # People: acknowledge, resolve (with a comment), each an event and an audit entry.
        url = f"/api/v1/alerts/{a['id']}"
        assert (await client.post(f"{url}/acknowledge", json={"comment": "x"})).status == 401
        r = await client.post(f"{url}/acknowledge", json={"comment": "driver called"}, headers=AUTH)
        assert r.status == 200 and (await r.json())["alert"]["acknowledged_by"] == "admin-token"
        assert (await client.post(f"{url}/acknowledge", json={}, headers=AUTH)).status == 409
        assert (await client.post(f"{url}/resolve", json={"comment": " "}, headers=AUTH)).status == 400
        r = await client.post(f"{url}/resolve", json={"comment": "load moved to truck 3"}, headers=AUTH)
        assert r.status == 200
        assert (
            await client.post("/api/v1/alerts/999999/resolve", json={"comment": "x"}, headers=AUTH)
        ).status == 404
        assert wait_until(lambda: events.kinds()[-2:] == ["acknowledged", "resolved"], 10), events.kinds()
        detail = await (await client.get(url, headers=AUTH)).json()
        assert detail["status"] == "resolved" and detail["resolution_comment"] == "load moved to truck 3"
        assert [(e["action"], e["actor"]) for e in detail["audit"]] == [
            ("raised", "system"), ("acknowledged", "admin-token"), ("resolved", "admin-token"),
        ]  # fmt: skip
        resolved = await client.get("/api/v1/alerts?state=resolved&site=" + site, headers=AUTH)
        assert (await resolved.json())["alerts"][0]["id"] == a["id"]
        assert (await client.get("/api/v1/alerts?state=bogus", headers=AUTH)).status == 400
        await until(lambda: asyncio.sleep(0, len(got) >= 3))
    finally:
        events.close()
        await runner.cleanup()


async def _nonempty(coro: Any) -> bool:
    return bool(await coro)


@pytest.fixture
def pipeline(mosquitto, alert_db) -> Iterator[dict[str, Any]]:
    """Ingester + store + a swappable AlertService (restart = a new service object)."""
    store = open_store(StorageSettings(url=alert_db))
    store.open()
    store.migrate()
    mq = MqttSettings(host=mosquitto.host, port=mosquitto.port)
    holder: dict[str, Any] = {"store": store, "mosquitto": mosquitto}
    ingester = Ingester(
        IngestSettings(mqtt=mq, client_id=f"ingest-{uuid.uuid4().hex[:8]}"),
        store,
        IngestMetrics(CollectorRegistry()),
        on_committed=lambda rs, at: holder["service"].submit(rs, at),
    )

    def new_service() -> AlertService:
        s = AlertService(
            AlertServiceSettings(mqtt=mq, client_id=f"alerts-{uuid.uuid4().hex[:8]}", tick_s=0.1),
            store,
            AlertMetrics(CollectorRegistry()),
        )
        s.start()
        assert wait_until(lambda: s.connected, 10)
        holder["service"] = s
        return s

    holder["new_service"] = new_service
    new_service()
    ingester.start()
    assert wait_until(lambda: ingester.status().broker_connected, 10)
    yield holder
    ingester.stop()
    holder["service"].stop()
    store.close()


def test_restart_in_the_middle_of_a_delay_raises_on_time(pipeline):
    from telemetry.alerts import Profile

    store, mosq = pipeline["store"], pipeline["mosquitto"]
    dev, site = f"dev-{uuid.uuid4().hex[:6]}", f"s-{uuid.uuid4().hex[:6]}"
    profile = Profile.from_dict(
        {"id": "delay3", "name": "3 s delay", "rules": [
            {"kind": "limit", "id": "upper", "direction": "above", "threshold": 4.0, "delay_s": 3.0,
             "clear_hysteresis": 0.5, "clear_for_s": 0}]}
    )  # fmt: skip
    svc = pipeline["service"]
    svc.save_profile(profile)
    svc.assign(Device(dev, site, "delay3"))
    events = Events(mosq.host, mosq.port, site)
    try:
        t0 = ms(datetime.now(UTC))
        topic = f"origincast/{dev}/telemetry"
        publish(mosq.host, mosq.port, topic, [reading(t0, 7.0), reading(t0 + timedelta(seconds=1), 7.5)])
        assert wait_until(lambda: store.count_readings(dev) == 2, 10)
        time.sleep(0.3)  # judged (the queue is drained within milliseconds)
        svc.stop()  # snapshot: upper pending since t0
        # While the engine is down the readings go on being stored (and nothing judges them).
        publish(mosq.host, mosq.port, topic, [reading(t0 + timedelta(seconds=2), 8.0)])
        assert wait_until(lambda: store.count_readings(dev) == 3, 10)
        assert not events.items
        pipeline["new_service"]()  # restore + replay the reading stored meanwhile
        # Ticking on the held 8.0 raises it at t0 + 3 s (event time), i.e. about now.
        assert wait_until(lambda: "raised" in events.kinds(), 10), events.kinds()
        a = events.items[0]["alert"]
        assert datetime.fromisoformat(a["start"]) == t0
        assert datetime.fromisoformat(a["raised_at"]) == t0 + timedelta(seconds=3)
        assert a["peak"] == 8.0  # the replayed reading was judged
        rows = store.list_alerts(AlertFilter(device_id=dev))
        assert len(rows) == 1 and rows[0].site_id == site
    finally:
        events.close()


def test_last_will_offline_raises_and_online_resolves(pipeline):
    from telemetry.alerts import Profile

    store, mosq, svc = pipeline["store"], pipeline["mosquitto"], pipeline["service"]
    dev, site = f"dev-{uuid.uuid4().hex[:6]}", f"s-{uuid.uuid4().hex[:6]}"
    svc.save_profile(Profile.from_dict({"id": "zero", **ZERO_DELAY}))
    svc.assign(Device(dev, site, "zero"))
    events = Events(mosq.host, mosq.port, site)
    status = f"origincast/{dev}/status"
    c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"sensor-{dev}")
    c.will_set(status, "offline", qos=1, retain=True)
    c.connect(mosq.host, mosq.port, keepalive=5)
    c.loop_start()
    try:
        c.publish(status, "online", qos=1, retain=True).wait_for_publish(5)
        c.publish(f"origincast/{dev}/telemetry", reading(ms(datetime.now(UTC)), 3.0), qos=1).wait_for_publish(
            5
        )
        assert wait_until(lambda: store.count_readings(dev) == 1, 10)
        # The sensor loses power: its connection drops without a DISCONNECT, the broker
        # publishes the last will.
        sock = c.socket()
        c.loop_stop()
        assert isinstance(sock, socket.socket)
        sock.shutdown(socket.SHUT_RDWR)
        sock.close()
        assert wait_until(lambda: "raised" in events.kinds(), 15), events.kinds()
        assert events.items[0]["alert"]["rule_kind"] == "offline"
        publish(mosq.host, mosq.port, status, ["online"], retain=True)
        assert wait_until(lambda: "resolved" in events.kinds(), 10), events.kinds()
        [row] = store.list_alerts(AlertFilter(device_id=dev))
        assert row.state == "resolved" and row.kind == "offline"
    finally:
        events.close()
        publish(mosq.host, mosq.port, status, [b""], retain=True)  # clear the retained status
