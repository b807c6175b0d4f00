"""RTSP pull from an IP camera: H.264 passed through without decoding, audio as Opus.

Threading: PyAV's RTSP demuxer blocks (network reads, the DESCRIBE/SETUP handshake), so one
worker thread per source opens the camera, demuxes, repairs the H.264 bitstream and, when
the camera's audio is not Opus, transcodes it. Finished ``MediaPacket``s reach the event
loop through ``loop.call_soon_threadsafe``; ``publish`` is only ever called on the loop.
The loop never waits on the camera: ``stop()`` sets an event and joins the thread from an
executor.

Video: the camera's access units are passed through (a camera already spent the CPU on
encoding; decoding and re-encoding would cost a core per stream and add a frame of
latency). What a viewer joining mid-stream needs is SPS/PPS in front of every IDR, and many
cameras send them once (in the SDP's sprop-parameter-sets, so PyAV's extradata) or only in
band at start-up: ``H264ParameterSets`` keeps the latest ones seen and puts them in front of
each IDR access unit that lacks them.

Reconnects: forever until ``stop()``, waiting ``rtsp_reconnect_min_s``, doubling to
``rtsp_reconnect_max_s``; back to the minimum after a session that stayed up
``_STABLE_SESSION_S``. Timestamps (90 kHz video, 48 kHz audio) never go backwards, across
camera clock resets and reconnects alike (``_Timeline``).

Credentials: the URL's userinfo never leaves this module unmasked (status, exceptions and
log lines go through ``mask_url`` / ``_Scrubber``), because FFmpeg's error messages echo the
URL they were given.
"""

from __future__ import annotations

import asyncio
import logging
import re
import threading
import time
import traceback
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from fractions import Fraction
from types import MappingProxyType
from typing import Literal
from urllib.parse import unquote

import av
import av.error

from stream.packets import AUDIO_TIME_BASE, VIDEO_TIME_BASE, MediaPacket, make_packet
from stream.settings import StreamSettings

log = logging.getLogger(__name__)

State = Literal["idle", "connecting", "live", "reconnecting", "error", "stopped"]

# Audio the camera may send and what we do with it. Opus is what WebRTC viewers play, so it
# passes through; the others are decoded and encoded to Opus once per stream here.
_AUDIO_PASSTHROUGH = frozenset({"opus"})
_AUDIO_TRANSCODE = frozenset({"aac", "pcm_alaw", "pcm_mulaw"})
_CODEC_NAMES = MappingProxyType(
    {"hevc": "H.265/HEVC", "h264": "H.264", "mjpeg": "MJPEG", "mpeg4": "MPEG-4 Part 2"}
)

# A session that stayed live this long resets the backoff: a camera that drops after hours
# is retried at once, one that drops a second after every connect is not hammered.
_STABLE_SESSION_S = 10.0
# A forward timestamp jump larger than this is a camera clock reset, not a real gap: the
# output timeline is re-based on the wall clock instead of inheriting a jump viewers'
# jitter buffers would wait out.
_MAX_TS_JUMP_S = 10.0
_OPUS_RATE = 48_000
_OPUS_FRAME = 960  # 20 ms, the frame size WebRTC endpoints expect
_ANNEXB_START = b"\x00\x00\x00\x01"


# ---------------------------------------------------------------------------------------
# Credentials


def mask_url(url: str) -> str:
    """``rtsp://user:pass@cam:554/x`` → ``rtsp://***@cam:554/x``; URLs without userinfo unchanged.

    Cuts at the LAST ``@``: a password with an unescaped ``@`` or ``/`` then still ends up
    masked (at worst part of the path is masked too, which leaks nothing)."""
    scheme, sep, rest = url.partition("://")
    if not sep:
        return "***" if "@" in url else url
    at = rest.rfind("@")
    if at < 0:
        return url
    return f"{scheme}://***@{rest[at + 1 :]}"


