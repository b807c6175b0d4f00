"""WHEP with the fast sender (packetized once per stream, thin per-viewer send path).

Real aiortc viewers in this process, on loopback only (ICE offers 127.0.0.1, no STUN):
they decode the test pattern with its expected size and advancing clock, a packet the
viewer drops is recovered through NACK and RTX, and a PLI reaches the stream's
rate-limited keyframe request.
"""

from __future__ import annotations

import asyncio
import contextlib
import struct
import time
from dataclasses import dataclass, field

import pytest
from aiortc import RTCConfiguration, RTCPeerConnection, RTCSessionDescription
from aiortc.mediastreams import MediaStreamError

from stream.ice import host_addresses
from stream.rtp.sender import FastRtpSender
from stream.sources.testpattern import decode_wallclock
from web.app import STREAM_HUB, WHEP, build_app
from web.config import load_config

pytestmark = pytest.mark.timeout(60)

WIDTH, HEIGHT = 640, 360
SDP = {"Content-Type": "application/sdp"}


@pytest.fixture
async def client(aiohttp_client, sqlite_url):
    config = load_config(
        env={
            "ORIGINCAST_DATABASE_URL": sqlite_url,
            "ORIGINCAST_STREAM_ICE_HOST_ADDRESSES": "127.0.0.1",
            "ORIGINCAST_STREAM_DEMO_TEST_PATTERN": "true",
            "ORIGINCAST_STREAM_TEST_PATTERN_WIDTH": str(WIDTH),
            "ORIGINCAST_STREAM_TEST_PATTERN_HEIGHT": str(HEIGHT),
            "ORIGINCAST_STREAM_VIDEO_BITRATE_BPS": "800000",
            "ORIGINCAST_STREAM_FAST_SENDER": "true",
        }
    )
    assert config.stream.fast_sender
    c = await aiohttp_client(build_app(config, with_ingest=False))
    for _ in range(100):
        stream = c.app[STREAM_HUB].get("demo")
        if stream is not None and stream.live:
            break
        await asyncio.sleep(0.05)
    return c


@dataclass
class Viewer:
    pc: RTCPeerConnection
    frames: list[tuple[int, int, float]] = field(default_factory=list)
    audio_frames: int = 0
    tasks: list[asyncio.Task[None]] = field(default_factory=list)

    async def read(self, track) -> None:
        with contextlib.suppress(MediaStreamError):
            while True:
                frame = await track.recv()
                with contextlib.suppress(ValueError):
                    clock = decode_wallclock(frame.to_ndarray(format="gray"))
                    self.frames.append((frame.width, frame.height, clock))

    async def read_audio(self, track) -> None:
        with contextlib.suppress(MediaStreamError):
            while True:
                await track.recv()
                self.audio_frames += 1

    async def wait_frames(self, n: int, within_s: float = 10.0) -> None:
        deadline = time.monotonic() + within_s
        while len(self.frames) < n:
            assert time.monotonic() < deadline, f"only {len(self.frames)} frames in {within_s} s"
            await asyncio.sleep(0.05)

    async def close(self) -> None:
        for task in self.tasks:
            task.cancel()
        await self.pc.close()


async def watch(client) -> Viewer:
    pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
    pc.addTransceiver("video", direction="recvonly")
    pc.addTransceiver("audio", direction="recvonly")
    viewer = Viewer(pc)

    @pc.on("track")
    def on_track(track) -> None:
        viewer.tasks.append(
            asyncio.ensure_future((viewer.read if track.kind == "video" else viewer.read_audio)(track))
        )

    with host_addresses(("127.0.0.1",)):
        await pc.setLocalDescription(await pc.createOffer())
    r = await client.post("/whep/demo", data=pc.localDescription.sdp, headers=SDP)
    assert r.status == 201, await r.text()
    await pc.setRemoteDescription(RTCSessionDescription(sdp=await r.text(), type="answer"))
    return viewer


