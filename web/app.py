"""Composition root: builds every part from the Config, opens and closes each in one place."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

from telemetry.ingest import Ingester
from telemetry.metrics import IngestMetrics
from telemetry.storage import Store, open_store
from web.config import Config

log = logging.getLogger(__name__)

CONFIG = web.AppKey("config", Config)
REGISTRY = web.AppKey("registry", CollectorRegistry)
STORE = web.AppKey("store", Store)  # type: ignore[type-abstract]
INGESTER = web.AppKey("ingester", Ingester)
STARTED_AT = web.AppKey("started_at", float)

RETENTION_EVERY_S = 3600.0


def build_app(config: Config, *, with_ingest: bool = True) -> web.Application:
    app = web.Application(client_max_size=1024 * 1024)
    app[CONFIG] = config
    app[REGISTRY] = CollectorRegistry()
    app[STARTED_AT] = time.time()
    app.cleanup_ctx.append(_store_ctx)
    if with_ingest:
        app.cleanup_ctx.append(_ingest_ctx)
    app.cleanup_ctx.append(_retention_ctx)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    app.router.add_get("/metrics", metrics)
    return app


async def _store_ctx(app: web.Application) -> AsyncIterator[None]:
    store = open_store(app[CONFIG].storage)
    await asyncio.to_thread(store.open)
    applied = await asyncio.to_thread(store.migrate)
    if applied:
        log.info("applied migrations: %s", ", ".join(applied))
    app[STORE] = store
    yield
    await asyncio.to_thread(store.close)


async def _ingest_ctx(app: web.Application) -> AsyncIterator[None]:
    ingester = Ingester(app[CONFIG].ingest, app[STORE], IngestMetrics(app[REGISTRY]))
    await asyncio.to_thread(ingester.start)
    app[INGESTER] = ingester
    yield
    await asyncio.to_thread(ingester.stop)


async def _retention_ctx(app: web.Application) -> AsyncIterator[None]:
    async def loop() -> None:
        while True:
            try:
                dropped = await asyncio.to_thread(app[STORE].apply_retention)
                if dropped:
                    log.info("retention: dropped %d old chunks/rows", dropped)
            except Exception:
                log.exception("retention run failed; retrying in an hour")
            await asyncio.sleep(RETENTION_EVERY_S)

    task = asyncio.create_task(loop(), name="retention")
    yield
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task


async def healthz(request: web.Request) -> web.Response:
    """Liveness: the process answers."""
    return web.json_response({"status": "ok", "uptime_s": round(time.time() - request.app[STARTED_AT], 1)})


async def readyz(request: web.Request) -> web.Response:
    """Readiness: broker connected and database writable (when this node ingests)."""
    body: dict[str, object] = {"database": request.app[STORE].kind}
    ready = True
    ingester = request.app.get(INGESTER)
    if ingester is not None:
        st = ingester.status()
        body.update(
            broker_connected=st.broker_connected,
            database_ok=st.database_ok,
            pending_messages=st.pending_messages,
            last_commit_at=st.last_commit_at,
            last_error=st.last_error,
        )
        ready = st.broker_connected and st.database_ok
    body["status"] = "ready" if ready else "not ready"
    return web.json_response(body, status=200 if ready else 503)


async def metrics(request: web.Request) -> web.Response:
    data = generate_latest(request.app[REGISTRY])
    return web.Response(body=data, headers={"Content-Type": CONTENT_TYPE_LATEST})
