#!/usr/bin/env python3
"""The relay under test for bench/stream.py: origincast's own app, one busy test pattern.

    stream_relay.py --port 8765 --database sqlite:////tmp/x/relay.db

This is ``web.app.build_app(config, with_ingest=False)`` (what ``origincast serve
--no-ingest`` runs: WHEP, WHIP, the streams API, /metrics), with ICE offering only
127.0.0.1 and no STUN server, plus:

* the test pattern (``TestPatternSource``, ``busy=True`` so the encoder spends the
  whole bit rate as a camera would; 1280×720, 30 fps, 1.5 Mbps by default, no audio) on
  the stream ``--slug``, attached through the hub like any source;
* ``GET /bench/source``: the source's frame counters and its thread's CPU, and
  ``GET /bench/publish?since=T``: for each video packet published after ``T``
  (``time.time()``), the wall clock written into its picture (ms) and when it was
  handed to the fan-out. bench/stream.py matches viewers' samples against it; the
  difference between the two is the source's own paint-and-encode time.

The only per-packet addition is that log (one tuple per video packet per stream, not per
viewer). Prints ``ready <port>`` on stdout once it listens.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import logging
import signal
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from aiohttp import web  # noqa: E402

from stream.hub import Publication  # noqa: E402
from stream.packets import MediaPacket  # noqa: E402
from stream.sources.testpattern import TestPatternSource  # noqa: E402
from web.app import CONFIG, STREAM_HUB, build_app  # noqa: E402
from web.config import load_config  # noqa: E402

SOURCE = web.AppKey("bench_source", "LoggedTestPattern")


class LoggedTestPattern(TestPatternSource):
    """The test pattern, logging when each video packet reaches the fan-out."""

    def __init__(self, *args: object, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]
        # (wallclock ms written in the picture, time.time() when published); 10 min at 30 fps.
        self.published: collections.deque[tuple[int, float]] = collections.deque(maxlen=18_000)

    def _deliver(  # type: ignore[override]
        self, loop: asyncio.AbstractEventLoop, publication: Publication, packets: list[MediaPacket]
    ) -> bool:
        for pkt in packets:
            try:
                loop.call_soon_threadsafe(self._publish, publication, pkt)
            except RuntimeError:
                return False
        return True

    def _publish(self, publication: Publication, pkt: MediaPacket) -> None:
        now = time.time()
        publication.publish(pkt)
        if pkt.kind == "video":
            self.published.append((int(pkt.wallclock * 1000), now))


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--database", required=True, help="sqlite:///… for the stream registry")
    p.add_argument("--slug", default="bench")
    p.add_argument("--width", type=int, default=1280)
    p.add_argument("--height", type=int, default=720)
    p.add_argument("--fps", type=int, default=30)
    p.add_argument("--bitrate", type=int, default=1_500_000)
    return p.parse_args(argv)


def make_app(args: argparse.Namespace) -> web.Application:
    config = load_config(
        env={
            "ORIGINCAST_DATABASE_URL": args.database,
            "ORIGINCAST_STREAM_ICE_HOST_ADDRESSES": "127.0.0.1",
            "ORIGINCAST_STREAM_VIDEO_BITRATE_BPS": str(args.bitrate),
        }
    )
    app = build_app(config, with_ingest=False)

    async def source_ctx(app: web.Application) -> AsyncIterator[None]:
        source = LoggedTestPattern(
            app[STREAM_HUB],
            args.slug,
            app[CONFIG].stream,
            width=args.width,
            height=args.height,
            fps=args.fps,
            busy=True,
        )
        app[SOURCE] = source
        await source.start()
        yield
        await source.stop()

    async def source_info(request: web.Request) -> web.Response:
        s = request.app[SOURCE]
        return web.json_response(
            {"frames_sent": s.frames_sent, "frames_skipped": s.frames_skipped, "cpu_seconds": s.cpu_seconds}
        )

    async def publish_log(request: web.Request) -> web.Response:
        since = float(request.query.get("since", "0"))
        rows = [r for r in request.app[SOURCE].published if r[1] >= since]
        return web.json_response({"published": rows})

    bench_routes = {"/bench/source": source_info, "/bench/publish": publish_log}

    @web.middleware
    async def bench_open(request: web.Request, handler: Any) -> web.StreamResponse:
        # Outermost: the app's permission rules send routes they do not list to staff
        # only, and these two read-only figures of a throw-away relay need no login.
        route = bench_routes.get(request.path)
        if route is not None and request.method == "GET":
            return await route(request)
        return await handler(request)

    app.cleanup_ctx.append(source_ctx)
    app.middlewares.insert(0, bench_open)
    return app


async def serve(args: argparse.Namespace) -> None:
    runner = web.AppRunner(make_app(args), access_log=None)
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
        await runner.cleanup()


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    asyncio.run(serve(args))


if __name__ == "__main__":
    main()
