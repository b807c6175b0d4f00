"""Composition root: builds every part from the Config, opens and closes each in one place."""

from __future__ import annotations

import asyncio
import contextlib
import importlib.metadata
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import replace

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

from stream.hub import StreamHub
from stream.ice import IcePolicy, install_host_address_hook
from stream.metrics import StreamCollector
from stream.registry import Stream, StreamRepository, effective_links
from stream.registry_sql import open_stream_repository
from stream.sources.testpattern import TestPatternSource
from stream.whep import WhepService
from telemetry.alerts.metrics import AlertMetrics
from telemetry.alerts.service import AlertService
from telemetry.files import BlobStore
from telemetry.ingest import Ingester
from telemetry.metrics import IngestMetrics
from telemetry.shipments import Shipment
from telemetry.storage import Store, open_store
from web.accounts import AccountService, SessionPolicy, password_hasher
from web.accounts_sql import open_account_repository
from web.answer_cache import AnswerCache
from web.api_alerts import ALERTS, AlertsApi
from web.api_evidence import EvidenceApi
from web.api_files import FilesApi
from web.api_fleet import FleetApi
from web.api_session import SessionApi
from web.api_shipments import ShipmentsApi
from web.api_streams import StreamsApi
from web.api_users import UsersApi
from web.auth import Authenticator
from web.bundle import BundleApi, ShipmentEvidence
from web.config import Config
from web.demo import DEMO_SLUG, ensure_demo_stream
from web.errors import refuse_control_characters, refuse_nul_in_json
from web.evidence import EvidenceService
from web.live import StreamSensors, install_live_feed
from web.media_whep import add_whep_routes
from web.media_whip import WhipEndpoints
from web.openapi import build_document
from web.pages import add_page_routes
from web.permissions import permissions_middleware
from web.qr import QrApi
from web.rate_limit import RateLimiter
from web.share import ShareLinks
from web.trust import StreamInfo, TrustApi, TrustPage, evidence_of

log = logging.getLogger(__name__)

CONFIG = web.AppKey("config", Config)
REGISTRY = web.AppKey("registry", CollectorRegistry)
STORE = web.AppKey("store", Store)
INGESTER = web.AppKey("ingester", Ingester)
STARTED_AT = web.AppKey("started_at", float)
STREAM_HUB = web.AppKey("stream_hub", StreamHub)
WHEP = web.AppKey("whep", WhepService)
STREAMS = web.AppKey("streams", StreamRepository)
AUTH = web.AppKey("auth", Authenticator)
ACCOUNTS = web.AppKey("accounts", AccountService)
WHIP = web.AppKey("whip", WhipEndpoints)
SHARE = web.AppKey("share", ShareLinks)
FILES = web.AppKey("files", FilesApi)
EVIDENCE = web.AppKey("evidence", EvidenceService)
ANSWER_CACHE = web.AppKey("answer_cache", AnswerCache)  # built trust answers (web.answer_cache)
PUBLIC_LIMITER = web.AppKey("public_limiter", RateLimiter)  # per address, public endpoints

RETENTION_EVERY_S = 3600.0


def build_app(config: Config, *, with_ingest: bool = True) -> web.Application:
    app = web.Application(client_max_size=1024 * 1024)
    app[CONFIG] = config
    app[REGISTRY] = CollectorRegistry()
    app[STARTED_AT] = time.time()
    app.cleanup_ctx.append(_store_ctx)
    # The evidence log's checkpoints and the appends made outside ingest (web.evidence).
    app.cleanup_ctx.append(_evidence_ctx)
    EvidenceApi(lambda: app[EVIDENCE], lambda: app[STORE]).register(app.router)
    # Users, sessions and API tokens (opened and migrated in _accounts_ctx); every route
    # is checked against web.permissions' table before its handler runs.
    app[ACCOUNTS] = AccountService(
        open_account_repository(config.storage.url),
        policy=SessionPolicy(config.auth.session_idle_s, config.auth.session_absolute_s),
        hasher=password_hasher(
            config.auth.argon2_time_cost, config.auth.argon2_memory_kib, config.auth.argon2_parallelism
        ),
    )
    app.cleanup_ctx.append(_accounts_ctx)
    if with_ingest:
        # The one alert engine runs beside ingest (see telemetry.alerts.service); it starts
        # before the ingester feeds it and stops after.
        app.cleanup_ctx.append(_alerts_ctx)
        app.cleanup_ctx.append(_ingest_ctx)
    app.cleanup_ctx.append(_retention_ctx)
    # The hub and WHEP sessions are plain objects (no I/O until used): made here so the
    # routes can hold them; _stream_ctx closes them. The registry's lookup reaches
    # WhepService in _add_stream_registry (idle registered streams answer 409, not 404).
    app[STREAM_HUB] = StreamHub(config.stream)  # its per-stream gauges are added at scrape (metrics)
    app[WHEP] = WhepService(app[STREAM_HUB], IcePolicy(config.stream))
    app.cleanup_ctx.append(_stream_ctx)
    if config.demo_test_pattern:
        app.cleanup_ctx.append(_demo_pattern_ctx)
    _add_stream_registry(app, config)
    # Unlisted streams need a share link for the player, WHEP and the live feed (web.share).
    add_whep_routes(app, app[WHEP], app[SHARE].access)
    # The phone publish page and the public player, with their scripts and styles.
    add_page_routes(app, app[SHARE].access, config.stream.ice_servers)
    AlertsApi(app[AUTH], lambda: app[STORE], lambda: app.get(ALERTS)).register(app.router)
    FleetApi(app[AUTH], lambda: app[STORE], lambda: app.get(ALERTS)).register(app.router)  # the console
    # shipments and their reports; a close is signed and timestamped (web.evidence)
    ShipmentsApi(app[AUTH], lambda: app[STORE], on_closed=lambda s: _shipment_closed(app, s)).register(
        app.router
    )
    _add_trust(app, config)
    # The WebSocket live feed (readings and alert events from MQTT); after the store and
    # the registry in cleanup_ctx, so it opens after them and closes before them.
    install_live_feed(
        app, config.ingest, lambda: app[STORE], _stream_sensors(app), app[REGISTRY], auth=app[AUTH]
    )
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    app.router.add_get("/metrics", metrics)
    app.router.add_get("/api/v1/openapi.json", openapi_document)
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


