"""The fast sender's header template and per-frame send loop, without a network."""

from __future__ import annotations

import asyncio
import time
from types import SimpleNamespace

import pytest
from aiortc.rtcdtlstransport import State
from aiortc.rtcrtpparameters import RTCRtpHeaderExtensionParameters, RTCRtpParameters
from aiortc.rtp import HeaderExtensionsMap, RtpPacket, unwrap_rtx

from stream.rtp.packetizer import FramePayloads
from stream.rtp.sender import DatagramRoute, FastRtpSender, HeaderTemplate, ntp_now

pytestmark = pytest.mark.timeout(30)

MID = "urn:ietf:params:rtp-hdrext:sdes:mid"
ABS = "http://www.webrtc.org/experiments/rtp-hdrext/abs-send-time"


def ext_map(*uris: str) -> HeaderExtensionsMap:
    m = HeaderExtensionsMap()
    m.configure(
        RTCRtpParameters(
            headerExtensions=[RTCRtpHeaderExtensionParameters(id=i + 1, uri=u) for i, u in enumerate(uris)]
        )
    )
    return m


@pytest.mark.parametrize(
    ("uris", "mid"),
    [
        ((MID, ABS), "0"),
        ((MID, ABS), "video-mid-x"),
        ((ABS,), "0"),
        ((MID,), "1"),
        ((), None),
        ((MID, ABS), None),
    ],
)
def test_template_packet_parses_back_with_aiortc(uris, mid):
    m = ext_map(*uris)
    t = HeaderTemplate(102, 0xDEADBEEF, mid, m)
    ntp = ntp_now()
    tail = t.frame_tail(0x12345678, ntp)
    data = t.packet(65535, True, tail, b"payload")
    p = RtpPacket.parse(data, m)
    assert (p.payload_type, p.marker, p.sequence_number) == (102, 1, 65535)
    assert (p.timestamp, p.ssrc, p.payload) == (0x12345678, 0xDEADBEEF, b"payload")
    assert p.extensions.mid == (mid if MID in uris else None)
    assert p.extensions.abs_send_time == (((ntp >> 14) & 0xFFFFFF) if ABS in uris else None)
    # Byte for byte what aiortc's own serialize makes of the same packet.
    ref = RtpPacket(payload_type=102, marker=1, sequence_number=65535, timestamp=0x12345678, ssrc=0xDEADBEEF)
    ref.payload = b"payload"
    ref.extensions.mid = mid
    ref.extensions.abs_send_time = (ntp >> 14) & 0xFFFFFF
    assert data == ref.serialize(m)


def test_ntp_now_matches_aiortc_clock():
    from aiortc import clock

    assert abs(ntp_now() - clock.current_ntp_time()) < (1 << 32) // 100  # within 10 ms


class FakeDtls:
    """What _send_frame touches on aiortc's RTCDtlsTransport and aioice's Connection."""

    def __init__(self) -> None:
        self._state = State.CONNECTED
        self.sent: list[tuple[bytes, tuple[str, int]]] = []
        self._tx_srtp = SimpleNamespace(protect=lambda data: b"S" + data)
        transport = SimpleNamespace(sendto=lambda data, addr: self.sent.append((data, addr)))
        pair = SimpleNamespace(protocol=SimpleNamespace(transport=transport), remote_addr=("127.0.0.1", 9))
        self.transport = SimpleNamespace(_connection=SimpleNamespace(_nominated={1: pair}))
        self._RTCDtlsTransport__tx_bytes = 0
        self._RTCDtlsTransport__tx_packets = 0
        self.rtp_sent: list[bytes] = []

    async def _send_rtp(self, data: bytes) -> None:
        self.rtp_sent.append(data)


def fast_sender(dtls: FakeDtls, m: HeaderExtensionsMap) -> FastRtpSender:
    s = FastRtpSender.__new__(FastRtpSender)  # no peer connection: only what the loop reads
    s._fast_init(None)  # type: ignore[arg-type]
    s._ssrc, s._rtx_ssrc = 1111, 2222
    s._RTCRtpSender__transport = dtls
    s._RTCRtpSender__rtp_header_extensions_map = m
    s._RTCRtpSender__rtx_payload_type = 103
    s._RTCRtpSender__rtx_sequence_number = 500
    s._RTCRtpSender__octet_count = 0
    s._RTCRtpSender__packet_count = 0
    s._seq, s._ts_origin = 65534, 0xFFFFFF00
    s._template = HeaderTemplate(102, s._ssrc, "0", m)
    return s


