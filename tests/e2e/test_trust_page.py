"""The public trust page (/v/<id>) in headless Chromium, against a real `origincast serve`
(ingest, alert engine, evidence log with a signing key made by `keys init`), a real
mosquitto and SQLite, all inside the loopback-only network namespace (tests/e2e/harness.py).
SQLite, not PostgreSQL: the test's PostgreSQL listens on the machine's loopback, which
the namespace cannot reach, and the tampering below needs the database file anyway.

A shipment whose readings are published over MQTT, with an excursion raised by a zero-
delay profile, acknowledged and resolved with comments by a logistics user through the
API, an origin photo and a test-report PDF:
- with the key from the QR code, the page says "Verified" and shows the journey, the
  chart (drawn), the figures, the excursion with who handled it and the comments, the
  photo and the report; a shipment whose data really has a hole says "Verified, 1 gap"
  and lists it;
- without a key: "Cannot verify" and why; with another log's key: a mismatch naming the
  checkpoint;
- tampering behind the server's back, each checked on a fresh page load and undone after:
  a reading changed, a reading deleted, a batch's readings dropped, an acknowledgement's
  comment edited, the test-report PDF swapped on disk, the checkpoint re-signed by
  another key (the server restarted with a new key file). Each is a mismatch naming the
  record; afterwards the untouched shipments verify again;
- English and Chinese, desktop and a phone (390×844).

Screenshots go to test-artifacts/trust-{en,zh-CN}-*.png.
"""

from __future__ import annotations

import asyncio
import base64
import json
import sqlite3
import struct
import subprocess
import sys
import time
import zlib
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from playwright.sync_api import Browser, BrowserContext, Page
from playwright.sync_api import TimeoutError as PlaywrightTimeout

from telemetry.evidence.keys import init_key
from telemetry.evidence.note import NoteSigner
from telemetry.settings import StorageSettings
from telemetry.storage import open_store
from telemetry.storage.alerts import Device
from tests.e2e.harness import ADMIN_TOKEN, PHONE, NetNs, server_env, stop_process, wait_healthy
from web.accounts import AccountService
from web.accounts_sql import open_account_repository
from web.embedded_broker import free_port

# In the process of its own that scripts/test.sh runs after the rest (marker "isolated"):
# twice in four full runs, in the shared process, the zero-delay excursion raised no alert
# within 15 s (nothing in the server's log), never when run on its own or with the other
# e2e tests (cause not found; session 3's closing note).
pytestmark = [pytest.mark.timeout(420), pytest.mark.isolated]

DESKTOP = {"width": 1280, "height": 1000}
ORIGIN = "e2e.origincast.test/log"
USER, PASSWORD, DISPLAY_NAME = "lin", "cold-chain-e2e-password", "Lin Wei"
REEFER, COLDROOM = "reefer-e2e", "coldroom-e2e"
SHIPMENT, GAP_SHIPMENT = "fish-e2e-1", "fish-e2e-gap"
BATCH, GAP_BATCH = "F-2026-11", "F-2026-12"
ACK_COMMENT = "driver called, door was left open"
RESOLVE_COMMENT = "goods moved to cold room 2, checked at 3.1 °C"
PHOTO_NAME, REPORT_NAME = "harbour.png", "lab-report.pdf"
HARBOUR = "zhoushan-harbour"
# The rows a leaf covers: its readings batch's (telemetry.storage.evidence_batches).
OF_LEAF = "evidence_batch = (SELECT batch_id FROM evidence_batch_leaves WHERE leaf_idx = ?)"
ZERO_DELAY = {
    "name": "Chilled fish (test)",
    "rules": [
        {"kind": "limit", "id": "upper", "direction": "above", "threshold": 4.0, "delay_s": 0,
         "clear_hysteresis": 0.5, "clear_for_s": 0},
    ],
}  # fmt: skip

# Run inside the namespace (the test process is outside it): publish each payload, QoS 1.
_PUBLISH = """
import json, sys, paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
c = mqtt.Client(CallbackAPIVersion.VERSION2)
c.connect("127.0.0.1", int(sys.argv[1]))
c.loop_start()
for body in json.loads(sys.argv[3]):
    c.publish(sys.argv[2], json.dumps(body), qos=1).wait_for_publish(10)
c.disconnect()
c.loop_stop()
"""


