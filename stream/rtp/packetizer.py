"""RTP payloads of a shared packet, computed once per stream instead of once per viewer.

aiortc's ``RTCRtpSender`` packs every ``av.Packet`` itself (``H264Encoder.pack``): the
same Annex B split and FU-A/STAP-A cuts for every viewer. ``packetize`` runs aiortc's
own functions once (same MTU, ``PACKET_MAX``), so the payloads are byte for byte what
each sender would have cut; ``PayloadCache`` keeps the result by packet identity so
the first viewer to send a packet pays for it and the others reuse it.
"""

from __future__ import annotations

import weakref
from fractions import Fraction

from aiortc.codecs.h264 import H264Encoder
from aiortc.mediastreams import convert_timebase

from stream.packets import MediaPacket

VIDEO_CLOCK = Fraction(1, 90_000)
OPUS_CLOCK = Fraction(1, 48_000)  # aiortc's Opus RTP clock (codecs.opus.TIME_BASE)


class FramePayloads:
    """One packet's RTP payloads (the last one carries the marker bit) and its RTP
    timestamp before the sender's random offset."""

    __slots__ = ("octets", "payloads", "timestamp")

    def __init__(self, payloads: list[bytes], timestamp: int) -> None:
        self.payloads = payloads
        self.timestamp = timestamp
        self.octets = sum(len(p) for p in payloads)  # what aiortc counts in the SR


def packetize(pkt: MediaPacket) -> FramePayloads:
    """The payloads aiortc's encoder ``pack`` would return for this packet."""
    packet = pkt.packet
    if pkt.kind == "video":
        payloads = H264Encoder._packetize(H264Encoder._split_bitstream(bytes(packet)))
        return FramePayloads(payloads, convert_timebase(packet.pts, packet.time_base, VIDEO_CLOCK))
    return FramePayloads([bytes(packet)], convert_timebase(packet.pts, packet.time_base, OPUS_CLOCK))


class PayloadCache:
    """``packetize`` results of a stream's recent packets, by packet identity.

    An entry holds its packet, so the ``id`` cannot be reused while it is cached. The
    oldest entries go first once ``size`` is reached; a viewer lagging further behind
    than that (or a viewer's own retimed GOP copies) just packetizes again.
    """

    __slots__ = ("_entries", "_size", "hits", "misses")

    def __init__(self, size: int = 256) -> None:
        self._size = max(1, size)
        self._entries: dict[int, tuple[MediaPacket, FramePayloads]] = {}
        self.hits = 0
        self.misses = 0

    def get(self, pkt: MediaPacket) -> FramePayloads:
        entry = self._entries.get(id(pkt))
        if entry is not None and entry[0] is pkt:
            self.hits += 1
            return entry[1]
        self.misses += 1
        payloads = packetize(pkt)
        entries = self._entries
        if len(entries) >= self._size:
            del entries[next(iter(entries))]  # dicts keep insertion order: the oldest
        entries[id(pkt)] = (pkt, payloads)
        return payloads

    def __len__(self) -> int:
        return len(self._entries)


_caches: weakref.WeakKeyDictionary[object, PayloadCache] = weakref.WeakKeyDictionary()


def cache_for(stream: object) -> PayloadCache:
    """The one cache of a stream (any weak-referenceable object standing for it)."""
    cache = _caches.get(stream)
    if cache is None:
        cache = _caches[stream] = PayloadCache()
    return cache
