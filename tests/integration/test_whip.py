"""WHIP ingest end to end: an aiortc publisher → POST /whip/<slug> → the stream's one
encoder → an aiortc WHEP viewer decoding the frames; every refusal with its 4xx; the
stream API's state; release of everything when the publisher leaves.

All ICE stays on 127.0.0.1 (stream.ice scopes aioice's host addresses, no STUN).
"""

from __future__ import annotations

import asyncio
import itertools
import json
import re
import threading
import time
from collections.abc import AsyncIterator
from fractions import Fraction
from typing import Any

import av
import numpy as np
import pytest
from aiohttp.test_utils import TestClient
from aiortc import (
    RTCConfiguration,
    RTCPeerConnection,
    RTCRtpSender,
    RTCSessionDescription,
    VideoStreamTrack,
)
from aiortc.mediastreams import MediaStreamError

from stream.hub import StreamHub
from stream.ice import IcePolicy, host_addresses
from stream.settings import StreamSettings
from stream.sources.whip import WhipSource, answer_as_dtls_server, inspect_offer
from web.app import STREAM_HUB, WHIP, build_app
from web.app import WHEP as WHEP_SERVICE
from web.config import load_config

ADMIN = "test-admin-token-0123456789"
LOOPBACK = ("127.0.0.1",)
WIDTH, HEIGHT = 640, 360
BITS = 16  # frame number bits painted across the top of each frame
BLOCK = 40  # px: large enough to survive two lossy encodes


# -- a publisher and a viewer ------------------------------------------------------------


class NumberedFrames(VideoStreamTrack):
    """640×360 frames whose number is painted as 16 black/white blocks along the top."""

    def __init__(self, width: int = WIDTH, height: int = HEIGHT) -> None:
        super().__init__()
        self.width, self.height = width, height
        self.sent = 0

    async def recv(self) -> av.VideoFrame:
        pts, time_base = await self.next_timestamp()
        n = self.sent
        self.sent += 1
        y = np.full((self.height, self.width), 128, dtype=np.uint8)
        y[BLOCK:, :] = (np.arange(self.width, dtype=np.uint16) + n * 4) % 200 + 20  # motion below
        for bit in range(BITS):
            y[:BLOCK, bit * BLOCK : (bit + 1) * BLOCK] = 235 if (n >> bit) & 1 else 16
        frame = av.VideoFrame.from_ndarray(y, format="gray").reformat(format="yuv420p")
        frame.pts, frame.time_base = pts, time_base
        return frame


