"""A moving test picture with the wall-clock time written into it, for the demo and for
measuring latency.

Each frame carries the time it was made twice:

* machine-readable: a row of black and white blocks across the top, 42 bits of
  ``time.time()`` in milliseconds and a 6-bit check, big enough to survive H.264 at
  any sensible bit rate; ``decode_wallclock`` reads it back from a decoded frame, so a
  test or a benchmark on the same machine gets glass-to-glass latency per frame;
* human-readable: the local time to the millisecond, in a 5×7 pixel font.

Under them the picture scrolls and a box bounces, so a frozen stream is obvious.
The frames are encoded once (``H264Encoder``) and published to every viewer; an Opus
beep on every wall-clock second can go with them (``audio=True``).
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from types import MappingProxyType

import av
import numpy as np

from stream.encoder import EncoderSettings, H264Encoder
from stream.hub import Publication, StreamHub
from stream.packets import AUDIO_TIME_BASE, MediaPacket, make_packet
from stream.settings import StreamSettings

log = logging.getLogger(__name__)

TIMECODE_BITS = 48  # 42 bits of milliseconds (until the year 2109) + 6 check bits
_MS_BITS = 42
_BLACK, _WHITE = 16, 235  # video-range luma
_MIN_WIDTH, _MIN_HEIGHT = 160, 90

_FONT_ROWS = MappingProxyType(
    {
        "0": (" ### ", "#   #", "#  ##", "# # #", "##  #", "#   #", " ### "),
        "1": ("  #  ", " ##  ", "  #  ", "  #  ", "  #  ", "  #  ", " ### "),
        "2": (" ### ", "#   #", "    #", "   # ", "  #  ", " #   ", "#####"),
        "3": ("#####", "   # ", "  #  ", "   # ", "    #", "#   #", " ### "),
        "4": ("   # ", "  ## ", " # # ", "#  # ", "#####", "   # ", "   # "),
        "5": ("#####", "#    ", "#### ", "    #", "    #", "#   #", " ### "),
        "6": ("  ## ", " #   ", "#    ", "#### ", "#   #", "#   #", " ### "),
        "7": ("#####", "    #", "   # ", "  #  ", " #   ", " #   ", " #   "),
        "8": (" ### ", "#   #", "#   #", " ### ", "#   #", "#   #", " ### "),
        "9": (" ### ", "#   #", "#   #", " ####", "    #", "   # ", " ##  "),
        ":": ("     ", "  #  ", "  #  ", "     ", "  #  ", "  #  ", "     "),
        ".": ("     ", "     ", "     ", "     ", "     ", " ##  ", " ##  "),
    }
)


class _Layout:
    """Where the time code and the clock sit in a W×H picture (shared by writer and reader)."""

    def __init__(self, width: int, height: int) -> None:
        if width < _MIN_WIDTH or height < _MIN_HEIGHT:
            raise ValueError(f"test pattern needs at least {_MIN_WIDTH}x{_MIN_HEIGHT}, got {width}x{height}")
        self.cell_w = width // (TIMECODE_BITS + 2)
        self.cell_h = max(16, height // 24) & ~1
        self.left = self.cell_w  # one cell of margin
        self.top = self.cell_h // 2
        self.band_h = self.top * 2 + self.cell_h  # black band behind the code
        self.scale = max(2, height // 90)  # font pixel size
        self.text_top = self.band_h + self.scale * 2

    def cells(self) -> list[tuple[int, int, int, int]]:
        """(y0, y1, x0, x1) of each bit's block, most significant first."""
        y0, y1 = self.top, self.top + self.cell_h
        return [
            (y0, y1, self.left + i * self.cell_w, self.left + (i + 1) * self.cell_w)
            for i in range(TIMECODE_BITS)
        ]


def _check_bits(ms: int) -> int:
    # Sum of the 6-bit groups, xor a constant so an all-black row does not pass.
    total = 0
    v = ms
    while v:
        total += v & 0x3F
        v >>= 6
    return (total & 0x3F) ^ 0x2A


