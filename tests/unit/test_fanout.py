"""The fan-out's rules, without any network: GOP cache, bounded queues, keyframe requests."""

from __future__ import annotations

import asyncio
import time

import av
import pytest

from stream.encoder import EncoderSettings, H264Encoder
from stream.fanout import FeedClosed, KeyframeRequests
from stream.hub import StreamBusy, StreamHub
from stream.packets import AUDIO_TIME_BASE, VIDEO_TIME_BASE, MediaPacket, make_packet
from stream.settings import StreamSettings
from stream.sources.testpattern import _Painter, decode_wallclock
from stream.stats import h264_dimensions

pytestmark = pytest.mark.timeout(30)


class FakeSource:
    kind = "fake"

    def __init__(self, has_audio: bool = False) -> None:
        self.has_audio = has_audio
        self.keyframe_requests = 0

    def request_keyframe(self) -> None:
        self.keyframe_requests += 1


def video(n: int, key: bool = False) -> MediaPacket:
    nal = b"\x00\x00\x00\x01" + (b"\x65" if key else b"\x41") + n.to_bytes(4, "big")
    return make_packet("video", nal, n * 3000, VIDEO_TIME_BASE, key, time.time())


def audio(n: int) -> MediaPacket:
    return make_packet("audio", b"\xfc" + n.to_bytes(4, "big"), n * 960, AUDIO_TIME_BASE, False, time.time())


def settings(**kw: object) -> StreamSettings:
    return StreamSettings(**{"viewer_queue_packets": 50, "keyframe_min_interval_s": 0.2, **kw})  # type: ignore[arg-type]


async def test_new_viewer_starts_at_latest_keyframe():
    hub = StreamHub(settings())
    src = FakeSource()
    pub = hub.attach("s", src)
    stream = pub.stream
    for n in range(3):
        pub.publish(video(n))  # before the first keyframe: not decodable, not live
    assert not stream.live
    for n in range(3, 40):
        pub.publish(video(n, key=n in (5, 35)))
    assert stream.live

    pub.publish(audio(1))  # audio is not cached: it starts live
    feed = stream.add_viewer()
    cached = [await feed.next_video() for _ in range(5)]
    # The frames since the latest keyframe, in order...
    assert [bytes(p.packet) for p in cached] == [bytes(video(n, key=n == 35).packet) for n in range(35, 40)]
    assert cached[0].keyframe
    # ...with timestamps squeezed up to the newest's, so a player shows "now" at once.
    assert [p.pts for p in cached] == [39 * 3000 - 4 + i for i in range(5)]
    pub.publish(video(40))
    pub.publish(audio(2))
    assert (await feed.next_video()).pts == 40 * 3000
    assert (await feed.next_audio()).pts == 2 * 960
    # It could start from the cache: no keyframe was asked of the source.
    assert src.keyframe_requests == 0


async def test_viewer_without_cache_waits_for_keyframe_and_asks_for_one():
    hub = StreamHub(settings(viewer_queue_packets=10))
    src = FakeSource()
    pub = hub.attach("s", src)
    pub.publish(video(0, key=True))
    for n in range(1, 20):  # the GOP outgrows the bound: the cache is dropped
        pub.publish(video(n))
    feed = pub.stream.add_viewer()
    reader = asyncio.create_task(feed.next_video())
    await asyncio.sleep(0.01)
    assert src.keyframe_requests == 1
    pub.publish(video(20))
    await asyncio.sleep(0.01)
    assert not reader.done()  # a P-frame alone would only show garbage
    pub.publish(video(21, key=True))
    got = await asyncio.wait_for(reader, 1)
    assert got.keyframe and got.pts == 21 * 3000


async def test_slow_viewer_does_not_hold_back_others_and_stays_bounded():
    limit = 50
    hub = StreamHub(settings(viewer_queue_packets=limit))
    pub = hub.attach("s", FakeSource(has_audio=True))
    stream = pub.stream
    pub.publish(video(0, key=True))
    slow, fast = stream.add_viewer(), stream.add_viewer()
    assert (await slow.next_video()).keyframe  # joins, then never reads again
    assert (await fast.next_video()).keyframe

    received: list[int] = []

    async def read_fast() -> None:
        while True:
            received.append((await fast.next_video()).pts)

    async def read_fast_audio() -> None:
        while True:
            await fast.next_audio()

    reader = asyncio.create_task(read_fast())
    audio_reader = asyncio.create_task(read_fast_audio())
    worst = 0
    for n in range(1, 1000):
        pub.publish(video(n, key=n % 30 == 0))  # publish never waits for anybody
        pub.publish(audio(n))
        worst = max(worst, slow.queued)
        if n % 10 == 0:
            await asyncio.sleep(0)  # let the fast reader run, as the event loop would
    await asyncio.sleep(0.01)
    reader.cancel()
    audio_reader.cancel()

    assert received == [n * 3000 for n in range(1, 1000)]  # every frame, in order
    assert worst <= 2 * limit  # video and audio queues, each bounded
    assert slow.dropped > 900
    assert fast.dropped == 0
    # What the slow viewer reads next starts at a keyframe: it skipped, it did not stall.
    assert (await slow.next_video()).keyframe
    assert stream.state().viewer_drops == slow.dropped


async def test_keyframe_requests_are_rate_limited():
    src = FakeSource()
    limiter = KeyframeRequests(min_interval_s=0.2)
    limiter.set_target(src.request_keyframe)
    for _ in range(50):  # fifty viewers' PLIs at the same moment
        limiter.request()
    assert src.keyframe_requests == 1
    await asyncio.sleep(0.3)
    assert src.keyframe_requests == 2  # one trailing request: the later askers are not forgotten
    await asyncio.sleep(0.3)
    assert src.keyframe_requests == 2  # and only one

    limiter.request()
    assert src.keyframe_requests == 3
    limiter.request()  # too soon: would trail...
    limiter.keyframe_published()  # ...but a keyframe went out meanwhile and answers it
    await asyncio.sleep(0.3)
    assert src.keyframe_requests == 3
    assert limiter.forwarded == 3 and limiter.suppressed == 50


