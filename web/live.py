"""The live feed: ``GET /api/v1/live`` (WebSocket), readings and alert events from MQTT.

Selection (exactly one kind per connection):
- ``?stream=<slug>``: the stream's linked sensors: the devices of its linked sites (by
  ``site_id`` in the devices table, cached and refreshed every ``refresh_s``) and its
  linked devices; a stream with no links shows its own site (stream.registry.
  effective_links). An unlisted stream needs its share token, ``&share=<token>``;
  without a valid one it is answered like an unknown stream (404). The links are read
  when a client connects: a page sees changed links when it reconnects;
- ``?site=<site_id>``: the devices of a site (this and the kinds below are staff views:
  ``LiveFeed._authorize_selection``);
- ``?device=<id>&device=<id>…``: chosen devices;
- ``?all=1``: every device, also those not assigned yet (the logistics console's fleet).

Source: ONE plain MQTT subscription per server (paho, its own client id, QoS 0: a live
view wants the newest value, not every one) to ``<prefix>/+/telemetry`` and
``<prefix>/alerts/#``. Readings are parsed with ``telemetry.payloads.parse_message``
(rejects are ignored: ingest records them); of a buffered batch only the newest reading
of each device is sent (the older ones are history, not live). The web tier never takes
data from the ingester's memory, so web nodes and ingesters scale apart.

Messages (JSON text frames), in this order:
1. ``{"type": "snapshot", "server": <id of this server process>, "seq": <last seq>,
   "devices": [{device_id, name, site_id}], "readings": [latest per device, from the
   store], "alerts": [active alerts of those devices, from the store]}``;
2. changes: ``{"type": "reading", "seq", "device_id", "ts", "temp_c", "rh", "battery_v",
   "door_open", "ref_ts", "ref_temp_c"}`` (``ref_*``: the reading about a minute earlier,
   for a trend arrow, when this server saw one) and ``{"type": "alert", "seq", "id",
   "event", "alert": {…}}`` (the alert engine's event, its audit trail left out).

``seq`` increases by one per change this server sends out (shared by all clients), so a
page sees gaps and a restart (``server`` changes). Resume is snapshot + changes: a client
that reconnects gets a fresh snapshot (the current state, whatever it missed) and the
changes after it. A change may repeat what the snapshot already holds (the registration
comes before the snapshot's query, so nothing falls between); applying it again is
harmless, and a page ignores a reading older than the one it shows.

Back-pressure: each client has a BOUNDED queue (``queue_max`` messages) drained by its
own task, so the fan-out only appends and never waits for a socket. When a client's queue
is full, its readings are coalesced (only the newest per device kept; alert events are
all kept); if it is still full, the client is closed with 1013 ("try again later") and
its page reconnects to a fresh snapshot. The kernel and transport buffers of a live
socket are kept small too, so a stuck client is noticed after kilobytes, not megabytes.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import threading
import time
import uuid
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson
import paho.mqtt.client as mqtt
from aiohttp import WSCloseCode, WSMsgType, web
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode
from prometheus_client import CollectorRegistry, Counter, Gauge

from telemetry.payloads import parse_message
from telemetry.readings import Reading
from telemetry.settings import IngestSettings
from telemetry.storage import StorageUnavailable, Store
from telemetry.storage.alerts import ACTIVE, AlertFilter, Device
from web.auth import Authenticator, same_origin
from web.errors import json_error

log = logging.getLogger(__name__)

TRY_AGAIN_LATER = 1013  # RFC 6455 §7.4.1 (IANA registry): "Try Again Later"
MAX_DEVICES_PER_CLIENT = 1000
# The reading a trend compares with: about a minute before the newest one.
TREND_AGE = timedelta(seconds=60)
_TREND_MIN_AGE = timedelta(seconds=30)
_TREND_SPACING = timedelta(seconds=15)
_TREND_KEEP = 12  # samples per device, 15 s apart at least: three minutes
_TREND_SEED = timedelta(minutes=3)


@dataclass(frozen=True, slots=True)
class LiveSettings:
    queue_max: int = 256  # messages waiting for one client
    refresh_s: float = 10.0  # devices table (device → site) re-read this often
    max_clients: int = 20_000
    heartbeat_s: float = 25.0
    socket_sndbuf: int = 16 * 1024  # kernel send buffer of a live socket (Linux doubles it)
    write_buffer_high: int = 16 * 1024  # the transport's user-space buffer before it pauses


@dataclass(frozen=True, slots=True)
class Selection:
    kind: str  # "stream", "site", "devices" or "all"
    site: str | None = None  # kind "site": the site asked for
    devices: frozenset[str] = frozenset()  # devices selected by id (kinds "devices", "stream")
    stream: str | None = None
    sites: frozenset[str] = frozenset()  # every device of these sites (kinds "site", "stream")


@dataclass(frozen=True, slots=True)
class StreamSensors:
    """What a stream's page shows: the devices of ``sites`` and ``devices``."""

    sites: frozenset[str]
    devices: frozenset[str]


