"""WHIP interop with a publisher that is neither aiortc nor a browser: GStreamer's webrtcbin.

Debian 12's GStreamer 1.22 has ``webrtcbin`` but not the ``whipsink`` element
(gst-plugins-rs is not packaged), so ``GST_PUBLISHER`` below drives webrtcbin the way
GStreamer's WHIP elements and many camera boxes do: ``videotestsrc ! x264enc !
rtph264pay ! webrtcbin``, offer POSTed with the Bearer key, answer applied, DELETE at
the end. It runs under Debian's own ``/usr/bin/python3`` with ``python3-gi`` (PyGObject
is not in the venv). webrtcbin's certificate is RSA: this is the publisher that needs
our ``a=setup:passive`` answer (FACTS.md, "no shared cipher").

Its ICE agent gathers on 127.0.0.1 only (libnice ``add_local_address``); our side is
configured the same way, so every packet stays on loopback.

Debian packages (scripts/test.sh installs them): gstreamer1.0-plugins-base (videotestsrc,
videoconvert), -good (rtph264pay), -bad (webrtcbin, dtls, srtp), -ugly (x264enc),
gstreamer1.0-nice (libnice ICE for webrtcbin), python3-gi, gir1.2-gstreamer-1.0,
gir1.2-gst-plugins-base-1.0, gir1.2-gst-plugins-bad-1.0 (GstWebRTC), gir1.2-nice-0.1.
A missing one makes the test fail with the reason; nothing here skips.
"""

from __future__ import annotations

import asyncio
import signal
import subprocess
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient

from tests.integration.test_whip import ADMIN, create_stream, stream_state, wait_for, watch
from web.app import STREAM_HUB, WHIP, build_app
from web.config import load_config

SYSTEM_PYTHON = "/usr/bin/python3"
GST_WIDTH, GST_HEIGHT = 640, 360
# What the publisher needs, checked before the run so a missing package is named.
_PREFLIGHT = """
import gi
for ns, v in [("Gst", "1.0"), ("GstWebRTC", "1.0"), ("GstSdp", "1.0"), ("Nice", "0.1")]:
    gi.require_version(ns, v)
from gi.repository import Gst
Gst.init(None)
missing = [e for e in ("webrtcbin", "videotestsrc", "videoconvert", "x264enc", "rtph264pay",
                       "nicesrc", "dtlssrtpenc", "srtpenc") if Gst.ElementFactory.find(e) is None]
print("missing elements: " + ", ".join(missing) if missing else "ok")
"""
_PACKAGES = (
    "gstreamer1.0-plugins-base gstreamer1.0-plugins-good gstreamer1.0-plugins-bad "
    "gstreamer1.0-plugins-ugly gstreamer1.0-nice python3-gi gir1.2-gst-plugins-bad-1.0 gir1.2-nice-0.1"
)