async def test_send_frame_history_counters_and_rtx():
    m = ext_map(MID, ABS)
    dtls = FakeDtls()
    s = fast_sender(dtls, m)
    before = time.time()
    s._send_frame(s._template, FramePayloads([b"a" * 10, b"b" * 20, b"c" * 5], 0x200))
    assert len(dtls.sent) == 3 and all(d.startswith(b"S") and a == ("127.0.0.1", 9) for d, a in dtls.sent)
    packets = [RtpPacket.parse(d[1:], m) for d, _ in dtls.sent]
    assert [p.sequence_number for p in packets] == [65534, 65535, 0]  # wraps
    assert [p.marker for p in packets] == [0, 0, 1]
    assert {p.timestamp for p in packets} == {0x100}  # 0xFFFFFF00 + 0x200 wraps at 32 bits
    assert len({p.extensions.abs_send_time for p in packets}) == 1  # once per frame
    assert s._RTCRtpSender__octet_count == 35 and s._RTCRtpSender__packet_count == 3
    assert s._RTCRtpSender__rtp_timestamp == 0x100
    assert s._RTCRtpSender__ntp_timestamp >= int((before + 2_208_988_800) * 2**32)
    assert dtls._RTCDtlsTransport__tx_packets == 3
    # The history holds the serialized, unprotected packets, by sequence number.
    assert s.history_packet(65535) == dtls.sent[1][0][1:]
    assert s.history_packet(1) is None
    # A NACK for 65535 goes out as RTX (aiortc's wrap_rtx), recoverable with unwrap_rtx.
    await s._retransmit(65535)
    rtx = RtpPacket.parse(dtls.rtp_sent[0], m)
    assert (rtx.payload_type, rtx.ssrc, rtx.sequence_number) == (103, 2222, 500)
    orig = unwrap_rtx(rtx, payload_type=102, ssrc=1111)
    assert (orig.sequence_number, orig.payload, orig.timestamp) == (65535, b"b" * 20, 0x100)
    await s._retransmit(12345)  # not in the history: nothing sent
    assert len(dtls.rtp_sent) == 1


def test_send_frame_refuses_when_not_connected():
    dtls = FakeDtls()
    dtls._state = State.CLOSED
    s = fast_sender(dtls, ext_map(MID, ABS))
    with pytest.raises(ConnectionError):
        s._send_frame(s._template, FramePayloads([b"x"], 0))
    assert not dtls.sent


def test_gso_runs_arrive_as_separate_datagrams_in_order():
    import socket

    rx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    tx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        rx.bind(("127.0.0.1", 0))
        rx.settimeout(2)
        s = fast_sender(FakeDtls(), ext_map(MID, ABS))
        # Two runs of equal sizes (as FU-A fragments: k of size+1, then size), a
        # shorter last one, and a lone odd one.
        outs = [bytes([i]) * n for i, n in enumerate([1201, 1201, 1200, 1200, 1200, 700, 90])]
        fallback: list[bytes] = []
        transport = SimpleNamespace(
            _sock=tx, _buffer=[], sendto=lambda d, a: (fallback.append(d), tx.sendto(d, a))
        )
        route = DatagramRoute(
            SimpleNamespace(protocol=SimpleNamespace(transport=transport), remote_addr=rx.getsockname())
        )
        route.send(memoryview(b"".join(outs)), [len(o) for o in outs], s)
        got = [rx.recv(2048) for _ in outs]
        assert got == outs
        assert s.gso_calls >= 1 or not s.gso  # GSO used, or refused by this kernel (fallback)
    finally:
        rx.close()
        tx.close()


