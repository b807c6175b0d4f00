#!/usr/bin/env python3
"""WHEP viewers for bench/stream.py: many aiortc clients in one process, none decoding.

    stream_viewer.py URL --viewers 25 [--sample 1] [--join-interval 0.1]   # steady
    stream_viewer.py URL --churn 1000 --batch 20 --frames-per-join 5       # joins and leaves
    stream_viewer.py URL --viewers 25 --full      # every viewer on aiortc's whole receive path

Every viewer is a real aiortc ``RTCPeerConnection`` and a real WHEP client: it POSTs
its offer, runs ICE (aioice, consent checks included), the DTLS handshake and the SRTP
key export, and answers the relay's RTCP. Only what a viewer does with the media
differs:

**Sampled viewers** (``--sample`` per process) take aiortc's whole receive path and
decode: ``RtpPacket.parse`` with its header extensions, the remote bitrate estimator
(REMB), the NACK generator, RTCP receiver statistics, depayloading, aiortc's
``JitterBuffer`` (a subclass here that also counts complete frames and remembers when
each frame's last packet arrived), and the decoder thread (``decoder_worker``, replaced)
decodes every frame with PyAV and reads, from every ``--read-every``-th picture, the wall
clock the test pattern wrote into it (``decode_wallclock``). That sample (wallclock ms,
arrival of the frame's last packet) is what bench/stream.py matches with the relay's
own publish time of the frame.

**Lean viewers** (all others, unless ``--full``) skip aiortc's per-packet Python, which
made 50 viewers cost more CPU than the relay they measured. Per viewer, ``LeanRtp``:

* gets each datagram of its ICE connection straight from aioice's ``StunProtocol``
  when its first byte says SRTP/SRTCP (128-191, RFC 7983: never STUN or DTLS), instead
  of STUN-parsing it and queueing it for aiortc's DTLS task; STUN (consent checks) and
  DTLS go the usual way. SRTCP too, and any SRTP that arrives before the keys exist or
  while aioice's queue still holds earlier datagrams (so the order is kept): aiortc's
  DTLS transport unprotects those and hands the RTP back to ``LeanRtp.rtp``;
* unprotects every SRTP packet with the viewer's own libsrtp session (authentication
  tag checked; failures counted);
* reads the fixed RTP header only (``struct``: payload type, marker, sequence number,
  timestamp, SSRC), with the header length (CSRCs, extension block) only where it is
  needed: at a frame's first packet and in RTX packets;
* counts packets, and **complete frames**: a frame counts when its first packet
  starts a NAL unit (single NAL, STAP-A, or FU-A with the start bit), the sequence
  numbers run without a gap from that packet to the frame's marker packet, and the
  previous packet in sequence was the previous frame's marker. A frame with a gap is
  not complete, even if the retransmission comes later (counted as ``incomplete``);
  the first complete frame's marker arrival is the time to first frame;
* keeps the receiver's RTCP statistics for aiortc's own RTCP task, which sends the
  receiver reports (RR: highest sequence number with wrap cycles, cumulative and
  fractional loss, RFC 3550 interarrival jitter updated at each new timestamp as
  aiortc's ``StreamStatistics`` does, LSR/DLSR from the sender reports aiortc still
  parses); the RTX stream gets its own report as in aiortc;
* **NACK**: a sequence gap sends aiortc's generic NACK with every sequence number
  still missing (aiortc's ``NackGenerator`` rule, within the last 128); an RTX packet
  (payload type from the negotiated codecs) removes its original sequence number;
* **PLI**: a loss still missing when the frame after its own has ended (the
  retransmission did not come in time) sends aiortc's PLI and is given up;
* **REMB** every 0.5 s (aiortc's feedback interval) carrying the bit rate received
  since the last one, not aiortc's delay-based estimate (the relay's fast sender has no
  encoder to steer; the naive relay's viewers keep aiortc's estimator, ``--full``);
* no depayloading, no jitter buffer, no decoder: nothing is queued for the decoder
  thread, which only waits for the end.

aioice's 256 KiB receive buffers overflowed at 60 viewers in earlier trials (UDP
RcvbufErrors, then a NACK storm): they are raised to 4 MiB here. ICE offers only
127.0.0.1 and no STUN server is used, so nothing leaves loopback.

Protocol: JSON lines on stdout (``{"event": ...}``), commands on stdin, one per line:

* steady: ``ready`` (every viewer has its first frame, or failed) with the times to
  first frame; then ``mark`` → ``{"event": "mark", "t", "frames": [...], "packets": [...],
  "samples": [...], "decode_cpu_s", "lean": {...}}`` (per-viewer frame and packet
  counters, the latency samples since the previous mark, the decoder threads' CPU, the
  lean viewers' incomplete frames, NACKs, retransmissions, PLIs and unprotect
  failures); ``quit`` → every viewer DELETEs its session and closes, ``closed``, exit.
* churn: batches of ``--batch`` viewers join together, each waits for
  ``--frames-per-join`` frames, DELETEs and closes; after every ``--report-every``
  joins, ``progress`` and a wait for ``next`` on stdin (the bench reads the relay's
  memory with no viewer attached), then ``done``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import sys
import threading
import time
from pathlib import Path
from struct import Struct
from typing import Any

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

import aiohttp  # noqa: E402
import aioice.turn  # noqa: E402
import aiortc.rtcrtpreceiver as rtcrtpreceiver  # noqa: E402
import av  # noqa: E402
import pylibsrtp  # noqa: E402
from aioice.ice import Connection, StunProtocol  # noqa: E402
from aiortc import RTCConfiguration, RTCPeerConnection, RTCSessionDescription  # noqa: E402
from aiortc.codecs import get_decoder  # noqa: E402
from aiortc.jitterbuffer import JitterBuffer, JitterFrame  # noqa: E402
from aiortc.rtcrtpreceiver import StreamStatistics  # noqa: E402
from aiortc.rtp import RTCP_PSFB_APP, RTP_HISTORY_SIZE, RtcpPsfbPacket, RtpPacket, pack_remb_fci  # noqa: E402
from yarl import URL  # noqa: E402

from stream.ice import host_addresses  # noqa: E402
from stream.sources.testpattern import decode_wallclock  # noqa: E402

SOCKET_BUFFER = 4 * 1024 * 1024
SDP = {"Content-Type": "application/sdp"}


class ViewerStats:
    """What one viewer saw. Written on the event loop (frames) and, for sampled viewers,
    by its decoder thread (samples: list.append is atomic under the GIL)."""

    __slots__ = (
        "decode",
        "decode_cpu_s",
        "first_frame_at",
        "frames",
        "incomplete",
        "nacks",
        "packets",
        "plis",
        "read_every",
        "retransmissions",
        "samples",
        "unprotect_failed",
        "unreadable",
    )

    def __init__(self, decode: bool, read_every: int) -> None:
        self.decode = decode
        self.decode_cpu_s = 0.0  # the decoder thread's CPU (sampled viewers)
        # Counted by lean viewers only (a sampled viewer's are aiortc's own).
        self.incomplete = 0  # frames with a gap, not counted in ``frames``
        self.nacks = 0
        self.plis = 0
        self.retransmissions = 0
        self.unprotect_failed = 0
        self.read_every = read_every
        self.frames = 0
        self.packets = 0  # RTP packets of the video stream (retransmissions included)
        self.first_frame_at: float | None = None
        self.samples: list[tuple[int, float]] = []  # (wallclock ms in the picture, arrival)
        self.unreadable = 0


class CountingJitterBuffer(JitterBuffer):
    """aiortc's jitter buffer, counting complete frames; passes them on only to be decoded.

    ``_arrival`` keeps the arrival time of each RTP timestamp's newest packet, so a frame's
    time is when its last packet (a retransmission, if one was needed) came in, not when
    the next frame's first packet told the buffer the frame was over.
    """

    def __init__(self, capacity: int, prefetch: int = 0, is_video: bool = False) -> None:
        super().__init__(capacity, prefetch=prefetch, is_video=is_video)
        self.stats: ViewerStats | None = None
        self._arrival: dict[int, float] = {}

    def add(self, packet: RtpPacket) -> tuple[bool, JitterFrame | None]:
        now = time.time()
        arrival = self._arrival
        arrival[packet.timestamp] = now
        if self.stats is not None:
            self.stats.packets += 1
        pli, frame = super().add(packet)
        if frame is None:
            return pli, None
        done = arrival.pop(frame.timestamp, now)
        if len(arrival) > 32:  # frames the buffer gave up on
            for ts in list(arrival)[:-4]:
                del arrival[ts]
        st = self.stats
        if st is None:
            return pli, None
        st.frames += 1
        if st.first_frame_at is None:
            st.first_frame_at = done
        if not st.decode:
            return pli, None  # nothing queued, nothing decoded
        frame.stats = st  # type: ignore[attr-defined]
        frame.done = done  # type: ignore[attr-defined]
        return pli, frame


_RTP_FIELDS = Struct("!HII")  # sequence number, timestamp, SSRC: bytes 2-11 of an RTP header
_U16 = Struct("!H")
VIDEO_CLOCK_RATE = 90_000
NACK_WINDOW = RTP_HISTORY_SIZE  # aiortc's NackGenerator forgets losses older than this
REMB_INTERVAL_S = 0.5  # aiortc's AimdRateControl.feedback_interval()


def rtp_header_length(data: bytes) -> int:
    """Fixed header + CSRCs + the header extension block, if any."""
    off = 12 + 4 * (data[0] & 0x0F)
    if data[0] & 0x10 and len(data) >= off + 4:
        off += 4 + 4 * _U16.unpack_from(data, off + 2)[0]
    return off


def starts_nal_unit(data: bytes) -> bool:
    """The RTP payload (H.264, RFC 6184) begins a NAL unit: a single NAL unit, an
    aggregation packet, or the first fragment (S bit) of a fragmented one."""
    off = rtp_header_length(data)
    if off >= len(data):
        return False
    kind = data[off] & 0x1F
    if kind in (28, 29):  # FU-A, FU-B
        return off + 1 < len(data) and bool(data[off + 1] & 0x80)
    return kind != 0


class _SeqTs:
    """What aiortc's ``StreamStatistics.add`` reads of a packet (for the rare RTX packet)."""

    __slots__ = ("sequence_number", "timestamp")

    def __init__(self, sequence_number: int, timestamp: int) -> None:
        self.sequence_number = sequence_number
        self.timestamp = timestamp