GST_PUBLISHER = r'''"""A WHIP publisher built on GStreamer's webrtcbin (Debian's python3 + python3-gi).

videotestsrc ! x264enc ! rtph264pay ! webrtcbin; the offer is POSTed to a WHIP endpoint
with a Bearer key, the answer applied, and the pipeline runs for --seconds, then the
session is DELETEd. ICE gathers on --ice-address only (tests: 127.0.0.1). Prints
"connected" when ICE+DTLS are up and exits 0 after a clean run, 1 with a reason.
"""

import argparse
import os
import sys
import threading
import urllib.error
import urllib.parse
import urllib.request

import gi

gi.require_version("Gst", "1.0")
gi.require_version("GstWebRTC", "1.0")
gi.require_version("GstSdp", "1.0")
gi.require_version("Nice", "0.1")
from gi.repository import GLib, Gst, GstSdp, GstWebRTC, Nice  # noqa: E402


def log(*args):
    print(*args, flush=True)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--url", required=True)
    ap.add_argument("--key", required=True)
    ap.add_argument("--width", type=int, default=640)
    ap.add_argument("--height", type=int, default=360)
    ap.add_argument("--seconds", type=float, default=10.0)
    ap.add_argument("--ice-address", default="127.0.0.1")
    args = ap.parse_args()

    Gst.init(None)
    pipe = Gst.parse_launch(
        "webrtcbin name=wb bundle-policy=max-bundle "
        "videotestsrc is-live=true pattern=ball ! "
        f"video/x-raw,width={args.width},height={args.height},framerate=30/1 ! videoconvert ! "
        "x264enc tune=zerolatency speed-preset=ultrafast key-int-max=30 bitrate=800 ! "
        "video/x-h264,profile=constrained-baseline ! "
        "rtph264pay config-interval=-1 pt=102 aggregate-mode=zero-latency ! "
        "application/x-rtp,media=video,encoding-name=H264,payload=102,clock-rate=90000 ! wb."
    )
    wb = pipe.get_by_name("wb")
    # Hold the ICE object for the whole run: PyGObject drops a reference it never took
    # when the wrapper of this property is freed, which destroys webrtcbin's ICE agent.
    ice = wb.get_property("ice-agent")
    agent = ice.get_property("agent")
    address = Nice.Address.new()
    address.set_from_string(args.ice_address)
    agent.add_local_address(address)  # only this address: keeps ICE where the test wants it

    loop = GLib.MainLoop()
    result = {"code": 1, "reason": "did not finish"}
    location = {}

    def fail(reason):
        result.update(code=1, reason=reason)
        loop.quit()

    def post_offer(sdp_text):
        req = urllib.request.Request(
            args.url,
            data=sdp_text.encode(),
            method="POST",
            headers={"Content-Type": "application/sdp", "Authorization": f"Bearer {args.key}"},
        )
        try:
            with urllib.request.urlopen(req, timeout=20) as resp:
                if resp.status != 201:
                    return None, f"POST answered {resp.status}"
                location["url"] = urllib.parse.urljoin(args.url, resp.headers["Location"])
                return resp.read().decode(), None
        except urllib.error.HTTPError as exc:
            return None, f"POST answered {exc.code}: {exc.read().decode(errors='replace')}"
        except OSError as exc:
            return None, f"POST failed: {exc}"

    def on_gathering(*_):
        if wb.get_property("ice-gathering-state") != GstWebRTC.WebRTCICEGatheringState.COMPLETE:
            return
        offer = wb.get_property("local-description").sdp.as_text()
        for line in offer.splitlines():
            if line.startswith("a=candidate:"):
                log("offer candidate:", line)

        def work():
            answer, err = post_offer(offer)
            if err:
                GLib.idle_add(fail, err)
                return
            GLib.idle_add(set_answer, answer)

        threading.Thread(target=work, daemon=True).start()

    def set_answer(answer):
        res, msg = GstSdp.SDPMessage.new_from_text(answer)
        desc = GstWebRTC.WebRTCSessionDescription.new(GstWebRTC.WebRTCSDPType.ANSWER, msg)
        wb.emit("set-remote-description", desc, Gst.Promise.new())
        log("answer set:", [ln for ln in answer.splitlines() if ln.startswith("a=setup")])
        return False

    def on_offer(promise, _data):
        reply = promise.get_reply()
        offer = reply.get_value("offer")
        wb.emit("set-local-description", offer, Gst.Promise.new())

    def on_negotiation_needed(_wb):
        promise = Gst.Promise.new_with_change_func(on_offer, None)
        wb.emit("create-offer", None, promise)

    def on_state(*_):
        st = wb.get_property("connection-state")
        log("connection-state", st.value_nick)
        if st == GstWebRTC.WebRTCPeerConnectionState.CONNECTED:
            log("connected")
            GLib.timeout_add(int(args.seconds * 1000), finish)
        elif st == GstWebRTC.WebRTCPeerConnectionState.FAILED:
            fail("connection failed (ICE or DTLS)")

    def finish():
        req = urllib.request.Request(
            location["url"], method="DELETE", headers={"Authorization": f"Bearer {args.key}"}
        )
        try:
            with urllib.request.urlopen(req, timeout=10) as resp:
                status = resp.status
        except urllib.error.HTTPError as exc:
            status = exc.code
        log("DELETE", status)
        if status == 204:
            result.update(code=0, reason="ok")
        else:
            result.update(code=1, reason=f"DELETE answered {status}")
        loop.quit()
        return False

    def on_message(_bus, msg):
        if msg.type == Gst.MessageType.ERROR:
            err, dbg = msg.parse_error()
            fail(f"GStreamer error: {err.message} ({dbg})")

    wb.connect("on-negotiation-needed", on_negotiation_needed)
    wb.connect("notify::ice-gathering-state", on_gathering)
    wb.connect("notify::connection-state", on_state)
    bus = pipe.get_bus()
    bus.add_signal_watch()
    bus.connect("message", on_message)

    pipe.set_state(Gst.State.PLAYING)
    # The transceiver exists once the payloader is linked: publish only (WHIP).
    trans = wb.emit("get-transceiver", 0)
    if trans is not None:
        trans.set_property("direction", GstWebRTC.WebRTCRTPTransceiverDirection.SENDONLY)
    GLib.timeout_add(int((args.seconds + 30) * 1000), lambda: fail("timed out") or False)
    loop.run()
    pipe.set_state(Gst.State.NULL)
    log("result:", result["reason"])
    sys.stdout.flush()
    # os._exit: skip interpreter teardown, where PyGObject would drop the ICE object's
    # reference a second time (a harmless but alarming CRITICAL in the log).
    os._exit(result["code"])


if __name__ == "__main__":
    main()
'''