async def _evidence_ctx(app: web.Application) -> AsyncIterator[None]:
    config = app[CONFIG]
    service = EvidenceService.from_key_file(
        app[STORE], config.evidence_key_file, config.evidence_checkpoint_interval_s, config.evidence_tsa
    )
    await service.start()
    app[EVIDENCE] = service
    yield
    await service.stop()


async def _shipment_closed(app: web.Application, shipment: Shipment) -> None:
    """A close's checkpoint and timestamp request. Never fails the close: the close is
    committed already, and a checkpoint signed later covers it as well."""
    service = app.get(EVIDENCE)
    if service is None:
        return
    try:
        await service.shipment_closed(shipment.closed_leaf)
    except Exception:
        log.exception("shipment %s closed, but its checkpoint or timestamp request failed", shipment.id)


async def _accounts_ctx(app: web.Application) -> AsyncIterator[None]:
    repo = app[ACCOUNTS].repo
    await asyncio.to_thread(repo.open)
    applied = await asyncio.to_thread(repo.migrate)
    if applied:
        log.info("account migrations applied: %s", ", ".join(applied))
    yield
    await asyncio.to_thread(repo.close)


async def _ingest_ctx(app: web.Application) -> AsyncIterator[None]:
    alerts = app.get(ALERTS)
    ingester = Ingester(
        app[CONFIG].ingest,
        app[STORE],
        IngestMetrics(app[REGISTRY]),
        on_committed=alerts.submit if alerts is not None else None,
    )
    await asyncio.to_thread(ingester.start)
    app[INGESTER] = ingester
    yield
    await asyncio.to_thread(ingester.stop)


async def _alerts_ctx(app: web.Application) -> AsyncIterator[None]:
    config = app[CONFIG]
    # Its own MQTT client id, derived from the ingester's (unique per process already).
    settings = replace(config.alerts, mqtt=config.ingest.mqtt, client_id=f"{config.ingest.client_id}-alerts")
    service = AlertService(settings, app[STORE], AlertMetrics(app[REGISTRY]))
    await asyncio.to_thread(service.start)
    app[ALERTS] = service
    yield
    await asyncio.to_thread(service.stop)


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


async def _stream_ctx(app: web.Application) -> AsyncIterator[None]:
    # aioice's host-address lookup, made context-scoped once per process (see stream.ice).
    install_host_address_hook()
    yield
    await app[WHEP].close()
    app[STREAM_HUB].close()


def _add_stream_registry(app: web.Application, config: Config) -> None:
    """The stream registry (opened and migrated in _registry_ctx), the JSON API and WHIP."""
    registry = app[STREAMS] = open_stream_repository(config.storage.url)
    auth = app[AUTH] = Authenticator(config.admin_token, app[ACCOUNTS], config.auth)
    app.middlewares.append(refuse_control_characters)
    app.middlewares.append(refuse_nul_in_json)
    app.middlewares.append(permissions_middleware(auth))
    SessionApi(auth).register(app.router)
    UsersApi(auth, app[ACCOUNTS]).register(app.router)
    app[SHARE] = ShareLinks(registry, config.secret_key)

    async def lookup(slug: str) -> Stream | None:
        return await asyncio.to_thread(registry.get, slug)

    async def is_known(slug: str) -> bool:
        return await lookup(slug) is not None

    async def verify_key(slug: str, key: str) -> bool:
        return await asyncio.to_thread(registry.verify_publish_key, slug, key)

    # A registered stream nobody publishes to is "offline, retry" (409) for viewers.
    app[WHEP].set_stream_lookup(is_known)
    whip = app[WHIP] = WhipEndpoints(
        app[STREAM_HUB], IcePolicy(config.stream), config.stream, auth, lookup, verify_key
    )
    whip.register(app)
    StreamsApi(registry, app[STREAM_HUB], auth, whip.end_stream, app[SHARE]).register(app.router)
    # After _stream_ctx: shut down first, so publishers leave before the hub closes.
    app.cleanup_ctx.append(_registry_ctx)