class _Scrubber:
    """Removes one URL's credentials from any text (FFmpeg errors, tracebacks)."""

    _ANY_USERINFO = re.compile(r"([a-zA-Z][a-zA-Z0-9+.-]*://)[^\s'\"<>]*@")

    def __init__(self, url: str) -> None:
        self._url = url
        self._masked = mask_url(url)
        secrets: set[str] = set()
        rest = url.partition("://")[2]
        at = rest.rfind("@")
        if at >= 0:
            userinfo = rest[:at]
            user, _, password = userinfo.partition(":")
            # Raw and percent-decoded forms: FFmpeg may print either. Very short values
            # (a 1–2 character user name) are left alone: replacing every "1" in a message
            # would garble it without hiding anything that identifies the camera.
            for s in (userinfo, user, password, unquote(userinfo), unquote(user), unquote(password)):
                if len(s) >= 3:
                    secrets.add(s)
        # Longest first, so "user:pass" goes before "pass" leaves a stray "user:".
        self._secrets = sorted(secrets, key=len, reverse=True)

    def __call__(self, text: str) -> str:
        text = text.replace(self._url, self._masked)
        text = self._ANY_USERINFO.sub(r"\1***@", text)
        for s in self._secrets:
            text = text.replace(s, "***")
        return text


# ---------------------------------------------------------------------------------------
# H.264 bitstream


def _split_annexb(data: bytes) -> list[bytes]:
    """NAL units of an Annex B buffer, without start codes (and without trailing zeros)."""
    nals: list[bytes] = []
    i = data.find(b"\x00\x00\x01")
    while i >= 0:
        start = i + 3
        j = data.find(b"\x00\x00\x01", start)
        end = len(data) if j < 0 else j
        # A 4-byte start code's leading zero (and trailing_zero_8bits) belong to no NAL.
        while end > start and data[end - 1] == 0:
            end -= 1
        if end > start:
            nals.append(data[start:end])
        i = j
    return nals


def _split_avcc(data: bytes, length_size: int) -> list[bytes]:
    """NAL units of a length-prefixed (MP4/avcC) buffer."""
    nals: list[bytes] = []
    i = 0
    while i + length_size <= len(data):
        n = int.from_bytes(data[i : i + length_size], "big")
        i += length_size
        if n == 0 or i + n > len(data):
            break
        nals.append(data[i : i + n])
        i += n
    return nals


def _first_ue(nal: bytes, skip: int) -> int | None:
    """The first Exp-Golomb ue(v) of a NAL's RBSP, ``skip`` bytes after the NAL header.

    Parameter-set ids are the only fields we read, so a 16-byte prefix with emulation
    prevention bytes removed is enough."""
    rbsp = nal[1 + skip : 1 + skip + 16].replace(b"\x00\x00\x03", b"\x00\x00")
    bits = int.from_bytes(rbsp, "big")
    width = len(rbsp) * 8
    zeros = 0
    while zeros < width and not (bits >> (width - 1 - zeros)) & 1:
        zeros += 1
    if 2 * zeros + 1 > width:
        return None
    value = (bits >> (width - 2 * zeros - 1)) & ((1 << (zeros + 1)) - 1)
    return value - 1