def _png(width: int = 96, height: int = 64) -> bytes:
    """A small real PNG (a sea-and-sky gradient), made here: no file ships with the test."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    rows = b"".join(
        b"\x00" + b"".join(bytes((20 + x, 90 + y, 160 + y // 2)) for x in range(width)) for y in range(height)
    )
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(rows))
        + chunk(b"IEND", b"")
    )


def _pdf(text: str) -> bytes:
    """A one-page PDF with ``text`` (valid enough for any reader; the upload checks magic)."""
    stream = f"BT /F1 18 Tf 72 720 Td ({text}) Tj ET".encode()
    objs = [
        b"<< /Type /Catalog /Pages 2 0 R >>",
        b"<< /Type /Pages /Kids [3 0 R] /Count 1 >>",
        b"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792] /Contents 4 0 R"
        b" /Resources << /Font << /F1 5 0 R >> >> >>",
        b"<< /Length %d >>\nstream\n" % len(stream) + stream + b"\nendstream",
        b"<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica >>",
    ]
    out = bytearray(b"%PDF-1.4\n")
    offsets = []
    for i, body in enumerate(objs, start=1):
        offsets.append(len(out))
        out += b"%d 0 obj\n" % i + body + b"\nendobj\n"
    xref = len(out)
    out += b"xref\n0 %d\n0000000000 65535 f \n" % (len(objs) + 1)
    out += b"".join(b"%010d 00000 n \n" % o for o in offsets)
    out += b"trailer\n<< /Size %d /Root 1 0 R >>\nstartxref\n%d\n%%%%EOF\n" % (len(objs) + 1, xref)
    return bytes(out)


def _ms(t: datetime) -> int:
    return int(t.timestamp() * 1000)


def _us(t: datetime) -> int:
    return int(t.timestamp() * 1_000_000)


@dataclass
class TrustServer:
    """`origincast serve` with ingest, restartable with another signing key file."""

    workdir: Path
    netns: NetNs
    port: int
    mqtt_port: int
    env: dict[str, str]
    key_file: Path
    vkey: str
    token: str = ""  # the logistics user's API token
    proc: subprocess.Popen[bytes] | None = None
    restarts: int = 0
    facts: dict[str, Any] = field(default_factory=dict)

    @property
    def base_url(self) -> str:
        return f"http://localhost:{self.port}"

    @property
    def db_path(self) -> Path:
        return self.workdir / "origincast.db"

    @property
    def log_path(self) -> Path:
        return self.workdir / f"serve-{self.restarts}.log"

    def start(self, key_file: Path) -> None:
        env = {**self.env, "ORIGINCAST_EVIDENCE_KEY_FILE": str(key_file)}
        with self.log_path.open("wb") as log:
            self.proc = subprocess.Popen(
                [*self.netns.prefix(), sys.executable, "-m", "web", "serve"],
                cwd=self.workdir, env=env, stdout=log, stderr=subprocess.STDOUT,
            )  # fmt: skip
        wait_healthy(self.netns, self.port, self.proc)
        deadline = time.monotonic() + 20
        while self.netns.http_get(f"http://127.0.0.1:{self.port}/readyz")[0] != 200:
            assert time.monotonic() < deadline, self.log_tail()
            time.sleep(0.2)

    def stop(self) -> None:
        if self.proc is not None:
            code = stop_process(self.proc)
            self.proc = None
            assert code == 0, f"serve exited with {code}:\n{self.log_tail()}"
            self.restarts += 1

    def log_tail(self) -> str:
        # Without the access log: a wait that polls fills the tail with its own requests.
        lines = self.log_path.read_text(errors="replace").splitlines()
        return "\n".join([line for line in lines if "aiohttp.access" not in line][-60:])

    def publish(self, device: str, bodies: list[dict[str, Any]]) -> None:
        out = subprocess.run(
            [*self.netns.prefix(), sys.executable, "-c", _PUBLISH, str(self.mqtt_port),
             f"origincast/{device}/telemetry", json.dumps(bodies)],
            capture_output=True, text=True, timeout=60,
        )  # fmt: skip
        assert out.returncode == 0, out.stderr[-800:]

    def db(self) -> sqlite3.Connection:
        """The server's database, behind its back (WAL: the server keeps running)."""
        conn = sqlite3.connect(self.db_path, timeout=10, isolation_level=None)
        conn.execute("PRAGMA busy_timeout = 10000")
        return conn

    def stored(self, device: str) -> int:
        with self.db() as conn:
            return int(
                conn.execute("SELECT count(*) FROM readings WHERE device_id = ?", (device,)).fetchone()[0]
            )

    def wait_stored(self, device: str, n: int, timeout_s: float = 15) -> None:
        deadline = time.monotonic() + timeout_s
        while self.stored(device) < n:
            assert time.monotonic() < deadline, (
                f"{device}: {self.stored(device)} of {n} stored\n{self.log_tail()}"
            )
            time.sleep(0.1)


