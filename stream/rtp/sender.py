"""A thin per-viewer RTP send path on top of aiortc's ``RTCRtpSender``.

aiortc's ``_run_rtp`` costs ~20 µs of Python per packet per viewer: it packs each
``av.Packet`` again, makes an ``RtpPacket`` per packet, serializes its header
extensions through a map, reads the clock through ``datetime`` twice, and awaits
three layers (DTLS transport, ICE connection, STUN protocol) before the datagram
transport's ``sendto``. ``FastRtpSender`` replaces only that loop, and makes the
per-packet part as short as Python allows:

* payloads come from the stream's ``PayloadCache`` (packetized once per stream);
* per frame, one header is built (timestamp, SSRC, the negotiated extensions — MID and
  abs-send-time from ``time.time()`` once per frame — with and without the marker);
* ``SrtpFrameBuffer`` lays a frame's packets back to back in one preallocated C buffer
  (header copy, sequence number patched in, payload copy) and protects each in place
  with libsrtp, so no ``bytes`` object is made per packet and the buffer itself is what
  the socket sends;
* on Linux, runs of equal-size datagrams (FU-A fragments; SRTP adds a fixed tag) leave in
  one ``sendmsg`` with ``UDP_SEGMENT`` (GSO), straight on the ICE pair's socket while
  asyncio's transport has nothing buffered; a full socket buffer hands the rest to the
  transport (which queues them in order), and a kernel that refuses GSO switches it off
  for the sender (one ``sendto`` per datagram from then on).

Once the task has sent a frame (the route and the SRTP session are up), it gives the
viewer's feed ``_send_direct`` as its sink: while nothing is queued, the fan-out's
``publish`` sends each new frame to each viewer synchronously, with no future, task
wake-up or coroutine frames per frame per viewer; whatever the feed queued (the GOP
cache at the start, anything behind a failed direct send) goes through the task first.

Everything else stays aiortc's: RTCP (SR from the same counters, SDES, BYE), the
handling of receiver reports, NACK (``_retransmit``, overridden to rebuild the packet
from our history and send RTX exactly as aiortc does), PLI/FIR (``_send_keyframe``,
which the WHEP session points at the stream's rate limiter) and ``stop``. Tracks
without ``recv_media`` (anything but our feed tracks) fall back to aiortc's own loop.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import socket
import sys
import time
from collections.abc import Callable
from struct import Struct, pack
from typing import Any, Protocol

from aiortc import RTCRtpSender
from aiortc.mediastreams import MediaStreamError
from aiortc.rtcdtlstransport import State as DtlsState
from aiortc.rtcrtpparameters import RTCRtpCodecParameters
from aiortc.rtp import RTP_HISTORY_SIZE, HeaderExtensionsMap, RtpPacket, wrap_rtx
from aiortc.utils import random32

from stream.packets import MediaPacket
from stream.rtp.packetizer import FramePayloads, PayloadCache

log = logging.getLogger(__name__)

NTP_EPOCH_OFFSET = 2_208_988_800  # seconds from 1900-01-01 to 1970-01-01
_NTP_SCALE = float(1 << 32)
_P = "_RTCRtpSender__"  # aiortc's name-mangled private attributes
SOL_UDP = getattr(socket, "SOL_UDP", 17)
UDP_SEGMENT = getattr(socket, "UDP_SEGMENT", 103)
GSO_MAX_SEGMENTS = 32  # 32 × ~1.3 kB stays under the 64 kB datagram limit
# Room for one GSO call's worth of datagrams; a bigger frame is sent in several fills.
FRAME_BUFFER_BYTES = 64_000
# libsrtp's worst case growth of a packet (pylibsrtp's SRTP_MAX_TRAILER_LEN).
SRTP_MAX_TRAILER = 16 + 128
MTU_PACKET = 1_500

_SEQ = Struct("!H")  # bytes 2-3 of an RTP header
_GSO_SIZE = Struct("=H")  # UDP_SEGMENT's value: a native u16
_HISTORY_MASK = RTP_HISTORY_SIZE - 1
assert RTP_HISTORY_SIZE & _HISTORY_MASK == 0, "the history ring is indexed by a mask"


class MediaTrack(Protocol):
    async def recv_media(self) -> MediaPacket: ...


def ntp_now() -> int:
    """64-bit NTP time of ``time.time()`` (what aiortc's ``clock.current_ntp_time``
    computes through ``datetime``)."""
    return int((time.time() + NTP_EPOCH_OFFSET) * _NTP_SCALE)


class HeaderTemplate:
    """The RTP header of one sender, as aiortc's ``RtpPacket.serialize`` would write it
    (MID and abs-send-time extensions), cut into what changes per frame and per packet."""

    __slots__ = ("abs_at", "byte0", "ext_head", "ext_tail", "payload_type", "size", "ssrc")
    abs_at: int | None  # where abs-send-time's 3 bytes are; None: not negotiated

    def __init__(
        self, payload_type: int, ssrc: int, mid: str | None, extensions_map: HeaderExtensionsMap
    ) -> None:
        def header(abs_send_time: int) -> bytes:
            p = RtpPacket(payload_type=payload_type, sequence_number=0, timestamp=0, ssrc=ssrc)
            p.extensions.mid = mid
            p.extensions.abs_send_time = abs_send_time
            return p.serialize(extensions_map)

        h0, h1 = header(0), header(0xFFFFFF)
        self.payload_type = payload_type
        self.ssrc = ssrc
        self.byte0 = h0[0]
        self.size = len(h0)
        ext = h0[12:]
        diff = [i for i in range(len(h0)) if h0[i] != h1[i]]
        if diff:  # abs-send-time negotiated: its 3 bytes, found by difference
            at = diff[0]
            assert diff == [at, at + 1, at + 2], diff
            self.abs_at = at
            self.ext_head, self.ext_tail = ext[: at - 12], ext[at - 12 + 3 :]
        else:
            self.abs_at = None
            self.ext_head, self.ext_tail = ext, b""

    def frame_tail(self, timestamp: int, ntp: int) -> bytes:
        """Bytes 4.. of the header for every packet of one frame."""
        if self.abs_at is None:
            return pack("!LL", timestamp, self.ssrc) + self.ext_head
        return (
            pack("!LL", timestamp, self.ssrc)
            + self.ext_head
            + pack("!L", (ntp >> 14) & 0xFFFFFF)[1:]
            + self.ext_tail
        )

    def frame_headers(self, timestamp: int, ntp: int) -> tuple[bytes, bytes]:
        """The whole header of one frame's packets, sequence number 0, without and with
        the marker bit (the frame's last packet carries it)."""
        tail = self.frame_tail(timestamp, ntp)
        return (
            pack("!BBH", self.byte0, self.payload_type, 0) + tail,
            pack("!BBH", self.byte0, self.payload_type | 0x80, 0) + tail,
        )

    def packet(self, sequence_number: int, marker: bool, tail: bytes, payload: bytes) -> bytes:
        return (
            pack("!BBH", self.byte0, self.payload_type | (0x80 if marker else 0), sequence_number)
            + tail
            + payload
        )


class SrtpFrameBuffer:
    """A preallocated C buffer in which a frame's RTP packets are written back to back
    and SRTP-protected in place.

    pylibsrtp's ``Session.protect`` costs ~1 µs of Python around libsrtp per packet (a
    length cell allocated per call, the packet copied in, the result copied out into a
    new ``bytes``). Here libsrtp's ``srtp_protect`` is called on the session's own
    context directly, at the packet's place in one buffer that is then handed to the
    socket as it is. If pylibsrtp's internals are not what this expects (another
    version, or a stand-in session in tests), each packet goes through
    ``session.protect`` and is copied into the buffer instead: slower, same bytes.
    """

    __slots__ = ("_c", "_ctx", "_len", "_protect", "capacity", "session", "view")

    def __init__(self, session: Any, capacity: int = FRAME_BUFFER_BYTES) -> None:
        self.session = session
        self.capacity = capacity
        self._ctx: Any = None
        self._protect: Any = None
        try:
            from pylibsrtp._binding import ffi, lib

            ctx = session._srtp[0]
            if ffi.typeof(ctx) != ffi.typeof("srtp_t"):
                raise TypeError(ffi.typeof(ctx))
            self._c = ffi.new("char[]", capacity + SRTP_MAX_TRAILER + MTU_PACKET)
            self.view = memoryview(ffi.buffer(self._c))
            self._len = ffi.new("int *")
            self._ctx = ctx
            self._protect = lib.srtp_protect
        except (ImportError, AttributeError, TypeError):
            self._c = None
            self.view = memoryview(bytearray(capacity + SRTP_MAX_TRAILER + MTU_PACKET))
            self._len = None

    @property
    def direct(self) -> bool:
        """libsrtp is called in place (False: through ``session.protect``)."""
        return self._ctx is not None

    def fill(
        self,
        headers: tuple[bytes, bytes],
        payloads: list[bytes],
        start: int,
        seq: int,
        history: SendHistory,
        sizes: list[int],
    ) -> int:
        """Write and protect ``payloads[start:]`` from offset 0 until the buffer is full,
        appending each protected size to ``sizes``; returns the index of the first payload
        not written. The last payload of the list gets ``headers[1]`` (marker)."""
        view = self.view
        size = len(headers[0])
        last = len(payloads) - 1
        limit = self.capacity
        off = 0
        i = start
        direct = self._ctx is not None
        if direct:
            c, ctx, length, protect = self._c, self._ctx, self._len, self._protect
        else:
            session_protect = self.session.protect
        hist_seq, hist_header, hist_payload = history.seq, history.header, history.payload
        seq_into = _SEQ.pack_into
        header = headers[0]
        while i <= last:
            payload = payloads[i]
            end = off + size + len(payload)
            if end > limit and sizes:
                break
            if i == last:
                header = headers[1]
            view[off : off + size] = header
            seq_into(view, off + 2, seq)
            view[off + size : end] = payload
            if direct:
                length[0] = end - off
                rc = protect(ctx, c + off, length)
                if rc:
                    raise ConnectionError(f"SRTP protect failed (libsrtp status {rc})")
                n = length[0]
            else:
                out = session_protect(bytes(view[off:end]))
                n = len(out)
                view[off : off + n] = out
            sizes.append(n)
            off += n
            slot = seq & _HISTORY_MASK
            hist_seq[slot] = seq
            hist_header[slot] = header
            hist_payload[slot] = payload
            seq = (seq + 1) & 0xFFFF
            i += 1
        return i


class SendHistory:
    """The last ``RTP_HISTORY_SIZE`` packets sent, for NACK: by sequence number, the
    frame's header (with or without marker) and the shared payload, both references
    (nothing is copied per packet); ``packet`` rebuilds the serialized packet."""

    __slots__ = ("header", "payload", "seq")

    def __init__(self) -> None:
        self.seq: list[int] = [-1] * RTP_HISTORY_SIZE
        self.header: list[bytes] = [b""] * RTP_HISTORY_SIZE
        self.payload: list[bytes] = [b""] * RTP_HISTORY_SIZE

    def packet(self, sequence_number: int) -> bytes | None:
        slot = sequence_number & _HISTORY_MASK
        if self.seq[slot] != sequence_number:
            return None
        header = bytearray(self.header[slot])
        _SEQ.pack_into(header, 2, sequence_number)
        return bytes(header) + self.payload[slot]


class DatagramRoute:
    """Where a sender's datagrams go: the nominated ICE pair's socket and address, and
    asyncio's transport over that socket for what cannot go straight out."""

    __slots__ = ("addr", "is_closing", "pair", "sock", "transport")

    def __init__(self, pair: Any) -> None:
        self.pair = pair
        self.transport: Any = pair.protocol.transport
        self.addr = pair.remote_addr
        # The socket under asyncio's transport; None (anything else): the transport only.
        self.sock: socket.socket | None = getattr(self.transport, "_sock", None)
        self.is_closing: Callable[[], bool] = getattr(self.transport, "is_closing", _never)

    def send(self, view: memoryview, sizes: list[int], sender: FastRtpSender) -> None:
        """The datagrams of ``sizes``, back to back at the start of ``view``, in order."""
        transport = self.transport
        sock = self.sock
        if sock is None or transport._buffer:
            # The transport queues behind what it already holds.
            self._queue(view, sizes, 0, 0)
            return
        addr = self.addr
        gso = sender.gso
        count = len(sizes)
        i = 0
        off = 0
        while i < count:
            size = sizes[i]
            j = i + 1
            if gso:
                while j < count and j - i < GSO_MAX_SEGMENTS and sizes[j] == size:
                    j += 1
                if j < count and j - i < GSO_MAX_SEGMENTS and sizes[j] < size:
                    j += 1  # the kernel allows a shorter last segment
            end = off + sum(sizes[i:j]) if j - i > 1 else off + size
            try:
                if j - i == 1:
                    sock.sendto(view[off:end], addr)
                    sender.sendto_calls += 1
                else:
                    sock.sendmsg([view[off:end]], [(SOL_UDP, UDP_SEGMENT, _GSO_SIZE.pack(size))], 0, addr)
                    sender.gso_calls += 1
            except (BlockingIOError, InterruptedError):
                # Socket buffer full: the transport queues the rest, in order, and sends
                # it when the socket is writable.
                self._queue(view, sizes, i, off)
                return
            except OSError as exc:
                if j - i > 1 and exc.errno in (errno.EIO, errno.EINVAL, errno.ENOPROTOOPT, errno.EOPNOTSUPP):
                    log.info("UDP GSO refused (%s): one sendto per packet from now on", exc)
                    sender.gso = gso = False
                    continue  # the same datagrams again, one by one
                # What asyncio's transport does with a send error: report it and go on.
                self._queue(view, sizes[:j], i, off)
            i = j
            off = end

    def _queue(self, view: memoryview, sizes: list[int], i: int, off: int) -> None:
        # Copies: the buffer is rewritten by the next frame, the transport may keep them.
        for n in sizes[i:]:
            self.transport.sendto(bytes(view[off : off + n]), self.addr)
            off += n


def _never() -> bool:
    return False


class FastRtpSender(RTCRtpSender):
    """``RTCRtpSender`` with the thin RTP loop; see the module docstring.

    Made by ``use_fast_sender`` from the sender aiortc's ``addTransceiver`` created
    (class swap before negotiation starts its tasks), so the peer connection, its
    transceivers and RTCP are aiortc's own.
    """

    _payloads: PayloadCache
    _history: SendHistory
    _template: HeaderTemplate | None
    _route: DatagramRoute | None
    _buffer: SrtpFrameBuffer | None
    _sizes: list[int]
    fast_packets: int
    direct_frames: int  # frames sent from the feed's sink rather than the task
    gso_calls: int
    sendto_calls: int
    # aiortc's counters for the RTCP sender report and getStats(), written per frame.
    _RTCRtpSender__ntp_timestamp: int
    _RTCRtpSender__rtp_timestamp: int
    _RTCRtpSender__octet_count: int
    _RTCRtpSender__packet_count: int
    # Class default; a sender whose kernel refuses UDP_SEGMENT turns its own off.
    gso: bool = sys.platform == "linux"

    def _fast_init(self, payloads: PayloadCache) -> None:
        self._payloads = payloads
        self._history = SendHistory()
        self._template = None
        self._route = None
        self._buffer = None
        self._sizes = []
        self.fast_packets = 0
        self.direct_frames = 0
        self.gso_calls = 0  # sendmsg calls with several datagrams
        self.sendto_calls = 0  # calls with one

    # -- RTP -----------------------------------------------------------------------------

    async def _run_rtp(self, codec: RTCRtpCodecParameters) -> None:
        if not hasattr(self.track, "recv_media"):
            await super()._run_rtp(codec)
            return
        getattr(self, _P + "rtp_started").set()
        assert codec.payloadType is not None, "a negotiated codec has its payload type"
        template = self._template = HeaderTemplate(
            codec.payloadType,
            self._ssrc,
            getattr(self, _P + "mid"),
            getattr(self, _P + "rtp_header_extensions_map"),
        )
        self._seq = random32() % 32768  # as aiortc: the lower half, away from SRTP's wrap
        self._ts_origin = random32()
        payloads = self._payloads
        sink_on: Any = None  # the track whose feed calls _send_direct
        try:
            while True:
                track: Any = self.track
                if not track:
                    await asyncio.sleep(0.02)
                    continue
                media = await track.recv_media()
                if not self._enabled:
                    continue
                self._send_frame(template, payloads.get(media))
                if sink_on is not track and hasattr(track, "set_sink"):
                    # Sent once from here, so the route and SRTP are up: from now on the
                    # feed calls us directly while nothing waits in its queue.
                    if sink_on is not None:
                        sink_on.set_sink(None)  # a replaced track's feed stops calling us
                    track.set_sink(self._send_direct)
                    sink_on = track
        except (asyncio.CancelledError, ConnectionError, MediaStreamError):
            pass
        except Exception:
            # _rtp_exited must be set whatever happens, or stop() hangs.
            log.exception("fast RTP sender (%s) failed", self.kind)
        if sink_on is not None:
            sink_on.set_sink(None)
        if self.track:
            self.track.stop()
            setattr(self, _P + "track", None)
        getattr(self, _P + "rtp_exited").set()

    def _send_direct(self, media: MediaPacket) -> bool:
        """The feed's sink: one frame sent at once, from the fan-out's ``publish``. False
        (not sent) puts the frame in the queue, where the task above meets the same
        failure and ends as it would have without a sink."""
        if not self._enabled:
            return True  # dropped, as the loop drops it
        template = self._template
        if template is None:
            return False
        try:
            self._send_frame(template, self._payloads.get(media))
        except Exception:
            return False
        self.direct_frames += 1
        return True

    def _current_route(self) -> DatagramRoute:
        """The nominated pair's route, checked per frame (cheap: identities only)."""
        dtls: Any = self.transport
        if dtls._state != DtlsState.CONNECTED:
            raise ConnectionError("Cannot send encrypted RTP, not connected")
        pair = dtls.transport._connection._nominated.get(1)
        if pair is None:
            raise ConnectionError("Cannot send data, not connected")
        route = self._route
        if route is None or route.pair is not pair or route.transport is not pair.protocol.transport:
            route = self._route = DatagramRoute(pair)
        if route.is_closing():
            raise ConnectionError("Cannot send data, the ICE transport is closed")
        buffer = self._buffer
        if buffer is None or buffer.session is not dtls._tx_srtp:
            self._buffer = SrtpFrameBuffer(dtls._tx_srtp)
        return route

    def _send_frame(self, template: HeaderTemplate, frame: FramePayloads) -> None:
        route = self._current_route()
        buffer = self._buffer
        assert buffer is not None
        ntp = ntp_now()
        timestamp = (self._ts_origin + frame.timestamp) & 0xFFFFFFFF
        headers = template.frame_headers(timestamp, ntp)
        payloads = frame.payloads
        count = len(payloads)
        sizes = self._sizes
        seq = self._seq
        sent_bytes = 0
        i = 0
        while i < count:
            sizes.clear()
            nxt = buffer.fill(headers, payloads, i, seq, self._history, sizes)
            seq = (seq + (nxt - i)) & 0xFFFF
            i = nxt
            self._seq = seq
            route.send(buffer.view, sizes, self)
            sent_bytes += sum(sizes)
        self.fast_packets += count
        # What aiortc's loop keeps for the RTCP sender report and getStats().
        self._RTCRtpSender__ntp_timestamp = ntp
        self._RTCRtpSender__rtp_timestamp = timestamp
        self._RTCRtpSender__octet_count += frame.octets
        self._RTCRtpSender__packet_count += count
        dtls: Any = self.transport
        dtls._RTCDtlsTransport__tx_bytes += sent_bytes
        dtls._RTCDtlsTransport__tx_packets += count

    # -- NACK ----------------------------------------------------------------------------

    def history_packet(self, sequence_number: int) -> bytes | None:
        """The serialized (unprotected) packet with this sequence number, if still kept."""
        if not hasattr(self, "_history"):
            return None
        return self._history.packet(sequence_number)

    async def _retransmit(self, sequence_number: int) -> None:
        if self._template is None:
            await super()._retransmit(sequence_number)
            return
        data = self.history_packet(sequence_number)
        if data is None:
            return
        extensions_map = getattr(self, _P + "rtp_header_extensions_map")
        packet = RtpPacket.parse(data, extensions_map)
        rtx_pt = getattr(self, _P + "rtx_payload_type")
        if rtx_pt is not None:
            rtx_seq = getattr(self, _P + "rtx_sequence_number")
            packet = wrap_rtx(packet, payload_type=rtx_pt, sequence_number=rtx_seq, ssrc=self._rtx_ssrc)
            setattr(self, _P + "rtx_sequence_number", (rtx_seq + 1) & 0xFFFF)
            data = packet.serialize(extensions_map)
        await self.transport._send_rtp(data)


def use_fast_sender(sender: RTCRtpSender, payloads: PayloadCache) -> FastRtpSender:
    """Turn a sender aiortc just created (``addTransceiver``, before negotiation) into a
    ``FastRtpSender`` fed from ``payloads``."""
    if type(sender) is not RTCRtpSender:
        raise TypeError(f"expected a plain RTCRtpSender, got {type(sender).__name__}")
    sender.__class__ = FastRtpSender
    assert isinstance(sender, FastRtpSender)
    sender._fast_init(payloads)
    return sender