@pytest.fixture(scope="module")
def gst_publisher(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The publisher script, after checking Debian's GStreamer can run it."""
    if not Path(SYSTEM_PYTHON).exists():
        pytest.fail(f"{SYSTEM_PYTHON} not found: the GStreamer publisher runs under Debian's python3")
    check = subprocess.run(
        [SYSTEM_PYTHON, "-c", _PREFLIGHT], capture_output=True, text=True, timeout=60, check=False
    )
    if check.returncode != 0 or check.stdout.strip() != "ok":
        pytest.fail(
            "GStreamer's webrtcbin is not usable from Debian's python3"
            f" ({(check.stdout + check.stderr).strip()[-400:]}); install: apt-get install -y {_PACKAGES}"
        )
    path = tmp_path_factory.mktemp("gst") / "gst_whip_publisher.py"
    path.write_text(GST_PUBLISHER)
    return path


@pytest.fixture
async def client(aiohttp_client: Any, sqlite_url: str) -> AsyncIterator[TestClient]:
    config = load_config(
        env={
            "ORIGINCAST_DATABASE_URL": sqlite_url,
            "ORIGINCAST_ADMIN_TOKEN": ADMIN,
            "ORIGINCAST_STREAM_ICE_HOST_ADDRESSES": "127.0.0.1",
        }
    )
    yield await aiohttp_client(build_app(config, with_ingest=False))


class GstProcess:
    """The publisher as a child process; its output kept for the assertion messages."""

    def __init__(self, script: Path, url: str, key: str, seconds: float) -> None:
        self.args = [
            SYSTEM_PYTHON,
            str(script),
            f"--url={url}",
            # "=": a key may begin with "-" (token_urlsafe), which argparse would read as an option.
            f"--key={key}",
            "--width",
            str(GST_WIDTH),
            "--height",
            str(GST_HEIGHT),
            "--seconds",
            str(seconds),
        ]
        self.proc: asyncio.subprocess.Process | None = None
        self.lines: list[str] = []
        self._reader: asyncio.Task[None] | None = None

    async def start(self) -> None:
        self.proc = await asyncio.create_subprocess_exec(
            *self.args, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT
        )
        self._reader = asyncio.create_task(self._read())

    async def _read(self) -> None:
        assert self.proc is not None and self.proc.stdout is not None
        async for raw in self.proc.stdout:
            self.lines.append(raw.decode(errors="replace").rstrip())

    @property
    def output(self) -> str:
        return "\n".join(self.lines[-40:])

    async def wait(self, limit_s: float) -> int:
        assert self.proc is not None and self._reader is not None
        async with asyncio.timeout(limit_s):
            code = await self.proc.wait()
            await self._reader
        return code

    def kill(self) -> None:
        """SIGKILL this one child (by its own pid): a camera losing power, no DELETE, no BYE."""
        if self.proc is not None and self.proc.returncode is None:
            self.proc.send_signal(signal.SIGKILL)


async def test_gstreamer_webrtcbin_publishes_h264(client: TestClient, gst_publisher: Path) -> None:
    key = await create_stream(client, "gst")
    gst = GstProcess(gst_publisher, str(client.make_url("/whip/gst")), key, seconds=6.0)
    await gst.start()
    try:

        async def live() -> bool:
            if gst.proc is not None and gst.proc.returncode is not None:
                raise AssertionError(f"publisher exited early:\n{gst.output}")
            return (await stream_state(client, "gst"))["status"] == "live"

        await wait_for(live, limit_s=20)
        frames = await watch(client, "gst", 20)
        assert {(w, h) for w, h, _ in frames} == {(GST_WIDTH, GST_HEIGHT)}, gst.output
        state = await stream_state(client, "gst")
        assert (state["width"], state["height"], state["video_codec"]) == (GST_WIDTH, GST_HEIGHT, "H264")
        assert state["fps"] > 10

        assert await gst.wait(30) == 0, gst.output
    finally:
        gst.kill()
    out = gst.output
    assert "answer set: ['a=setup:passive']" in out, out  # aiortc as the DTLS server
    candidates = [ln for ln in gst.lines if ln.startswith("offer candidate:")]
    assert candidates and all(" 127.0.0.1 " in ln for ln in candidates), out  # loopback only
    assert "DELETE 204" in out and "connected" in out
    assert client.app[WHIP].sessions() == [] and client.app[STREAM_HUB].publisher("gst") is None
    assert (await stream_state(client, "gst"))["status"] == "offline"


async def test_gstreamer_publisher_killed_goes_offline(client: TestClient, gst_publisher: Path) -> None:
    """No DELETE and no RTCP BYE: the source notices the silence and lets the stream go."""
    key = await create_stream(client, "cam")
    gst = GstProcess(gst_publisher, str(client.make_url("/whip/cam")), key, seconds=60.0)
    await gst.start()
    try:

        async def live() -> bool:
            if gst.proc is not None and gst.proc.returncode is not None:
                raise AssertionError(f"publisher exited early:\n{gst.output}")
            return (await stream_state(client, "cam"))["status"] == "live"

        await wait_for(live, limit_s=20)
    finally:
        gst.kill()
    await gst.wait(10)
    t0 = time.monotonic()

    async def released() -> bool:
        return client.app[WHIP].sessions() == [] and client.app[STREAM_HUB].publisher("cam") is None

    # media_timeout_s (10 s) without a frame, or ICE consent failing, whichever is first.
    await wait_for(released, limit_s=25)
    assert time.monotonic() - t0 < 20
    assert (await stream_state(client, "cam"))["status"] == "offline"
