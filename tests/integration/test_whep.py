"""WHEP playback of the test pattern, with real aiortc viewers in this process.

ICE offers only 127.0.0.1 on both sides and no STUN server is configured, so no packet
leaves loopback. Frames are decoded and the wall clock written into each one is read
back, which proves the viewers see the live picture (and the same picture).
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import itertools
import time
from dataclasses import dataclass, field

import pytest
from aiortc import RTCConfiguration, RTCPeerConnection, RTCRtpSender, RTCSessionDescription
from aiortc.mediastreams import MediaStreamError

from stream.ice import host_addresses
from stream.sources.testpattern import decode_wallclock
from web.app import STREAM_HUB, WHEP, build_app
from web.config import load_config

pytestmark = pytest.mark.timeout(60)

WIDTH, HEIGHT = 640, 360
SDP = {"Content-Type": "application/sdp"}


def candidate_addresses(sdp: str) -> set[str]:
    return {line.split()[4] for line in sdp.splitlines() if line.startswith("a=candidate:")}


@pytest.fixture
def config(sqlite_url):
    return load_config(
        env={
            "ORIGINCAST_DATABASE_URL": sqlite_url,
            "ORIGINCAST_STREAM_ICE_HOST_ADDRESSES": "127.0.0.1",
            "ORIGINCAST_STREAM_DEMO_TEST_PATTERN": "true",
            "ORIGINCAST_STREAM_TEST_PATTERN_WIDTH": str(WIDTH),
            "ORIGINCAST_STREAM_TEST_PATTERN_HEIGHT": str(HEIGHT),
            "ORIGINCAST_STREAM_VIDEO_BITRATE_BPS": "800000",
        }
    )


@pytest.fixture
async def client(aiohttp_client, config):
    c = await aiohttp_client(build_app(config, with_ingest=False))
    hub = c.app[STREAM_HUB]
    for _ in range(100):  # the test pattern's first keyframe makes "demo" live
        stream = hub.get("demo")
        if stream is not None and stream.live:
            break
        await asyncio.sleep(0.05)
    return c


@dataclass
class Viewer:
    pc: RTCPeerConnection
    location: str = ""
    answer: str = ""
    frames: list[tuple[int, int, float]] = field(default_factory=list)  # width, height, clock
    unreadable: int = 0
    audio_frames: int = 0
    audio_level: float = 0.0  # loudest sample seen (the beep on each second)
    tasks: list[asyncio.Task[None]] = field(default_factory=list)

    async def read(self, track) -> None:
        with contextlib.suppress(MediaStreamError):
            while True:
                frame = await track.recv()
                try:
                    clock = decode_wallclock(frame.to_ndarray(format="gray"))
                except ValueError:
                    self.unreadable += 1
                    continue
                self.frames.append((frame.width, frame.height, clock))

    async def read_audio(self, track) -> None:
        with contextlib.suppress(MediaStreamError):
            while True:
                frame = await track.recv()
                self.audio_frames += 1
                self.audio_level = max(self.audio_level, float(abs(frame.to_ndarray()).max()))

    async def wait_frames(self, n: int, within_s: float = 10.0) -> None:
        deadline = time.monotonic() + within_s
        while len(self.frames) < n:
            assert time.monotonic() < deadline, f"only {len(self.frames)} frames in {within_s} s"
            await asyncio.sleep(0.05)

    async def close(self) -> None:
        for task in self.tasks:
            task.cancel()
        await self.pc.close()


async def make_offer(*kinds: str, codec: str | None = None) -> RTCPeerConnection:
    pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))  # [] : no public STUN server
    for kind in kinds:
        t = pc.addTransceiver(kind, direction="recvonly")
        if codec is not None and kind == "video":
            t.setCodecPreferences(
                [c for c in RTCRtpSender.getCapabilities("video").codecs if c.name == codec]
            )
    with host_addresses(("127.0.0.1",)):  # the test client stays on loopback too
        await pc.setLocalDescription(await pc.createOffer())
    return pc


async def watch(client, slug: str = "demo") -> Viewer:
    viewer = Viewer(await make_offer("video", "audio"))

    @viewer.pc.on("track")
    def on_track(track) -> None:
        reader = viewer.read if track.kind == "video" else viewer.read_audio
        viewer.tasks.append(asyncio.ensure_future(reader(track)))

    r = await client.post(f"/whep/{slug}", data=viewer.pc.localDescription.sdp, headers=SDP)
    assert r.status == 201, await r.text()
    assert r.headers["Content-Type"] == "application/sdp"
    assert r.headers["Access-Control-Expose-Headers"].startswith("Location, Link")
    viewer.location = r.headers["Location"]
    viewer.answer = await r.text()
    await viewer.pc.setRemoteDescription(RTCSessionDescription(sdp=viewer.answer, type="answer"))
    return viewer


def open_peer_connections() -> int:
    gc.collect()
    return sum(
        1 for o in gc.get_objects() if isinstance(o, RTCPeerConnection) and o.connectionState != "closed"
    )


async def test_view_test_pattern_and_leave(client):
    hub, whep = client.app[STREAM_HUB], client.app[WHEP]
    asked = time.monotonic()
    viewer = await watch(client)
    try:
        await viewer.wait_frames(1)
        # The GOP cache (or, without one, a keyframe request): no wait for the periodic keyframe.
        assert time.monotonic() - asked < 1.0
        assert candidate_addresses(viewer.pc.localDescription.sdp) == {"127.0.0.1"}
        assert candidate_addresses(viewer.answer) == {"127.0.0.1"}
        assert "H264" in viewer.answer and "packetization-mode=1" in viewer.answer
        assert "profile-level-id=42e01f" in viewer.answer
        assert "opus/48000/2" in viewer.answer and "a=inactive" not in viewer.answer

        await viewer.wait_frames(45)
        sizes = {(w, h) for w, h, _ in viewer.frames}
        clocks = [c for _, _, c in viewer.frames]
        assert sizes == {(WIDTH, HEIGHT)}
        assert viewer.unreadable == 0
        assert all(b > a for a, b in itertools.pairwise(clocks)), "clock must advance"
        assert clocks[-1] - clocks[0] >= 1.0
        # Glass-to-glass on one machine: encode, packetize, loopback, decode.
        assert time.time() - clocks[-1] < 1.0

        state = hub.get("demo").state()
        assert (state.status, state.width, state.height, state.video_codec) == ("live", WIDTH, HEIGHT, "H264")
        assert state.viewers == 1 and state.source == "test-pattern" and state.fps > 20
        assert state.audio_codec == "opus"
        assert viewer.audio_frames > 30  # 20 ms each: sound flows beside the picture
        for _ in range(30):  # the beep comes in the first 100 ms of every second
            if viewer.audio_level > 1000:
                break
            await asyncio.sleep(0.05)
        assert viewer.audio_level > 1000

        session = whep.sessions("demo")[0]
        assert viewer.location == f"/whep/demo/{session.id}"
        assert session.connection_state == "connected"

        # The viewer's PLIs reach the one encoder, once per keyframe_min_interval_s.
        stream = hub.get("demo")
        requests, keyframes = stream.state().keyframe_requests, stream.stats.keyframes
        media_ssrc = session.peer_connection.getTransceivers()[0].sender._ssrc
        receiver = viewer.pc.getTransceivers()[0].receiver
        for _ in range(5):
            await receiver._send_rtcp_pli(media_ssrc)
        for _ in range(40):
            if stream.stats.keyframes > keyframes:
                break
            await asyncio.sleep(0.01)
        assert stream.stats.keyframes > keyframes
        await asyncio.sleep(0.6)  # past the limiter's interval: no trailing request was owed
        assert stream.state().keyframe_requests == requests + 1

        before = open_peer_connections()

        r = await client.delete(viewer.location)
        assert r.status == 204
        assert hub.get("demo").viewers == 0
        assert whep.sessions() == []
        assert session.feed is not None and session.feed.closed
        assert session.connection_state == "closed"
        # Ours is closed at once; its DTLS close_notify then ends the viewer's side too.
        for _ in range(40):
            if open_peer_connections() == before - 2:
                break
            await asyncio.sleep(0.05)
        assert open_peer_connections() == before - 2

        r = await client.delete(viewer.location)
        assert r.status == 404
        assert "no WHEP session" in (await r.json())["error"]
    finally:
        await viewer.close()


async def test_several_viewers_receive_the_same_stream(client):
    hub, whep = client.app[STREAM_HUB], client.app[WHEP]
    viewers = await asyncio.gather(*(watch(client) for _ in range(3)))
    try:
        await asyncio.gather(*(v.wait_frames(40) for v in viewers))
        assert hub.get("demo").viewers == 3 and len(whep.sessions("demo")) == 3
        # One encode, shared packets: the frames carry the same clocks, viewer to viewer.
        seen = [{c for _, _, c in v.frames} for v in viewers]
        window = set.intersection(*seen)
        assert len(window) >= 25
        for s in seen:
            overlap = {c for c in s if min(window) <= c <= max(window)}
            assert overlap == window  # nobody saw a frame the others did not

        # One leaves; the others keep receiving.
        open_before = open_peer_connections()
        r = await client.delete(viewers[0].location)
        assert r.status == 204
        await viewers[0].close()
        assert hub.get("demo").viewers == 2 and len(whep.sessions()) == 2
        assert open_peer_connections() == open_before - 2  # its server side and its client
        counts = [len(v.frames) for v in viewers[1:]]
        await asyncio.sleep(0.5)
        assert all(len(v.frames) > n + 5 for v, n in zip(viewers[1:], counts, strict=True))
    finally:
        for v in viewers:
            await v.close()


async def test_bad_requests_get_4xx_with_a_message(client):
    hub = client.app[STREAM_HUB]
    good = await make_offer("video")
    offer = good.localDescription.sdp
    try:
        r = await client.post("/whep/nope", data=offer, headers=SDP)
        assert r.status == 404
        assert (await r.json()) == {"error": "no stream named 'nope'"}  # one shape for every endpoint

        hub.ensure("idle")  # known (the registry's hook would say so), nobody publishing
        r = await client.post("/whep/idle", data=offer, headers=SDP)
        assert r.status == 409 and r.headers["Retry-After"] == "2"
        assert "offline" in (await r.json())["error"]

        r = await client.post("/whep/demo", data=offer, headers={"Content-Type": "text/plain"})
        assert r.status == 415 and r.headers["Accept-Post"] == "application/sdp"
        assert "application/sdp" in (await r.json())["error"]

        for body, words in [
            ("", "empty offer"),
            ("hello", "not SDP"),
            ("v=0\r\nm=video\r\n", "unparseable"),
        ]:
            r = await client.post("/whep/demo", data=body, headers=SDP)
            assert r.status == 400, body
            assert words in (await r.json())["error"]

        audio_only = await make_offer("audio")
        vp8_only = await make_offer("video", codec="VP8")
        try:
            r = await client.post("/whep/demo", data=audio_only.localDescription.sdp, headers=SDP)
            assert r.status == 400 and "no video m-line" in (await r.json())["error"]
            r = await client.post("/whep/demo", data=vp8_only.localDescription.sdp, headers=SDP)
            assert r.status == 400 and "packetization-mode=1" in (await r.json())["error"]
        finally:
            await audio_only.close()
            await vp8_only.close()

        r = await client.delete("/whep/demo/not-a-session")
        assert r.status == 404
        r = await client.patch("/whep/demo/whatever", data="a=candidate:1", headers=SDP)
        assert r.status == 405 and "trickle" in (await r.json())["error"]
        assert client.app[WHEP].sessions() == [] and hub.get("demo").viewers == 0
    finally:
        await good.close()


async def test_cors_preflight_and_ice_server_links(aiohttp_client, sqlite_url):
    config = load_config(
        env={
            "ORIGINCAST_DATABASE_URL": sqlite_url,
            "ORIGINCAST_STREAM_ICE_HOST_ADDRESSES": "127.0.0.1",
            # Only announced to clients here: no peer connection is made in this test.
            "ORIGINCAST_STREAM_ICE_SERVERS": "stun:stun.example.net:3478,turn:turn.example.net:3478",
            "ORIGINCAST_STREAM_TURN_USERNAME": "viewer",
            "ORIGINCAST_STREAM_TURN_CREDENTIAL": 'se"cret',
        }
    )
    client = await aiohttp_client(build_app(config, with_ingest=False))
    r = await client.options(
        "/whep/demo",
        headers={"Origin": "https://shop.example", "Access-Control-Request-Method": "POST"},
    )
    assert r.status == 204
    assert r.headers["Access-Control-Allow-Origin"] == "*"
    assert "POST" in r.headers["Access-Control-Allow-Methods"]
    assert "Content-Type" in r.headers["Access-Control-Allow-Headers"]
    assert r.headers["Access-Control-Expose-Headers"].startswith("Location, Link")
    links = r.headers.getall("Link")[0]
    assert '<stun:stun.example.net:3478>; rel="ice-server"' in links
    assert (
        '<turn:turn.example.net:3478>; rel="ice-server"; username="viewer"; '
        'credential="se\\"cret"; credential-type="password"'
    ) in links
    r = await client.options("/whep/demo/some-session")
    assert r.status == 204 and "DELETE" in r.headers["Access-Control-Allow-Methods"]


def test_ice_policy_scopes_host_addresses_and_announces_public_address():
    import aioice.ice

    from stream.ice import IcePolicy
    from stream.settings import StreamSettings

    policy = IcePolicy(
        StreamSettings(ice_host_addresses=("127.0.0.1", "::1"), ice_public_address="203.0.113.7")
    )
    assert policy.rtc_configuration().iceServers == []  # no STUN unless configured
    with policy.scope():
        assert aioice.ice.get_host_addresses(use_ipv4=True, use_ipv6=False) == ["127.0.0.1"]
        assert aioice.ice.get_host_addresses(use_ipv4=True, use_ipv6=True) == ["127.0.0.1", "::1"]
    # Outside a scope aioice decides, as if we were not there (it never offers loopback).
    assert "127.0.0.1" not in aioice.ice.get_host_addresses(use_ipv4=True, use_ipv6=False)

    sdp = "v=0\r\na=candidate:abc 1 udp 2130706431 10.0.0.5 40000 typ host\r\n"
    announced = policy.announce(sdp).splitlines()
    assert announced[-1].startswith("a=candidate:pabc 1 udp ")
    assert announced[-1].endswith("203.0.113.7 40000 typ srflx raddr 10.0.0.5 rport 40000")

    with pytest.raises(ValueError):
        IcePolicy(StreamSettings(ice_host_addresses=("localhost",)))