class LeanRtp:
    """The receive path of a viewer that does not decode; see the module docstring.

    ``datagram`` gets every datagram of the viewer's ICE connection that is not STUN
    or DTLS (RFC 7983: first byte 128-191). It unprotects SRTP itself and handles the
    RTP packet at once; SRTCP, and anything that arrives before the SRTP keys exist or
    while aioice's queue still holds earlier datagrams (order is kept), goes the usual
    way: aioice's queue, aiortc's DTLS transport, which hands RTP back to ``rtp``.
    RTCP (sender reports in, receiver reports out) stays aiortc's: ``rtp`` keeps the
    receiver's ``StreamStatistics`` up to date, and aiortc's RTCP task writes the RR.
    """

    __slots__ = (
        "after_marker",
        "connection",
        "frame_ok",
        "max_seq",
        "media_pts",
        "missing",
        "receiver",
        "remb_at",
        "remb_bytes",
        "rtp_stats",
        "rtx_pts",
        "stats",
        "tasks",
        "unrepaired",
    )

    def __init__(self, receiver: Any, connection: Any, stats: ViewerStats) -> None:
        self.receiver = receiver
        self.connection = connection
        self.stats = stats
        self.media_pts: frozenset[int] = frozenset()
        self.rtx_pts: frozenset[int] = frozenset()
        self.rtp_stats: StreamStatistics | None = None
        self.max_seq: int | None = None
        self.after_marker = True  # the previous packet in sequence closed a frame
        self.frame_ok = False  # the current frame has had no gap so far
        self.missing: set[int] = set()  # sequence numbers NACKed and not seen since
        self.unrepaired: set[int] = set()  # missing when the previous frame ended
        self.remb_at = 0.0
        self.remb_bytes = 0
        self.tasks: set[asyncio.Future[None]] = set()  # RTCP being sent

    def datagram(self, data: bytes) -> None:
        connection = self.connection
        srtp = self.receiver.transport._rx_srtp
        if srtp is None or 191 < data[1] < 209 or not connection._queue.empty():
            Connection.data_received(connection, data, 1)
            return
        try:
            plain = srtp.unprotect(data)
        except pylibsrtp.Error:
            self.stats.unprotect_failed += 1
            return
        self.rtp(plain)

    async def queued_rtp(self, data: bytes, arrival_time_ms: int) -> None:
        """Stands in for ``RTCDtlsTransport._handle_rtp_data`` (RTP that took aiortc's path)."""
        self.rtp(data)

    def rtp(self, data: bytes) -> None:
        if len(data) < 12:
            return
        b1 = data[1]
        seq, ts, ssrc = _RTP_FIELDS.unpack_from(data, 2)
        st = self.stats
        st.packets += 1
        self.remb_bytes += len(data)
        if b1 & 0x7F not in self.media_pts:
            if not self.media_pts:
                self._learn_codecs()
            if b1 & 0x7F in self.rtx_pts:
                self._rtx(data, seq, ts, ssrc)
            if b1 & 0x7F not in self.media_pts:
                return
        rs = self.rtp_stats
        if rs is None:
            rs = self._start_statistics(ssrc, seq)
        rs.packets_received += 1
        max_seq = self.max_seq
        delta = 1 if max_seq is None else (seq - max_seq) & 0xFFFF
        if delta == 0 or delta >= 0x8000:
            # A duplicate or a late packet: it fills a hole but cannot mend its frame.
            self.missing.discard(seq)
            return
        if max_seq is not None and seq < max_seq:
            rs.cycles += 1 << 16
        rs.max_seq = self.max_seq = seq
        if delta > 1:
            self._lost(max_seq, delta, ssrc)  # type: ignore[arg-type]
        if ts != rs._last_timestamp:  # the first packet of a frame
            arrival = int(time.time() * VIDEO_CLOCK_RATE)
            if rs._last_timestamp is not None and rs._last_arrival is not None:
                # RFC 3550 A.8, as aiortc's StreamStatistics: once per timestamp.
                d = abs((arrival - rs._last_arrival) - (ts - rs._last_timestamp))
                rs._jitter_q4 += d - ((rs._jitter_q4 + 8) >> 4)
            rs._last_arrival = arrival
            rs._last_timestamp = ts
            self.frame_ok = delta == 1 and self.after_marker and starts_nal_unit(data)
        elif delta > 1:
            self.frame_ok = False
        if not b1 & 0x80:
            self.after_marker = False
            return
        # The marker: the frame's last packet.
        self.after_marker = True
        now = time.time()
        rs._last_arrival = int(now * VIDEO_CLOCK_RATE)
        if self.frame_ok:
            st.frames += 1
            if st.first_frame_at is None:
                st.first_frame_at = now
        else:
            st.incomplete += 1
        self.frame_ok = False
        if self.missing or self.unrepaired:
            self._give_up(ssrc)
        if now - self.remb_at >= REMB_INTERVAL_S:
            self._remb(now, ssrc)

    # -- the rare paths --------------------------------------------------------------------

    def _learn_codecs(self) -> None:
        codecs = self.receiver._RTCRtpReceiver__codecs  # filled by receive(), before any RTP
        self.rtx_pts = frozenset(pt for pt, c in codecs.items() if c.mimeType.lower() == "video/rtx")
        self.media_pts = frozenset(pt for pt in codecs if pt not in self.rtx_pts)

    def _start_statistics(self, ssrc: int, seq: int) -> StreamStatistics:
        rs = StreamStatistics(VIDEO_CLOCK_RATE)
        rs.base_seq = seq
        self.receiver._RTCRtpReceiver__remote_streams[ssrc] = rs
        self.rtp_stats = rs
        return rs

    def _lost(self, prev: int, delta: int, ssrc: int) -> None:
        missing = self.missing
        for i in range(max(1, delta - NACK_WINDOW), delta):
            missing.add((prev + i) & 0xFFFF)
        if len(missing) > NACK_WINDOW:
            newest = self.max_seq or 0
            for seq in [s for s in missing if (newest - s) & 0xFFFF > NACK_WINDOW]:
                missing.discard(seq)
        self.stats.nacks += 1
        self._send(self.receiver._send_rtcp_nack(ssrc, sorted(missing)))

    def _give_up(self, ssrc: int) -> None:
        """Losses still missing one frame after the frame they belong to ended: the
        retransmission did not come in time, ask for a keyframe (a decoder would have to)."""
        still = self.unrepaired & self.missing
        if still:
            self.missing -= still
            self.stats.plis += 1
            self._send(self.receiver._send_rtcp_pli(ssrc))
        self.unrepaired = set(self.missing)

    def _rtx(self, data: bytes, seq: int, ts: int, ssrc: int) -> None:
        streams = self.receiver._RTCRtpReceiver__remote_streams
        rs = streams.get(ssrc)
        if rs is None:
            rs = streams[ssrc] = StreamStatistics(VIDEO_CLOCK_RATE)
        rs.add(_SeqTs(seq, ts))  # aiortc reports the RTX stream in its RR too
        off = rtp_header_length(data)
        if len(data) >= off + 2:
            original = _U16.unpack_from(data, off)[0]
            self.missing.discard(original)
            self.unrepaired.discard(original)
            self.stats.retransmissions += 1

    def _remb(self, now: float, ssrc: int) -> None:
        """A REMB at aiortc's cadence, carrying the bit rate received since the last one."""
        rtcp_ssrc = self.receiver._RTCRtpReceiver__rtcp_ssrc
        if self.remb_at and rtcp_ssrc is not None:
            bitrate = int(self.remb_bytes * 8 / (now - self.remb_at))
            fci = pack_remb_fci(bitrate, [ssrc])
            self._send(
                self.receiver._send_rtcp(
                    RtcpPsfbPacket(fmt=RTCP_PSFB_APP, ssrc=rtcp_ssrc, media_ssrc=0, fci=fci)
                )
            )
        self.remb_at = now
        self.remb_bytes = 0

    def _send(self, coro: Any) -> None:
        task = asyncio.ensure_future(coro)
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)


