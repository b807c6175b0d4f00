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
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from playwright.sync_api import Browser, sync_playwright

from tests.support.processes import REPO

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
