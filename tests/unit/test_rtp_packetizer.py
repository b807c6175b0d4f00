"""Packetize once per stream: aiortc's packets, except that a fragmented NAL unit's FU-A
fragments are of one size (a shorter last one), so one GSO call sends them."""

from __future__ import annotations

import struct
import time

import pytest
from aiortc.codecs import get_encoder
from aiortc.codecs.h264 import NAL_TYPE_FU_A, NAL_TYPE_STAP_A, PACKET_MAX, H264Encoder, h264_depayload
from aiortc.rtcrtpparameters import RTCRtpCodecParameters

from stream.encoder import EncoderSettings
from stream.encoder import H264Encoder as OurEncoder
from stream.fanout import LiveStream
from stream.packets import AUDIO_TIME_BASE, VIDEO_TIME_BASE, make_packet
from stream.rtp.packetizer import PayloadCache, fragment, packetize
from stream.settings import StreamSettings
from stream.sources.testpattern import _Painter

pytestmark = pytest.mark.timeout(30)

OPUS = RTCRtpCodecParameters(mimeType="audio/opus", clockRate=48000, channels=2, payloadType=111)


@pytest.fixture(scope="module")
def video_packets():
    """Real access units of the test pattern: a keyframe (SPS+PPS+IDR), P-frames."""
    painter = _Painter(640, 360)
    enc = OurEncoder(EncoderSettings(bitrate_bps=1_500_000, fps=30, keyframe_interval_s=1.0))
    out = []
    now = time.time()
    for n in range(20):
        out.extend(p for p in enc.encode(painter.paint(n, now), n * 3000, now) if p.kind == "video")
    assert out and out[0].keyframe
    return out


def assert_like_aiortc(payloads: list[bytes], expected: list[bytes]) -> None:
    """Packet for packet what aiortc's pack makes, but FU-A fragments re-cut: the same
    number of them, the same NAL unit reassembled, all one size but a shorter last."""
    assert len(payloads) == len(expected)
    assert all(len(p) <= PACKET_MAX for p in payloads)
    run: list[bytes] = []
    for got, exp in zip(payloads, expected, strict=True):
        if exp[0] & 0x1F != NAL_TYPE_FU_A:
            assert got == exp  # single NAL units and STAP-A: aiortc's bytes
            continue
        assert got[0] == exp[0] and got[1] == exp[1]  # FU indicator, FU header (S/E bits, type)
        run.append(got)
        if got[1] & 0x40:  # the end of a fragmented NAL unit
            sizes = [len(p) for p in run]
            assert len(set(sizes[:-1])) <= 1 and sizes[-1] <= sizes[0], sizes
            run = []
    assert not run
    assert b"".join(h264_depayload(p) for p in payloads) == b"".join(h264_depayload(p) for p in expected)


def test_payloads_like_aiortc_pack(video_packets):
    for pkt in video_packets:
        expected, expected_ts = H264Encoder().pack(pkt.packet)
        got = packetize(pkt)
        assert_like_aiortc(got.payloads, expected)
        assert got.timestamp == expected_ts
        assert got.octets == sum(map(len, got.payloads))


def test_fragments_of_one_size_for_every_length():
    for length in [*range(PACKET_MAX + 1, 3 * PACKET_MAX + 10), 65_000, 200_001]:
        nal = bytes([0x65]) + bytes(i & 0xFF for i in range(length - 1))
        got = fragment(nal)
        assert_like_aiortc(got, H264Encoder._packetize_fu_a(nal))
        assert got[0][1] & 0x80 and got[-1][1] & 0x40 and len(got) >= 2


def test_keyframe_has_stap_a_and_fu_a(video_packets):
    key = packetize(video_packets[0]).payloads
    # SPS + PPS (+ SEI) aggregated in one STAP-A, the IDR slice fragmented.
    assert key[0][0] & 0x1F == NAL_TYPE_STAP_A
    (sps_len,) = struct.unpack_from("!H", key[0], 1)
    assert key[0][3] & 0x1F == 7  # SPS first
    assert key[0][3 + sps_len + 2] & 0x1F == 8  # then PPS
    fua = [p for p in key if p[0] & 0x1F == NAL_TYPE_FU_A]
    assert len(fua) >= 2
    # x264 with sliced threads may cut the IDR picture into several slices: each slice is
    # one run of fragments, start bit on its first, end bit on its last, none between.
    runs: list[list[bytes]] = []
    for p in fua:
        if p[1] & 0x80:
            runs.append([])
        assert runs, "a fragment before any start bit"
        runs[-1].append(p)
    assert runs
    for run in runs:
        assert len(run) >= 2
        assert run[0][1] & 0x80 and not run[0][1] & 0x40
        assert run[-1][1] & 0x40 and not run[-1][1] & 0x80
        assert all(not (p[1] & 0xC0) for p in run[1:-1])
    assert all(p[1] & 0x1F == 5 for p in fua)  # IDR slice
    assert all(len(p) <= PACKET_MAX for p in key)


def test_synthetic_boundaries_match_aiortc():
    # A NAL exactly at PACKET_MAX stays whole; one byte more is FU-A; small NALs aggregate.
    def nal(t: int, size: int) -> bytes:
        return bytes([0x60 | t]) + b"\xab" * (size - 1)

    for sizes in ([PACKET_MAX], [PACKET_MAX + 1], [10, 20, 30], [10, PACKET_MAX - 20, 5], [5000, 3, 4]):
        data = b"".join(b"\x00\x00\x00\x01" + nal(1, s) for s in sizes)
        pkt = make_packet("video", data, 900, VIDEO_TIME_BASE, False, 0.0)
        assert_like_aiortc(packetize(pkt).payloads, H264Encoder().pack(pkt.packet)[0])


def test_audio_is_one_payload_with_aiortc_timestamp():
    pkt = make_packet("audio", b"\x78opus-frame", 960 * 7, AUDIO_TIME_BASE, False, 0.0)
    got = packetize(pkt)
    expected, ts = get_encoder(OPUS).pack(pkt.packet)
    assert got.payloads == expected == [b"\x78opus-frame"]
    assert got.timestamp == ts


def test_cache_computes_once_per_packet_and_is_bounded(video_packets):
    cache = PayloadCache(size=4)
    first = cache.get(video_packets[0])
    for _ in range(49):  # 49 more viewers of the same packet
        assert cache.get(video_packets[0]) is first
    assert (cache.misses, cache.hits) == (1, 49)
    for pkt in video_packets[1:10]:
        cache.get(pkt)
    assert len(cache) == 4
    assert cache.get(video_packets[0]) is not first  # evicted, computed again, still equal
    assert cache.get(video_packets[0]).payloads == first.payloads


def test_each_stream_owns_its_cache():
    a, b = LiveStream("a", StreamSettings()), LiveStream("b", StreamSettings())
    assert isinstance(a.payloads, PayloadCache) and a.payloads is not b.payloads