def lean_datagram_received(self: StunProtocol, data: bytes, addr: tuple[Any, ...]) -> None:
    """aioice's ``StunProtocol.datagram_received`` with RFC 7983's demultiplexing in front:
    on a lean viewer's connection, SRTP/SRTCP (first byte 128-191, never STUN) skips
    the STUN parse and goes to the viewer's ``LeanRtp``."""
    lean = self.receiver.lean_rtp
    if lean is not None and 127 < data[0] < 192:
        lean(data)
        return
    _stun_datagram_received(self, data, addr)


_stun_datagram_received = StunProtocol.datagram_received


def sampling_decoder_worker(
    loop: asyncio.AbstractEventLoop, input_q: Any, output_q: asyncio.Queue, decode_error: threading.Event
) -> None:
    """Replaces aiortc's decoder thread: decodes (only sampled viewers queue anything) and
    reads the test pattern's clock from every ``read_every``-th picture."""
    decoder = None
    n = 0
    while True:
        task = input_q.get()
        if task is None:
            asyncio.run_coroutine_threadsafe(output_q.put(None), loop)
            break
        codec, encoded = task
        if decoder is None:
            decoder = get_decoder(codec)
        st: ViewerStats | None = getattr(encoded, "stats", None)
        cpu0 = time.thread_time()
        try:
            frames = decoder.decode(encoded)
        except av.FFmpegError:
            decode_error.set()  # the receiver sends a PLI, as aiortc's own worker makes it
            frames = []
        for frame in frames:
            n += 1
            if st is None or n % st.read_every:
                continue
            try:
                wallclock = decode_wallclock(frame.to_ndarray(format="gray"))
            except ValueError:
                st.unreadable += 1
                continue
            st.samples.append((round(wallclock * 1000), encoded.done))  # type: ignore[attr-defined]
        if st is not None:
            st.decode_cpu_s += time.thread_time() - cpu0


