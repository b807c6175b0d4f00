"""One stream's encoded packets, shared by every viewer.

A source publishes each ``MediaPacket`` once; ``LiveStream.publish`` appends a reference
to it in each viewer's queue. Nothing is copied or encoded per viewer. Three rules keep
a stream live for everybody:

* GOP cache: the video packets since the latest keyframe. A viewer starts with them,
  so its first picture is decodable at once instead of after the next keyframe (up to
  ``keyframe_interval_s``). They reach the viewer in a burst, so their timestamps are
  squeezed to just before the newest one's: a player then shows the current picture at
  once instead of replaying the last seconds and staying that far behind live (its
  jitter buffer would pace the burst by the original timestamps). Audio is not cached:
  Opus frames stand alone, and replaying seconds of sound in a burst would only glitch.
* Bounded per-viewer queues: a viewer that cannot keep up never blocks the source or
  anybody else. When its video queue is full the queue is thrown away and the viewer
  waits for the next keyframe (a P-frame after a gap would only show garbage).
* Keyframe requests (a viewer's PLI/FIR, a viewer that could not start from the cache)
  reach the source through one rate limiter per stream, so a hundred viewers losing a
  packet at the same moment cost one keyframe, not a hundred.

Everything here runs on the event loop; ``publish`` never awaits.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import time
from collections import deque
from collections.abc import Callable

from stream.packets import MediaPacket, make_packet
from stream.rtp.packetizer import PayloadCache
from stream.settings import StreamSettings
from stream.sources import PacketSource
from stream.stats import StreamState, StreamStats

log = logging.getLogger(__name__)

# Sends one packet synchronously; False: it could not, queue the packet instead.
Sink = Callable[[MediaPacket], bool]


class FeedClosed(Exception):
    """The viewer's feed was closed: the viewer left or the stream was removed."""


