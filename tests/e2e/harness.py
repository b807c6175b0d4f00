"""Browser end-to-end harness: a real `origincast serve` on 127.0.0.1 and Debian's headless
Chromium driven by Playwright for Python (the pip package only: no browser download).

Nothing here skips. Without /usr/bin/chromium (scripts/test.sh installs Debian's
package) the browser tests fail and say so: a skipped browser test is not a passed one.

All traffic stays on loopback, and not by convention: the server and Chromium run in a
network namespace of their own that has nothing but `lo` (`ip netns`, as root, which
scripts/test.sh and CI are). Outside one, Chromium offers ICE candidates on every
interface (here eth0's address, never 127.0.0.1) and the relay would answer them:
traffic to the machine's own address, which counts as leaving loopback. Inside, the
only path is 127.0.0.1 ↔ 127.0.0.1. The server also offers only 127.0.0.1
(ORIGINCAST_STREAM_ICE_HOST_ADDRESSES), and Chromium's background services are off.
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from playwright.sync_api import Browser, Page, sync_playwright
from playwright.sync_api import TimeoutError as PlaywrightTimeout

from tests.support.processes import REPO
from web.embedded_broker import free_port

CHROMIUM = Path("/usr/bin/chromium")
# Debian's Chromium on these machines (the env notes): without the background-networking
# switches it keeps trying to reach Google's hosts, which this closed network refuses.
# Playwright adds --headless itself and gives every launch a new, empty profile directory
# (it refuses --user-data-dir in args: a fresh profile is what it does anyway).
CHROMIUM_ARGS = (
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    # The fake camera and microphone, granted without a prompt.
    "--use-fake-device-for-media-stream",
    "--use-fake-ui-for-media-stream",
    # Local ICE candidates as addresses, not mDNS names; and loopback, which Chromium
    # leaves out unless told (in the namespace it is the only interface there is).
    "--disable-features=WebRtcHideLocalIpsWithMdns",
    "--allow-loopback-in-peer-connection",
    # A name that is not localhost, for the "not a secure page" test; still 127.0.0.1.
    "--host-resolver-rules=MAP phone.test 127.0.0.1",
)
PHONE = {"width": 390, "height": 844}  # an iPhone 12-15's CSS viewport
ARTIFACTS = REPO / "test-artifacts"
ADMIN_TOKEN = "e2e-admin-token-0123456789"
SLUG = "farm-cam"
TITLE = "Green Valley dairy"
SITE = "Farm 7"


@dataclass(frozen=True, slots=True)
class NetNs:
    """A network namespace with only loopback, up."""

    name: str

    def prefix(self) -> list[str]:
        return ["ip", "netns", "exec", self.name]

    def http_get(self, url: str, timeout: float = 5.0) -> tuple[int, str]:
        """GET ``url`` from inside the namespace: (status, body); status 0 if unreachable."""
        out = subprocess.run(
            [*self.prefix(), sys.executable, "-c", _HTTP_GET, url, str(timeout)],
            capture_output=True,
            text=True,
            timeout=timeout + 20,
        )
        if out.returncode != 0:
            return 0, out.stderr[-500:]
        answer = json.loads(out.stdout)
        return int(answer["status"]), str(answer["body"])


# Run by NetNs.http_get inside the namespace (the test process itself is outside it).
_HTTP_GET = """
import json, sys, urllib.error, urllib.request
try:
    with urllib.request.urlopen(sys.argv[1], timeout=float(sys.argv[2])) as r:
        status, body = r.status, r.read().decode("utf-8", "replace")
except urllib.error.HTTPError as e:
    status, body = e.code, e.read().decode("utf-8", "replace")
except OSError as e:
    status, body = 0, str(e)