def install_patches() -> None:
    aioice.turn.UDP_SOCKET_BUFFER_SIZE = SOCKET_BUFFER  # read when each socket is made
    Connection.lean_rtp = None  # type: ignore[attr-defined]  # set per lean viewer
    StunProtocol.datagram_received = lean_datagram_received  # type: ignore[method-assign]
    rtcrtpreceiver.JitterBuffer = CountingJitterBuffer  # type: ignore[misc]
    rtcrtpreceiver.decoder_worker = sampling_decoder_worker


class Viewer:
    def __init__(
        self, http: aiohttp.ClientSession, url: str, decode: bool, read_every: int, lean: bool = True
    ) -> None:
        self._http = http
        self._url = url
        self.lean = lean and not decode
        self.stats = ViewerStats(decode, read_every)
        self.pc: RTCPeerConnection | None = None
        self.location: str | None = None
        self.posted_at: float | None = None
        self.error: str | None = None
        self._marked_samples = 0
        self._marked_frames = 0

    async def join(self) -> None:
        pc = self.pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
        transceiver = pc.addTransceiver("video", direction="recvonly")
        buffer = transceiver.receiver._RTCRtpReceiver__jitter_buffer  # type: ignore[attr-defined]
        assert isinstance(buffer, CountingJitterBuffer), "install_patches() first"
        if self.lean:
            receiver: Any = transceiver.receiver
            dtls: Any = receiver.transport
            connection = dtls.transport._connection
            lean = LeanRtp(receiver, connection, self.stats)
            connection.lean_rtp = lean.datagram
            dtls._handle_rtp_data = lean.queued_rtp
        else:
            buffer.stats = self.stats
        with host_addresses(("127.0.0.1",)):
            await pc.setLocalDescription(await pc.createOffer())
        self.posted_at = time.time()
        async with self._http.post(self._url, data=pc.localDescription.sdp, headers=SDP) as r:
            body = await r.text()
            if r.status != 201:
                raise RuntimeError(f"POST {self._url}: {r.status} {body[:200]}")
            location = r.headers["Location"]
        self.location = str(r.url.join(URL(location)))
        await pc.setRemoteDescription(RTCSessionDescription(sdp=body, type="answer"))

    async def wait_frames(self, n: int, within_s: float) -> bool:
        deadline = time.monotonic() + within_s
        while self.stats.frames < n:
            if time.monotonic() > deadline:
                return False
            await asyncio.sleep(0.02)
        return True

    @property
    def ttff(self) -> float | None:
        st = self.stats
        if st.first_frame_at is None or self.posted_at is None:
            return None
        return st.first_frame_at - self.posted_at

    def take_samples(self) -> list[tuple[int, float]]:
        samples = self.stats.samples[self._marked_samples :]
        self._marked_samples += len(samples)
        return samples

    async def leave(self) -> None:
        if self.location is not None:
            with contextlib.suppress(Exception):
                async with self._http.delete(self.location) as r:
                    await r.read()
            self.location = None
        if self.pc is not None:
            with contextlib.suppress(Exception):
                await self.pc.close()
            self.pc = None


