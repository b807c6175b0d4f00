#!/usr/bin/env python3
"""The naive relay for bench/stream.py: aiortc's ``MediaRelay``, one encoder per viewer.

    naive_relay.py --port 8766

What aiortc's examples and most aiortc relays do: one source track of decoded frames,
``MediaRelay().subscribe(track, buffered=False)`` per viewer (a slow viewer gets the newest
frame, not a growing queue), and each viewer's ``RTCRtpSender`` encodes the frames
itself (aiortc's ``H264Encoder``: libx264, aiortc's own settings, its bit rate steered by
the viewer's REMB). H.264 is forced, as for our relay, so both send the same codec.

The frames are the same test pattern as the relay under test (``busy=True``, 1280×720,
30 fps, the wall clock in the picture), painted by the same painter, paced by the
monotonic clock. A sink subscribed from the start keeps the painter running with no
viewer, so the bench's 0-viewer baseline holds the shared painting cost and the
per-viewer figure is only what each extra viewer adds.

Endpoints: ``POST /whep/<slug>`` (``application/sdp`` offer → 201 + Location + answer),
``DELETE /whep/<slug>/<id>``. ICE offers only 127.0.0.1, no STUN server. Prints
``ready <port>`` on stdout once it listens.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import fractions
import logging
import secrets
import signal
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

import av  # noqa: E402
from aiohttp import web  # noqa: E402
from aiortc import (  # noqa: E402
    RTCConfiguration,
    RTCPeerConnection,
    RTCRtpSender,
    RTCSessionDescription,
    VideoStreamTrack,
)
from aiortc.contrib.media import MediaRelay  # noqa: E402
from aiortc.mediastreams import MediaStreamError  # noqa: E402

from stream.ice import host_addresses  # noqa: E402
from stream.sources.testpattern import _Painter  # noqa: E402

VIDEO_TIME_BASE = fractions.Fraction(1, 90_000)


class PatternTrack(VideoStreamTrack):
    """The busy test pattern as decoded frames, at ``fps`` by the monotonic clock."""

    def __init__(self, width: int, height: int, fps: int) -> None:
        super().__init__()
        self._painter = _Painter(width, height, busy=True)
        self._fps = fps
        self._n = 0
        self._started: float | None = None

    async def recv(self) -> av.VideoFrame:
        if self._started is None:
            self._started = time.monotonic()
        due = self._started + self._n / self._fps
        wait = due - time.monotonic()
        if wait > 0:
            await asyncio.sleep(wait)
        elif -wait > 1 / self._fps:  # behind: skip, as our source does
            self._n += int(-wait * self._fps)
        frame = self._painter.paint(self._n, time.time())
        frame.pts = round(self._n * 90_000 / self._fps)
        frame.time_base = VIDEO_TIME_BASE
        self._n += 1
        return frame


def h264_preferences() -> list:
    return [
        c
        for c in RTCRtpSender.getCapabilities("video").codecs
        if c.mimeType.lower() == "video/h264" and str(c.parameters.get("packetization-mode")) == "1"
    ]


class NaiveRelay:
    def __init__(self, width: int, height: int, fps: int) -> None:
        self.track = PatternTrack(width, height, fps)
        self.relay = MediaRelay()
        self.sessions: dict[str, RTCPeerConnection] = {}
        self._sink: asyncio.Task[None] | None = None

    async def start(self) -> None:
        sink = self.relay.subscribe(self.track, buffered=False)

        async def drain() -> None:
            with contextlib.suppress(MediaStreamError):
                while True:
                    await sink.recv()

        self._sink = asyncio.ensure_future(drain())

    async def offer(self, request: web.Request) -> web.Response:
        if request.content_type != "application/sdp":
            return web.Response(status=415, text="send application/sdp")
        offer = await request.text()
        pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
        session_id = secrets.token_urlsafe(12)
        self.sessions[session_id] = pc

        @pc.on("connectionstatechange")
        async def on_state() -> None:
            if pc.connectionState in ("failed", "closed"):
                self.sessions.pop(session_id, None)
                await pc.close()

        transceiver = pc.addTransceiver(
            self.relay.subscribe(self.track, buffered=False), direction="sendonly"
        )
        transceiver.setCodecPreferences(h264_preferences())
        with host_addresses(("127.0.0.1",)):
            await pc.setRemoteDescription(RTCSessionDescription(sdp=offer, type="offer"))
            await pc.setLocalDescription(await pc.createAnswer())
        location = f"/whep/{request.match_info['slug']}/{session_id}"
        return web.Response(
            status=201,
            body=pc.localDescription.sdp.encode(),
            headers={"Location": location, "Content-Type": "application/sdp"},
        )

    async def delete(self, request: web.Request) -> web.Response:
        pc = self.sessions.pop(request.match_info["session"], None)
        if pc is None:
            return web.Response(status=404)
        await pc.close()
        return web.Response(status=204)

    async def close(self) -> None:
        await asyncio.gather(*(pc.close() for pc in self.sessions.values()), return_exceptions=True)
        self.sessions.clear()
        if self._sink is not None:
            self._sink.cancel()
        self.track.stop()


async def serve(args: argparse.Namespace) -> None:
    relay = NaiveRelay(args.width, args.height, args.fps)
    await relay.start()
    app = web.Application()
    app.router.add_post("/whep/{slug}", relay.offer)
    app.router.add_delete("/whep/{slug}/{session}", relay.delete)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", args.port).start()
    print(f"ready {args.port}", flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    try:
        await stop.wait()
    finally:
        await relay.close()
        await runner.cleanup()


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--width", type=int, default=1280)
    p.add_argument("--height", type=int, default=720)
    p.add_argument("--fps", type=int, default=30)
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    asyncio.run(serve(args))


if __name__ == "__main__":
    main()