print(json.dumps({"status": status, "body": body}))
"""


@dataclass(frozen=True, slots=True)
class Server:
    base_url: str  # http://localhost:PORT: localhost is a secure context, so the camera works
    port: int
    publish_key: str
    log_path: Path
    netns: NetNs

    def log_tail(self, lines: int = 40) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no server log)"

    def api(self, path: str) -> dict[str, object]:
        status, body = self.netns.http_get(f"http://127.0.0.1:{self.port}{path}")
        assert status == 200, f"GET {path}: {status} {body[:300]}"
        return dict(json.loads(body))


def server_env(db_url: str, port: int, **extra: str) -> dict[str, str]:
    """The test server's environment: nothing inherited from an operator's ORIGINCAST_*;
    ``extra`` adds or overrides variables."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("ORIGINCAST_")}
    env.update(
        ORIGINCAST_DATABASE_URL=db_url,
        ORIGINCAST_HTTP_HOST="127.0.0.1",
        ORIGINCAST_HTTP_PORT=str(port),
        ORIGINCAST_ADMIN_TOKEN=ADMIN_TOKEN,
        ORIGINCAST_STREAM_ICE_HOST_ADDRESSES="127.0.0.1",
        # The demo's test pattern, small: the browser, the relay's decoder and two encoders
        # share two cores during these tests.
        ORIGINCAST_STREAM_DEMO_TEST_PATTERN="true",
        ORIGINCAST_STREAM_TEST_PATTERN_WIDTH="640",
        ORIGINCAST_STREAM_TEST_PATTERN_HEIGHT="360",
        PYTHONPATH=str(REPO),
    )
    env.update(extra)
    return env


def wait_healthy(netns: NetNs, port: int, proc: subprocess.Popen[bytes], timeout: float = 30.0) -> None:
    url = f"http://127.0.0.1:{port}/healthz"
    deadline = time.monotonic() + timeout
    last = ""
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"the server exited with {proc.returncode} before answering {url}")
        status, last = netns.http_get(url, timeout=2)
        if status == 200:
            return
        time.sleep(0.2)
    raise AssertionError(f"{url} did not answer within {timeout:.0f} s ({last[:200]})")


def stop_process(proc: subprocess.Popen[bytes]) -> int:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)
    return proc.returncode


@contextlib.contextmanager
def launch_chromium(executable: str) -> Iterator[Browser]:
    with sync_playwright() as pw:
        b = pw.chromium.launch(executable_path=executable, headless=True, args=list(CHROMIUM_ARGS))
        try:
            yield b
        finally:
            b.close()


# An alert profile whose upper limit fires at once: a browser test sees the alert without
# waiting out a real profile's delay.
ZERO_DELAY = {
    "name": "Zero delay (test)",
    "rules": [
        {"kind": "limit", "id": "upper", "direction": "above", "threshold": 4.0, "delay_s": 0,
         "clear_hysteresis": 0.5, "clear_for_s": 0},
    ],
}  # fmt: skip

# Run inside the namespace (the test process is outside it).
_PUBLISH = """
import sys, paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
c = mqtt.Client(CallbackAPIVersion.VERSION2)
c.connect("127.0.0.1", int(sys.argv[1]))
c.loop_start()
c.publish(sys.argv[2], sys.argv[3], qos=1).wait_for_publish(10)
c.disconnect()
c.loop_stop()
"""
_REQUEST = """
import json, sys, urllib.request
req = urllib.request.Request(sys.argv[1], data=sys.argv[3].encode() or None, method=sys.argv[2],
    headers={"Authorization": "Bearer " + sys.argv[4], "Content-Type": "application/json"})
try:
    with urllib.request.urlopen(req, timeout=10) as r:
        print(json.dumps({"status": r.status, "body": r.read().decode()}))
except urllib.error.HTTPError as e:
    print(json.dumps({"status": e.code, "body": e.read().decode()}))
"""