class KeyframeRequests:
    """Forwards keyframe requests to the source at most once per ``min_interval_s``.

    A request that arrives too soon is not lost: one trailing request goes out when the
    interval has passed, unless a keyframe was published meanwhile (any keyframe after
    a request reaches the viewer that asked, so it answers that request too).
    """

    def __init__(self, min_interval_s: float, clock: Callable[[], float] = time.monotonic) -> None:
        self._min_interval_s = min_interval_s
        self._clock = clock
        self._target: Callable[[], None] | None = None
        self._last_sent = float("-inf")
        self._timer: asyncio.TimerHandle | None = None
        self.forwarded = 0
        self.suppressed = 0

    def set_target(self, target: Callable[[], None] | None) -> None:
        """The source's ``request_keyframe`` (None while no source is attached)."""
        self._target = target
        if target is None:
            self._cancel_timer()

    def request(self) -> None:
        if self._target is None:
            return
        wait = self._last_sent + self._min_interval_s - self._clock()
        if wait <= 0:
            self._cancel_timer()
            self._send()
            return
        self.suppressed += 1
        if self._timer is None:
            self._timer = asyncio.get_running_loop().call_later(wait, self._trailing)

    def keyframe_published(self) -> None:
        self._cancel_timer()

    def close(self) -> None:
        self.set_target(None)

    def _trailing(self) -> None:
        self._timer = None
        if self._target is not None:
            self._send()

    def _send(self) -> None:
        assert self._target is not None
        self._last_sent = self._clock()
        self.forwarded += 1
        try:
            self._target()
        except Exception:
            # A failing source must not break the viewer's RTCP handling that called us.
            log.exception("keyframe request to the source failed")

    def _cancel_timer(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None


class ViewerFeed:
    """One viewer's queues: video and audio, each bounded, each read by its own RTP sender.

    The feed starts filling only when the viewer first reads (``next_video`` or
    ``next_audio``), which for WebRTC is when DTLS is up: the GOP cache copied then is
    the freshest, and packets do not pile up while ICE is still checking.

    A reader that can send synchronously may also ``set_sink``: while its queue is empty
    (it has sent everything before), a new packet is handed to the sink at once instead
    of being queued for the reader's task to wake up for, which costs a future, a task
    step and three coroutine frames per frame per viewer. The order stays the queue's:
    anything queued goes first, through the task. A sink that returns False (it could not
    send: not connected, closed) is dropped and the packet queued, so the task meets the
    same condition on its own path and ends as it would have without a sink.
    """

    __slots__ = (
        "_active",
        "_audio",
        "_audio_sink",
        "_audio_waiter",
        "_closed",
        "_limit",
        "_skipping",
        "_stream",
        "_video",
        "_video_sink",
        "_video_waiter",
        "delivered",
        "dropped",
        "id",
    )

    def __init__(self, stream: LiveStream, viewer_id: int, limit: int) -> None:
        self._stream = stream
        self.id = viewer_id
        self._limit = limit
        self._video: deque[MediaPacket] = deque()
        self._audio: deque[MediaPacket] = deque()
        self._video_waiter: asyncio.Future[None] | None = None
        self._audio_waiter: asyncio.Future[None] | None = None
        self._video_sink: Sink | None = None
        self._audio_sink: Sink | None = None
        # True: video is dropped until a keyframe (after an overflow, or when the
        # viewer could not start from the GOP cache).
        self._skipping = False
        self._active = False
        self._closed = False
        self.dropped = 0  # packets this viewer skipped because it was too slow
        self.delivered = 0

    @property
    def closed(self) -> bool:
        return self._closed

    @property
    def queued(self) -> int:
        return len(self._video) + len(self._audio)

    @property
    def active(self) -> bool:
        return self._active

    async def next_video(self) -> MediaPacket:
        if not self._active:
            self._stream._activate(self)
        while not self._video:
            if self._closed:
                raise FeedClosed
            self._video_waiter = asyncio.get_running_loop().create_future()
            try:
                await self._video_waiter
            finally:
                self._video_waiter = None
        self.delivered += 1
        return self._video.popleft()

    async def next_audio(self) -> MediaPacket:
        if not self._active:
            self._stream._activate(self)
        while not self._audio:
            if self._closed:
                raise FeedClosed
            self._audio_waiter = asyncio.get_running_loop().create_future()
            try:
                await self._audio_waiter
            finally:
                self._audio_waiter = None
        self.delivered += 1
        return self._audio.popleft()

    def set_sink(self, kind: str, sink: Sink | None) -> None:
        """Hand this kind's packets to ``sink`` while nothing is queued (None: queue only)."""
        if kind == "video":
            self._video_sink = sink
        else:
            self._audio_sink = sink

    def request_keyframe(self) -> None:
        """The viewer lost a picture (PLI/FIR): ask the source, through the stream's limiter."""
        self._stream.request_keyframe()

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._stream._remove(self)
        self._video_sink = self._audio_sink = None
        self._video.clear()
        self._audio.clear()
        self._wake_video()
        self._wake_audio()

    # -- called by LiveStream ------------------------------------------------------------

    def _start(self, cache: list[MediaPacket]) -> None:
        self._active = True
        if not cache:
            self._skipping = True
            return
        # This viewer's own copies of the older cached frames (once per join, at most one
        # GOP), one 90 kHz tick apart, ending just before the newest, which is shared.
        newest = cache[-1].pts
        n = len(cache)
        for i, pkt in enumerate(cache[:-1]):
            self._video.append(_retimed(pkt, newest - (n - 1 - i)))
        self._video.append(cache[-1])
        self._wake_video()

    def _push(self, pkt: MediaPacket) -> None:
        # The per-packet, per-viewer hot path: keep it to a few comparisons.
        if pkt.kind == "video":
            queue = self._video
            if self._skipping:
                if not pkt.keyframe:
                    self.dropped += 1
                    return
                self._skipping = False
            elif len(queue) >= self._limit:
                # Too slow: what it has not read is older than anything worth showing.
                self.dropped += len(queue)
                queue.clear()
                if not pkt.keyframe:
                    self.dropped += 1
                    self._skipping = True
                    return
            if not queue and self._video_sink is not None:
                if self._video_sink(pkt):
                    self.delivered += 1
                    return
                self._video_sink = None
            queue.append(pkt)
            if self._video_waiter is not None:
                self._wake_video()
        else:
            queue = self._audio
            if len(queue) >= self._limit:
                # Opus frames stand alone: dropping the oldest is enough.
                queue.popleft()
                self.dropped += 1
            if not queue and self._audio_sink is not None:
                if self._audio_sink(pkt):
                    self.delivered += 1
                    return
                self._audio_sink = None
            queue.append(pkt)
            if self._audio_waiter is not None:
                self._wake_audio()

    def _wake_video(self) -> None:
        w = self._video_waiter
        if w is not None and not w.done():
            w.set_result(None)

    def _wake_audio(self) -> None:
        w = self._audio_waiter
        if w is not None and not w.done():
            w.set_result(None)


def _retimed(pkt: MediaPacket, pts: int) -> MediaPacket:
    return make_packet(pkt.kind, bytes(pkt.packet), pts, pkt.packet.time_base, pkt.keyframe, pkt.wallclock)


class LiveStream:
    """One stream: at most one source publishing, any number of viewers reading."""

    def __init__(self, slug: str, settings: StreamSettings, *, clock: Callable[[], float] = time.monotonic):
        self.slug = slug
        self._settings = settings
        self._clock = clock
        self._ids = itertools.count(1)
        self._pending: set[ViewerFeed] = set()
        # A list, not a set: publish iterates it for every packet, and list iteration is
        # the cheapest; removal is O(viewers) but happens once per viewer.
        self._active: list[ViewerFeed] = []
        self._gop: list[MediaPacket] = []
        self._gop_valid = False
        self._gop_limit = max(1, settings.viewer_queue_packets)
        self._source: PacketSource | None = None
        self._awaiting_keyframe = True  # a new source starts at its first keyframe
        self._keyframes = KeyframeRequests(settings.keyframe_min_interval_s, clock)
        self.stats = StreamStats(clock=clock)
        # The RTP payloads of recent packets, cut once for all the stream's fast senders.
        self.payloads = PayloadCache()
        # Timestamps continue across a change of source, so the viewers who stay
        # connected see a pause, not a jump back in time (RTP timestamps come from pts).
        self._pts_offset: dict[str, int] = {"video": 0, "audio": 0}
        self._last_pts: dict[str, tuple[int, float]] = {}  # kind -> (pts out, clock())
        self._rebase: set[str] = set()
        self._closed = False

    # -- source side ---------------------------------------------------------------------

    @property
    def source(self) -> PacketSource | None:
        return self._source

    @property
    def live(self) -> bool:
        """A source is attached and its first keyframe has come."""
        return self._source is not None and not self._awaiting_keyframe

    @property
    def has_audio(self) -> bool:
        return self._source is not None and self._source.has_audio

    def _attach(self, source: PacketSource) -> None:
        self._source = source
        self._awaiting_keyframe = True
        self._gop = []
        self._gop_valid = False
        self._rebase = set(self._last_pts)
        self._keyframes.set_target(source.request_keyframe)

    def _detach(self) -> None:
        self._source = None
        self._awaiting_keyframe = True
        self._gop = []
        self._gop_valid = False
        self._keyframes.set_target(None)
        self.stats.went_offline()

    def publish(self, pkt: MediaPacket) -> None:
        """Hand one packet to every viewer. Called on the event loop by the attached source's
        Publication; never blocks, whatever the viewers do."""
        is_video = pkt.kind == "video"
        if self._awaiting_keyframe:
            if not (is_video and pkt.keyframe):
                return  # nothing before a new source's first keyframe is decodable
            self._awaiting_keyframe = False
            self.stats.went_live()
        self._retime(pkt)
        self.stats.on_packet(pkt)
        if is_video and pkt.keyframe:
            self._gop = [pkt]
            self._gop_valid = True
            self._keyframes.keyframe_published()
        elif is_video and self._gop_valid:
            if len(self._gop) < self._gop_limit:
                self._gop.append(pkt)
            else:
                # A GOP longer than a viewer's queue could not be replayed anyway; new
                # viewers then wait for (and ask for) the next keyframe.
                self._gop = []
                self._gop_valid = False
        for feed in self._active:
            feed._push(pkt)

    def _retime(self, pkt: MediaPacket) -> None:
        kind = pkt.kind
        if kind in self._rebase:
            self._rebase.discard(kind)
            last_pts, last_at = self._last_pts[kind]
            rate = 1 / pkt.packet.time_base if pkt.packet.time_base else 90_000
            # Continue from where the previous source stopped, plus the time it was away
            # (at least one 20 ms step so timestamps strictly increase).
            gap = max(int((self._clock() - last_at) * rate), int(rate * 0.02))
            self._pts_offset[kind] = last_pts + gap - pkt.pts
        offset = self._pts_offset[kind]
        if offset:
            # The packet is still the source's and not yet shared: set it once here.
            pkt.packet.pts = pkt.pts + offset
            pkt.packet.dts = pkt.packet.pts
        self._last_pts[kind] = (pkt.pts, self._clock())

    # -- viewer side ---------------------------------------------------------------------

    def add_viewer(self) -> ViewerFeed:
        if self._closed:
            raise FeedClosed(f"stream {self.slug} was removed")
        feed = ViewerFeed(self, next(self._ids), max(1, self._settings.viewer_queue_packets))
        self._pending.add(feed)
        return feed

    def _activate(self, feed: ViewerFeed) -> None:
        if feed.closed or feed.active:
            return
        self._pending.discard(feed)
        self._active.append(feed)
        feed._start(self._gop if self._gop_valid else [])
        if not self._gop_valid:
            self.request_keyframe()

    def _remove(self, feed: ViewerFeed) -> None:
        self._pending.discard(feed)
        try:
            self._active.remove(feed)
        except ValueError:
            pass

    def request_keyframe(self) -> None:
        self._keyframes.request()

    @property
    def viewers(self) -> int:
        return len(self._active) + len(self._pending)

    def feeds(self) -> list[ViewerFeed]:
        return [*self._active, *self._pending]

    def state(self) -> StreamState:
        s = self.stats
        return StreamState(
            slug=self.slug,
            status="live" if self.live else "offline",
            source=self._source.kind if self._source is not None else None,
            video_codec=s.video_codec,
            audio_codec=s.audio_codec,
            width=s.width,
            height=s.height,
            fps=round(s.fps(), 1),
            bitrate_bps=s.bitrate_bps(),
            viewers=self.viewers,
            uptime_s=round(s.uptime_s(), 1),
            packets=s.packets,
            keyframes=s.keyframes,
            keyframe_requests=self._keyframes.forwarded,
            viewer_drops=sum(f.dropped for f in self._active),
        )

    def close(self) -> None:
        """Remove the stream: every viewer's feed ends (their sessions then close)."""
        self._closed = True
        self._keyframes.close()
        for feed in self.feeds():
            feed.close()
        self.payloads.clear()
