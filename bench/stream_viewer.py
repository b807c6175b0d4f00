#!/usr/bin/env python3
"""WHEP viewers for bench/stream.py: many aiortc clients in one process, none decoding.

    stream_viewer.py URL --viewers 25 [--sample 1] [--join-interval 0.1]   # steady
    stream_viewer.py URL --churn 1000 --batch 20 --frames-per-join 5       # joins and leaves

Each viewer is a real aiortc ``RTCPeerConnection`` (ICE, DTLS, SRTP, RTCP with NACK,
PLI and REMB, aiortc's jitter buffer): only the picture decoding is taken out.
aiortc's receiver reassembles each frame in its ``JitterBuffer`` and then hands it to a
decoder thread; here the jitter buffer is replaced (``aiortc.rtcrtpreceiver.JitterBuffer``,
looked up when a receiver is made) by a subclass that counts each complete frame and
remembers when its last packet arrived, and for most viewers returns nothing, so
nothing is queued for decoding and the decoder thread only waits for the end. A few
**sampled** viewers (``--sample``) do pass their frames on: the decoder thread
(``aiortc.rtcrtpreceiver.decoder_worker``, replaced too) decodes every frame with PyAV,
as it must to keep the reference pictures, and every ``--read-every``-th frame reads
the wall clock the test pattern wrote into it (``decode_wallclock``). The sample is
(wallclock ms, arrival time of the frame's last packet): bench/stream.py matches it with
the relay's own publish time of that frame.

aioice's 256 KiB receive buffers overflowed at 60 viewers in earlier trials (UDP
RcvbufErrors, then a NACK storm): they are raised to 4 MiB here. ICE offers only
127.0.0.1 and no STUN server is used, so nothing leaves loopback.

Protocol: JSON lines on stdout (``{"event": ...}``), commands on stdin, one per line:

* steady: ``ready`` (every viewer has its first frame, or failed) with the times to
  first frame; then ``mark`` → ``{"event": "mark", "t", "frames": [...], "samples": [...]}``
  (frame counters and the latency samples since the previous mark); ``quit`` → every
  viewer DELETEs its session and closes, ``closed``, exit.
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
from typing import Any

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

import aiohttp  # noqa: E402
import aioice.turn  # noqa: E402
import aiortc.rtcrtpreceiver as rtcrtpreceiver  # noqa: E402
import av  # noqa: E402
from aiortc import RTCConfiguration, RTCPeerConnection, RTCSessionDescription  # noqa: E402
from aiortc.codecs import get_decoder  # noqa: E402
from aiortc.jitterbuffer import JitterBuffer, JitterFrame  # noqa: E402
from aiortc.rtp import RtpPacket  # noqa: E402
from yarl import URL  # noqa: E402

from stream.ice import host_addresses  # noqa: E402
from stream.sources.testpattern import decode_wallclock  # noqa: E402

SOCKET_BUFFER = 4 * 1024 * 1024
SDP = {"Content-Type": "application/sdp"}


class ViewerStats:
    """What one viewer saw. Written on the event loop (frames) and, for sampled viewers,
    by its decoder thread (samples: list.append is atomic under the GIL)."""

    __slots__ = ("decode", "first_frame_at", "frames", "packets", "read_every", "samples", "unreadable")

    def __init__(self, decode: bool, read_every: int) -> None:
        self.decode = decode
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
        try:
            frames = decoder.decode(encoded)
        except av.FFmpegError:
            decode_error.set()  # the receiver sends a PLI, as aiortc's own worker makes it
            continue
        st: ViewerStats | None = getattr(encoded, "stats", None)
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


def install_patches() -> None:
    aioice.turn.UDP_SOCKET_BUFFER_SIZE = SOCKET_BUFFER  # read when each socket is made
    rtcrtpreceiver.JitterBuffer = CountingJitterBuffer  # type: ignore[misc]
    rtcrtpreceiver.decoder_worker = sampling_decoder_worker


class Viewer:
    def __init__(self, http: aiohttp.ClientSession, url: str, decode: bool, read_every: int) -> None:
        self._http = http
        self._url = url
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
    viewers = [Viewer(http, args.url, i < args.sample, args.read_every) for i in range(args.viewers)]
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
            Viewer(http, args.url, False, args.read_every) for _ in range(min(args.batch, args.churn - done))
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
