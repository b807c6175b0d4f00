"""A thin per-viewer RTP send path on top of aiortc's ``RTCRtpSender``.

aiortc's ``_run_rtp`` costs ~20 µs of Python per packet per viewer: it packs each
``av.Packet`` again, makes an ``RtpPacket`` per packet, serializes its header
extensions through a map, reads the clock through ``datetime`` twice, and awaits
three layers (DTLS transport, ICE connection, STUN protocol) before the datagram
transport's ``sendto``. ``FastRtpSender`` replaces only that loop:

* payloads come from the stream's ``PayloadCache`` (packetized once per stream);
* per frame, one header tail is built (timestamp, SSRC, the negotiated extensions —
  MID and abs-send-time — with abs-send-time from ``time.time()`` once per frame);
  per packet only the first 4 bytes (marker, payload type, sequence) are packed;
* each packet is SRTP-protected with the DTLS transport's session and handed to the
  selected ICE pair's datagram transport in one synchronous loop per frame;
* on Linux, runs of equal-size packets of a frame (FU-A fragments; SRTP adds a fixed
  tag) go out in one ``sendmsg`` with ``UDP_SEGMENT`` (GSO) when the transport has
  nothing buffered; any error falls back to one ``sendto`` per packet (and GSO is
  switched off for the sender if the kernel refuses it).

Everything else stays aiortc's: RTCP (SR from the same counters, SDES, BYE), the
handling of receiver reports, NACK (``_retransmit``, overridden to read our history
of serialized packets and send RTX exactly as aiortc does), PLI/FIR
(``_send_keyframe``, which the WHEP session points at the stream's rate limiter) and
``stop``. Tracks without ``recv_media`` (anything but our feed tracks) fall back to
aiortc's own loop.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import socket
import sys
import time
from struct import pack, unpack_from
from typing import Any, Protocol

from aiortc import RTCRtpSender
from aiortc.mediastreams import MediaStreamError
from aiortc.rtcdtlstransport import State as DtlsState
from aiortc.rtcrtpparameters import RTCRtpCodecParameters
from aiortc.rtp import RTP_HISTORY_SIZE, HeaderExtensionsMap, RtpPacket, wrap_rtx
from aiortc.utils import random32

from stream.packets import MediaPacket
from stream.rtp.packetizer import PayloadCache

log = logging.getLogger(__name__)

NTP_EPOCH_OFFSET = 2_208_988_800  # seconds from 1900-01-01 to 1970-01-01
_NTP_SCALE = float(1 << 32)
_P = "_RTCRtpSender__"  # aiortc's name-mangled private attributes
SOL_UDP = getattr(socket, "SOL_UDP", 17)
UDP_SEGMENT = getattr(socket, "UDP_SEGMENT", 103)
GSO_MAX_SEGMENTS = 32  # 32 × ~1.3 kB stays under the 64 kB datagram limit


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

    def packet(self, sequence_number: int, marker: bool, tail: bytes, payload: bytes) -> bytes:
        return (
            pack("!BBH", self.byte0, self.payload_type | (0x80 if marker else 0), sequence_number)
            + tail
            + payload
        )


class FastRtpSender(RTCRtpSender):
    """``RTCRtpSender`` with the thin RTP loop; see the module docstring.

    Made by ``use_fast_sender`` from the sender aiortc's ``addTransceiver`` created
    (class swap before negotiation starts its tasks), so the peer connection, its
    transceivers and RTCP are aiortc's own.
    """

    _payloads: PayloadCache
    _history: list[bytes | None]
    _template: HeaderTemplate | None
    fast_packets: int
    gso_calls: int
    # Class default; a sender whose kernel refuses UDP_SEGMENT turns its own off.
    gso: bool = sys.platform == "linux"

    def _fast_init(self, payloads: PayloadCache) -> None:
        self._payloads = payloads
        self._history = [None] * RTP_HISTORY_SIZE
        self._template = None
        self.fast_packets = 0
        self.gso_calls = 0

    # -- RTP -----------------------------------------------------------------------------

    async def _run_rtp(self, codec: RTCRtpCodecParameters) -> None:
        if not hasattr(self.track, "recv_media"):
            await super()._run_rtp(codec)
            return
        getattr(self, _P + "rtp_started").set()
        template = self._template = HeaderTemplate(
            codec.payloadType,
            self._ssrc,
            getattr(self, _P + "mid"),
            getattr(self, _P + "rtp_header_extensions_map"),
        )
        self._seq = random32() % 32768  # as aiortc: the lower half, away from SRTP's wrap
        self._ts_origin = random32()
        payloads = self._payloads
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
        except (asyncio.CancelledError, ConnectionError, MediaStreamError):
            pass
        except Exception:
            # _rtp_exited must be set whatever happens, or stop() hangs.
            log.exception("fast RTP sender (%s) failed", self.kind)
        if self.track:
            self.track.stop()
            setattr(self, _P + "track", None)
        getattr(self, _P + "rtp_exited").set()

    def _send_frame(self, template: HeaderTemplate, frame: Any) -> None:
        dtls: Any = self.transport
        if dtls._state != DtlsState.CONNECTED:
            raise ConnectionError("Cannot send encrypted RTP, not connected")
        pair = dtls.transport._connection._nominated.get(1)
        if pair is None:
            raise ConnectionError("Cannot send data, not connected")
        udp = pair.protocol.transport
        sendto = udp.sendto
        addr = pair.remote_addr
        protect = dtls._tx_srtp.protect

        ntp = ntp_now()
        timestamp = (self._ts_origin + frame.timestamp) & 0xFFFFFFFF
        tail = template.frame_tail(timestamp, ntp)
        byte0 = template.byte0
        pt = template.payload_type
        history = self._history
        seq = self._seq
        last = len(frame.payloads) - 1
        sent_bytes = 0
        outs = []
        for i, payload in enumerate(frame.payloads):
            data = pack("!BBH", byte0, pt | 0x80 if i == last else pt, seq) + tail + payload
            history[seq % RTP_HISTORY_SIZE] = data
            out = protect(data)
            outs.append(out)
            sent_bytes += len(out)
            seq = (seq + 1) & 0xFFFF
        self._seq = seq
        sock = getattr(udp, "_sock", None)
        if last and self.gso and sock is not None and not getattr(udp, "_buffer", True):
            self._send_segmented(sock, outs, addr, sendto)
        else:
            for out in outs:
                sendto(out, addr)
        n = last + 1
        self.fast_packets += n
        # What aiortc's loop keeps for the RTCP sender report and getStats().
        setattr(self, _P + "ntp_timestamp", ntp)
        setattr(self, _P + "rtp_timestamp", timestamp)
        setattr(self, _P + "octet_count", getattr(self, _P + "octet_count") + frame.octets)
        setattr(self, _P + "packet_count", getattr(self, _P + "packet_count") + n)
        dtls._RTCDtlsTransport__tx_bytes += sent_bytes
        dtls._RTCDtlsTransport__tx_packets += n

    def _send_segmented(self, sock: socket.socket, outs: list[bytes], addr: Any, sendto: Any) -> None:
        """Runs of equal-size datagrams (plus one shorter last) in one GSO sendmsg each."""
        n = len(outs)
        i = 0
        while i < n:
            size = len(outs[i])
            j = i + 1
            while j < n and j - i < GSO_MAX_SEGMENTS and len(outs[j]) == size:
                j += 1
            if j < n and j - i < GSO_MAX_SEGMENTS and len(outs[j]) < size:
                j += 1  # the kernel allows a shorter last segment
            if j - i == 1 or not self.gso:
                for out in outs[i:j]:
                    sendto(out, addr)
            else:
                try:
                    sock.sendmsg([b"".join(outs[i:j])], [(SOL_UDP, UDP_SEGMENT, pack("=H", size))], 0, addr)
                    self.gso_calls += 1
                except (BlockingIOError, InterruptedError):
                    for out in outs[i:j]:  # the transport buffers them, in order
                        sendto(out, addr)
                except OSError as exc:
                    if exc.errno in (errno.EIO, errno.EINVAL, errno.ENOPROTOOPT, errno.EOPNOTSUPP):
                        log.info("UDP GSO refused (%s): one sendto per packet from now on", exc)
                        self.gso = False
                    for out in outs[i:j]:
                        sendto(out, addr)
            i = j

    # -- NACK ----------------------------------------------------------------------------

    def history_packet(self, sequence_number: int) -> bytes | None:
        """The serialized (unprotected) packet with this sequence number, if still kept."""
        if not hasattr(self, "_history"):
            return None
        data = self._history[sequence_number % RTP_HISTORY_SIZE]
        if data is None or unpack_from("!H", data, 2)[0] != sequence_number:
            return None
        return data

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