def srtp_pair() -> tuple[object, object, object]:
    """Two tx sessions with the same key (the direct path and pylibsrtp's own protect) and
    the rx session that opens what either made."""
    import os

    from pylibsrtp import Policy, Session

    key = os.urandom(44)
    profile = Policy.SRTP_PROFILE_AEAD_AES_256_GCM

    def session(ssrc_type: int) -> Session:
        return Session(Policy(key=key, ssrc_type=ssrc_type, srtp_profile=profile))

    return (
        session(Policy.SSRC_ANY_OUTBOUND),
        session(Policy.SSRC_ANY_OUTBOUND),
        session(Policy.SSRC_ANY_INBOUND),
    )


def test_direct_srtp_is_byte_for_byte_pylibsrtp_protect():
    from stream.rtp.sender import SrtpFrameBuffer

    tx, ref, rx = srtp_pair()
    m = ext_map(MID, ABS)
    dtls = FakeDtls()
    dtls._tx_srtp = tx
    s = fast_sender(dtls, m)
    payloads = [bytes([i]) * n for i, n in enumerate([1200, 1200, 1199, 700, 1200, 90])]
    s._send_frame(s._template, FramePayloads(payloads, 0x300))
    assert s._buffer is not None and s._buffer.direct
    assert len(dtls.sent) == len(payloads)
    for (data, _), payload in zip(dtls.sent, payloads, strict=True):
        plain = s.history_packet(RtpPacket.parse(rx.unprotect(data), m).sequence_number)
        assert plain is not None and plain.endswith(payload)
        assert data == ref.protect(plain)  # what aiortc's _send_rtp would have sent
    # Several fills of a small buffer: same bytes as one.
    dtls.sent.clear()
    s._buffer = SrtpFrameBuffer(tx, capacity=3000)
    s._send_frame(s._template, FramePayloads(payloads, 0x400))
    seqs = [RtpPacket.parse(rx.unprotect(d), m).sequence_number for d, _ in dtls.sent]
    assert seqs == [(seqs[0] + i) & 0xFFFF for i in range(len(payloads))]
    assert all(d == ref.protect(s.history_packet(q)) for (d, _), q in zip(dtls.sent, seqs, strict=True))


class SinkTrack:
    """A feed track as the fast sender sees it: packets from a queue, and a sink slot."""

    kind = "video"

    def __init__(self) -> None:
        self.queue: asyncio.Queue[object] = asyncio.Queue()
        self.sink = None
        self.sink_set = asyncio.Event()
        self.stopped = False

    async def recv_media(self) -> object:
        return await self.queue.get()

    def set_sink(self, sink) -> None:
        self.sink = sink
        self.sink_set.set()

    def stop(self) -> None:
        self.stopped = True


async def test_after_its_first_frame_the_task_lends_the_feed_a_sink_until_it_ends():
    from aiortc.rtcrtpparameters import RTCRtpCodecParameters

    from stream.packets import VIDEO_TIME_BASE, make_packet
    from stream.rtp.packetizer import PayloadCache

    def frame(n: int) -> object:
        return make_packet(
            "video", b"\x00\x00\x00\x01\x41" + bytes([n]) * 50, n * 3000, VIDEO_TIME_BASE, False, 0.0
        )

    dtls = FakeDtls()
    s = fast_sender(dtls, ext_map(MID, ABS))
    s._payloads = PayloadCache()
    track = SinkTrack()
    s._RTCRtpSender__track = track
    s._RTCRtpSender__mid = "0"
    s._RTCRtpSender__rtp_started = asyncio.Event()
    s._RTCRtpSender__rtp_exited = asyncio.Event()
    s._enabled = True
    task = asyncio.ensure_future(
        s._run_rtp(RTCRtpCodecParameters(mimeType="video/H264", clockRate=90_000, payloadType=102))
    )
    await track.queue.put(frame(1))
    await track.sink_set.wait()  # after the task's first frame
    assert track.sink is not None and len(dtls.sent) == 1 and s.direct_frames == 0
    assert track.sink(frame(2)) is True  # sent at once, from the caller
    assert len(dtls.sent) == 2 and s.direct_frames == 1
    dtls._state = State.CLOSED
    assert track.sink(frame(3)) is False  # cannot send: the feed queues it for the task
    await track.queue.put(frame(3))
    await asyncio.wait_for(task, 2)  # the task meets the same failure and ends
    assert track.sink is None and track.stopped and len(dtls.sent) == 2
