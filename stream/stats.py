"""What a live stream looks like right now, measured from the packets that pass through it.

Nothing here trusts what a source says about itself: the resolution is read from the
H.264 sequence parameter set in front of each keyframe, the frame rate and bit rate from
the packets that arrived in the last few seconds. So a WHIP phone that rotates, or an
RTSP camera whose operator changed its settings, shows what viewers actually receive.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

from stream.packets import MediaPacket

StreamStatus = Literal["offline", "live"]

# H.264 profiles whose SPS carries chroma format, bit depths and scaling matrices
# (ITU-T H.264 7.3.2.1.1).
_HIGH_PROFILES = frozenset({100, 110, 122, 244, 44, 83, 86, 118, 128, 138, 139, 134, 135})
_NAL_SPS = 7


@dataclass(frozen=True, slots=True)
class StreamState:
    """One stream's state for the API and /metrics."""

    slug: str
    status: StreamStatus
    source: str | None  # the publishing source's kind ("whip", "rtsp", "test-pattern")
    video_codec: str | None
    audio_codec: str | None
    width: int | None
    height: int | None
    fps: float
    bitrate_bps: int
    viewers: int
    uptime_s: float  # 0 while offline
    packets: int  # since the stream was created
    keyframes: int
    keyframe_requests: int  # forwarded to the source (after rate limiting)
    viewer_drops: int  # packets slow viewers skipped, summed over viewers still attached


class _Bits:
    """Reads an RBSP (emulation-prevention bytes already removed) bit by bit."""

    __slots__ = ("_data", "_pos")

    def __init__(self, data: bytes) -> None:
        self._data = data
        self._pos = 0

    def u(self, n: int) -> int:
        v = 0
        for _ in range(n):
            byte = self._data[self._pos >> 3]  # IndexError on truncated data: caller handles
            v = (v << 1) | ((byte >> (7 - (self._pos & 7))) & 1)
            self._pos += 1
        return v

    def ue(self) -> int:
        zeros = 0
        while self.u(1) == 0:
            zeros += 1
            if zeros > 31:
                raise ValueError("exp-Golomb code too long")
        return (1 << zeros) - 1 + self.u(zeros)

    def se(self) -> int:
        k = self.ue()
        return (k + 1) // 2 if k & 1 else -(k // 2)


def _nal_units(annexb: bytes) -> list[bytes]:
    units = []
    i = annexb.find(b"\x00\x00\x01")
    while i != -1:
        start = i + 3
        nxt = annexb.find(b"\x00\x00\x01", start)
        end = len(annexb) if nxt == -1 else nxt
        # A 4-byte start code leaves a zero at the end of the previous unit.
        while end > start and nxt != -1 and annexb[end - 1] == 0:
            end -= 1
        units.append(annexb[start:end])
        i = nxt
    return units


def h264_dimensions(annexb: bytes) -> tuple[int, int] | None:
    """Width and height from the first SPS in an Annex B access unit; None if it has none
    or the SPS cannot be read."""
    for nal in _nal_units(annexb):
        if nal and nal[0] & 0x1F == _NAL_SPS:
            try:
                return _sps_dimensions(nal[1:].replace(b"\x00\x00\x03", b"\x00\x00"))
            except (IndexError, ValueError):
                return None
    return None