def frame_number(frame: av.VideoFrame) -> int:
    y = frame.to_ndarray(format="gray")
    scale = frame.width / WIDTH
    n = 0
    for bit in range(BITS):
        cx, cy = int((bit * BLOCK + BLOCK // 2) * scale), int(BLOCK // 2 * scale)
        if y[cy, cx] > 128:
            n |= 1 << bit
    return n


class Publisher:
    """An aiortc WHIP client (what a browser's publish page does)."""

    def __init__(self, client: TestClient, slug: str, key: str, codec: str | None = None) -> None:
        self.client, self.slug, self.key, self.codec = client, slug, key, codec
        self.track = NumberedFrames()
        self.pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
        self.location: str | None = None
        self.answer = ""
        self.headers: dict[str, str] = {}

    async def offer(self) -> str:
        tr = self.pc.addTransceiver(self.track, direction="sendonly")
        if self.codec:
            caps = RTCRtpSender.getCapabilities("video").codecs
            tr.setCodecPreferences([c for c in caps if c.mimeType.lower() == f"video/{self.codec.lower()}"])
        with host_addresses(LOOPBACK):
            await self.pc.setLocalDescription(await self.pc.createOffer())
        return self.pc.localDescription.sdp

    async def publish(self) -> None:
        sdp = await self.offer()
        r = await self.client.post(
            f"/whip/{self.slug}",
            data=sdp,
            headers={"Content-Type": "application/sdp", "Authorization": f"Bearer {self.key}"},
        )
        body = await r.text()
        assert r.status == 201, body
        self.location = r.headers["Location"]
        self.answer = body
        self.headers = dict(r.headers)
        await self.pc.setRemoteDescription(RTCSessionDescription(body, "answer"))

    async def delete(self) -> int:
        assert self.location is not None
        r = await self.client.delete(self.location, headers={"Authorization": f"Bearer {self.key}"})
        return r.status

    async def close(self) -> None:
        await self.pc.close()


async def watch(
    client: TestClient, slug: str, frames: int, limit_s: float = 20.0
) -> list[tuple[int, int, int]]:
    """An aiortc WHEP viewer: (width, height, number) of the first ``frames`` decoded frames."""
    pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
    pc.addTransceiver("video", direction="recvonly")
    try:
        with host_addresses(LOOPBACK):
            await pc.setLocalDescription(await pc.createOffer())
        deadline = time.monotonic() + limit_s
        while True:
            r = await client.post(
                f"/whep/{slug}", data=pc.localDescription.sdp, headers={"Content-Type": "application/sdp"}
            )
            if r.status != 409 or time.monotonic() > deadline:
                break
            await asyncio.sleep(0.2)  # offline until the publisher's first keyframe
        answer = await r.text()
        assert r.status == 201, answer
        assert _candidate_hosts(answer) == {"127.0.0.1"}
        await pc.setRemoteDescription(RTCSessionDescription(answer, "answer"))
        track = pc.getTransceivers()[0].receiver.track
        got: list[tuple[int, int, int]] = []
        async with asyncio.timeout(limit_s):
            while len(got) < frames:
                f = await track.recv()
                assert isinstance(f, av.VideoFrame)
                got.append((f.width, f.height, frame_number(f)))
        await client.delete(r.headers["Location"])
        return got
    finally:
        await pc.close()


def _candidate_hosts(sdp: str) -> set[str]:
    return {m.group(1) for m in re.finditer(r"a=candidate:\S+ \d+ \S+ \d+ (\S+) \d+ typ", sdp)}


# -- fixtures ----------------------------------------------------------------------------


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


async def create_stream(client: TestClient, slug: str, **fields: Any) -> str:
    r = await client.post(
        "/api/v1/streams",
        json={"slug": slug, "title": slug.title(), **fields},
        headers={"Authorization": f"Bearer {ADMIN}"},
    )
    body = await r.json()
    assert r.status == 201, body
    return str(body["publish_key"])


async def stream_state(client: TestClient, slug: str) -> dict[str, Any]:
    r = await client.get(f"/api/v1/streams/{slug}")
    assert r.status == 200
    return dict((await r.json())["state"])


async def wait_for(predicate: Any, limit_s: float = 15.0) -> None:
    deadline = time.monotonic() + limit_s
    while not await predicate():
        assert time.monotonic() < deadline, "timed out"
        await asyncio.sleep(0.1)


def encoder_threads(slug: str) -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == f"whip-encoder-{slug}"]


# -- the path that matters ---------------------------------------------------------------


@pytest.mark.parametrize("codec", ["VP8", "H264"])
async def test_publish_and_watch(client: TestClient, codec: str) -> None:
    key = await create_stream(client, "farm")
    pub = Publisher(client, "farm", key, codec)
    try:
        await pub.publish()
        # aiortc as the DTLS server (FACTS: RSA-certificate publishers need it), loopback only.
        assert "a=setup:passive" in pub.answer and "a=setup:active" not in pub.answer
        assert _candidate_hosts(pub.answer) == {"127.0.0.1"}
        assert re.fullmatch(r"/whip/farm/[A-Za-z0-9_-]{20,}", pub.location or "")
        assert pub.headers["Content-Type"] == "application/sdp"
        assert "Location" in pub.headers["Access-Control-Expose-Headers"]

        frames = await watch(client, "farm", 30)
        assert {(w, h) for w, h, _ in frames} == {(WIDTH, HEIGHT)}
        numbers = [n for _, _, n in frames]
        # The publisher's own frame numbers come through, in order (a few may be skipped).
        assert numbers == sorted(numbers) and numbers[-1] - numbers[0] >= 20, numbers
        assert numbers[-1] <= pub.track.sent

        state = await stream_state(client, "farm")
        assert state["status"] == "live" and state["video_codec"] == "H264"
        assert (state["width"], state["height"]) == (WIDTH, HEIGHT)
        assert state["fps"] > 10 and state["bitrate_bps"] > 0 and state["uptime_s"] > 0
        listed = await (await client.get("/api/v1/streams")).json()
        assert [s["slug"] for s in listed["streams"]] == ["farm"]
        assert listed["streams"][0]["state"]["status"] == "live"

        # Leaving with DELETE: 204, and the stream, the peer connection and the encoder go.
        whip = client.app[WHIP]
        (session,) = whip.sessions("farm")
        assert len(encoder_threads("farm")) == 1
        assert await pub.delete() == 204
        assert session.source.closed and session.source.peer_connection is None
        assert whip.sessions() == [] and client.app[STREAM_HUB].publisher("farm") is None
        assert encoder_threads("farm") == []
        assert (await stream_state(client, "farm"))["status"] == "offline"
        assert await pub.delete() == 404  # the session is gone
    finally:
        await pub.close()


async def test_second_publisher_gets_409_then_takes_over(client: TestClient) -> None:
    key = await create_stream(client, "dock")
    first, second = Publisher(client, "dock", key), Publisher(client, "dock", key)
    try:
        await first.publish()
        sdp = await second.offer()
        headers = {"Content-Type": "application/sdp", "Authorization": f"Bearer {key}"}
        r = await client.post("/whip/dock", data=sdp, headers=headers)
        assert r.status == 409 and "already has a publisher" in (await r.json())["error"]
        assert len(client.app[WHIP].sessions("dock")) == 1

        assert await first.delete() == 204
        second.pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
        second.track = NumberedFrames()
        await second.publish()
        frames = await watch(client, "dock", 5)
        assert {(w, h) for w, h, _ in frames} == {(WIDTH, HEIGHT)}
    finally:
        await first.close()
        await second.close()


async def test_publisher_vanishing_takes_the_stream_offline(client: TestClient) -> None:
    """No DELETE: the publisher's peer connection just closes (tab closed, app killed)."""
    key = await create_stream(client, "barn")
    pub = Publisher(client, "barn", key)
    await pub.publish()

    async def live() -> bool:
        return (await stream_state(client, "barn"))["status"] == "live"

    await wait_for(live)
    await pub.close()

    async def released() -> bool:
        return client.app[WHIP].sessions() == [] and client.app[STREAM_HUB].publisher("barn") is None

    await wait_for(released)
    assert (await stream_state(client, "barn"))["status"] == "offline"
    assert encoder_threads("barn") == []


async def test_rotating_the_key_cuts_off_the_publisher(client: TestClient) -> None:
    key = await create_stream(client, "gate")
    pub = Publisher(client, "gate", key)
    try:
        await pub.publish()
        r = await client.post("/api/v1/streams/gate/rotate-key", headers={"Authorization": f"Bearer {ADMIN}"})
        new_key = (await r.json())["publish_key"]
        assert r.status == 200 and new_key != key
        assert client.app[WHIP].sessions() == []
        retry = Publisher(client, "gate", key)
        sdp = await retry.offer()
        await retry.close()
        r = await client.post(
            "/whip/gate",
            data=sdp,
            headers={"Content-Type": "application/sdp", "Authorization": f"Bearer {key}"},
        )
        assert r.status == 401
    finally:
        await pub.close()


# -- every refusal -----------------------------------------------------------------------


async def test_refusals(client: TestClient) -> None:
    key = await create_stream(client, "farm")
    cam_key = await create_stream(client, "cam", kind="rtsp", rtsp_url="rtsp://u:p@127.0.0.1:8554/x")
    offer_pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
    offer_pc.addTransceiver(NumberedFrames(), direction="sendonly")
    offer_pc.addTransceiver("audio", direction="sendonly")
    with host_addresses(LOOPBACK):
        await offer_pc.setLocalDescription(await offer_pc.createOffer())
    good = offer_pc.localDescription.sdp
    await offer_pc.close()
    sdp_headers = {"Content-Type": "application/sdp", "Authorization": f"Bearer {key}"}

    async def post(slug: str, body: str, headers: dict[str, str]) -> tuple[int, str]:
        r = await client.post(f"/whip/{slug}", data=body, headers=headers)
        assert r.headers["Content-Type"].startswith("application/json")
        assert r.headers["Access-Control-Allow-Origin"] == "*"  # readable by a publish page
        return r.status, (await r.json())["error"]

    # An unknown stream is answered exactly like a wrong key, with the same growing delay:
    # probing cannot confirm that an unlisted stream exists.
    same = "wrong publish key for this stream, or no such stream"
    t0 = time.monotonic()
    status, error = await post("nope", good, sdp_headers)
    assert (status, error) == (401, same)
    assert time.monotonic() - t0 >= 0.09  # the brute-force delay applies to it too
    assert await post("Bad_Slug", good, sdp_headers) == (401, same)
    status, error = await post("nope", good, {"Content-Type": "application/sdp"})
    assert status == 401 and "missing" in error
    status, error = await post("farm", good, {"Content-Type": "application/sdp"})
    assert status == 401 and "missing" in error
    assert await post("farm", good, {**sdp_headers, "Authorization": "Bearer wrong"}) == (401, same)
    assert await post("cam", good, sdp_headers) == (401, same)  # farm's key is not cam's
    # Only a key holder learns that the stream takes no WHIP.
    status, error = await post("cam", good, {**sdp_headers, "Authorization": f"Bearer {cam_key}"})
    assert status == 409 and "rtsp" in error
    status, error = await post("farm", good, {**sdp_headers, "Authorization": f"Basic {key}"})
    assert status == 401
    status, error = await post("farm", good, {**sdp_headers, "Content-Type": "text/plain"})
    assert status == 415 and "application/sdp" in error
    status, error = await post("farm", "", sdp_headers)
    assert status == 400 and "empty" in error
    status, error = await post("farm", "hello, I am not SDP", sdp_headers)
    assert status == 400 and "v=0" in error
    status, error = await post("farm", "v=0\r\nthis is not=sdp\r\n", sdp_headers)
    assert status == 400
    # SDP-shaped, but aiortc cannot use it (no ICE credentials, no fingerprint).
    broken = "\r\n".join(ln for ln in good.split("\r\n") if not ln.startswith(("a=ice-", "a=fingerprint")))
    status, error = await post("farm", broken, sdp_headers)
    assert status == 400 and "could not be negotiated" in error
    assert client.app[STREAM_HUB].publisher("farm") is None  # the failed attempt let go

    audio_only = _drop_media(good, "video")
    status, error = await post("farm", audio_only, sdp_headers)
    assert status == 422 and "H.264 or VP8" in error
    vp9_only = re.sub(r"(?i)(a=rtpmap:\d+ )(?:VP8|H264)/", r"\1VP9/", good)
    status, error = await post("farm", vp9_only, sdp_headers)
    assert status == 422 and "vp9" in error
    recvonly = good.replace("a=sendonly", "a=recvonly")
    assert (await post("farm", recvonly, sdp_headers))[0] == 422

    # PATCH (trickle ICE) and preflight.
    r = await client.patch("/whip/farm/whatever", data="a=candidate:1", headers=sdp_headers)
    assert r.status == 405 and r.headers["Allow"] == "DELETE, OPTIONS"
    r = await client.options(
        "/whip/farm",
        headers={"Origin": "https://phone.example", "Access-Control-Request-Method": "POST"},
    )
    assert r.status == 204
    for name, value in [
        ("Access-Control-Allow-Origin", "*"),
        ("Access-Control-Allow-Methods", "POST"),
        ("Access-Control-Allow-Headers", "Authorization"),
        ("Access-Control-Expose-Headers", "Link"),
    ]:
        assert value in r.headers[name]
    r = await client.delete("/whip/farm/no-such-session", headers=sdp_headers)
    assert r.status == 404


async def test_delete_needs_the_sessions_key(client: TestClient) -> None:
    key = await create_stream(client, "farm")
    other_key = await create_stream(client, "dock")
    pub = Publisher(client, "farm", key)
    try:
        await pub.publish()
        assert pub.location is not None
        r = await client.delete(pub.location)
        assert r.status == 401
        r = await client.delete(pub.location, headers={"Authorization": f"Bearer {other_key}"})
        assert r.status == 401
        assert len(client.app[WHIP].sessions("farm")) == 1
        assert await pub.delete() == 204
    finally:
        await pub.close()


async def test_brute_force_gets_slower_then_locked_out(client: TestClient) -> None:
    await create_stream(client, "farm")
    auth = client.app[WHIP]._auth  # one Authenticator per app: look at its throttle
    auth.throttle.lockout_after = 4
    headers = {"Content-Type": "application/sdp", "Authorization": "Bearer guess"}
    times = []
    for _ in range(3):
        t0 = time.monotonic()
        r = await client.post("/whip/farm", data="v=0\r\n", headers=headers)
        times.append(time.monotonic() - t0)
        assert r.status == 401
    assert times[0] >= 0.09 and times[2] >= 0.39 and times[2] > times[0]
    r = await client.post("/whip/farm", data="v=0\r\n", headers=headers)
    assert r.status == 401  # the 4th failure starts the lockout
    r = await client.post("/whip/farm", data="v=0\r\n", headers=headers)
    assert r.status == 429 and int(r.headers["Retry-After"]) > 0


def _drop_media(sdp: str, kind: str) -> str:
    """The SDP without its ``kind`` m-sections (and without them in the BUNDLE group)."""
    head, *sections = re.split(r"\r\n(?=m=)", sdp.strip())
    kept = [s for s in sections if not s.startswith(f"m={kind} ")]
    mids = [m.group(1) for s in kept if (m := re.search(r"a=mid:(\S+)", s))]
    head = re.sub(r"a=group:BUNDLE .*", "a=group:BUNDLE " + " ".join(mids), head)
    return "\r\n".join([head, *kept]) + "\r\n"


# -- the source on its own ---------------------------------------------------------------


def test_answer_role() -> None:
    """passive only when the offer let us choose."""
    answer = "v=0\r\nm=video 9 UDP/TLS/RTP/SAVPF 96\r\na=setup:active\r\n"
    offer = "v=0\r\nm=video 9 UDP/TLS/RTP/SAVPF 96\r\na=rtpmap:96 H264/90000\r\na=setup:{}\r\n"
    assert "a=setup:passive" in answer_as_dtls_server(answer, inspect_offer(offer.format("actpass")))
    assert "a=setup:active" in answer_as_dtls_server(answer, inspect_offer(offer.format("passive")))


async def test_publisher_that_never_connects_is_dropped() -> None:
    """A POST whose publisher never completes ICE does not hold the stream for good."""
    settings = StreamSettings(ice_host_addresses=LOOPBACK)
    hub = StreamHub(settings)
    pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
    pc.addTransceiver(NumberedFrames(), direction="sendonly")
    with host_addresses(LOOPBACK):
        await pc.setLocalDescription(await pc.createOffer())
    offer = pc.localDescription.sdp
    await pc.close()  # the answer will never be applied: ICE cannot succeed
    closed = asyncio.Event()
    source = WhipSource(
        "lost",
        settings,
        inspect_offer(offer),
        ice=IcePolicy(settings),
        connect_timeout_s=1.0,
        on_closed=lambda _s: closed.set(),
    )
    publication = hub.attach("lost", source)
    await source.start(offer, publication)
    assert hub.publisher("lost") is source
    async with asyncio.timeout(10):
        await closed.wait()
    assert hub.publisher("lost") is None and source.peer_connection is None
    assert "did not connect" in (source.close_reason or "")


async def test_audio_is_encoded_once_to_opus() -> None:
    """A publisher with audio: Opus packets on a 48 kHz timeline reach the stream."""
    from aiortc.mediastreams import AudioStreamTrack

    settings = StreamSettings(ice_host_addresses=LOOPBACK)
    hub = StreamHub(settings)
    pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
    pc.addTransceiver(NumberedFrames(), direction="sendonly")
    pc.addTransceiver(AudioStreamTrack(), direction="sendonly")
    with host_addresses(LOOPBACK):
        await pc.setLocalDescription(await pc.createOffer())
    offer = pc.localDescription.sdp
    source = WhipSource("talk", settings, inspect_offer(offer), ice=IcePolicy(settings))
    assert source.has_audio
    publication = hub.attach("talk", source)
    live = publication.stream
    feed = live.add_viewer()
    try:
        answer = await source.start(offer, publication)
        await pc.setRemoteDescription(RTCSessionDescription(answer, "answer"))
        async with asyncio.timeout(15):
            first = await feed.next_audio()
            packets = [first] + [await feed.next_audio() for _ in range(9)]
        assert all(p.packet.time_base == Fraction(1, 48_000) for p in packets)
        steps = {b.pts - a.pts for a, b in itertools.pairwise(packets)}
        assert steps == {960}, steps
        assert live.state().audio_codec == "opus"
        # Decodable Opus (48 kHz stereo, 20 ms).
        dec = av.CodecContext.create("libopus", "r")
        frames = [f for p in packets for f in dec.decode(av.Packet(bytes(p.packet)))]
        assert frames and all(f.samples == 960 and f.sample_rate == 48_000 for f in frames)
    finally:
        feed.close()
        await source.close()
        await pc.close()


async def test_ice_servers_in_link_headers(aiohttp_client: Any, sqlite_url: str) -> None:
    """STUN/TURN from configuration reach the publisher as RFC 9725 Link headers.

    Nothing listens on port 9: our own gathering against them gives up after aioice's
    5 s, which is the price of this test (and of an unreachable server in production).
    """
    config = load_config(
        env={
            "ORIGINCAST_DATABASE_URL": sqlite_url,
            "ORIGINCAST_ADMIN_TOKEN": ADMIN,
            "ORIGINCAST_STREAM_ICE_HOST_ADDRESSES": "127.0.0.1",
            "ORIGINCAST_STREAM_ICE_SERVERS": "stun:127.0.0.1:9,turn:127.0.0.1:9?transport=udp",
            "ORIGINCAST_STREAM_TURN_USERNAME": "pub",
            "ORIGINCAST_STREAM_TURN_CREDENTIAL": "turn-secret",
        }
    )
    client = await aiohttp_client(build_app(config, with_ingest=False))
    key = await create_stream(client, "farm")
    pub = Publisher(client, "farm", key)
    try:
        await pub.publish()
        links = pub.headers["Link"]
        assert '<stun:127.0.0.1:9>; rel="ice-server"' in links
        assert (
            '<turn:127.0.0.1:9?transport=udp>; rel="ice-server"; username="pub"; credential="turn-secret";'
            ' credential-type="password"'
        ) in links
        # Not on the preflight: it carries no key, and TURN credentials are for publishers.
        r = await client.options("/whip/farm")
        assert r.status == 204 and "Link" not in r.headers
        # OPTIONS with the key (RFC 9725 4.6, what the publish page asks before its offer).
        r = await client.options("/whip/farm", headers={"Authorization": f"Bearer {key}"})
        assert r.status == 204 and 'credential="turn-secret"' in r.headers["Link"]
        r = await client.options("/whip/farm", headers={"Authorization": "Bearer wrong"})
        assert r.status == 401 and "Link" not in r.headers
        r = await client.options("/whip/nope", headers={"Authorization": f"Bearer {key}"})
        assert r.status == 401 and "Link" not in r.headers
    finally:
        await pub.close()

    # The pages carry the servers their peer connections use: the player all of them (a
    # viewer behind a UDP-blocking network needs the TURN server), the publish page only
    # those without credentials (the TURN server's come with the key, above).
    stun = {"urls": ["stun:127.0.0.1:9"]}
    turn = {"urls": ["turn:127.0.0.1:9?transport=udp"], "username": "pub", "credential": "turn-secret"}
    watch_page = await page_config(client, "/watch/farm")
    assert watch_page["iceServers"] == [stun, turn]
    publish_page = await page_config(client, "/publish/farm")
    assert publish_page["iceServers"] == [stun]
    assert "turn-secret" not in await (await client.get("/publish/farm")).text()
    # An unknown stream's player page gives nothing away, TURN credentials included.
    r = await client.get("/watch/nope")
    assert r.status == 404 and "turn-secret" not in await r.text()


async def page_config(client: TestClient, path: str) -> dict[str, Any]:
    """The JSON a page's scripts read (<script type="application/json" id="oc-config">)."""
    r = await client.get(path)
    assert r.status == 200, path
    found = re.search(r'<script type="application/json" id="oc-config">(.*?)</script>', await r.text(), re.S)
    assert found is not None
    return dict(json.loads(found.group(1)))


async def test_viewers_see_the_broadcast_end(client: TestClient) -> None:
    """A publisher's DELETE ends its viewers' sessions: their track ends, the server lets go."""
    key = await create_stream(client, "farm")
    pub = Publisher(client, "farm", key)
    viewer = RTCPeerConnection(RTCConfiguration(iceServers=[]))
    viewer.addTransceiver("video", direction="recvonly")
    try:
        with host_addresses(LOOPBACK):
            await viewer.setLocalDescription(await viewer.createOffer())
        offer = viewer.localDescription.sdp
        whep_headers = {"Content-Type": "application/sdp"}
        # Registered but nobody publishing: "offline, retry", not "unknown".
        r = await client.post("/whep/farm", data=offer, headers=whep_headers)
        assert r.status == 409 and int(r.headers["Retry-After"]) > 0
        assert (await client.post("/whep/nope", data=offer, headers=whep_headers)).status == 404

        await pub.publish()

        async def stream_live() -> bool:
            return (await stream_state(client, "farm"))["status"] == "live"

        await wait_for(stream_live)
        r = await client.post("/whep/farm", data=offer, headers=whep_headers)
        assert r.status == 201
        await viewer.setRemoteDescription(RTCSessionDescription(await r.text(), "answer"))
        track = viewer.getTransceivers()[0].receiver.track
        async with asyncio.timeout(15):
            frame = await track.recv()
        assert (frame.width, frame.height) == (WIDTH, HEIGHT)
        assert (await stream_state(client, "farm"))["viewers"] == 1

        assert await pub.delete() == 204
        async with asyncio.timeout(10):
            with pytest.raises(MediaStreamError):
                while True:
                    await track.recv()  # frames already on their way, then the end
        whep = client.app[WHEP_SERVICE]

        async def released() -> bool:
            return whep.sessions("farm") == []

        await wait_for(released, limit_s=10)
        state = await stream_state(client, "farm")
        assert state["status"] == "offline" and state["viewers"] == 0
    finally:
        await viewer.close()
        await pub.close()