def emit(obj: dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(obj) + "\n")
    sys.stdout.flush()


async def read_command() -> str:
    line = await asyncio.to_thread(sys.stdin.readline)
    return line.strip() or "quit"  # EOF: the bench went away


async def join_one(viewer: Viewer, first_frame_timeout: float) -> None:
    try:
        await viewer.join()
        if not await viewer.wait_frames(1, first_frame_timeout):
            viewer.error = f"no frame within {first_frame_timeout:.0f} s"
    except Exception as exc:
        viewer.error = f"{type(exc).__name__}: {exc}"[:300]


async def steady(args: argparse.Namespace, http: aiohttp.ClientSession) -> None:
    viewers = [
        Viewer(http, args.url, i < args.sample, args.read_every, not args.full) for i in range(args.viewers)
    ]
    await asyncio.sleep(args.start_delay)
    joins = []
    for v in viewers:
        joins.append(asyncio.ensure_future(join_one(v, args.first_frame_timeout)))
        await asyncio.sleep(args.join_interval)
    await asyncio.gather(*joins)
    emit(
        {
            "event": "ready",
            "ttff": [v.ttff for v in viewers],
            "errors": [v.error for v in viewers if v.error],
            "sampled": sum(1 for v in viewers if v.stats.decode),
        }
    )
    try:
        while True:
            cmd = await read_command()
            if cmd == "mark":
                emit(
                    {
                        "event": "mark",
                        "t": time.time(),
                        "frames": [v.stats.frames for v in viewers],
                        "packets": [v.stats.packets for v in viewers],
                        "samples": [s for v in viewers for s in v.take_samples()],
                        "unreadable": sum(v.stats.unreadable for v in viewers),
                        "decode_cpu_s": sum(v.stats.decode_cpu_s for v in viewers),
                        "lean": {
                            k: sum(getattr(v.stats, k) for v in viewers)
                            for k in ("incomplete", "nacks", "plis", "retransmissions", "unprotect_failed")
                        },
                    }
                )
            elif cmd == "quit":
                break
    finally:
        await asyncio.gather(*(v.leave() for v in viewers))
    emit({"event": "closed"})