def _sps_dimensions(rbsp: bytes) -> tuple[int, int]:
    b = _Bits(rbsp)
    profile_idc = b.u(8)
    b.u(16)  # constraint flags, level_idc
    b.ue()  # seq_parameter_set_id
    chroma_format_idc = 1
    separate_colour_plane = 0
    if profile_idc in _HIGH_PROFILES:
        chroma_format_idc = b.ue()
        if chroma_format_idc == 3:
            separate_colour_plane = b.u(1)
        b.ue()  # bit_depth_luma_minus8
        b.ue()  # bit_depth_chroma_minus8
        b.u(1)  # qpprime_y_zero_transform_bypass_flag
        if b.u(1):  # seq_scaling_matrix_present_flag
            for i in range(8 if chroma_format_idc != 3 else 12):
                if b.u(1):
                    last, nxt = 8, 8
                    for _ in range(16 if i < 6 else 64):
                        if nxt != 0:
                            nxt = (last + b.se() + 256) % 256
                        last = nxt if nxt != 0 else last
    b.ue()  # log2_max_frame_num_minus4
    poc_type = b.ue()
    if poc_type == 0:
        b.ue()
    elif poc_type == 1:
        b.u(1)
        b.se()
        b.se()
        for _ in range(b.ue()):
            b.se()
    b.ue()  # max_num_ref_frames
    b.u(1)  # gaps_in_frame_num_value_allowed_flag
    width_mbs = b.ue() + 1
    height_map_units = b.ue() + 1
    frame_mbs_only = b.u(1)
    if not frame_mbs_only:
        b.u(1)  # mb_adaptive_frame_field_flag
    b.u(1)  # direct_8x8_inference_flag
    crop_l = crop_r = crop_t = crop_b = 0
    if b.u(1):
        crop_l, crop_r, crop_t, crop_b = b.ue(), b.ue(), b.ue(), b.ue()
    if chroma_format_idc == 0 or separate_colour_plane:
        unit_x, unit_y = 1, 2 - frame_mbs_only
    else:
        sub_w = 1 if chroma_format_idc == 3 else 2
        sub_h = 2 if chroma_format_idc == 1 else 1
        unit_x, unit_y = sub_w, sub_h * (2 - frame_mbs_only)
    width = width_mbs * 16 - (crop_l + crop_r) * unit_x
    height = (2 - frame_mbs_only) * height_map_units * 16 - (crop_t + crop_b) * unit_y
    if width <= 0 or height <= 0:
        raise ValueError("SPS gives an empty picture")
    return width, height


class StreamStats:
    """Counters and a sliding window over one stream's packets.

    ``on_packet`` runs once per packet per stream (not per viewer), so a deque append and
    a few pops are affordable; the window is short so the figures follow changes quickly.
    """

    def __init__(self, window_s: float = 2.0, clock: Callable[[], float] = time.monotonic) -> None:
        self._window_s = window_s
        self._clock = clock
        # (arrival time, bytes, is video): what the last window_s seconds carried.
        self._recent: deque[tuple[float, int, bool]] = deque()
        self._recent_video = 0
        self._recent_bytes = 0
        self.packets = 0
        self.keyframes = 0
        self.width: int | None = None
        self.height: int | None = None
        self.video_codec: str | None = None
        self.audio_codec: str | None = None
        self.live_since: float | None = None  # clock() when the current source's first keyframe came
        self._first_in_window: float | None = None

    def on_packet(self, pkt: MediaPacket) -> None:
        now = self._clock()
        self.packets += 1
        is_video = pkt.kind == "video"
        if is_video:
            # MediaPacket's contract: video is H.264 in Annex B, audio is Opus.
            self.video_codec = "H264"
            if pkt.keyframe:
                self.keyframes += 1
                dims = h264_dimensions(bytes(pkt.packet)[:512])
                if dims is not None:
                    self.width, self.height = dims
        else:
            self.audio_codec = "opus"
        if self._first_in_window is None:
            self._first_in_window = now
        self._recent.append((now, pkt.size, is_video))
        self._recent_bytes += pkt.size
        self._recent_video += is_video
        self._expire(now)

    def _expire(self, now: float) -> None:
        horizon = now - self._window_s
        recent = self._recent
        while recent and recent[0][0] < horizon:
            _, size, was_video = recent.popleft()
            self._recent_bytes -= size
            self._recent_video -= was_video

    def _span(self, now: float) -> float:
        if self._first_in_window is None:
            return self._window_s
        # Right after start the window is not yet full: divide by what it really covers.
        return max(min(self._window_s, now - self._first_in_window), 1e-3)

    def fps(self) -> float:
        now = self._clock()
        self._expire(now)
        return self._recent_video / self._span(now) if self._recent else 0.0

    def bitrate_bps(self) -> int:
        now = self._clock()
        self._expire(now)
        return int(self._recent_bytes * 8 / self._span(now)) if self._recent else 0

    def went_live(self) -> None:
        self.live_since = self._clock()

    def went_offline(self) -> None:
        # Keep codec and size (the last known picture); rates fall to zero by themselves.
        self.live_since = None
        self._first_in_window = None

    def uptime_s(self) -> float:
        return 0.0 if self.live_since is None else self._clock() - self.live_since