# (slug, share token) -> the stream's sensors; None: unknown, or unlisted without a valid token.
StreamResolver = Callable[[str, str | None], Awaitable[StreamSensors | None]]


class _Client:
    __slots__ = ("closing", "coalesced", "max_len", "queue", "selection", "task", "transport", "wake", "ws")

    def __init__(self, ws: web.WebSocketResponse, selection: Selection, transport: Any) -> None:
        self.ws = ws
        self.transport = transport
        self.selection = selection
        # (device_id for a reading / None for anything else, the frame's text)
        self.queue: deque[tuple[str | None, str]] = deque()
        self.wake = asyncio.Event()
        self.task: asyncio.Task[None] | None = None
        self.closing = False
        self.coalesced = 0
        self.max_len = 0


class LiveMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.clients = Gauge(
            "origincast_live_clients", "Live-feed WebSocket clients connected", registry=registry
        )
        self.messages = Counter(
            "origincast_live_changes", "Changes (readings, alert events) the live feed fanned out",
            ["type"], registry=registry,
        )  # fmt: skip
        self.coalesced = Counter(
            "origincast_live_coalesced", "Times a slow client's queue was coalesced", registry=registry
        )
        self.slow_closed = Counter(
            "origincast_live_slow_closed", "Clients closed with 1013 because they did not keep up",
            registry=registry,
        )  # fmt: skip
        self.broker_connected = Gauge(
            "origincast_live_broker_connected", "1 while the live feed's MQTT client is connected",
            registry=registry,
        )  # fmt: skip


