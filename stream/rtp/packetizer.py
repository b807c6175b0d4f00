"""RTP payloads of a shared packet, computed once per stream instead of once per viewer.

aiortc's ``RTCRtpSender`` packs every ``av.Packet`` itself (``H264Encoder.pack``): the
same Annex B split and FU-A/STAP-A cuts for every viewer. ``packetize`` cuts once per
stream, with aiortc's own Annex B split, STAP-A aggregation and MTU (``PACKET_MAX``),
so a NAL unit becomes the same number of packets as aiortc would make, each no bigger.
One difference, on purpose: aiortc spreads a fragmented NAL unit's remainder over its
first fragments (they are one byte longer than the rest); here every fragment has the
same size and the last one is shorter. Linux UDP GSO sends a run of equal-size
datagrams, of which only the last may be shorter, in one ``sendmsg``: so each NAL unit
leaves in one system call per viewer instead of two. Receivers reassemble FU-A
fragments of any size (RFC 6184 §5.8). ``PayloadCache`` keeps the result by packet
identity so the first viewer to send a packet pays for it and the others reuse it; each
``LiveStream`` owns one.
"""

from __future__ import annotations

from collections.abc import Iterator
from fractions import Fraction

from aiortc.codecs.h264 import FU_A_HEADER_SIZE, NAL_TYPE_FU_A, PACKET_MAX, H264Encoder
from aiortc.mediastreams import convert_timebase

from stream.packets import MediaPacket

VIDEO_CLOCK = Fraction(1, 90_000)
OPUS_CLOCK = Fraction(1, 48_000)  # aiortc's Opus RTP clock (codecs.opus.TIME_BASE)
FU_A_PAYLOAD_MAX = PACKET_MAX - FU_A_HEADER_SIZE


class FramePayloads:
    """One packet's RTP payloads (the last one carries the marker bit) and its RTP
    timestamp before the sender's random offset."""

    __slots__ = ("octets", "payloads", "timestamp")

    def __init__(self, payloads: list[bytes], timestamp: int) -> None:
        self.payloads = payloads
        self.timestamp = timestamp
        self.octets = sum(len(p) for p in payloads)  # what aiortc counts in the SR


def fragment(nal: bytes) -> list[bytes]:
    """FU-A fragments of a NAL unit longer than ``PACKET_MAX``: as many as aiortc cuts,
    all of one size but the last, which is shorter or equal."""
    body = len(nal) - 1  # the NAL header travels in the FU indicator and header
    count = -(-body // FU_A_PAYLOAD_MAX)
    size = -(-body // count)
    indicator = (nal[0] & 0xE0) | NAL_TYPE_FU_A
    kind = nal[0] & 0x1F
    starts = range(1, len(nal), size)
    last = starts[-1]
    return [
        bytes((indicator, kind | (0x80 if at == 1 else 0x40 if at == last else 0))) + nal[at : at + size]
        for at in starts
    ]


def packetize_h264(access_unit: bytes) -> list[bytes]:
    """aiortc's ``H264Encoder._packetize`` with ``fragment`` for the FU-A cut."""
    out: list[bytes] = []
    nals: Iterator[bytes] = H264Encoder._split_bitstream(access_unit)
    nal = next(nals, None)
    while nal is not None:
        if len(nal) > PACKET_MAX:
            out.extend(fragment(nal))
            nal = next(nals, None)
        else:
            packed, nal = H264Encoder._packetize_stap_a(nal, nals)
            out.append(packed)
    return out


def packetize(pkt: MediaPacket) -> FramePayloads:
    """The RTP payloads of one shared packet and its RTP timestamp (aiortc's)."""
    packet = pkt.packet
    if pkt.kind == "video":
        return FramePayloads(
            packetize_h264(bytes(packet)), convert_timebase(pkt.pts, packet.time_base, VIDEO_CLOCK)
        )
    return FramePayloads([bytes(packet)], convert_timebase(pkt.pts, packet.time_base, OPUS_CLOCK))


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

    def clear(self) -> None:
        self._entries.clear()

    def __len__(self) -> int:
        return len(self._entries)