def senders(client) -> list[FastRtpSender]:
    out = []
    for session in client.app[WHEP].sessions("demo"):
        for t in session.peer_connection.getTransceivers():
            assert isinstance(t.sender, FastRtpSender), type(t.sender)
            out.append(t.sender)
    return out


async def test_fast_viewers_decode_the_live_picture(client):
    viewers = [await watch(client), await watch(client)]
    try:
        for v in viewers:
            await v.wait_frames(30)
        for v in viewers:
            assert {(w, h) for w, h, _ in v.frames} == {(WIDTH, HEIGHT)}
            clocks = [c for _, _, c in v.frames]
            assert clocks == sorted(clocks) and clocks[-1] - clocks[0] > 0.5
            assert abs(clocks[-1] - time.time()) < 2.0  # live, not a replay
        ss = senders(client)
        assert ss and all(s.fast_packets > 0 for s in ss if s.kind == "video")
        # After their first frames the senders are called by the fan-out directly.
        assert all(s.direct_frames > 0 for s in ss if s.kind == "video")
        cache = client.app[STREAM_HUB].get("demo").payloads
        assert cache.hits > 0  # the second viewer reused the first one's payloads
        stats = await ss[0].getStats()
        outbound = [s for s in stats.values() if s.type == "outbound-rtp"]
        assert outbound and outbound[0].packetsSent > 0 and outbound[0].bytesSent > 0
    finally:
        for v in viewers:
            await v.close()


async def test_a_dropped_packet_is_recovered_by_nack_and_rtx(client):
    viewer = await watch(client)
    try:
        await viewer.wait_frames(3)
        receiver = next(t.receiver for t in viewer.pc.getTransceivers() if t.kind == "video")
        original = receiver._handle_rtp_packet
        state: dict[str, object] = {"media_ssrc": None, "target": None, "rtx_osn": []}

        async def lossy(packet, arrival_time_ms):
            if state["media_ssrc"] is None:
                state["media_ssrc"] = packet.ssrc
            if packet.ssrc == state["media_ssrc"]:
                if state["target"] is None:
                    state["target"] = (packet.sequence_number + 5) & 0xFFFF
                if packet.sequence_number == state["target"] and not state.get("dropped"):
                    state["dropped"] = True
                    return  # lost on the way
            elif len(packet.payload) >= 2:
                state["rtx_osn"].append(struct.unpack_from("!H", packet.payload)[0])  # type: ignore[union-attr]
            await original(packet, arrival_time_ms)

        receiver._handle_rtp_packet = lossy
        deadline = time.monotonic() + 10
        while state["target"] not in state["rtx_osn"]:  # type: ignore[operator]
            assert time.monotonic() < deadline, f"no RTX for {state['target']}: {state}"
            await asyncio.sleep(0.05)
        assert state.get("dropped")
        n = len(viewer.frames)
        await viewer.wait_frames(n + 10)  # and the picture goes on
    finally:
        await viewer.close()


async def test_pli_reaches_the_streams_keyframe_request(client):
    viewer = await watch(client)
    try:
        await viewer.wait_frames(3)
        stream = client.app[STREAM_HUB].get("demo")
        limiter = stream._keyframes
        before = limiter.forwarded + limiter.suppressed
        receiver = next(t.receiver for t in viewer.pc.getTransceivers() if t.kind == "video")
        (sender,) = [s for s in senders(client) if s.kind == "video"]
        await receiver._send_rtcp_pli(sender._ssrc)
        deadline = time.monotonic() + 5
        while limiter.forwarded + limiter.suppressed == before:
            assert time.monotonic() < deadline, "the PLI did not reach the keyframe request"
            await asyncio.sleep(0.02)
    finally:
        await viewer.close()


async def test_leaving_viewer_stops_its_fast_senders(client):
    viewer = await watch(client)
    await viewer.wait_frames(3)
    (session,) = client.app[WHEP].sessions("demo")
    ss = senders(client)
    r = await client.delete(f"/whep/demo/{session.id}")
    assert r.status in (200, 204)
    await viewer.close()
    assert client.app[WHEP].sessions("demo") == []
    assert all(s.track is None for s in ss)
