"""RTSP pull (stream.sources.rtsp) against a real RTSP server that is not ours: Debian's
GStreamer RTSP server, driven by tests/support/rtsp_server.py under Debian's python3.

Nothing here skips: without GStreamer (see APT_PACKAGES in scripts/test.sh) the server
fixture fails, with the server's own words as the reason.
"""

from __future__ import annotations

import array
import asyncio
import itertools
import logging
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path

import av
import pytest

from stream.packets import MediaPacket
from stream.settings import StreamSettings
from stream.sources.rtsp import H264ParameterSets, RtspSource, RtspStatus, _SourceClock, _Timeline, mask_url

REPO = Path(__file__).resolve().parents[2]
SERVER_SCRIPT = REPO / "tests" / "support" / "rtsp_server.py"
# Debian's interpreter, where python3-gi and the GStreamer typelibs live; the venv has neither.
SYSTEM_PYTHON = "/usr/bin/python3"
USER, PASSWORD = "cam-admin", "S3cret-pass"
FAST = StreamSettings(rtsp_reconnect_min_s=0.2, rtsp_reconnect_max_s=1.0)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class RtspServer:
    """tests/support/rtsp_server.py as a child process on 127.0.0.1:port."""

    def __init__(self, port: int, user: str | None = None, password: str | None = None) -> None:
        self.port = port
        self.args = [SYSTEM_PYTHON, str(SERVER_SCRIPT), "--port", str(port)]
        if user:
            self.args += ["--user", user, "--password", password or ""]
        self.proc: subprocess.Popen[str] | None = None
        self.output: list[str] = []

    def start(self, timeout: float = 20.0) -> None:
        deadline = time.monotonic() + timeout
        while True:
            if self._start_once(max(1.0, deadline - time.monotonic())):
                return
            # The port may still be held for a moment after a kill: try again until the
            # deadline. Anything else (no gi, no GStreamer element) fails at once.
            port_busy = any("cannot listen" in line for line in self.output[-3:])
            if not port_busy or time.monotonic() > deadline:
                raise AssertionError(
                    f"GStreamer RTSP server did not start ({' '.join(self.args)}):\n"
                    + "\n".join(self.output[-30:])
                )
            time.sleep(0.3)

    def _start_once(self, timeout: float) -> bool:
        try:
            proc = subprocess.Popen(
                self.args, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=REPO
            )
        except OSError as e:
            self.output.append(f"cannot run {SYSTEM_PYTHON}: {e}")
            return False
        ready = threading.Event()

        def pump() -> None:
            assert proc.stdout is not None
            for line in proc.stdout:
                self.output.append(line.rstrip())
                if line.startswith("READY"):
                    ready.set()

        threading.Thread(target=pump, daemon=True).start()
        while not ready.wait(0.1):
            if proc.poll() is not None or timeout <= 0:
                proc.kill()
                proc.wait(5)
                return False
            timeout -= 0.1
        self.proc = proc
        return True

    def kill(self) -> None:
        """SIGKILL: the camera loses power, no RTSP TEARDOWN, the TCP connection just dies."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(10)
        self.proc = None

    def url(self, path: str, user: str | None = None, password: str | None = None) -> str:
        cred = f"{user}:{password}@" if user else ""
        return f"rtsp://{cred}127.0.0.1:{self.port}{path}"


@pytest.fixture(scope="module")
def camera() -> Iterator[RtspServer]:
    server = RtspServer(free_port())
    server.start()
    yield server
    server.kill()


@dataclass
class Run:
    source: RtspSource
    packets: list[MediaPacket] = field(default_factory=list)
    statuses: list[RtspStatus] = field(default_factory=list)

    @property
    def video(self) -> list[MediaPacket]:
        return [p for p in self.packets if p.kind == "video"]

    @property
    def audio(self) -> list[MediaPacket]:
        return [p for p in self.packets if p.kind == "audio"]


async def wait_for(predicate: Callable[[], bool], limit_s: float, what: str, run: Run | None = None) -> None:
    deadline = time.monotonic() + limit_s
    while not predicate():
        if time.monotonic() > deadline:
            detail = f"; status: {run.source.status}" if run else ""
            raise AssertionError(f"timed out after {limit_s:.0f} s waiting for {what}{detail}")
        await asyncio.sleep(0.05)


def start_run(url: str, settings: StreamSettings = FAST, **kw: object) -> Run:
    packets: list[MediaPacket] = []
    statuses: list[RtspStatus] = []
    source = RtspSource(
        url, packets.append, settings, asyncio.get_running_loop(), on_status=statuses.append, **kw
    )  # type: ignore[arg-type]
    return Run(source, packets, statuses)


def nal_types(data: bytes) -> list[int]:
    types = []
    i = data.find(b"\x00\x00\x01")
    while i >= 0:
        types.append(data[i + 3] & 0x1F)
        i = data.find(b"\x00\x00\x01", i + 3)
    return types


def decode_video(packets: list[MediaPacket]) -> list[av.VideoFrame]:
    """A fresh decoder without extradata, as a viewer that joins mid-stream has."""
    codec = av.CodecContext.create("h264", "r")
    frames: list[av.VideoFrame] = []
    for p in packets:
        frames += codec.decode(av.Packet(bytes(p.packet)))
    frames += codec.decode(None)
    return frames


def assert_strictly_increasing(packets: list[MediaPacket], what: str) -> None:
    pts = [p.pts for p in packets]
    bad = [(i, a, b) for i, (a, b) in enumerate(itertools.pairwise(pts)) if b <= a]
    assert not bad, f"{what} pts not strictly increasing at {bad[:5]}"


# ---------------------------------------------------------------------------------------


async def test_h264_passthrough_keyframes_carry_sps_pps_and_decode(camera: RtspServer) -> None:
    """/h264 sends SPS/PPS only in the SDP: every keyframe we publish must carry them."""
    run = start_run(camera.url("/h264"))
    await run.source.start()
    try:
        await wait_for(lambda: sum(p.keyframe for p in run.video) >= 3, 20, "3 keyframes", run)
    finally:
        await run.source.stop()

    st = run.source.status
    assert (st.video_codec, st.width, st.height) == ("h264", 640, 360)
    assert any(s.state == "live" for s in run.statuses)
    assert run.source.kind == "rtsp" and not run.source.has_audio
    video = run.video
    assert not run.audio
    for p in video:
        types = nal_types(bytes(p.packet))
        assert p.packet.time_base == Fraction(1, 90_000)
        if p.keyframe:
            assert p.packet.is_keyframe
            idr = types.index(5)
            assert 7 in types[:idr] and 8 in types[:idr], f"keyframe without SPS/PPS first: {types}"
            assert types.count(7) == 1 and types.count(8) == 1, types
        else:
            assert 5 not in types
    assert_strictly_increasing(video, "video")
    steps = sorted(b.pts - a.pts for a, b in itertools.pairwise(video))
    assert 2_700 <= steps[len(steps) // 2] <= 3_300, "30 fps at 90 kHz is 3000 ticks a frame"

    # A viewer joining at the second keyframe (no extradata, no earlier packets) decodes.
    keys = [i for i, p in enumerate(video) if p.keyframe]
    frames = decode_video(video[keys[1] :])
    assert len(frames) == len(video) - keys[1]
    assert {(f.width, f.height) for f in frames} == {(640, 360)}


async def test_inband_parameter_sets_pass_without_duplicates(camera: RtspServer) -> None:
    run = start_run(camera.url("/h264-inband"))
    await run.source.start()
    try:
        await wait_for(lambda: sum(p.keyframe for p in run.video) >= 2, 20, "2 keyframes", run)
    finally:
        await run.source.stop()
    for p in run.video:
        if p.keyframe:
            types = nal_types(bytes(p.packet))
            assert types.count(7) == 1 and types.count(8) == 1 and types.index(8) < types.index(5), types
    keys = [i for i, p in enumerate(run.video) if p.keyframe]
    frames = decode_video(run.video[keys[-1] :])
    assert frames and {(f.width, f.height) for f in frames} == {(640, 360)}


@pytest.mark.parametrize(
    ("path", "codec", "mode"),
    [
        ("/h264-pcma", "pcm_alaw", "transcode to opus"),
        ("/h264-aac", "aac", "transcode to opus"),
        ("/h264-opus", "opus", "passthrough"),
    ],
)
async def test_camera_audio_arrives_as_opus(camera: RtspServer, path: str, codec: str, mode: str) -> None:
    run = start_run(camera.url(path))
    await run.source.start()
    try:
        await wait_for(lambda: len(run.audio) >= 100 and len(run.video) >= 30, 20, "2 s of audio", run)
    finally:
        await run.source.stop()
    st = run.source.status
    assert (st.audio_codec, st.audio_mode) == (codec, mode)
    assert run.source.has_audio
    audio = run.audio
    assert all(p.packet.time_base == Fraction(1, 48_000) for p in audio)
    assert_strictly_increasing(audio, "audio")

    decoder = av.CodecContext.create("opus", "r")
    samples = 0
    peak = 0.0
    for p in audio:
        for frame in decoder.decode(av.Packet(bytes(p.packet))):
            assert frame.sample_rate == 48_000
            samples += frame.samples
            assert frame.format.name == "fltp"  # libavcodec's Opus decoder: float planes
            pcm = array.array("f", bytes(frame.planes[0])[: 4 * frame.samples])
            peak = max(peak, max(abs(x) for x in pcm))
    # ≥ 90 % of the audio the packets' timestamps span came out of the decoder.
    span = audio[-1].pts - audio[0].pts
    assert samples >= 0.9 * span, (samples, span)
    assert peak > 0.05, "the server sends a 440 Hz tone at 0.3 volume, not silence"


async def test_h265_is_reported_unsupported_not_a_crash(camera: RtspServer) -> None:
    run = start_run(camera.url("/h265"))
    await run.source.start()
    try:
        await wait_for(lambda: run.source.status.state == "error", 15, "an error status", run)
        st = run.source.status
        assert "H.265" in st.message and "unsupported" in st.message and "H.264" in st.message
        assert st.video_codec == "hevc" and st.next_attempt_in_s is not None
    finally:
        await run.source.stop()
    assert not run.packets
    assert run.source.status.state == "stopped"


async def test_udp_transport(camera: RtspServer) -> None:
    run = start_run(camera.url("/h264"), transport="udp")
    await run.source.start()
    try:
        await wait_for(
            lambda: sum(p.keyframe for p in run.video) >= 1 and len(run.video) >= 30, 20, "video", run
        )
    finally:
        await run.source.stop()
    keys = [i for i, p in enumerate(run.video) if p.keyframe]
    assert {(f.width, f.height) for f in decode_video(run.video[keys[0] :])} == {(640, 360)}


async def test_camera_goes_away_and_comes_back() -> None:
    server = RtspServer(free_port())
    server.start()
    run = start_run(server.url("/h264-pcma"))
    try:
        await run.source.start()
        await wait_for(
            lambda: sum(p.keyframe for p in run.video) >= 1 and len(run.audio) > 20, 20, "live", run
        )
        server.kill()
        killed_at = len(run.packets)
        await wait_for(lambda: run.source.status.state == "reconnecting", 10, "reconnecting", run)
        # Let it fail a few times against a closed port: the backoff grows, capped at max.
        await asyncio.sleep(1.5)
        assert run.source.status.state == "reconnecting"
        assert "next attempt in" in run.source.status.message
        server.start()
        await wait_for(
            lambda: run.source.status.reconnects >= 1 and run.source.status.state == "live",
            20,
            "live again",
            run,
        )
        await wait_for(lambda: sum(p.keyframe for p in run.video[killed_at:]) >= 1, 10, "a new keyframe", run)
        await wait_for(lambda: len(run.packets) > killed_at + 60, 10, "packets after the reconnect", run)
    finally:
        await run.source.stop()
        server.kill()

    states = [s.state for s in run.statuses]
    first_reconnecting = states.index("reconnecting")
    assert "live" in states[:first_reconnecting] and "live" in states[first_reconnecting:]
    waits = [s.next_attempt_in_s for s in run.statuses if s.next_attempt_in_s is not None]
    assert len(waits) >= 2 and waits == sorted(waits) and max(waits) <= FAST.rtsp_reconnect_max_s
    assert waits[0] == FAST.rtsp_reconnect_min_s
    # Across the outage: video and audio timestamps keep going forward, by about the wall
    # time the camera was away (a pause for viewers, not a rewind).
    assert_strictly_increasing(run.video, "video")
    assert_strictly_increasing(run.audio, "audio")
    video = run.video
    gap = max(b.pts - a.pts for a, b in itertools.pairwise(video))
    wall = max(b.wallclock - a.wallclock for a, b in itertools.pairwise(video))
    assert gap >= 90_000 and abs(gap / 90_000 - wall) < 0.5, (gap, wall)
    # After the reconnect a fresh viewer decodes from the first new keyframe.
    after = video[len([p for p in run.packets[:killed_at] if p.kind == "video"]) :]
    first_key = next(i for i, p in enumerate(after) if p.keyframe)
    frames = decode_video(after[first_key:])
    assert frames and {(f.width, f.height) for f in frames} == {(640, 360)}


async def test_credentials_never_shown(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    server = RtspServer(free_port(), USER, PASSWORD)
    server.start()
    good = start_run(server.url("/h264", USER, PASSWORD))
    bad = start_run(server.url("/h264", USER, "wrong-" + PASSWORD))
    # Nothing listens there: connection refused, an FFmpeg error that echoes the URL.
    gone = start_run(f"rtsp://{USER}:{PASSWORD}@127.0.0.1:{free_port()}/h264")
    try:
        for run in (good, bad, gone):
            await run.source.start()
        await wait_for(lambda: len(good.video) >= 30, 20, "video with the right credentials", good)
        await wait_for(lambda: bad.source.status.state == "error", 10, "refused credentials", bad)
        await wait_for(lambda: gone.source.status.state == "reconnecting", 10, "refused connection", gone)
        assert "refused the credentials" in bad.source.status.message
        assert "401" in bad.source.status.message
        assert "refused" in gone.source.status.message.lower()
    finally:
        for run in (good, bad, gone):
            await run.source.stop()
        server.kill()
    assert not bad.packets and not gone.packets
    assert good.source.status.url == f"rtsp://***@127.0.0.1:{server.port}/h264"

    texts = [r.getMessage() for r in caplog.records] + [r.exc_text or "" for r in caplog.records]
    texts += [repr(s) for run in (good, bad, gone) for s in run.statuses]
    texts += [repr(run.source) for run in (good, bad, gone)]
    assert any("refused the credentials" in t for t in texts), "the log should say why"
    for secret in (PASSWORD, USER, f"{USER}:{PASSWORD}"):
        leaks = [t for t in texts if secret in t]
        assert not leaks, f"{secret!r} shown in: {leaks[:3]}"

    with pytest.raises(ValueError) as err:
        RtspSource(f"http://{USER}:{PASSWORD}@cam/x", lambda p: None, FAST)
    assert PASSWORD not in str(err.value) and "***@cam/x" in str(err.value)


async def test_silent_camera_times_out_and_stop_is_prompt() -> None:
    """A camera that accepts TCP and then says nothing must not hang the worker forever."""
    with socket.socket() as hole:
        hole.bind(("127.0.0.1", 0))
        hole.listen(8)
        run = start_run(f"rtsp://127.0.0.1:{hole.getsockname()[1]}/x", io_timeout_s=1.0)
        await run.source.start()
        try:
            await wait_for(lambda: "next attempt" in run.source.status.message, 10, "a timeout", run)
        finally:
            t0 = time.monotonic()
            await run.source.stop()
            assert time.monotonic() - t0 < 4.0
    assert run.source.status.state == "stopped"


# ---------------------------------------------------------------------------------------
# The pieces, on inputs a GStreamer test server does not produce.


def test_mask_url() -> None:
    assert mask_url("rtsp://user:pass@cam:554/Streaming/101") == "rtsp://***@cam:554/Streaming/101"
    assert mask_url("rtsp://cam/live") == "rtsp://cam/live"
    assert mask_url("rtsp://admin@cam/live") == "rtsp://***@cam/live"
    # Unescaped @ and / in a password: still nothing of it shown.
    assert mask_url("rtsp://admin:p@ss/w0rd@10.0.0.9/live") == "rtsp://***@10.0.0.9/live"
    assert "p%40ss" not in mask_url("rtsp://admin:p%40ss@cam/live")


def test_avcc_and_missing_parameter_sets() -> None:
    sps = bytes.fromhex("6742c01eda0280bfe5c05a83030352")
    pps = bytes.fromhex("68ce3c80")
    idr, p_slice = b"\x65\x88\x84\x00\x33", b"\x41\x9a\x22"
    avcc = bytes([1, 0x42, 0xC0, 0x1E, 0xFF, 0xE1]) + len(sps).to_bytes(2, "big") + sps
    avcc += bytes([1]) + len(pps).to_bytes(2, "big") + pps
    ps = H264ParameterSets(avcc)

    def lp(*nals: bytes) -> bytes:
        return b"".join(len(n).to_bytes(4, "big") + n for n in nals)

    out = ps.process(lp(idr))
    assert out is not None and out[1]
    assert out[0] == b"\x00\x00\x00\x01".join([b"", sps, pps, idr])
    out = ps.process(lp(p_slice))
    assert out == (b"\x00\x00\x00\x01" + p_slice, False)

    # No SPS/PPS known yet: nothing a viewer could decode is published; once they come in
    # band, later IDRs get them even where the camera leaves them out.
    fresh = H264ParameterSets(None)
    assert fresh.process(b"\x00\x00\x00\x01" + idr) is None
    assert fresh.process(b"\x00\x00\x00\x01" + sps + b"\x00\x00\x00\x01" + pps) is None  # no picture
    out = fresh.process(b"\x00\x00\x00\x01\x09\xf0\x00\x00\x00\x01" + idr)
    assert out is not None and nal_types(out[0]) == [9, 7, 8, 5]


def test_timeline_never_goes_backwards_on_camera_reset() -> None:
    tl = _Timeline(90_000, _SourceClock())
    tb = Fraction(1, 90_000)
    now = 1000.0
    out = []
    for ts in [*range(500_000, 600_000, 3000), *range(0, 30_000, 3000), *range(10**9, 10**9 + 30_000, 3000)]:
        now += 1 / 30
        out.append(tl.map(ts, tb, now, 3000))
    assert all(b > a for a, b in itertools.pairwise(out))
    steps = [b - a for a, b in itertools.pairwise(out)]
    # The reset (back to 0) and the jump (forward by hours) each cost one wall-clock step.
    assert max(steps) <= 3100, steps