class LiveFeed:
    """One per web process: the MQTT subscription, the clients, the fan-out."""

    def __init__(
        self,
        ingest: IngestSettings,
        store: Callable[[], Store],
        resolve_stream: StreamResolver,
        metrics: LiveMetrics,
        settings: LiveSettings | None = None,
        auth: Authenticator | None = None,
    ) -> None:
        self._ingest = ingest
        self._store = store
        self._resolve_stream = resolve_stream
        self._auth = auth  # None: staff selections refused (nobody can prove to be staff)
        self.metrics = metrics
        self.settings = settings or LiveSettings()
        self.server_id = uuid.uuid4().hex[:12]
        self.seq = 0
        self._prefix = ingest.topic_prefix
        self._clients: set[_Client] = set()
        self._by_site: dict[str, set[_Client]] = {}
        self._by_device: dict[str, set[_Client]] = {}
        self._every: set[_Client] = set()  # selection "all"
        # The telemetry topics subscribed now: one per watched device, or the wildcard while
        # a console watches the whole fleet. Readings nobody watches never reach this process.
        self._subscribed: set[str] = set()
        self._subs_lock = threading.Lock()
        self._devices: dict[str, Device] = {}
        self._devices_at = 0.0
        self._trend: dict[str, deque[tuple[datetime, float]]] = {}
        self._loop: asyncio.AbstractEventLoop | None = None
        self._inbox: list[tuple[str, Any]] = []
        self._inbox_lock = threading.Lock()
        self._wakeup_pending = False
        self._refresh_task: asyncio.Task[None] | None = None
        self._closers: set[asyncio.Task[None]] = set()
        self.closed_slow = 0
        self.connected = threading.Event()
        self._client = self._make_client()

    # -- lifecycle -----------------------------------------------------------------------

    async def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        await self.refresh_devices()
        self._refresh_task = asyncio.create_task(self._refresh_loop(), name="live-devices")
        s = self._ingest.mqtt
        self._client.connect_async(s.host, s.port, keepalive=s.keepalive_s)
        self._client.loop_start()

    async def close_clients(self) -> None:
        """Going away (server shutdown): every client is told to reconnect elsewhere."""
        clients = list(self._clients)
        for c in clients:
            c.closing = True
            if c.task is not None:
                c.task.cancel()
        await asyncio.gather(*(self._close(c, WSCloseCode.GOING_AWAY, b"server shutdown") for c in clients))

    async def stop(self) -> None:
        await self.close_clients()
        if self._refresh_task is not None:
            self._refresh_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._refresh_task
        client = self._client

        def halt() -> None:
            client.disconnect()
            client.loop_stop()

        await asyncio.to_thread(halt)

    # -- devices (device → site), refreshed every few seconds ------------------------------

    async def refresh_devices(self) -> None:
        try:
            devices = await asyncio.to_thread(self._store().list_devices)
        except StorageUnavailable as exc:
            log.warning("live feed: devices not refreshed (%s)", exc)
            return
        self._devices = {d.device_id: d for d in devices}
        self._devices_at = time.monotonic()
        self._sync_subscriptions()  # a device may have joined or left a watched site

    async def _refresh_loop(self) -> None:
        while True:
            await asyncio.sleep(self.settings.refresh_s)
            try:
                await self.refresh_devices()
            except Exception:
                log.exception("live feed: refreshing devices failed")

    def _site_of(self, device_id: str) -> str | None:
        d = self._devices.get(device_id)
        return d.site_id if d is not None else None

    def selected_devices(self, sel: Selection) -> list[str]:
        if sel.kind == "devices":
            return sorted(sel.devices)
        if sel.kind == "all":
            return sorted(self._devices)
        by_site = {d.device_id for d in self._devices.values() if d.site_id in sel.sites}
        return sorted(by_site | sel.devices)

    # -- MQTT (paho's thread) → the event loop ------------------------------------------------

    def _make_client(self) -> mqtt.Client:
        s = self._ingest.mqtt
        v5 = s.protocol == "5"
        client_id = f"{self._ingest.client_id}-live-{os.getpid()}-{uuid.uuid4().hex[:6]}"
        kwargs: dict[str, Any] = {} if v5 else {"clean_session": True}
        client = mqtt.Client(
            CallbackAPIVersion.VERSION2,
            client_id=client_id,
            protocol=mqtt.MQTTv5 if v5 else mqtt.MQTTv311,
            **kwargs,
        )
        if s.username is not None:
            client.username_pw_set(s.username, s.password)
        if s.tls:
            client.tls_set()
        # paho types the delays as int but sleeps them as given: 0.2 s gets the feed back fast
        client.reconnect_delay_set(0.2, 10)  # type: ignore[arg-type]
        client.on_connect = self._on_connect
        client.on_disconnect = self._on_disconnect
        client.on_message = self._on_message
        return client

    def _on_connect(
        self, client: mqtt.Client, userdata: object, flags: mqtt.ConnectFlags, reason: ReasonCode,
        properties: Properties | None,
    ) -> None:  # fmt: skip
        if reason.is_failure:
            log.error("live feed: broker refused the connection: %s", reason)
            return
        with self._subs_lock:
            topics = sorted(self._subscribed)
        client.subscribe([(f"{self._prefix}/alerts/#", 0), *((t, 0) for t in topics)])
        self.connected.set()
        self.metrics.broker_connected.set(1)

    def _on_disconnect(self, client: mqtt.Client, userdata: object, flags: object, reason: ReasonCode,
                       properties: Properties | None) -> None:  # fmt: skip
        self.connected.clear()
        self.metrics.broker_connected.set(0)

    def _on_message(self, client: mqtt.Client, userdata: object, msg: mqtt.MQTTMessage) -> None:
        try:
            item = self._decode(msg.topic, msg.payload)
        except Exception:
            log.exception("live feed: message on %s not handled", msg.topic)
            return
        if item is not None:
            self._post(item)

    def _decode(self, topic: str, payload: bytes | bytearray) -> tuple[str, Any] | None:
        if topic.startswith(f"{self._prefix}/alerts/"):
            try:
                doc = orjson.loads(payload)
            except orjson.JSONDecodeError:
                return None
            if not isinstance(doc, dict) or not isinstance(doc.get("alert"), dict):
                return None
            return ("alert", doc)
        result = parse_message(topic, payload, self._ingest.limits, datetime.now(UTC), prefix=self._prefix)
        if not result.readings:
            return None
        newest: dict[str, Reading] = {}
        for r in result.readings:
            old = newest.get(r.device_id)
            if old is None or r.ts >= old.ts:
                newest[r.device_id] = r
        return ("readings", list(newest.values()))

    def _post(self, item: tuple[str, Any]) -> None:
        """From any thread: hand an item to the loop, one wake-up for a burst of items."""
        loop = self._loop
        if loop is None or loop.is_closed():
            return
        with self._inbox_lock:
            self._inbox.append(item)
            if self._wakeup_pending:
                return
            self._wakeup_pending = True
        try:
            loop.call_soon_threadsafe(self._drain_inbox)
        except RuntimeError:  # the loop closed meanwhile
            pass

    # -- fan-out (the event loop) ---------------------------------------------------------------

    def _drain_inbox(self) -> None:
        with self._inbox_lock:
            items, self._inbox = self._inbox, []
            self._wakeup_pending = False
        for kind, value in items:
            if kind == "readings":
                for r in value:
                    self.publish_reading(r)
            else:
                self.publish_alert(value)

    def _trend_ref(self, r: Reading) -> tuple[datetime, float] | None:
        samples = self._trend.get(r.device_id)
        if samples is None:
            samples = self._trend[r.device_id] = deque(maxlen=_TREND_KEEP)
        ref = None
        for ts, temp in samples:  # oldest first: the last one at least a minute old wins
            if ts <= r.ts - TREND_AGE:
                ref = (ts, temp)
        if ref is None:
            ref = next(((ts, t) for ts, t in samples if ts <= r.ts - _TREND_MIN_AGE), None)
        if not samples or r.ts >= samples[-1][0] + _TREND_SPACING:
            samples.append((r.ts, r.temp_c))
        return ref

    def publish_reading(self, r: Reading) -> None:
        ref = self._trend_ref(r)
        targets = self._targets(r.device_id, self._site_of(r.device_id))
        if not targets:
            return
        self.seq += 1
        body = reading_dict(r)
        body["ref_ts"] = ref[0].isoformat() if ref else None
        body["ref_temp_c"] = ref[1] if ref else None
        text = orjson.dumps({"type": "reading", "seq": self.seq, **body}).decode()
        self.metrics.messages.labels("reading").inc()
        for c in targets:
            self._enqueue(c, r.device_id, text)

    def publish_alert(self, doc: dict[str, Any]) -> None:
        alert = {k: v for k, v in doc["alert"].items() if k != "audit"}
        device_id = str(alert.get("device_id", ""))
        site = self._site_of(device_id) or doc.get("site_id")
        targets = self._targets(device_id, site if isinstance(site, str) else None)
        if not targets:
            return
        self.seq += 1
        text = orjson.dumps(
            {"type": "alert", "seq": self.seq, "id": doc.get("id"), "event": doc.get("event"), "alert": alert}
        ).decode()
        self.metrics.messages.labels("alert").inc()
        for c in targets:
            self._enqueue(c, None, text)

    def _targets(self, device_id: str, site: str | None) -> set[_Client]:
        by_dev = self._by_device.get(device_id)
        by_site = self._by_site.get(site) if site is not None else None
        targets = by_dev | by_site if by_dev and by_site else set(by_dev or by_site or ())
        if self._every:  # the fleet's consoles see every device
            targets |= self._every
        return targets

    def _enqueue(self, c: _Client, device_id: str | None, text: str) -> None:
        if c.closing:
            return
        q = c.queue
        if len(q) >= self.settings.queue_max:
            self._coalesce(c)
            if len(q) >= self.settings.queue_max:
                self._close_slow(c)
                return
        q.append((device_id, text))
        if len(q) > c.max_len:
            c.max_len = len(q)
        c.wake.set()

    def _coalesce(self, c: _Client) -> None:
        """Keep every alert event and the newest reading of each device, in order."""
        seen: set[str] = set()
        kept: list[tuple[str | None, str]] = []
        for item in reversed(c.queue):
            dev = item[0]
            if dev is not None:
                if dev in seen:
                    continue
                seen.add(dev)
            kept.append(item)
        kept.reverse()
        c.queue.clear()
        c.queue.extend(kept)
        c.coalesced += 1
        self.metrics.coalesced.inc()

    def _close_slow(self, c: _Client) -> None:
        c.closing = True
        c.queue.clear()
        self.closed_slow += 1
        self.metrics.slow_closed.inc()
        log.info("live feed: a client did not keep up; closed with 1013")
        if c.task is not None:
            c.task.cancel()
        task = asyncio.get_running_loop().create_task(self._close(c, TRY_AGAIN_LATER, b"too slow"))
        self._closers.add(task)
        task.add_done_callback(self._closers.discard)

    async def _close(self, c: _Client, code: int, message: bytes) -> None:
        try:
            await asyncio.wait_for(c.ws.close(code=code, message=message), 5.0)
        except (TimeoutError, ConnectionError, RuntimeError):
            pass
        finally:
            # A client that does not read does not answer the close either.
            if c.transport is not None and not c.ws.closed:
                c.transport.abort()

    # -- clients --------------------------------------------------------------------------------

    def _register(self, c: _Client) -> None:
        self._clients.add(c)
        sel = c.selection
        if sel.kind == "all":
            self._every.add(c)
        for d in sel.devices:
            self._by_device.setdefault(d, set()).add(c)
        for site in sel.sites:
            self._by_site.setdefault(site, set()).add(c)
        self.metrics.clients.set(len(self._clients))
        self._sync_subscriptions()

    def _unregister(self, c: _Client) -> None:
        self._clients.discard(c)
        self._every.discard(c)
        sel = c.selection
        keys: list[tuple[dict[str, set[_Client]], str]] = [(self._by_device, d) for d in sel.devices]
        keys += [(self._by_site, site) for site in sel.sites]
        for index, key in keys:
            group = index.get(key)
            if group is not None:
                group.discard(c)
                if not group:
                    del index[key]
        self.metrics.clients.set(len(self._clients))
        self._sync_subscriptions()

    def _wanted_topics(self) -> set[str]:
        if self._every:
            return {f"{self._prefix}/+/telemetry"}
        devices = set(self._by_device)
        if self._by_site:
            devices |= {d.device_id for d in self._devices.values() if d.site_id in self._by_site}
        return {f"{self._prefix}/{d}/telemetry" for d in devices}

    def _sync_subscriptions(self) -> None:
        """Subscribe to what the clients watch, unsubscribe from what nobody does (on the
        event loop; paho's subscribe and unsubscribe are safe to call from any thread)."""
        wanted = self._wanted_topics()
        with self._subs_lock:
            add, drop = wanted - self._subscribed, self._subscribed - wanted
            self._subscribed = wanted
        if not self.connected.is_set():
            return  # _on_connect subscribes to the whole set
        if add:
            self._client.subscribe([(t, 0) for t in sorted(add)])
        if drop:
            self._client.unsubscribe(sorted(drop))

    def clients(self) -> list[dict[str, Any]]:
        """For tests and operators: each client's queue length, high-water mark, coalescings."""
        return [
            {"queued": len(c.queue), "max_queued": c.max_len, "coalesced": c.coalesced, "closing": c.closing}
            for c in self._clients
        ]

    async def _selection(self, request: web.Request) -> Selection:
        q = request.query
        given = [k for k in ("stream", "site", "device", "all") if k in q]
        if len(given) != 1:
            raise _bad("give exactly one of stream=<slug>, site=<id>, device=<id> (repeatable) or all=1")
        if "all" in q:
            if q["all"] not in ("1", "true"):
                raise _bad("all must be 1")
            return Selection("all")
        if "stream" in q:
            slug = q["stream"]
            sensors = await self._resolve_stream(slug, q.get("share"))
            if sensors is None:
                raise _bad(f"no stream named {slug!r}", web.HTTPNotFound)
            return Selection("stream", stream=slug, sites=sensors.sites, devices=sensors.devices)
        if "site" in q:
            site = q["site"].strip()
            if not site or len(site) > 200:
                raise _bad("site must be 1..200 characters")
            return Selection("site", site=site, sites=frozenset((site,)))
        devices = frozenset(d.strip() for d in q.getall("device") if d.strip())
        if not devices or len(devices) > MAX_DEVICES_PER_CLIENT or any(len(d) > 64 for d in devices):
            raise _bad(f"device: 1..{MAX_DEVICES_PER_CLIENT} device ids of at most 64 characters")
        return Selection("devices", devices=devices)

    async def snapshot(self, sel: Selection) -> dict[str, Any]:
        if time.monotonic() - self._devices_at > self.settings.refresh_s:
            await self.refresh_devices()
        device_ids = self.selected_devices(sel)
        seq = self.seq
        store = self._store()

        # Readings of devices nobody watched were not received: the trend's reference of a
        # newly watched device comes from the store (the last few minutes).
        unsampled = [] if sel.kind == "all" else [d for d in device_ids if not self._trend.get(d)]

        def read() -> tuple[list[Reading], list[dict[str, Any]], dict[str, list[Reading]]]:
            every = sel.kind == "all"
            if not device_ids and not every:
                return [], [], {}
            latest = store.latest(None if every else device_ids)
            wanted = set(device_ids)
            alerts = [
                a.to_dict()
                for a in store.list_alerts(AlertFilter(state=ACTIVE, limit=1000))
                if every or a.device_id in wanted or a.site_id in sel.sites
            ]
            now = datetime.now(UTC)
            recent = {d: store.device_readings(d, now - _TREND_SEED, now) for d in unsampled}
            return latest, alerts, recent

        latest, alerts, recent = await asyncio.to_thread(read)
        for device, rows in recent.items():
            if not self._trend.get(device):
                for r in sorted(rows, key=lambda r: r.ts):
                    self._trend_ref(r)  # records the sample, spaced as live readings are
        readings = []
        for r in latest:
            body = reading_dict(r)
            ref = self._trend_ref_for_snapshot(r)
            body["ref_ts"] = ref[0].isoformat() if ref else None
            body["ref_temp_c"] = ref[1] if ref else None
            readings.append(body)
        devices = [
            {"device_id": d, "name": getattr(self._devices.get(d), "name", None), "site_id": self._site_of(d)}
            for d in device_ids
        ]
        return {
            "type": "snapshot",
            "server": self.server_id,
            "seq": seq,
            "selection": {
                "kind": sel.kind,
                "stream": sel.stream,
                "site": sel.site,
                "sites": sorted(sel.sites),
                "devices": sorted(sel.devices),
            },
            "devices": devices,
            "readings": readings,
            "alerts": alerts,
        }

    def _trend_ref_for_snapshot(self, r: Reading) -> tuple[datetime, float] | None:
        samples = self._trend.get(r.device_id) or ()
        ref = None
        for ts, temp in samples:
            if ts <= r.ts - TREND_AGE:
                ref = (ts, temp)
        return ref

    async def _authorize_selection(self, request: web.Request, selection: Selection) -> None:
        """Who may open which selection. A stream's sensors are for its viewers (the share
        token of an unlisted stream was checked when the stream was resolved); sites,
        devices and the whole fleet are staff views (admin and logistics; web.permissions)."""
        if selection.kind == "stream":
            return
        if self._auth is None:
            raise json_error(web.HTTPForbidden, "site, device and fleet selections are for staff only")
        principal = await self._auth.require(request, "admin", "logistics")
        # A WebSocket handshake is a GET, so no CSRF token guards it, and SameSite=Lax still
        # sends the cookie from a same-site page of another origin (another port or
        # subdomain): that page could read the fleet with a staff member's session. Browsers
        # always send Origin on a handshake; it must be this site.
        origin = request.headers.get("Origin")
        if principal.via == "session" and origin is not None and not same_origin(origin, request.host):
            raise json_error(web.HTTPForbidden, "a staff live feed opens only from this site's own pages")

    async def handle(self, request: web.Request) -> web.StreamResponse:
        """``GET /api/v1/live``: see the module doc."""
        sel = await self._selection(request)
        await self._authorize_selection(request, sel)
        if len(self._clients) >= self.settings.max_clients:
            raise _bad("too many live-feed clients here; try again later", web.HTTPServiceUnavailable)
        ws = web.WebSocketResponse(heartbeat=self.settings.heartbeat_s, max_msg_size=4096)
        if not ws.can_prepare(request).ok:
            raise _bad("this is a WebSocket endpoint (Upgrade: websocket)")
        await ws.prepare(request)
        self._tune_socket(request)
        c = _Client(ws, sel, request.transport)
        self._register(c)  # changes queue up from here: none falls between snapshot and them
        try:
            snap = await self.snapshot(sel)
            await ws.send_str(orjson.dumps(snap).decode())
            c.task = asyncio.create_task(self._pump(c), name="live-client")
            async for msg in ws:
                if msg.type == WSMsgType.TEXT and msg.data == "ping":
                    await ws.send_str('{"type":"pong"}')
        except (ConnectionError, asyncio.CancelledError):
            pass
        finally:
            self._unregister(c)
            c.closing = True
            if c.task is not None:
                c.task.cancel()
        return ws

    def _tune_socket(self, request: web.Request) -> None:
        transport = request.transport
        if transport is None:
            return
        with contextlib.suppress(OSError, AttributeError, NotImplementedError):
            transport.set_write_buffer_limits(high=self.settings.write_buffer_high)
        sock = transport.get_extra_info("socket")
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, self.settings.socket_sndbuf)

    async def _pump(self, c: _Client) -> None:
        """Send the client's queue in order; only this client waits for its socket."""
        try:
            while not c.closing:
                if not c.queue:
                    c.wake.clear()
                    await c.wake.wait()
                    continue
                _, text = c.queue.popleft()
                await c.ws.send_str(text)
        except (ConnectionError, RuntimeError):
            c.closing = True