async def test_viewer_keyframe_requests_reach_source_through_stream_limiter():
    hub = StreamHub(settings(keyframe_min_interval_s=10))
    src = FakeSource()
    pub = hub.attach("s", src)
    pub.publish(video(0, key=True))
    feeds = [pub.stream.add_viewer() for _ in range(20)]
    for f in feeds:
        f.request_keyframe()
    assert src.keyframe_requests == 1
    assert pub.stream.state().keyframe_requests == 1


async def test_one_publisher_per_stream():
    hub = StreamHub(settings())
    first = hub.attach("s", FakeSource())
    with pytest.raises(StreamBusy):
        hub.attach("s", FakeSource())
    first.close()
    assert not first.stream.live
    second = hub.attach("s", FakeSource())
    first.publish(video(0, key=True))  # a closed publication writes nothing
    assert first.stream.stats.packets == 0
    second.publish(video(0, key=True))
    assert second.stream.live and second.stream is first.stream


async def test_new_source_continues_the_timeline():
    hub = StreamHub(settings())
    pub = hub.attach("s", FakeSource())
    feed = pub.stream.add_viewer()
    pub.publish(video(100, key=True))
    got = [(await feed.next_video()).pts]  # the viewer is watching
    for n in range(101, 103):
        pub.publish(video(n))
    pub.close()
    pub2 = hub.attach("s", FakeSource())
    pub2.publish(video(0, key=True))  # the new source counts from zero
    got += [(await feed.next_video()).pts for _ in range(3)]
    assert got[:3] == [300000, 303000, 306000]
    assert got[3] > got[2]  # a pause for the viewer who stayed, not a jump back


async def test_closing_a_feed_releases_it():
    hub = StreamHub(settings())
    pub = hub.attach("s", FakeSource())
    pub.publish(video(0, key=True))
    feed = pub.stream.add_viewer()
    waiting = asyncio.create_task(feed.next_audio())
    await asyncio.sleep(0)
    assert pub.stream.viewers == 1
    feed.close()
    with pytest.raises(FeedClosed):
        await asyncio.wait_for(waiting, 1)
    assert pub.stream.viewers == 0
    hub.remove("s")
    assert hub.get("s") is None


async def test_sink_takes_packets_only_while_nothing_is_queued():
    hub = StreamHub(settings())
    pub = hub.attach("s", FakeSource(has_audio=True))
    pub.publish(video(0, key=True))
    pub.publish(video(1))
    feed = pub.stream.add_viewer()
    first = await feed.next_video()  # activates: the GOP cache (0, 1) is queued
    sunk: list[int] = []
    feed.set_sink("video", lambda pkt: sunk.append(pkt.pts) or True)
    pub.publish(video(2))  # behind the cached frame still queued: queued too, in order
    assert sunk == [] and feed.queued == 2
    assert first.keyframe
    assert [(await feed.next_video()).pts, (await feed.next_video()).pts] == [3000, 6000]
    pub.publish(video(3))
    pub.publish(video(4))
    assert sunk == [9000, 12000] and feed.queued == 0  # nothing queued: straight to the sink
    pub.publish(audio(1))  # another kind, no sink: queued
    assert feed.queued == 1
    assert feed.delivered == 3 + 2 + 0


async def test_a_failing_sink_is_dropped_and_its_packet_queued():
    hub = StreamHub(settings())
    pub = hub.attach("s", FakeSource())
    pub.publish(video(0, key=True))
    feed = pub.stream.add_viewer()
    await feed.next_video()
    calls: list[int] = []
    feed.set_sink("video", lambda pkt: calls.append(pkt.pts) and False)
    waiting = asyncio.create_task(feed.next_video())
    await asyncio.sleep(0)
    pub.publish(video(1))  # the sink cannot send it: the reader's task gets it instead
    assert (await asyncio.wait_for(waiting, 1)).pts == 3000
    pub.publish(video(2))  # and every later one: the sink is gone
    assert calls == [3000] and (await feed.next_video()).pts == 6000
    feed.set_sink("video", lambda pkt: True)
    feed.close()  # a closed feed forgets its sinks
    pub.publish(video(3))
    assert feed.delivered == 3


async def test_stats_from_real_packets():
    """Size from the SPS, rate from arrivals, and the test pattern's clock survives encoding."""
    hub = StreamHub(settings())
    pub = hub.attach("s", FakeSource())
    painter = _Painter(320, 180)
    enc = H264Encoder(EncoderSettings(bitrate_bps=400_000, fps=30, keyframe_interval_s=1.0))
    decoder = av.CodecContext.create("h264", "r")
    clocks = []
    for n in range(45):
        wallclock = time.time()
        for pkt in enc.encode(painter.paint(n, wallclock), n * 3000, wallclock):
            pub.publish(pkt)
            for frame in decoder.decode(av.Packet(bytes(pkt.packet))):
                clocks.append((decode_wallclock(frame.to_ndarray(format="gray")), pkt.wallclock))
    state = pub.stream.state()
    assert (state.width, state.height, state.video_codec, state.status) == (320, 180, "H264", "live")
    assert state.keyframes == 2  # one at the start, one after keyframe_interval_s of media time
    assert state.bitrate_bps > 0 and state.fps > 0
    assert len(clocks) == 45 and all(abs(a - b) < 0.002 for a, b in clocks)
    assert h264_dimensions(b"\x00\x00\x00\x01\x41junk") is None