async def churn(args: argparse.Namespace, http: aiohttp.ClientSession) -> None:
    done = failed = 0
    ttff: list[float] = []
    errors: list[str] = []
    since_report = 0
    while done < args.churn:
        batch = [
            Viewer(http, args.url, False, args.read_every, not args.full)
            for _ in range(min(args.batch, args.churn - done))
        ]

        async def one(v: Viewer) -> None:
            try:
                await join_one(v, args.first_frame_timeout)
                if v.error is None and not await v.wait_frames(args.frames_per_join, 10.0):
                    v.error = f"fewer than {args.frames_per_join} frames in 10 s"
            finally:
                await v.leave()

        await asyncio.gather(*(one(v) for v in batch))
        for v in batch:
            if v.error:
                failed += 1
                errors.append(v.error)
            elif v.ttff is not None:
                ttff.append(v.ttff)
        done += len(batch)
        since_report += len(batch)
        if since_report >= args.report_every or done >= args.churn:
            since_report = 0
            emit({"event": "progress", "joins": done, "failed": failed, "ttff": ttff, "errors": errors[-3:]})
            ttff = []
            if await read_command() != "next":
                break
    emit({"event": "done", "joins": done, "failed": failed})


async def main_async(args: argparse.Namespace) -> None:
    install_patches()
    timeout = aiohttp.ClientTimeout(total=30)
    async with aiohttp.ClientSession(timeout=timeout) as http:
        if args.churn:
            await churn(args, http)
        else:
            await steady(args, http)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("url", help="the WHEP endpoint, http://127.0.0.1:PORT/whep/SLUG")
    p.add_argument("--viewers", type=int, default=25)
    p.add_argument("--sample", type=int, default=1, help="viewers that decode, for latency samples")
    p.add_argument("--read-every", type=int, default=10, help="read the clock of every n-th decoded frame")
    p.add_argument("--join-interval", type=float, default=0.1, help="seconds between this process's joins")
    p.add_argument("--start-delay", type=float, default=0.0)
    p.add_argument("--first-frame-timeout", type=float, default=15.0)
    p.add_argument(
        "--full",
        action="store_true",
        help="every viewer takes aiortc's whole receive path (parse, REMB estimator, NACK generator,"
        " jitter buffer), not the lean one",
    )
    p.add_argument("--churn", type=int, default=0, help="joins and leaves instead of steady viewers")
    p.add_argument("--batch", type=int, default=20)
    p.add_argument("--frames-per-join", type=int, default=5)
    p.add_argument("--report-every", type=int, default=100)
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(main_async(args))


if __name__ == "__main__":
    main()