@dataclass(frozen=True, slots=True)
class LiveServer:
    """`origincast serve` with its own Mosquitto, both in the namespace: readings go in
    over MQTT, API calls over HTTP, from helper processes inside the namespace."""

    base_url: str
    port: int
    mqtt_port: int
    netns: NetNs
    log_path: Path

    def run(self, *args: str) -> str:
        out = subprocess.run(
            [*self.netns.prefix(), sys.executable, "-c", *args], capture_output=True, text=True, timeout=30
        )
        assert out.returncode == 0, out.stderr[-800:]
        return out.stdout

    def reading(self, device: str, temp: float, ts: datetime | None = None, **extra: object) -> None:
        ts = ts or datetime.now(UTC)
        body = json.dumps({"ts": int(ts.timestamp() * 1000), "temp_c": temp, **extra})
        self.run(_PUBLISH, str(self.mqtt_port), f"origincast/{device}/telemetry", body)

    def request(self, method: str, path: str, body: object = None) -> tuple[int, object]:
        raw = "" if body is None else json.dumps(body)
        url = f"http://127.0.0.1:{self.port}{path}"
        answer = json.loads(self.run(_REQUEST, url, method, raw, ADMIN_TOKEN))
        return int(answer["status"]), json.loads(answer["body"] or "null")

    def log_tail(self) -> str:
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-40:])


@contextlib.contextmanager
def serve_with_broker(
    workdir: Path, netns: NetNs, prepare: Callable[[str, dict[str, str]], None]
) -> Iterator[LiveServer]:
    """Mosquitto and `origincast serve` on a SQLite database in ``workdir``;
    ``prepare(database_url, env)`` fills the database before the server starts (the
    alert engine and the live feed read it at start). The server must exit cleanly."""
    port, mqtt_port = free_port(), free_port()
    conf = workdir / "mosquitto.conf"
    conf.write_text(f"listener {mqtt_port} 127.0.0.1\nallow_anonymous true\npersistence false\n")
    broker = subprocess.Popen(
        [*netns.prefix(), "/usr/sbin/mosquitto", "-c", str(conf)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        db = f"sqlite:///{workdir / 'origincast.db'}"
        env = server_env(db, port, ORIGINCAST_MQTT_URL=f"mqtt://127.0.0.1:{mqtt_port}")
        prepare(db, env)
        log_path = workdir / "serve.log"
        with log_path.open("wb") as log:
            proc = subprocess.Popen(
                [*netns.prefix(), sys.executable, "-m", "web", "serve"],
                cwd=workdir, env=env, stdout=log, stderr=subprocess.STDOUT,
            )  # fmt: skip
        srv = LiveServer(f"http://localhost:{port}", port, mqtt_port, netns, log_path)
        try:
            wait_healthy(netns, port, proc)
            deadline = time.monotonic() + 20
            while netns.http_get(f"http://127.0.0.1:{port}/readyz")[0] != 200:
                assert time.monotonic() < deadline, srv.log_tail()
                time.sleep(0.2)
            yield srv
        finally:
            code = stop_process(proc)
        assert code == 0, f"serve exited with {code}:\n{srv.log_tail()}"
    finally:
        broker.terminate()
        broker.wait(10)


def add_stream(workdir: Path, env: dict[str, str], slug: str, title: str, site: str) -> None:
    """`origincast streams add`, as an operator runs it."""
    out = subprocess.run(
        [sys.executable, "-m", "web", "streams", "add", slug, "--title", title, "--site", site],
        cwd=workdir, env=env, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr


# The text of an element includes a string: ``wait_js(page, HAS_TEXT, [selector, text], …)``.
HAS_TEXT = "([sel, s]) => (document.querySelector(sel)?.textContent || '').includes(s)"


def wait_js(
    page: Page, expr: str, arg: object, timeout_s: float, what: str, show: tuple[str, ...] = ("main",)
) -> None:
    """Wait for a JS predicate; on time-out, fail saying what the page shows in ``show``."""
    try:
        page.wait_for_function(expr, arg=arg, timeout=timeout_s * 1000, polling=50)
    except PlaywrightTimeout:
        said = {sel: page.locator(sel).first.inner_text()[:1500] for sel in show if page.locator(sel).count()}
        raise AssertionError(f"{what} not within {timeout_s} s; the page says {said!r}") from None