def reading_dict(r: Reading) -> dict[str, Any]:
    return {
        "device_id": r.device_id,
        "ts": r.ts.isoformat(),
        "temp_c": r.temp_c,
        "rh": r.rh,
        "battery_v": r.battery_v,
        "door_open": r.door_open,
    }


def _bad(message: str, cls: type[web.HTTPException] = web.HTTPBadRequest) -> web.HTTPException:
    return cls(text=orjson.dumps({"error": message}).decode(), content_type="application/json")


LIVE = web.AppKey("live", LiveFeed)


def install_live_feed(
    app: web.Application,
    ingest: IngestSettings,
    store: Callable[[], Store],
    resolve_stream: StreamResolver,
    registry: CollectorRegistry,
    settings: LiveSettings | None = None,
    *,
    auth: Authenticator | None = None,
) -> LiveFeed:
    """Route, start/stop in cleanup_ctx (after the store and the registry are open), and
    close the sockets on shutdown (an open WebSocket would otherwise hold it up)."""
    feed = app[LIVE] = LiveFeed(ingest, store, resolve_stream, LiveMetrics(registry), settings, auth)
    app.router.add_get("/api/v1/live", feed.handle)

    async def ctx(_app: web.Application) -> AsyncIterator[None]:
        await feed.start()
        yield
        await feed.stop()

    async def on_shutdown(_app: web.Application) -> None:
        await feed.close_clients()

    app.cleanup_ctx.append(ctx)
    app.on_shutdown.append(on_shutdown)
    return feed