class H264ParameterSets:
    """Turns a camera's H.264 access units into self-contained Annex B ones.

    Keeps the latest SPS and PPS seen (from extradata or in band, by id, so a camera with
    several PPS keeps them all, and a new SPS replaces the old one after a resolution
    change) and puts them after the access unit delimiter of every IDR access unit that
    does not already carry both. Access units without IDR pass through untouched, so
    the common case costs one scan of the NAL headers and no copy."""

    def __init__(self, extradata: bytes | None = None) -> None:
        self._sps: dict[int, bytes] = {}
        self._pps: dict[int, bytes] = {}
        # Set from avcC extradata: the camera's packets are then length-prefixed.
        self._length_size: int | None = None
        if extradata:
            self._load_extradata(extradata)

    @property
    def ready(self) -> bool:
        return bool(self._sps) and bool(self._pps)

    def _remember(self, nal: bytes) -> None:
        t = nal[0] & 0x1F
        if t == 7:
            sid = _first_ue(nal, 3)  # after profile_idc, constraint flags, level_idc
            if sid is not None and sid < 32:
                self._sps[sid] = nal
        elif t == 8:
            pid = _first_ue(nal, 0)
            if pid is not None and pid < 256:
                self._pps[pid] = nal

    def _load_extradata(self, extradata: bytes) -> None:
        if extradata[0] == 1 and len(extradata) >= 7:
            # avcC (ISO/IEC 14496-15): lengthSizeMinusOne, then counted SPS and PPS lists.
            self._length_size = (extradata[4] & 0x03) + 1
            i = 5
            for count_mask in (0x1F, 0xFF):
                if i >= len(extradata):
                    break
                count = extradata[i] & count_mask
                i += 1
                for _ in range(count):
                    n = int.from_bytes(extradata[i : i + 2], "big")
                    self._remember(extradata[i + 2 : i + 2 + n])
                    i += 2 + n
        else:
            for nal in _split_annexb(extradata):
                self._remember(nal)

    def process(self, data: bytes) -> tuple[bytes, bool] | None:
        """(Annex B access unit, is_keyframe), or None for an access unit with no picture
        (parameter sets alone: remembered, not published) or before any SPS/PPS is known
        (no viewer could decode it)."""
        if self._length_size is not None and not data.startswith((b"\x00\x00\x01", _ANNEXB_START)):
            nals = _split_avcc(data, self._length_size)
            annexb = False
        else:
            nals = _split_annexb(data)
            annexb = True
        has_idr = has_vcl = False
        sps_before_idr = pps_before_idr = False
        for nal in nals:
            t = nal[0] & 0x1F
            if t == 5:
                has_idr = has_vcl = True
            elif 1 <= t <= 4:
                has_vcl = True
            elif t in (7, 8):
                self._remember(nal)
                if not has_idr:
                    sps_before_idr |= t == 7
                    pps_before_idr |= t == 8
        if not has_vcl or not self.ready:
            return None
        if not has_idr:
            return (data if annexb else _ANNEXB_START + _ANNEXB_START.join(nals)), False
        if annexb and sps_before_idr and pps_before_idr:
            return data, True
        # AUD first (H.264 7.4.1.2.3), then every parameter set we know, then the rest
        # without the AU's own copies (the stored ones are those same, latest, sets).
        head = [n for n in nals[:1] if n[0] & 0x1F == 9]
        rest = [n for n in nals[len(head) :] if n[0] & 0x1F not in (7, 8)]
        out = [*head, *self._sps.values(), *self._pps.values(), *rest]
        return _ANNEXB_START + _ANNEXB_START.join(out), True


# ---------------------------------------------------------------------------------------
# Timestamps


class _SourceClock:
    """Where a session's camera time lands on the source's output timeline.

    Shared by the video and the audio timeline of one source: FFmpeg aligns an RTSP
    session's streams with the camera's RTCP sender reports, and mapping both with one
    anchor keeps that lip sync. Output time is seconds since the source's first packet,
    so a new session (after a reconnect) continues where the wall clock says it should."""

    def __init__(self) -> None:
        self.epoch: float | None = None
        self._anchor: tuple[float, float] | None = None  # (camera s, output s)

    def new_session(self) -> None:
        self._anchor = None

    def elapsed(self, now: float) -> float:
        if self.epoch is None:
            self.epoch = now
        return now - self.epoch

    def offset_s(self, camera_s: float, now: float) -> float:
        if self._anchor is None:
            self._anchor = (camera_s, self.elapsed(now))
        return self._anchor[1] - self._anchor[0]