class Api:
    """The JSON API, called from a page of the server's origin in Chromium (which lives in
    the namespace; this test process does not)."""

    def __init__(self, page: Page, srv: TrustServer) -> None:
        self._page = page
        self._srv = srv
        page.goto(f"{srv.base_url}/healthz")

    def __call__(
        self, method: str, path: str, body: object = None, token: str = ADMIN_TOKEN
    ) -> tuple[int, Any]:
        answer = self._page.evaluate(
            """async ([method, path, body, token]) => {
              const headers = { Authorization: `Bearer ${token}`, 'Content-Type': 'application/json' };
              const init = { method, headers, body: body === null ? undefined : JSON.stringify(body) };
              const r = await fetch(path, init);
              return [r.status, await r.text()];
            }""",
            [method, path, body, token],
        )
        return int(answer[0]), json.loads(answer[1] or "null")

    def upload(self, batch: str, kind: str, shipment: str, name: str, data: bytes, content_type: str) -> Any:
        status, text = self._page.evaluate(
            """async ([batch, kind, shipment, name, b64, type, token]) => {
              const bytes = Uint8Array.from(atob(b64), (c) => c.charCodeAt(0));
              const form = new FormData();
              form.append('kind', kind);
              form.append('shipment_id', shipment);
              form.append('file', new Blob([bytes], { type }), name);
              const r = await fetch(`/api/v1/batches/${batch}/files`, { method: 'POST', body: form,
                headers: { Authorization: `Bearer ${token}` } });
              return [r.status, await r.text()];
            }""",
            [batch, kind, shipment, name, base64.b64encode(data).decode(), content_type, ADMIN_TOKEN],
        )
        assert status == 201, text
        return json.loads(text)