def _add_trust(app: web.Application, config: Config) -> None:
    """Test reports and origin photos, the public trust page /v/<id> with its endpoint,
    and the QR codes that lead there (web.trust, web.api_files, web.qr)."""
    files = app[FILES] = FilesApi(app[AUTH], lambda: app[STORE], BlobStore(config.files))
    files.register(app.router)

    async def public_streams(slugs: Sequence[str]) -> list[StreamInfo]:
        out = []
        for slug in slugs:
            stream = await asyncio.to_thread(app[STREAMS].get, slug)
            if stream is None or stream.visibility != "public":
                continue  # an unlisted stream is shown only with its share link
            live = app[STREAM_HUB].get(slug)
            out.append(StreamInfo(slug, stream.title, live is not None and live.state().status == "live"))
        return out

    # One builder for the page's answer and the offline bundle (`origincast verify`), its
    # answers kept for repeat requests; both public endpoints rate-limited per address.
    cache = app[ANSWER_CACHE] = AnswerCache()
    limiter = app[PUBLIC_LIMITER] = RateLimiter(
        burst=config.http.public_burst, per_second=config.http.public_rate_per_s
    )
    builder = ShipmentEvidence(
        lambda: app[STORE], files.catalog, lambda: evidence_of(app), files.blobs, cache
    )
    TrustApi(lambda: app[STORE], builder, public_streams, limiter).register(app.router)
    BundleApi(lambda: app[STORE], builder, limiter).register(app.router)
    TrustPage().register(app.router)
    QrApi(lambda: app[STORE], lambda: evidence_of(app), config.http.public_url).register(app.router)
    app.cleanup_ctx.append(_files_ctx)


async def _files_ctx(app: web.Application) -> AsyncIterator[None]:
    await asyncio.to_thread(app[FILES].blobs.open)
    yield


def _stream_sensors(app: web.Application) -> Callable[[str, str | None], Awaitable[StreamSensors | None]]:
    """(slug, share token) -> the stream's linked sites and devices, for the live feed;
    None for an unknown stream and for an unlisted one without a valid share token alike."""

    async def resolve(slug: str, token: str | None) -> StreamSensors | None:
        access = await app[SHARE].access(slug, token)
        if access.stream is None:
            return None
        stored = await asyncio.to_thread(app[STREAMS].get_links, slug)
        if stored is None:  # removed meanwhile
            return None
        links = effective_links(access.stream, stored)
        return StreamSensors(frozenset(links.sites), frozenset(links.devices))

    return resolve


async def _registry_ctx(app: web.Application) -> AsyncIterator[None]:
    registry = app[STREAMS]
    await asyncio.to_thread(registry.open)
    applied = await asyncio.to_thread(registry.migrate)
    if applied:
        log.info("stream registry migrations applied: %s", ", ".join(applied))
    await app[SHARE].open()
    if app[CONFIG].demo_test_pattern:
        await asyncio.to_thread(ensure_demo_stream, registry)
    yield
    await app[WHIP].close()
    await asyncio.to_thread(registry.close)


async def _demo_pattern_ctx(app: web.Application) -> AsyncIterator[None]:
    # With the Opus beep on every second, so a player's sound can be checked too.
    source = TestPatternSource(app[STREAM_HUB], DEMO_SLUG, app[CONFIG].stream, audio=True)
    await source.start()
    yield
    await source.stop()


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


async def openapi_document(request: web.Request) -> web.Response:
    return web.json_response(build_document(_version()))


def _version() -> str:
    try:
        return importlib.metadata.version("origincast")
    except importlib.metadata.PackageNotFoundError:
        return "0+unknown"


async def metrics(request: web.Request) -> web.Response:
    """Prometheus text. /metrics is public (a scraper holds no login), so the per-stream
    gauges name only streams anyone may know of: an unlisted stream's slug is what its
    share links guard, and a label would give it away. Streams the registry does not know
    (a relay fed directly, as bench/stream_relay.py does) are public, as for WHEP."""
    states = request.app[STREAM_HUB].states()  # taken first: a stream made unlisted after is hidden
    try:
        streams = await asyncio.to_thread(request.app[STREAMS].list_streams, include_unlisted=True)
    except Exception:
        # The database is down: the ingest figures matter most now; leave the streams out
        # rather than guess which are public.
        log.warning("metrics: stream registry unavailable, per-stream gauges left out", exc_info=True)
        states = []
        streams = []
    hidden = {s.slug for s in streams if s.visibility != "public"}
    shown = [s for s in states if s.slug not in hidden]
    per_scrape = CollectorRegistry()
    per_scrape.register(StreamCollector(lambda: shown))
    data = generate_latest(request.app[REGISTRY]) + generate_latest(per_scrape)
    return web.Response(body=data, headers={"Content-Type": CONTENT_TYPE_LATEST})
