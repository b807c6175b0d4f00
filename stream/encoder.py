"""One H.264 encoder per stream: decoded frames in, shared MediaPackets out.

Every source that is not already H.264 (a WHIP publisher decoded once, the test
pattern) goes through exactly one of these, however many viewers watch. The output
suits every WebRTC viewer and a viewer joining at any keyframe:

* constrained baseline (profile_idc 66 with constraint_set1: no B-frames, no CABAC),
  which every browser decodes and which ``packetization-mode=1`` carries;
* ``tune=zerolatency``: no lookahead, no frame delay, a packet out per frame in;
* SPS and PPS in front of every keyframe (x264 ``repeat-headers``), Annex B;
* a keyframe on request (the stream's rate-limited viewer PLIs) and at least every
  ``keyframe_interval_s`` of media time, so late joiners and lossy viewers recover.

``H264Encoder`` is the synchronous core (one thread at a time); ``EncoderWorker`` runs
it in its own thread so libx264 never blocks the event loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from fractions import Fraction

import av
from av.video.frame import PictureType

from stream.packets import VIDEO_TIME_BASE, MediaPacket, make_packet
from stream.settings import StreamSettings

log = logging.getLogger(__name__)

VIDEO_CLOCK = 90_000


@dataclass(frozen=True, slots=True)
class EncoderSettings:
    bitrate_bps: int = 1_500_000
    fps: int = 30  # nominal: rate control and the encoder's own keyframe backstop
    keyframe_interval_s: float = 2.0
    # veryfast is the lightest preset that keeps 720p text (the test pattern's clock,
    # a label on a crate) readable at 1.5 Mbps; ultrafast is for weak machines.
    preset: str = "veryfast"
    threads: int = 0  # 0: libx264 decides (sliced threads under zerolatency)

    @classmethod
    def from_stream(cls, settings: StreamSettings, fps: int | None = None) -> EncoderSettings:
        return cls(
            bitrate_bps=settings.video_bitrate_bps,
            fps=fps or settings.test_pattern_fps,
            keyframe_interval_s=settings.keyframe_interval_s,
        )


class H264Encoder:
    """libx264 through PyAV. Not thread-safe except ``request_keyframe``: one thread encodes."""

    def __init__(self, settings: EncoderSettings) -> None:
        self._settings = settings
        self._ctx: av.VideoCodecContext | None = None
        self._size: tuple[int, int] | None = None
        # Set from any thread (the event loop forwarding a PLI), read and reset by the
        # encoding thread; bool stores are atomic under the GIL. A request landing between
        # the read and the reset is lost, which the viewer's next PLI (or the periodic
        # keyframe) makes good: not worth a lock on every frame.
        self._force_keyframe = True
        self._last_key_pts: int | None = None
        self._last_pts: int | None = None
        # pts -> wallclock of frames inside the encoder (zerolatency: at most one).
        self._wallclocks: dict[int, float] = {}
        self.frames_in = 0
        self.keyframes_out = 0

    def request_keyframe(self) -> None:
        self._force_keyframe = True

    def _open(self, width: int, height: int) -> av.VideoCodecContext:
        s = self._settings
        ctx = av.CodecContext.create("libx264", "w")
        assert isinstance(ctx, av.VideoCodecContext)
        ctx.width = width
        ctx.height = height
        ctx.pix_fmt = "yuv420p"
        ctx.time_base = VIDEO_TIME_BASE
        ctx.framerate = Fraction(s.fps, 1)
        ctx.bit_rate = s.bitrate_bps
        if s.threads:
            ctx.thread_count = s.threads
        keyint = max(1, round(s.fps * s.keyframe_interval_s))
        # VBV at one second of the bit rate: a keyframe may be large, but the rate does
        # not wander far above what a phone on mobile data can take.
        params = [
            f"keyint={keyint}",
            f"min-keyint={keyint}",
            "scenecut=0",
            "repeat-headers=1",
            "annexb=1",
            f"vbv-maxrate={s.bitrate_bps // 1000}",
            f"vbv-bufsize={s.bitrate_bps // 1000}",
        ]
        ctx.options = {
            "preset": s.preset,
            "tune": "zerolatency",
            # x264's "baseline" sets constraint_set1: constrained baseline (42e0xx).
            "profile": "baseline",
            # A forced I picture is an IDR: decodable by a viewer who joins there.
            "forced-idr": "1",
            "x264-params": ":".join(params),
        }
        ctx.open()
        return ctx

    def encode(self, frame: av.VideoFrame, pts: int, wallclock: float) -> list[MediaPacket]:
        """Encode one frame. ``pts`` is in 1/90000 s on the stream's timeline; ``wallclock``
        is time.time() at capture (carried into the packet for latency figures)."""
        width, height = frame.width & ~1, frame.height & ~1
        if frame.format.name != "yuv420p" or (width, height) != (frame.width, frame.height):
            # 4:2:0 needs even sizes; phones and decoders sometimes hand us odd ones.
            frame = frame.reformat(width=width, height=height, format="yuv420p")
        if self._size != (width, height):
            self._flush_context()
            self._ctx = self._open(width, height)
            self._size = (width, height)
            self._force_keyframe = True
        if self._last_pts is not None and pts <= self._last_pts:
            pts = self._last_pts + 1  # the encoder refuses non-increasing timestamps
        self._last_pts = pts
        key_due = self._force_keyframe or (
            self._last_key_pts is not None
            and pts - self._last_key_pts >= self._settings.keyframe_interval_s * VIDEO_CLOCK
        )
        if key_due:
            self._force_keyframe = False
            self._last_key_pts = pts
        frame.pict_type = PictureType.I if key_due else PictureType.NONE
        frame.pts = pts
        frame.time_base = VIDEO_TIME_BASE
        self._wallclocks[pts] = wallclock
        self.frames_in += 1
        assert self._ctx is not None
        return self._collect(self._ctx.encode(frame))

    def _collect(self, packets: list[av.Packet]) -> list[MediaPacket]:
        out = []
        for p in packets:
            pts = int(p.pts) if p.pts is not None else (self._last_pts or 0)
            wallclock = self._wallclocks.pop(pts, time.time())
            key = bool(p.is_keyframe)
            if key:
                self.keyframes_out += 1
                self._last_key_pts = pts
            out.append(make_packet("video", bytes(p), pts, VIDEO_TIME_BASE, key, wallclock))
        if len(self._wallclocks) > 64:
            # Frames the encoder swallowed (it may drop under VBV pressure): forget them.
            for k in sorted(self._wallclocks)[:-8]:
                del self._wallclocks[k]
        return out

    def _flush_context(self) -> list[MediaPacket]:
        if self._ctx is None:
            return []
        with contextlib.suppress(av.FFmpegError, ValueError):
            return self._collect(self._ctx.encode(None))
        return []

    def close(self) -> list[MediaPacket]:
        """Flush what the encoder still holds and release it."""
        out = self._flush_context()
        self._ctx = None
        self._size = None
        return out


class EncoderWorker:
    """An H264Encoder in its own thread, fed from the event loop.

    ``submit`` never blocks: it leaves the frame in a one-frame mailbox. If the encoder
    is still busy with the previous frame when the next arrives, the waiting one is
    replaced, because for live video a late frame is worth less than a dropped one.
    Packets come back on the event loop through ``on_packet`` (for example
    ``Publication.publish``).
    """

    def __init__(
        self,
        settings: EncoderSettings,
        on_packet: Callable[[MediaPacket], None],
        *,
        name: str = "h264-encoder",
    ) -> None:
        self.encoder = H264Encoder(settings)
        self._on_packet = on_packet
        self._name = name
        self._cond = threading.Condition()
        self._mailbox: tuple[av.VideoFrame, int, float] | None = None
        self._stopping = False
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self.frames_dropped = 0
        self.encode_seconds = 0.0  # thread CPU spent encoding, for figures

    async def start(self) -> None:
        if self._thread is not None:
            return
        self._loop = asyncio.get_running_loop()
        self._stopping = False
        self._thread = threading.Thread(target=self._run, name=self._name, daemon=True)
        self._thread.start()

    async def stop(self) -> None:
        thread = self._thread
        if thread is None:
            return
        with self._cond:
            self._stopping = True
            self._cond.notify()
        await asyncio.to_thread(thread.join)
        self._thread = None

    def submit(self, frame: av.VideoFrame, pts: int, wallclock: float | None = None) -> None:
        with self._cond:
            if self._mailbox is not None:
                self.frames_dropped += 1
            self._mailbox = (frame, pts, time.time() if wallclock is None else wallclock)
            self._cond.notify()

    def request_keyframe(self) -> None:
        self.encoder.request_keyframe()

    def _run(self) -> None:
        loop = self._loop
        assert loop is not None
        while True:
            with self._cond:
                while self._mailbox is None and not self._stopping:
                    self._cond.wait()
                if self._stopping:
                    break
                frame, pts, wallclock = self._mailbox  # type: ignore[misc]
                self._mailbox = None
            t0 = time.thread_time()
            try:
                packets = self.encoder.encode(frame, pts, wallclock)
            except Exception:
                log.exception("%s: encoding a %dx%d frame failed", self._name, frame.width, frame.height)
                continue
            self.encode_seconds += time.thread_time() - t0
            for pkt in packets:
                try:
                    loop.call_soon_threadsafe(self._on_packet, pkt)
                except RuntimeError:  # the loop closed under us: nobody to deliver to
                    return
        self.encoder.close()