class _Timeline:
    """Maps a camera's timestamps of one kind onto an output clock that never goes backwards.

    Within a session, output = input (rescaled) + offset, so the camera's own frame timing
    and A/V alignment pass through. Where the input goes backwards, repeats, or leaps
    forward by more than ``_MAX_TS_JUMP_S`` (a camera reboot, an RTP timestamp reset, a new
    RTSP session after a reconnect that lands behind the last output), the offset is
    re-computed so the output continues from the last value plus the wall-clock time that
    really passed: viewers see a pause, never a rewind."""

    def __init__(self, rate: int, clock: _SourceClock) -> None:
        self._rate = rate
        self._clock = clock
        self._max_jump = int(_MAX_TS_JUMP_S * rate)
        self._offset: int | None = None
        self._last: int | None = None
        self._last_wall = 0.0

    @property
    def last(self) -> int | None:
        return self._last

    def new_session(self) -> None:
        self._offset = None

    def _continue(self, now: float, step: int) -> int:
        if self._last is None:
            return round(self._clock.elapsed(now) * self._rate)
        return self._last + max(step, round((now - self._last_wall) * self._rate))

    def map(self, ts: int | None, time_base: Fraction | None, now: float, step: int = 1) -> int:
        """``step``: the nominal duration of one unit (a frame), the least a re-based or
        untimed unit advances the clock by, so a burst of buffered frames after a
        reconnect does not get near-identical timestamps."""
        if ts is None or time_base is None:
            # No timestamp (FFmpeg's first parsed H.264 frame of a session has none):
            # continue from the last output without fixing an offset.
            out = self._continue(now, step)
        else:
            # Integer rescale, rounded: Fraction arithmetic per packet is needlessly slow.
            num, den = time_base.numerator * self._rate, time_base.denominator
            t = (2 * ts * num + den) // (2 * den)
            if self._offset is None:
                self._offset = round(self._clock.offset_s(float(ts * time_base), now) * self._rate)
                if self._last is not None and t + self._offset < self._last + step:
                    # Behind this kind's last output (an untimed first frame, or the camera's
                    # clock ran ahead of ours before a reconnect): start one step later.
                    self._offset = self._last + step - t
            out = t + self._offset
            if self._last is not None and (out <= self._last or out - self._last > self._max_jump):
                out = self._continue(now, step)
                self._offset = out - t
        self._last = out
        self._last_wall = now
        return out


# ---------------------------------------------------------------------------------------
# Status


@dataclass(frozen=True, slots=True)
class RtspStatus:
    """What a source is doing, for the API, /metrics and logs. Never holds credentials."""

    state: State
    message: str
    url: str  # masked
    since: float = field(default_factory=time.time)
    # reconnecting / error: when the next attempt starts (time.time()) and the delay.
    next_attempt_at: float | None = None
    next_attempt_in_s: float | None = None
    video_codec: str | None = None
    width: int | None = None
    height: int | None = None
    # The camera's audio codec and what we do with it: "passthrough", "transcode" or why not.
    audio_codec: str | None = None
    audio_mode: str | None = None
    video_packets: int = 0
    audio_packets: int = 0
    reconnects: int = 0


class RtspError(Exception):
    """A session ended for a reason worth a clear status line (message already masked)."""

    def __init__(self, message: str, state: State = "error") -> None:
        super().__init__(message)
        self.state = state


# ---------------------------------------------------------------------------------------
# Audio


class _OpusTranscoder:
    """Decodes the camera's audio and encodes Opus 48 kHz once, for every viewer."""

    def __init__(self, stream: av.audio.stream.AudioStream) -> None:
        self._decoder = stream.codec_context
        channels = min(2, max(1, stream.codec_context.channels or 1))
        layout = "stereo" if channels == 2 else "mono"
        self._resampler = av.AudioResampler(
            format="s16", layout=layout, rate=_OPUS_RATE, frame_size=_OPUS_FRAME
        )
        enc = av.CodecContext.create("libopus", "w")
        assert isinstance(enc, av.AudioCodecContext)
        enc.sample_rate = _OPUS_RATE
        enc.layout = layout
        enc.format = "s16"
        enc.bit_rate = 32_000 * channels
        enc.time_base = AUDIO_TIME_BASE
        enc.open()
        self._encoder = enc

    def transcode(self, packet: av.Packet, timeline: _Timeline, now: float) -> Iterator[tuple[bytes, int]]:
        """(Opus frame, pts at 48 kHz before the monotonic guard) for each frame ready."""
        for frame in self._decoder.decode(packet):
            # The decoded frame's time goes through the timeline first, so gaps and resets
            # in the camera's clock are handled once, the same way as for video.
            frame.pts = timeline.map(frame.pts, frame.time_base, now)
            frame.time_base = AUDIO_TIME_BASE
            for chunk in self._resampler.resample(frame):
                for out in self._encoder.encode(chunk):
                    yield bytes(out), int(out.pts or 0)


# ---------------------------------------------------------------------------------------
# The source


