"""/metrics shows each stream's state: the demo test pattern, watched by one WHEP viewer.

ICE offers only 127.0.0.1 on both sides and no STUN server is configured (FACTS.md).
"""

from __future__ import annotations

import asyncio
import contextlib
import time

import pytest
from aiortc import RTCConfiguration, RTCPeerConnection, RTCSessionDescription
from aiortc.mediastreams import MediaStreamError
from prometheus_client.parser import text_string_to_metric_families

from stream.ice import host_addresses
from web.app import STREAM_HUB, build_app
from web.config import load_config

pytestmark = pytest.mark.timeout(60)

WIDTH, HEIGHT = 320, 180
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
            "ORIGINCAST_STREAM_VIDEO_BITRATE_BPS": "300000",
        }
    )
    c = await aiohttp_client(build_app(config, with_ingest=False))
    for _ in range(100):  # the test pattern's first keyframe makes "demo" live
        stream = c.app[STREAM_HUB].get("demo")
        if stream is not None and stream.live:
            break
        await asyncio.sleep(0.05)
    return c


async def scrape(client) -> dict[tuple[str, str], float]:
    """(sample name, stream label) -> value, for every origincast_stream_* sample."""
    r = await client.get("/metrics")
    assert r.status == 200
    out = {}
    for family in text_string_to_metric_families(await r.text()):
        for sample in family.samples:
            if sample.name.startswith("origincast_stream_"):
                out[(sample.name, sample.labels["stream"])] = sample.value
    return out


async def test_metrics_show_live_stream_with_its_viewer(client):
    before = await scrape(client)
    assert before[("origincast_stream_live", "demo")] == 1
    assert before[("origincast_stream_viewers", "demo")] == 0

    pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
    pc.addTransceiver("video", direction="recvonly")
    frames: list[int] = []
    tasks: list[asyncio.Task[None]] = []

    async def read(track) -> None:
        with contextlib.suppress(MediaStreamError):
            while True:
                frame = await track.recv()
                frames.append(frame.width)

    pc.on("track", lambda track: tasks.append(asyncio.ensure_future(read(track))))
    try:
        with host_addresses(("127.0.0.1",)):
            await pc.setLocalDescription(await pc.createOffer())
        r = await client.post("/whep/demo", data=pc.localDescription.sdp, headers=SDP)
        assert r.status == 201, await r.text()
        location = r.headers["Location"]
        await pc.setRemoteDescription(RTCSessionDescription(sdp=await r.text(), type="answer"))
        deadline = time.monotonic() + 15
        while not frames:
            assert time.monotonic() < deadline, "no frame within 15 s"
            await asyncio.sleep(0.05)

        m = await scrape(client)
        assert m[("origincast_stream_live", "demo")] == 1
        assert m[("origincast_stream_viewers", "demo")] == 1
        assert m[("origincast_stream_fps", "demo")] > 0
        assert m[("origincast_stream_bitrate_bps", "demo")] > 0
        assert m[("origincast_stream_width_pixels", "demo")] == WIDTH
        assert m[("origincast_stream_height_pixels", "demo")] == HEIGHT
        assert m[("origincast_stream_uptime_seconds", "demo")] > 0

        r = await client.delete(location)
        assert r.status == 204
        after = await scrape(client)
        assert after[("origincast_stream_viewers", "demo")] == 0
    finally:
        for task in tasks:
            task.cancel()
        await pc.close()