def _timecode_value(ms: int) -> int:
    return ((ms & ((1 << _MS_BITS) - 1)) << 6) | _check_bits(ms)


def decode_wallclock(image: np.ndarray) -> float:
    """The ``time.time()`` written into a test-pattern frame, in seconds.

    ``image``: a decoded frame as ``frame.to_ndarray(format="gray")`` (H×W), the luma
    plane, or RGB (H×W×3). Raises ValueError if the time code does not check out
    (not a test-pattern frame, or damaged beyond reading).
    """
    if image.ndim == 3:
        image = image[..., :3].mean(axis=2)
    height, width = image.shape[:2]
    layout = _Layout(width, height)
    value = 0
    for y0, y1, x0, x1 in layout.cells():
        # The middle half of the block: edges blur under compression and scaling.
        dy, dx = max(1, (y1 - y0) // 4), max(1, (x1 - x0) // 4)
        value = (value << 1) | int(image[y0 + dy : y1 - dy, x0 + dx : x1 - dx].mean() > 128)
    ms, check = value >> 6, value & 0x3F
    if check != _check_bits(ms):
        raise ValueError("no valid time code in this frame")
    return ms / 1000.0


class _Painter:
    """Draws frames into one reusable I420 buffer with numpy (no per-frame allocation
    besides the VideoFrame PyAV copies the buffer into)."""

    def __init__(self, width: int, height: int, *, busy: bool = False) -> None:
        if width % 2 or height % 2:
            raise ValueError(f"test pattern size must be even, got {width}x{height}")
        self.width, self.height = width, height
        self.layout = _Layout(width, height)
        self._buf = np.empty(width * height * 3 // 2, dtype=np.uint8)
        ysize, csize = width * height, width * height // 4
        self._y = self._buf[:ysize].reshape(height, width)
        self._u = self._buf[ysize : ysize + csize].reshape(height // 2, width // 2)
        self._v = self._buf[ysize + csize :].reshape(height // 2, width // 2)
        # A background twice as wide as the picture, scrolled by slicing (one copy a frame).
        xs = np.arange(2 * width)
        ys = np.arange(height)[:, None]
        bars = (xs // max(1, width // 8)) % 8
        self._bg_y = (60 + (bars * 18) + (ys * 40 // height)).astype(np.uint8)
        cxs = np.arange(width)  # chroma: width (== 2 * width / 2) columns
        cbars = (cxs // max(1, width // 16)) % 8
        self._bg_u = np.broadcast_to((128 + (cbars - 4) * 14).astype(np.uint8), (height // 2, width)).copy()
        self._bg_v = np.broadcast_to((128 + (3 - cbars) * 14).astype(np.uint8), (height // 2, width)).copy()
        s = self.layout.scale
        self._glyphs = {
            ch: np.kron(np.array([[c == "#" for c in row] for row in rows]), np.ones((s, s), dtype=bool))
            for ch, rows in _FONT_ROWS.items()
        }
        self._box = max(8, height // 8) & ~1
        # "Busy": a strip of fresh noise in the bottom quarter. A flat test picture
        # compresses to a fraction of the configured bit rate; a camera does not. With
        # more noise pictures than the encoder keeps references, every frame's strip is
        # new to it, so the rate control spends the whole budget, as with a real camera
        # (benchmarks need realistic packet counts per frame).
        self._noise: list[np.ndarray] = []
        if busy:
            rng = np.random.default_rng(1)
            strip = (height // 4) & ~1
            self._noise = [rng.integers(16, 236, size=(strip, width), dtype=np.uint8) for _ in range(8)]

    def paint(self, n: int, wallclock: float) -> av.VideoFrame:
        w, h, lay = self.width, self.height, self.layout
        y, u, v = self._y, self._u, self._v
        off = (n * 4) % w & ~1  # even, so luma and chroma scroll together
        y[:] = self._bg_y[:, off : off + w]
        u[:] = self._bg_u[:, off // 2 : off // 2 + w // 2]
        v[:] = self._bg_v[:, off // 2 : off // 2 + w // 2]
        # Bouncing box.
        b = self._box
        span_x, span_y = w - b, h - lay.band_h - b
        bx = abs((n * 6) % (2 * span_x) - span_x) & ~1
        by = (lay.band_h + abs((n * 4) % (2 * span_y) - span_y)) & ~1
        y[by : by + b, bx : bx + b] = 200
        if self._noise:
            noise = self._noise[n % len(self._noise)]
            y[h - noise.shape[0] :] = noise
        u[by // 2 : (by + b) // 2, bx // 2 : (bx + b) // 2] = 90
        v[by // 2 : (by + b) // 2, bx // 2 : (bx + b) // 2] = 200
        # Time code on a black, colourless band.
        y[: lay.band_h] = _BLACK
        u[: lay.band_h // 2] = 128
        v[: lay.band_h // 2] = 128
        value = _timecode_value(int(wallclock * 1000))
        for i, (y0, y1, x0, x1) in enumerate(lay.cells()):
            if (value >> (TIMECODE_BITS - 1 - i)) & 1:
                y[y0:y1, x0:x1] = _WHITE
        self._text(
            time.strftime("%H:%M:%S", time.localtime(wallclock)) + f".{int(wallclock * 1000) % 1000:03d}"
        )
        frame = av.VideoFrame.from_ndarray(self._buf.reshape(h * 3 // 2, w), format="yuv420p")
        return frame

    def _text(self, text: str) -> None:
        s, lay = self.layout.scale, self.layout
        x, top = lay.left, lay.text_top
        width = len(text) * 6 * s + 2 * s
        region = self._y[top - s : top + 8 * s, x - s : x - s + width]
        region[:] = _BLACK
        self._u[(top - s) // 2 : (top + 8 * s) // 2, (x - s) // 2 : (x - s + width) // 2] = 128
        self._v[(top - s) // 2 : (top + 8 * s) // 2, (x - s) // 2 : (x - s + width) // 2] = 128
        for ch in text:
            glyph = self._glyphs.get(ch)
            if glyph is not None:
                self._y[top : top + glyph.shape[0], x : x + glyph.shape[1]][glyph] = _WHITE
            x += 6 * s


class _Beeper:
    """Opus audio: silence, with an 880 Hz beep in the first 100 ms of every wall-clock
    second, so sound and picture can be lined up against the clock in the frame."""

    RATE = 48_000
    SAMPLES = 960  # 20 ms, one Opus frame

    def __init__(self) -> None:
        ctx = av.CodecContext.create("libopus", "w")
        assert isinstance(ctx, av.AudioCodecContext)
        ctx.sample_rate = self.RATE
        ctx.layout = "stereo"
        ctx.format = "s16"
        ctx.bit_rate = 48_000
        ctx.time_base = AUDIO_TIME_BASE
        ctx.open()
        self._ctx = ctx
        self._offsets = np.arange(self.SAMPLES) / self.RATE

    def encode(self, k: int, wallclock: float) -> list[MediaPacket]:
        t = wallclock + self._offsets
        beep = (t % 1.0) < 0.1
        mono = (np.sin(2 * np.pi * 880 * t) * 6000 * beep).astype(np.int16)
        frame = av.AudioFrame.from_ndarray(np.repeat(mono, 2)[None, :], format="s16", layout="stereo")
        frame.sample_rate = self.RATE
        frame.pts = k * self.SAMPLES
        frame.time_base = AUDIO_TIME_BASE
        # One packet per 20 ms frame; our own pts (the encoder's are shifted by its
        # pre-skip), on the same timeline as the video's.
        return [
            make_packet("audio", bytes(p), k * self.SAMPLES, AUDIO_TIME_BASE, False, wallclock)
            for p in self._ctx.encode(frame)
        ]


class TestPatternSource:
    """Paints, encodes once and publishes the test pattern into one stream.

    Painting and encoding (and the optional Opus beep) run in one thread of their own,
    paced by the monotonic clock; if the machine falls behind, frames are skipped
    rather than sent late, so the picture's clock stays the wall clock.
    """

    __test__ = False  # a class named Test* is not a pytest test class

    kind = "test-pattern"

    def __init__(
        self,
        hub: StreamHub,
        slug: str,
        settings: StreamSettings,
        *,
        width: int | None = None,
        height: int | None = None,
        fps: int | None = None,
        busy: bool = False,
        audio: bool = False,
    ) -> None:
        self._hub = hub
        self.slug = slug
        self.width = width or settings.test_pattern_width
        self.height = height or settings.test_pattern_height
        self.fps = fps or settings.test_pattern_fps
        self.has_audio = audio
        self._painter = _Painter(self.width, self.height, busy=busy)  # checks the size early
        self._encoder = H264Encoder(EncoderSettings.from_stream(settings, fps=self.fps))
        self._publication: Publication | None = None
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()
        self.frames_sent = 0
        self.frames_skipped = 0
        self.cpu_seconds = 0.0  # this source's thread: painting + encoding

    def request_keyframe(self) -> None:
        self._encoder.request_keyframe()

    async def start(self) -> None:
        """Attach to the stream (``StreamBusy`` if it has a publisher) and start sending."""
        if self._thread is not None:
            return
        self._publication = self._hub.attach(self.slug, self)
        self._stop.clear()
        loop = asyncio.get_running_loop()
        self._thread = threading.Thread(
            target=self._run, args=(loop, self._publication), name=f"testpattern-{self.slug}", daemon=True
        )
        self._thread.start()
        log.info("test pattern on %s: %dx%d at %d fps", self.slug, self.width, self.height, self.fps)

    async def stop(self) -> None:
        thread, self._thread = self._thread, None
        if thread is not None:
            self._stop.set()
            await asyncio.to_thread(thread.join)
        if self._publication is not None:
            self._publication.close()
            self._publication = None

    def _run(self, loop: asyncio.AbstractEventLoop, publication: Publication) -> None:
        video_period, audio_period = 1.0 / self.fps, _Beeper.SAMPLES / _Beeper.RATE
        beeper = _Beeper() if self.has_audio else None
        started = time.monotonic()
        n = k = 0  # video frames, audio frames since start
        cpu0 = time.thread_time()
        try:
            while not self._stop.is_set():
                due_video = started + n * video_period
                due_audio = started + k * audio_period if beeper is not None else float("inf")
                wait = min(due_video, due_audio) - time.monotonic()
                if wait > 0:
                    if self._stop.wait(wait):
                        break
                    continue
                wallclock = time.time()
                if due_audio < due_video:
                    assert beeper is not None
                    if -wait > 0.2:  # far behind: resume at now, a gap beats late sound
                        k = int((time.monotonic() - started) / audio_period)
                    packets = beeper.encode(k, wallclock)
                    k += 1
                else:
                    if -wait > video_period:
                        skip = int(-wait / video_period)
                        n += skip
                        self.frames_skipped += skip
                    frame = self._painter.paint(n, wallclock)
                    packets = self._encoder.encode(frame, round(n * 90_000 / self.fps), wallclock)
                    self.frames_sent += 1
                    n += 1
                self.cpu_seconds = time.thread_time() - cpu0
                if packets and not self._deliver(loop, publication, packets):
                    break
        except Exception:
            log.exception("test pattern on %s stopped", self.slug)
        finally:
            self._encoder.close()

    @staticmethod
    def _deliver(
        loop: asyncio.AbstractEventLoop, publication: Publication, packets: list[MediaPacket]
    ) -> bool:
        for pkt in packets:
            try:
                loop.call_soon_threadsafe(publication.publish, pkt)
            except RuntimeError:  # the loop is closed: the app is gone
                return False
        return True