class RtspSource:
    """Pulls one camera over RTSP and publishes its media as ``MediaPacket``s.

    ``publish`` is called on ``loop`` for every packet (video: Annex B access units with
    SPS/PPS before each keyframe; audio: Opus frames). ``on_status`` (optional) is called
    on ``loop`` whenever ``status`` changes. Reconnects forever with exponential backoff
    (``settings.rtsp_reconnect_min_s`` … ``max_s``) until ``stop()``.
    """

    def __init__(
        self,
        url: str,
        publish: Callable[[MediaPacket], None],
        settings: StreamSettings,
        loop: asyncio.AbstractEventLoop | None = None,
        *,
        transport: Literal["tcp", "udp"] = "tcp",
        io_timeout_s: float = 5.0,
        on_status: Callable[[RtspStatus], None] | None = None,
    ) -> None:
        self._scrub = _Scrubber(url)
        if not url.lower().startswith(("rtsp://", "rtsps://")):
            raise ValueError(f"not an rtsp:// URL: {mask_url(url)}")
        if transport not in ("tcp", "udp"):
            raise ValueError(f"rtsp transport must be tcp or udp, not {transport!r}")
        self._url = url
        self.masked_url = mask_url(url)
        self._publish = publish
        self._settings = settings
        self._loop = loop
        self._transport = transport
        self._io_timeout_s = io_timeout_s
        self._on_status = on_status
        self._stop = threading.Event()
        self._stopped = False  # loop side: no publish() after stop() has returned
        self._thread: threading.Thread | None = None
        self._status = RtspStatus(state="idle", message="not started", url=self.masked_url)
        clock = _SourceClock()
        self._clock = clock
        self._video_tl = _Timeline(90_000, clock)
        self._audio_tl = _Timeline(_OPUS_RATE, clock)
        self._audio_guard: int | None = None

    def __repr__(self) -> str:
        return f"RtspSource({self.masked_url!r}, state={self._status.state!r})"

    @property
    def status(self) -> RtspStatus:
        # Replaced whole by the worker; reading one reference is atomic.
        return self._status

    # -- stream.sources.PacketSource -----------------------------------------------------

    @property
    def kind(self) -> str:
        return "rtsp"

    @property
    def has_audio(self) -> bool:
        """True once a session found camera audio we publish (Opus, or AAC/G.711 → Opus)."""
        return self._status.audio_mode in ("passthrough", "transcode to opus")

    def request_keyframe(self) -> None:
        """Ignored: a camera's encoder is out of reach over plain RTSP, so keyframes come
        at the camera's own GOP interval (the fan-out's GOP cache covers joins)."""

    async def start(self) -> None:
        if self._thread is not None:
            raise RuntimeError("RtspSource already started")
        if self._loop is None:
            self._loop = asyncio.get_running_loop()
        self._thread = threading.Thread(target=self._run, name=f"rtsp {self.masked_url}", daemon=True)
        self._set_status(state="connecting", message="connecting")
        self._thread.start()

    async def stop(self) -> None:
        """Stops reconnecting and closes the camera session. Usually prompt (the worker
        checks between packets and sleeps its backoff on an Event); a worker blocked inside
        FFmpeg on a dead camera is waited for up to its open timeout (2 × ``io_timeout_s``),
        and one that outlives even that exits by itself without publishing anything more."""
        self._stopped = True
        self._stop.set()
        thread = self._thread
        if thread is not None and thread.is_alive():
            await asyncio.to_thread(thread.join, 2 * self._io_timeout_s + 1.0)
            if thread.is_alive():
                log.warning(
                    "rtsp %s: worker still inside FFmpeg after stop; it will exit on its own", self.masked_url
                )
        self._set_status(state="stopped", message="stopped", next_attempt_at=None, next_attempt_in_s=None)

    # -- worker thread ------------------------------------------------------------------

    def _set_status(self, **changes: object) -> None:
        if self._stopped and changes.get("state") != "stopped":
            # A worker that outlived stop()'s join (stuck in FFmpeg) must not make a stopped
            # source look alive again.
            return
        if "state" in changes and changes["state"] != self._status.state:
            changes.setdefault("since", time.time())
        self._status = replace(self._status, **changes)  # type: ignore[arg-type]
        if self._on_status is not None and self._loop is not None:
            status = self._status
            try:
                self._loop.call_soon_threadsafe(self._on_status, status)
            except RuntimeError:  # loop closed: nobody is listening any more
                pass

    def _deliver(self, pkt: MediaPacket) -> None:
        # Runs on the loop. A stop() that already returned wins over packets still queued.
        if self._stopped:
            return
        try:
            self._publish(pkt)
        except Exception:
            log.exception("rtsp %s: publish failed", self.masked_url)

    def _emit(self, pkt: MediaPacket) -> None:
        assert self._loop is not None
        try:
            self._loop.call_soon_threadsafe(self._deliver, pkt)
        except RuntimeError:
            # The loop is closed (the application went away without stop()): there is
            # nobody to publish to, so end the worker instead of reconnecting forever.
            self._stop.set()

    def _run(self) -> None:
        s = self._settings
        delay = s.rtsp_reconnect_min_s
        attempt = 0
        while not self._stop.is_set():
            attempt += 1
            started = time.monotonic()
            went_live = False
            try:
                went_live = self._session()
                reason, state = "the camera ended the stream", "reconnecting"
            except RtspError as e:
                reason, state = str(e), e.state
            except av.error.FFmpegError as e:
                reason, state = self._describe(e)
            except Exception as e:  # a bug of ours or PyAV's: keep the camera, say what broke
                reason, state = self._scrub(f"{type(e).__name__}: {e}"), "error"
                log.error(
                    "rtsp %s: unexpected error\n%s",
                    self.masked_url,
                    self._scrub("".join(traceback.format_exception(e))),
                )
            if self._stop.is_set():
                break
            if went_live and time.monotonic() - started >= _STABLE_SESSION_S:
                delay = s.rtsp_reconnect_min_s
            msg = f"{reason}; next attempt in {delay:.1f} s"
            self._set_status(
                state=state,
                message=msg,
                next_attempt_at=time.time() + delay,
                next_attempt_in_s=delay,
                reconnects=self._status.reconnects + (1 if went_live else 0),
            )
            (log.error if state == "error" else log.warning)("rtsp %s: %s", self.masked_url, msg)
            if self._stop.wait(delay):
                break
            delay = min(s.rtsp_reconnect_max_s, delay * 2)
            self._set_status(
                state="reconnecting" if state == "reconnecting" else "connecting",
                message=f"connecting (attempt {attempt + 1})",
                next_attempt_at=None,
                next_attempt_in_s=None,
            )

    def _describe(self, e: av.error.FFmpegError) -> tuple[str, State]:
        """A masked status line for an FFmpeg error, and whether it is an "error" (the camera
        answered, but not with something we can use) or a network problem."""
        # str(e) ends with the URL, credentials included; strerror does not, scrub anyway.
        text = self._scrub(e.strerror or type(e).__name__)
        if isinstance(e, av.error.HTTPUnauthorizedError | av.error.HTTPForbiddenError):
            return f"the camera refused the credentials ({text})", "error"
        if isinstance(e, av.error.HTTPNotFoundError):
            return f"the camera has no stream at this path ({text})", "error"
        if isinstance(e, av.error.HTTPClientError | av.error.HTTPServerError):
            return f"the camera answered {text}", "error"
        if isinstance(e, av.error.ExitError | TimeoutError):
            return f"no answer from the camera within {self._io_timeout_s:.0f} s ({text})", "reconnecting"
        return text, "reconnecting"

    def _session(self) -> bool:
        """One RTSP session, from open to the camera's end. True if it went live."""
        options = {
            "rtsp_transport": self._transport,
            # FFmpeg's RTSP socket I/O timeout, in µs (FFmpeg ≥ 5 calls it "timeout"; the old
            # "stimeout" is gone from the FFmpeg 8 in PyAV 18). Bounds connect and every read.
            "timeout": str(int(self._io_timeout_s * 1_000_000)),
        }
        # PyAV's own interrupt timeout as well: it also bounds DESCRIBE/SETUP and a UDP
        # session whose packets stopped, where no socket read is pending to time out.
        container = av.open(self._url, options=options, timeout=(self._io_timeout_s * 2, self._io_timeout_s))
        try:
            return self._demux(container)
        finally:
            container.close()

    def _demux(self, container: av.container.InputContainer) -> bool:
        video = next(iter(container.streams.video), None)
        audio = next(iter(container.streams.audio), None)
        if video is None:
            raise RtspError("the camera offers no video stream")
        vname = video.codec_context.name
        if vname != "h264":
            self._set_status(video_codec=vname)
            raise RtspError(
                f"unsupported video codec {_CODEC_NAMES.get(vname, vname)}: only H.264 is passed "
                "through to WebRTC viewers; set the camera's stream to H.264"
            )
        nal = H264ParameterSets(bytes(video.codec_context.extradata or b""))

        transcoder: _OpusTranscoder | None = None
        audio_mode: str | None = None
        aname = audio.codec_context.name if audio is not None else None
        if audio is not None:
            if aname in _AUDIO_PASSTHROUGH:
                audio_mode = "passthrough"
            elif aname in _AUDIO_TRANSCODE:
                transcoder = _OpusTranscoder(audio)
                audio_mode = "transcode to opus"
            else:
                audio_mode = f"unsupported audio codec {aname}: video only"
                audio = None
        self._set_status(
            video_codec="h264",
            width=video.codec_context.width or None,
            height=video.codec_context.height or None,
            audio_codec=aname,
            audio_mode=audio_mode,
        )
        self._clock.new_session()
        self._video_tl.new_session()
        self._audio_tl.new_session()
        # Nominal frame duration at 90 kHz, for frames without a timestamp (see _Timeline).
        fps = video.guessed_rate or video.average_rate
        frame_ticks = round(90_000 / fps) if fps else 3000

        live_message = "live"
        if video.codec_context.has_b_frames:
            # Passed through as is, but WebRTC players handle reordered frames poorly and
            # pts then run backwards in decode order (our timeline assumes they do not).
            live_message = (
                "live (the camera sends B-frames: set its H.264 profile to baseline or main without them)"
            )
            log.warning("rtsp %s: %s", self.masked_url, live_message)
        streams = [video] if audio is None else [video, audio]
        live = False
        vcount, acount = self._status.video_packets, self._status.audio_packets
        for packet in container.demux(streams):
            if self._stop.is_set():
                break
            if packet.size == 0:  # PyAV's flush packet at end of stream
                continue
            now = time.time()
            if packet.stream is video:
                au = nal.process(bytes(packet))
                if au is None:
                    continue
                data, key = au
                pts = self._video_tl.map(packet.pts, packet.time_base, now, frame_ticks)
                self._emit(make_packet("video", data, pts, VIDEO_TIME_BASE, key, now))
                vcount += 1
                if not live:
                    live = True
                    self._set_status(
                        state="live",
                        message=live_message,
                        next_attempt_at=None,
                        next_attempt_in_s=None,
                        video_packets=vcount,
                    )
                    log.info(
                        "rtsp %s: live (%s×%s, audio: %s)",
                        self.masked_url,
                        video.codec_context.width,
                        video.codec_context.height,
                        audio_mode or "none",
                    )
                elif vcount % 30 == 0:
                    self._set_status(video_packets=vcount, audio_packets=acount)
            elif transcoder is not None:
                for data, pts in transcoder.transcode(packet, self._audio_tl, now):
                    self._emit(make_packet("audio", data, self._audio_pts(pts), AUDIO_TIME_BASE, True, now))
                    acount += 1
            else:
                pts = self._audio_pts(self._audio_tl.map(packet.pts, packet.time_base, now))
                self._emit(make_packet("audio", bytes(packet), pts, AUDIO_TIME_BASE, True, now))
                acount += 1
        self._set_status(video_packets=vcount, audio_packets=acount)
        return live

    def _audio_pts(self, pts: int) -> int:
        # Opus's encoder delay makes its first pts negative, and a new encoder after a
        # reconnect restarts its delay: keep audio strictly increasing and >= 0 regardless.
        last = self._audio_guard
        pts = max(pts, 0 if last is None else last + 1)
        self._audio_guard = pts
        return pts
