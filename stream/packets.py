"""The unit every source produces and every viewer shares: one encoded media packet."""

from __future__ import annotations

from dataclasses import dataclass
from fractions import Fraction
from typing import Literal

import av

VIDEO_TIME_BASE = Fraction(1, 90_000)
AUDIO_TIME_BASE = Fraction(1, 48_000)


@dataclass(frozen=True, slots=True)
class MediaPacket:
    """An encoded access unit, shared read-only by all viewers of a stream.

    video: one H.264 access unit in Annex B, constrained baseline, with SPS and PPS in front
    of every keyframe (so a viewer can start at any keyframe); audio: one Opus frame.
    ``packet`` is the same data as an ``av.Packet`` (pts in ``time_base``), built once per
    stream, which aiortc's RTP sender packs without encoding.
    """

    kind: Literal["video", "audio"]
    packet: av.Packet
    keyframe: bool
    # time.time() when the source captured or received it: for relay-latency figures.
    wallclock: float

    @property
    def pts(self) -> int:
        return int(self.packet.pts or 0)

    @property
    def size(self) -> int:
        return int(self.packet.size)


def make_packet(
    kind: Literal["video", "audio"],
    data: bytes,
    pts: int,
    time_base: Fraction,
    keyframe: bool,
    wallclock: float,
) -> MediaPacket:
    p = av.Packet(data)
    p.pts = pts
    p.dts = pts
    p.time_base = time_base
    if keyframe:
        p.is_keyframe = True
    return MediaPacket(kind=kind, packet=p, keyframe=keyframe, wallclock=wallclock)