@pytest.fixture(scope="module")
def trust_server(tmp_path_factory: pytest.TempPathFactory, netns: NetNs) -> Iterator[TrustServer]:
    workdir = tmp_path_factory.mktemp("e2e-trust")
    port, mqtt_port = free_port(), free_port()
    conf = workdir / "mosquitto.conf"
    conf.write_text(f"listener {mqtt_port} 127.0.0.1\nallow_anonymous true\npersistence false\n")
    broker = subprocess.Popen(
        [*netns.prefix(), "/usr/sbin/mosquitto", "-c", str(conf)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    db = f"sqlite:///{workdir / 'origincast.db'}"
    env = server_env(
        db,
        port,
        ORIGINCAST_MQTT_URL=f"mqtt://127.0.0.1:{mqtt_port}",
        ORIGINCAST_FILES_DIR=str(workdir / "files"),
        ORIGINCAST_STREAM_DEMO_TEST_PATTERN="false",
    )
    key_file = workdir / "log.key"
    signer = init_key(key_file, ORIGIN)  # what `origincast keys init` does
    accounts = open_account_repository(db)
    accounts.open()
    accounts.migrate()
    service = AccountService(accounts)
    # (a thread of its own: Playwright's sync API already runs an event loop in this one)
    with ThreadPoolExecutor(1) as pool:
        pool.submit(asyncio.run, service.create_user(USER, "logistics", PASSWORD, DISPLAY_NAME)).result()
        token, _ = pool.submit(asyncio.run, service.create_token(USER, "e2e")).result()
    accounts.close()
    store = open_store(StorageSettings(url=db))
    store.open()
    store.migrate()
    store.save_profile("zero", {"id": "zero", **ZERO_DELAY})  # as the API stores it
    store.upsert_device(Device(REEFER, "Harbour", "zero", "Reefer truck 3"))
    store.upsert_device(Device(COLDROOM, "Harbour", "zero", "Cold room 1"))
    store.close()
    srv = TrustServer(workdir, netns, port, mqtt_port, env, key_file, signer.vkey, token)
    try:
        srv.start(key_file)
        yield srv
    finally:
        try:
            srv.stop()
        finally:
            broker.terminate()
            broker.wait(10)


def _history(
    start: datetime, minutes: int, temp: Callable[[int], float], skip: range = range(0)
) -> list[dict]:
    return [
        {"ts": _ms(start + timedelta(minutes=m)), "temp_c": temp(m), "rh": 88.0}
        for m in range(minutes)
        if m not in skip
    ]


@pytest.fixture(scope="module")
def shipments(trust_server: TrustServer, browser: Browser) -> dict[str, Any]:
    """The two shipments, made the way they are in production: readings over MQTT, the
    alert engine, a logistics user's API calls, uploads; then closed."""
    srv = trust_server
    context = browser.new_context()
    try:
        api = Api(context.new_page(), srv)
        now = datetime.now(UTC).replace(microsecond=0)
        t0 = now - timedelta(minutes=40)
        opened = t0 - timedelta(seconds=30)
        status, body = api("POST", "/api/v1/shipments", {
            "id": SHIPMENT, "product": "Frozen cod fillets", "batch": BATCH, "origin_site": HARBOUR,
            "profile_id": "zero", "opened_at": opened.isoformat(),
            "segments": [{"device_id": REEFER, "start": opened.isoformat(), "label": "Reefer truck 3"}],
        })  # fmt: skip
        assert status == 201, body
        # Forty minutes of history, a reading a minute, in two deliveries (two batches).
        temp = lambda m: 2.6 + (m % 7) * 0.1  # noqa: E731
        history = _history(t0, 40, temp)
        srv.publish(REEFER, history[:20])
        srv.wait_stored(REEFER, 20)
        srv.publish(REEFER, history[20:])
        srv.wait_stored(REEFER, 40)
        # The excursion now (the zero-delay profile raises it at once), then back in range.
        peak_at = datetime.now(UTC).replace(microsecond=0)
        srv.publish(REEFER, [{"ts": _ms(peak_at), "temp_c": 6.2, "rh": 80.0}])
        alert = None
        deadline = time.monotonic() + 15
        while alert is None:
            status, body = api("GET", f"/api/v1/alerts?device={REEFER}")
            assert status == 200, body
            alert = next(iter(body["alerts"]), None)
            assert alert is not None or time.monotonic() < deadline, srv.log_tail()
            time.sleep(0.2)
        # The logistics user handles it: acknowledged with a comment, resolved with another;
        # then the temperature is back in range.
        status, body = api(
            "POST", f"/api/v1/alerts/{alert['id']}/acknowledge", {"comment": ACK_COMMENT}, srv.token
        )
        assert status == 200, body
        status, body = api(
            "POST", f"/api/v1/alerts/{alert['id']}/resolve", {"comment": RESOLVE_COMMENT}, srv.token
        )
        assert status == 200, body
        srv.publish(REEFER, [{"ts": _ms(peak_at + timedelta(seconds=20)), "temp_c": 3.0, "rh": 86.0}])
        srv.wait_stored(REEFER, 42)
        # The producer's files: an origin photo and a lab's test report.
        photo = api.upload(BATCH, "photo", SHIPMENT, PHOTO_NAME, _png(), "image/png")
        report = api.upload(BATCH, "test_report", SHIPMENT, REPORT_NAME, _pdf("Lab report F-2026-11: pass"),
                            "application/pdf")  # fmt: skip
        closed_at = peak_at + timedelta(seconds=50)
        status, body = api("POST", f"/api/v1/shipments/{SHIPMENT}/close", {"at": closed_at.isoformat()})
        assert status == 200, body

        # The second shipment: an hour in the cold room with twenty minutes missing.
        g0 = now - timedelta(minutes=70)
        g_open = g0 - timedelta(seconds=30)
        status, body = api("POST", "/api/v1/shipments", {
            "id": GAP_SHIPMENT, "product": "Frozen squid", "batch": GAP_BATCH, "origin_site": HARBOUR,
            "profile_id": "zero", "opened_at": g_open.isoformat(),
            "segments": [{"device_id": COLDROOM, "start": g_open.isoformat(), "label": "Cold room 1"}],
        })  # fmt: skip
        assert status == 201, body
        hole = range(25, 45)
        srv.publish(COLDROOM, _history(g0, 60, lambda m: 1.5 + (m % 5) * 0.1, skip=hole))
        srv.wait_stored(COLDROOM, 40)
        status, body = api("POST", f"/api/v1/shipments/{GAP_SHIPMENT}/close",
                           {"at": (g0 + timedelta(minutes=59, seconds=30)).isoformat()})  # fmt: skip
        assert status == 200, body
        with srv.db() as conn:
            query = (
                "SELECT DISTINCT m.leaf_idx FROM readings r JOIN evidence_batch_leaves m"
                " ON m.batch_id = r.evidence_batch WHERE r.device_id = ? ORDER BY 1"
            )
            leaves = [r[0] for r in conn.execute(query, (REEFER,))]
        # a leaf per 15 minutes of readings: the history's three windows, the excursion and
        # the recovery in the last one (sealed at the close)
        assert len(leaves) >= 3, leaves
        return {
            "alert_id": alert["id"],
            "photo": photo,
            "report": report,
            "reefer_leaves": leaves,
            "gap_from": (g0 + timedelta(minutes=29)).isoformat().replace("+00:00", "Z"),
            "gap_to": (g0 + timedelta(minutes=45)).isoformat().replace("+00:00", "Z"),
        }
    finally:
        context.close()


# -- the page ------------------------------------------------------------------------------

DONE_STATES = ["verified", "gaps", "failed", "nokey", "nolog", "missing"]
VERDICT_DONE = f"() => {json.dumps(DONE_STATES)}.includes(document.body.dataset.verified)"
# Opaque pixels of the temperature line's colour (#1d6fb8) on uPlot's canvas.
DRAWN_PIXELS = """(min) => {
  const c = document.querySelector('#chart canvas');
  if (!c || !c.width) return false;
  const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
  let n = 0;
  for (let i = 0; i < d.length; i += 4) {
    const near = Math.abs(d[i] - 29) < 40 && Math.abs(d[i + 1] - 111) < 40 && Math.abs(d[i + 2] - 184) < 40;
    if (near && d[i + 3] > 200) n++;
  }
  return n >= min;
}"""


@dataclass(frozen=True, slots=True)
class Verdict:
    state: str
    title: str
    items: list[str]

    @property
    def text(self) -> str:
        return " | ".join([self.title, *self.items])


def open_trust(
    context: BrowserContext, srv: TrustServer, shipment: str, key: str | None
) -> tuple[Page, Verdict]:
    """A fresh page load of the trust page, waited on until it has a verdict; nothing may
    throw on the page (a tampered record is a verdict, not a crash)."""
    page = context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
    fragment = "" if key is None else f"#k={key}"
    page.goto(f"{srv.base_url}/v/{shipment}{fragment}")
    try:
        page.wait_for_function(VERDICT_DONE, timeout=20_000, polling=50)
    except PlaywrightTimeout:
        raise AssertionError(
            f"no verdict within 20 s; the page says {page.locator('main').inner_text()[:1500]!r}"
        ) from None
    verdict = Verdict(
        page.evaluate("() => document.body.dataset.verified"),
        page.locator("#verdict-title").inner_text(),
        page.locator("#verdict-list li").all_inner_texts(),
    )
    assert not errors, errors
    return page, verdict


def mismatch(
    context: BrowserContext, srv: TrustServer, shipment: str, *needles: str, shot: str = ""
) -> Verdict:
    page, verdict = open_trust(context, srv, shipment, srv.vkey)
    try:
        assert verdict.state == "failed", verdict
        assert verdict.title.startswith("Mismatch: "), verdict
        for needle in needles:
            assert needle in verdict.text, (needle, verdict)
        if shot:
            page.screenshot(path=str(srv.facts["artifacts"] / f"trust-en-tamper-{shot}.png"), full_page=True)
    finally:
        page.close()
    return verdict


def verified(context: BrowserContext, srv: TrustServer, shipment: str = SHIPMENT) -> None:
    page, verdict = open_trust(context, srv, shipment, srv.vkey)
    page.close()
    if shipment == GAP_SHIPMENT:
        assert (verdict.state, verdict.title) == ("gaps", "Verified, 1 gap"), verdict
    else:
        assert (verdict.state, verdict.title, verdict.items) == ("verified", "Verified", []), verdict


def test_trust_page_verifies_and_shows_the_record(
    browser: Browser, trust_server: TrustServer, shipments: dict[str, Any], artifacts: Path
) -> None:
    srv = trust_server
    context = browser.new_context(viewport=DESKTOP, locale="en-US")
    try:
        page, verdict = open_trust(context, srv, SHIPMENT, srv.vkey)
        assert verdict == Verdict("verified", "Verified", []), verdict
        assert "checked in this browser" in page.locator("#verdict-detail").inner_text()
        assert page.locator("#product").inner_text() == "Frozen cod fillets"
        assert page.locator("#batch").inner_text() == BATCH
        assert "Delivered" in page.locator("#state").inner_text()
        assert "≤ 4 °C" in page.locator("#profile").inner_text()
        journey = page.locator("#journey").inner_text()
        assert "Reefer truck 3" in journey and REEFER in journey
        # The chart: uPlot's canvas, with the temperature line drawn on it.
        assert page.locator("#chart canvas").count() >= 1
        page.wait_for_function(DRAWN_PIXELS, arg=300, timeout=5000, polling=100)
        # The figures: per segment and the whole journey; the peak is the excursion's 6.2 °C.
        rows = page.locator("#figures tr").all_inner_texts()
        assert len(rows) == 3 and "Whole journey" in rows[2], rows
        assert "6.20 °C" in rows[1] and "2.60 °C" in rows[1], rows
        # The excursion and how staff handled it: who, and their comments.
        excursion = page.locator("#excursions .excursion").inner_text()
        assert "peak 6.20 °C" in excursion, excursion
        assert f"acknowledged · {USER} — “{ACK_COMMENT}”" in excursion, excursion
        assert f"resolved · {USER} — “{RESOLVE_COMMENT}”" in excursion, excursion
        # The photo (shown) and the test report (linked), with their hashes.
        photo = shipments["photo"]
        img = page.locator(f"#files li[data-sha256='{photo['sha256']}'] img")
        page.wait_for_function(
            "(el) => el.complete && el.naturalWidth === 96", arg=img.element_handle(), timeout=5000
        )
        report = shipments["report"]
        link = page.locator(f"#files li[data-sha256='{report['sha256']}'] a")
        assert link.inner_text() == f"Test report: {REPORT_NAME}"
        assert link.get_attribute("href") == f"/files/{report['sha256']}"
        page.screenshot(path=str(artifacts / "trust-en-desktop.png"), full_page=True)

        # The language switch, without a reload: the verdict follows it.
        page.click("[data-lang-switch='zh-CN']")
        page.wait_for_function(
            "() => document.querySelector('#verdict-title').textContent === '已核验'", timeout=3000
        )
        assert "已送达" in page.locator("#state").inner_text()
        assert "全程" in page.locator("#figures").inner_text()
        page.screenshot(path=str(artifacts / "trust-zh-CN-desktop.png"), full_page=True)
        page.click("[data-lang-switch='en']")  # (a cookie: the next pages of this context follow it)
        page.wait_for_function("() => document.querySelector('#verdict-title').textContent === 'Verified'")
        page.close()

        # A real hole in the data: verified, with that one gap listed.
        page, verdict = open_trust(context, srv, GAP_SHIPMENT, srv.vkey)
        assert (verdict.state, verdict.title) == ("gaps", "Verified, 1 gap"), verdict
        assert len(verdict.items) == 1 and verdict.items[0].startswith("no readings from "), verdict
        # The listed times are in the reader's time zone; the report says which span it is:
        # from the last reading before the hole plus the gap threshold (5 min) to the next.
        status, body = srv.netns.http_get(
            f"http://127.0.0.1:{srv.port}/api/v1/public/shipments/{GAP_SHIPMENT}"
        )
        assert status == 200
        gaps = json.loads(body)["report"]["gaps"]
        assert len(gaps) == 1, gaps
        assert (gaps[0]["start"], gaps[0]["end"]) == (shipments["gap_from"], shipments["gap_to"]), gaps
        page.screenshot(path=str(artifacts / "trust-en-gap.png"), full_page=True)
        page.close()

        # No key in the link: cannot verify, and why.
        page, verdict = open_trust(context, srv, SHIPMENT, None)
        assert verdict.state == "nokey", verdict
        assert (
            verdict.title
            == "Cannot verify: the link has no key (#k=…). Open the link from the QR code on the package."
        )
        page.screenshot(path=str(artifacts / "trust-en-nokey.png"), full_page=True)
        page.close()
        # Another log's key: a mismatch naming the checkpoint.
        other = NoteSigner.generate("other.origincast.test/log").vkey
        page, verdict = open_trust(context, srv, SHIPMENT, other)
        assert verdict.state == "failed", verdict
        assert verdict.title.startswith(f"Mismatch: the checkpoint ({ORIGIN}, tree size "), verdict
        assert "not signed by this log's key" in verdict.title, verdict
        page.close()
    finally:
        context.close()


def test_tampering_behind_the_servers_back_is_named(
    browser: Browser, trust_server: TrustServer, shipments: dict[str, Any], artifacts: Path
) -> None:
    srv = trust_server
    srv.facts["artifacts"] = artifacts
    context = browser.new_context(viewport=DESKTOP, locale="en-US")
    try:
        verified(context, srv)
        first, *_ = shipments["reefer_leaves"]
        batch = f"{REEFER} (batch {first})"
        with srv.db() as conn:
            cols = [r[1] for r in conn.execute("PRAGMA table_info(readings)")]
            ts, original = conn.execute(
                f"SELECT ts, temp_c FROM readings WHERE device_id = ? AND {OF_LEAF}"
                " ORDER BY ts LIMIT 1 OFFSET 5",
                (REEFER, first),
            ).fetchone()  # fmt: skip

            # A reading changed.
            conn.execute(
                "UPDATE readings SET temp_c = ? WHERE device_id = ? AND ts = ?", (original - 1.5, REEFER, ts)
            )
            mismatch(context, srv, SHIPMENT, f"the readings of {batch} differ from what the log recorded",
                     shot="reading")  # fmt: skip
            conn.execute(
                "UPDATE readings SET temp_c = ? WHERE device_id = ? AND ts = ?", (original, REEFER, ts)
            )
            verified(context, srv)

            # A reading deleted.
            row = conn.execute(
                "SELECT * FROM readings WHERE device_id = ? AND ts = ?", (REEFER, ts)
            ).fetchone()
            conn.execute("DELETE FROM readings WHERE device_id = ? AND ts = ?", (REEFER, ts))
            mismatch(context, srv, SHIPMENT, f"the readings of {batch} differ")
            insert = f"INSERT INTO readings ({', '.join(cols)}) VALUES ({', '.join('?' * len(cols))})"
            conn.execute(insert, row)
            verified(context, srv)

            # A whole batch's readings dropped.
            rows = conn.execute(
                f"SELECT * FROM readings WHERE device_id = ? AND {OF_LEAF}", (REEFER, first)
            ).fetchall()
            assert len(rows) == 15  # the first 15-minute window
            conn.execute(f"DELETE FROM readings WHERE device_id = ? AND {OF_LEAF}", (REEFER, first))
            mismatch(context, srv, SHIPMENT, f"the readings of {batch} differ", shot="batch")
            conn.executemany(insert, rows)
            verified(context, srv)

            # An acknowledgement's comment edited.
            alert_id = shipments["alert_id"]
            where = "WHERE alert_id = ? AND action = 'acknowledged'"
            conn.execute(f"UPDATE alert_audit SET comment = 'checked, all fine' {where}", (alert_id,))
            mismatch(context, srv, SHIPMENT, f"excursion {alert_id}", "acknowledged", shot="comment")
            conn.execute(f"UPDATE alert_audit SET comment = ? {where}", (ACK_COMMENT, alert_id))
            verified(context, srv)

        # The test report swapped on disk (its bytes, under its old name).
        sha = shipments["report"]["sha256"]
        path = srv.workdir / "files" / sha[:2] / sha
        genuine = path.read_bytes()
        path.write_bytes(_pdf("Lab report F-2026-11: pass (revised)"))
        mismatch(context, srv, SHIPMENT, f"the file {REPORT_NAME} differs from its record", shot="file")
        path.write_bytes(genuine)
        verified(context, srv)

        # Re-signed with another key: the same log name, a new key file, the server restarted.
        forged = srv.workdir / "forged.key"
        init_key(forged, ORIGIN)
        srv.stop()
        srv.start(forged)
        verdict = mismatch(context, srv, SHIPMENT, f"the checkpoint ({ORIGIN}, tree size ", shot="key")
        assert "not signed by this log's key" in verdict.title, verdict
        srv.stop()
        srv.start(srv.key_file)

        # Everything undone: both shipments verify again.
        verified(context, srv)
        verified(context, srv, GAP_SHIPMENT)
    finally:
        context.close()


def test_trust_page_on_a_phone_in_both_languages(
    browser: Browser, trust_server: TrustServer, shipments: dict[str, Any], artifacts: Path
) -> None:
    srv = trust_server
    for locale, lang, title in (("zh-CN", "zh-CN", "已核验"), ("en-US", "en", "Verified")):
        context = browser.new_context(viewport=PHONE, locale=locale, has_touch=True, is_mobile=True,
                                      device_scale_factor=3)  # fmt: skip
        try:
            page, verdict = open_trust(context, srv, SHIPMENT, srv.vkey)
            assert (verdict.state, verdict.title) == ("verified", title), verdict
            assert page.locator("html").get_attribute("lang") == lang
            # Nothing wider than the phone: no sideways scrolling of the page.
            width = page.evaluate("() => document.documentElement.scrollWidth")
            assert width <= PHONE["width"], width
            chart = page.locator("#chart canvas").first.bounding_box()
            assert chart is not None and chart["width"] <= PHONE["width"], chart
            page.wait_for_function(DRAWN_PIXELS, arg=300, timeout=5000, polling=100)
            if lang == "zh-CN":
                assert "温度异常及员工处理" in page.locator("main").inner_text()
                assert "已确认" in page.locator("#excursions").inner_text()
            page.screenshot(path=str(artifacts / f"trust-{lang}-phone.png"), full_page=True)
            page.close()
        finally:
            context.close()


def test_an_open_shipment_verifies_what_is_sealed_and_says_what_waits(
    browser: Browser, trust_server: TrustServer, shipments: dict[str, Any], artifacts: Path
) -> None:
    """A live sensor's newest window is stored but not sealed yet: the page verifies the
    record up to it and says how many readings wait, in both languages."""
    srv = trust_server
    live = "truck-live-e2e"
    now = datetime.now(UTC).replace(microsecond=0)
    t0 = now - timedelta(minutes=40)
    context = browser.new_context(viewport=DESKTOP, locale="en-US")
    try:
        api = Api(context.new_page(), srv)
        status, body = api("POST", "/api/v1/shipments", {
            "id": "greens-live", "product": "Baby spinach", "batch": "S-1", "origin_site": HARBOUR,
            "profile_id": "chilled", "opened_at": t0.isoformat(),
            "segments": [{"device_id": live, "start": t0.isoformat()}],
        })  # fmt: skip
        assert status == 201, body
        srv.publish(live, _history(t0, 40, lambda m: 3.0 + (m % 4) * 0.2))
        srv.wait_stored(live, 40)
        page, verdict = open_trust(context, srv, "greens-live", srv.vkey)
        assert verdict.state == "verified", verdict
        waiting = page.locator("#pending")
        assert waiting.is_visible()
        # 40 readings in 15-minute windows: the last window (10 readings) is not sealed yet
        assert waiting.inner_text().startswith("10 newer readings"), waiting.inner_text()
        page.screenshot(path=str(artifacts / "trust-en-open-pending.png"), full_page=True)
        page.click("[data-lang-switch='zh-CN']")
        assert "另有 10 条较新的读数" in waiting.inner_text()
        page.close()
    finally:
        context.close()
