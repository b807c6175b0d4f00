"""The alert service: one AlertEngine fed by ingest, time and device status, with its outputs.

Inputs
------
- readings, from the ingester AFTER its commit (``submit``, the ingester's
  ``on_committed``): handed over through a bounded queue to the service's own thread, so
  ingest never waits for the engine. When the queue is full the hand-over is dropped and
  the thread later catches up from the store (readings received since the first drop);
- time: ``tick`` every ``tick_s`` (delays expiring on a held value, devices going silent);
- device status: ``<prefix>/+/status`` (``online`` / ``offline``, the last will);
- people, through the API: ``acknowledge``, ``resolve``, ``assign``, ``save_profile``. A
  device put on another site takes its alerts not resolved yet with it: the store moves
  their rows with the assignment, and each records the move (who, when, from → to) in its
  trail, an ``updated`` event published on both sites' topics.

Outputs, for every event (raised, peak updated, acknowledged, resolved)
-----------------------------------------------------------------------
- the ``alerts`` row upserted and the new ``alert_audit`` rows, in one transaction with
  the event's webhook deliveries (the ``webhook_outbox`` rows, one per URL): a recorded
  event is sent even if the process stops or dies right after;
- an MQTT message (QoS 1) on ``<prefix>/alerts/<site_id>`` (``unassigned`` without a site);
- webhooks (telemetry.alerts.webhooks): a sender thread works through the outbox, never
  blocking the engine;
- listeners in this process (the demo prints events).
The event JSON is ``{"id": "<alert id>.<audit length>", "event": kind, "site_id": …,
"alert": {…}}``; the id names one version of one alert, so a consumer can drop the
repeats a restart's replay may send again.

Restart
-------
The engine's snapshot is saved every ``snapshot_every_s``, after every person's action,
and at stop, with the receive time of the last batch judged. On start it is restored and
the readings stored after that time are replayed (in their receive order, with their
receive times), so a delay that was running raises on time and a crash loses no
judgement: ingest acknowledges a message only after its commit, and whatever was
committed is in the store for the replay.

One engine per deployment: it keeps every device's state. It runs in ``origincast serve``
(with ingest). Ingesters scaled out with ``origincast ingest --shared`` feed no engine of
their own: with them, run exactly one ``serve`` process that ingests too, and know that
it judges only the share of readings its own subscription receives (spreading the
engine over several nodes is not solved here).
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable, Sequence
from datetime import UTC, datetime, timedelta
from itertools import groupby
from typing import Any

import orjson
import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

from telemetry.alerts.engine import AlertEngine
from telemetry.alerts.lifecycle import SYSTEM, AlertEvent
from telemetry.alerts.metrics import AlertMetrics
from telemetry.alerts.rules import Profile, RuleError, builtin_profiles
from telemetry.alerts.settings import AlertServiceSettings
from telemetry.alerts.webhooks import WebhookSender
from telemetry.readings import Reading
from telemetry.storage.alerts import Device, WebhookJob
from telemetry.storage.base import StorageUnavailable, Store

log = logging.getLogger(__name__)

UNASSIGNED_SITE = "unassigned"

# Work items of the service thread (a tuple, tagged by its first element).
_READINGS = "readings"  # (tag, readings, received_at)
_STATUS = "status"  # (tag, device_id, "online"|"offline", at)
_STOP = ("stop",)

EventListener = Callable[[dict[str, Any]], None]


def event_id(event: AlertEvent) -> str:
    return f"{event.alert.id}.{len(event.alert.audit)}"


class AlertService:
    """See the module doc. ``start()``/``stop()`` block; the rest is thread-safe."""

    def __init__(
        self,
        settings: AlertServiceSettings,
        store: Store,
        metrics: AlertMetrics,
        *,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self._settings = settings
        self._store = store
        self._metrics = metrics
        self._clock = clock
        # Guards the engine and what goes with it (sites, assignments, processed_upto):
        # the engine is not thread-safe, and the API's threads act on it too.
        self._lock = threading.RLock()
        self._engine = AlertEngine(builtin_profiles(), settings.engine)
        self._devices: dict[str, Device] = {}
        self._processed_upto: datetime | None = None  # receive time of the last batch judged
        self._queue: queue.Queue[tuple[Any, ...]] = queue.Queue()
        self._qlock = threading.Lock()
        self._queued = 0  # readings in _queue
        self._overflow_from: datetime | None = None  # first hand-over dropped since catch-up
        # Events whose row could not be written yet, with their site and webhook rows as
        # they were when the event was published.
        self._unsaved: list[tuple[AlertEvent, str | None, list[WebhookJob]]] = []
        self._listeners: list[EventListener] = []
        self._thread: threading.Thread | None = None
        self._webhooks = WebhookSender(settings.webhooks, store, metrics)
        self._client = self._make_client()
        self._connected = threading.Event()
        self.started = False

    # -- lifecycle -----------------------------------------------------------------------

    def start(self) -> None:
        """Load profiles and assignments, restore the snapshot and replay what followed
        it, then start the thread, the status subscription and the webhook sender."""
        now = self._clock()
        profiles = self._load_profiles()
        snap = self._store.load_engine_snapshot()
        with self._lock:
            if snap is not None:
                snapshot, taken_at = snap
                self._engine = AlertEngine.restore(snapshot, profiles, self._settings.engine)
                self._processed_upto = taken_at
            else:
                # No snapshot but alerts stored (a lost snapshot): new ids continue after them.
                first = self._store.max_alert_id() + 1
                empty = {"format": "origincast.alerts/1", "next_id": first, "devices": {}, "alerts": [],
                         "resolved_queue": [], "watch": []}  # fmt: skip
                self._engine = AlertEngine.restore(empty, profiles, self._settings.engine)
                self._processed_upto = now
            for d in self._store.list_devices():
                self._devices[d.device_id] = d
                self._sync_assignment(d, now)
        if snap is not None:
            self._replay(snap[1], snap[0])
        self._save_snapshot()
        self._webhooks.start()
        self._thread = threading.Thread(target=self._run, name="alert-service", daemon=True)
        self._thread.start()
        s = self._settings.mqtt
        self._client.connect_async(s.host, s.port, keepalive=s.keepalive_s)
        self._client.loop_start()
        self.started = True

    def stop(self, timeout: float = 10.0) -> None:
        """Judge what was handed over, save the snapshot, disconnect."""
        if self._thread is not None:
            self._queue.put(_STOP)
            self._thread.join(timeout)
            self._thread = None
        self._flush_unsaved()
        self._save_snapshot()
        self._webhooks.stop()
        # paho sends queued QoS 1 publishes before the DISCONNECT (packets go in order).
        self._client.disconnect()
        self._client.loop_stop()
        self.started = False

    @property
    def connected(self) -> bool:
        return self._connected.is_set()

    def add_listener(self, listener: EventListener) -> None:
        """Call ``listener(event_json)`` for every event (from the service's threads)."""
        self._listeners.append(listener)

    # -- inputs ------------------------------------------------------------------------------

    def submit(self, readings: list[Reading], received_at: datetime) -> None:
        """Hand committed readings over (the ingester's on_committed). Never blocks."""
        n = len(readings)
        with self._qlock:
            if self._overflow_from is not None or self._queued + n > self._settings.queue_max_readings:
                # Full: drop the hand-over, and every later one until the thread has caught
                # up from the store, so the engine sees the readings in receive order.
                if self._overflow_from is None:
                    self._overflow_from = received_at
                    log.warning("alert queue full: catching up from the store")
                self._metrics.dropped.inc(n)
                return
            self._queued += n
        self._queue.put((_READINGS, readings, received_at))

    def status(self, device_id: str, status: str, at: datetime | None = None) -> None:
        """A device's MQTT status (also fed by the service's own subscription)."""
        self._queue.put((_STATUS, device_id, status, at or self._clock()))

    # -- people (the API) --------------------------------------------------------------------

    def acknowledge(self, alert_id: int, user: str, comment: str) -> dict[str, Any]:
        """Raises UnknownAlert / LifecycleError (the API's 404 / 409)."""
        with self._lock:
            ev = self._engine.acknowledge(alert_id, user, comment, self._clock())
            self._emit([ev])
            self._save_snapshot()  # a person's record must survive a crash
            return self._event_json(ev)

    def resolve(self, alert_id: int, user: str, comment: str) -> dict[str, Any]:
        with self._lock:
            ev = self._engine.resolve(alert_id, user, comment, self._clock())
            self._emit([ev])
            self._save_snapshot()
            return self._event_json(ev)

    def profiles(self) -> dict[str, Profile]:
        with self._lock:
            return dict(self._engine.profiles)

    def save_profile(self, profile: Profile) -> None:
        """Store a custom profile and use it now. Devices on it start its rules over (as on
        a new assignment: its ignore period, then fresh timers); open alerts stay open."""
        if profile.id in builtin_profiles():
            raise RuleError(f"profile {profile.id!r} is built in and cannot be replaced; use another id")
        self._store.save_profile(profile.id, profile.to_dict())
        with self._lock:
            now = self._clock()
            self._engine.profiles[profile.id] = profile
            for d in self._devices.values():
                if d.profile_id == profile.id:
                    self._engine.assign(d.device_id, profile.id, now)
            self._save_snapshot()

    def assign(self, device: Device, by: str = SYSTEM) -> Device:
        """Put a device on a site and a profile (None: no rules). KeyError: unknown profile.
        A new site takes the device's alerts not resolved yet with it, in ``by``'s name."""
        with self._lock:
            if device.profile_id is not None and device.profile_id not in self._engine.profiles:
                raise KeyError(f"unknown profile {device.profile_id!r}")
            before = self._site(device.device_id)
            self._store.upsert_device(device)
            self._devices[device.device_id] = device
            now = self._clock()
            self._sync_assignment(device, now)
            self._move_site(device.device_id, before, device.site_id, by, now)
            self._save_snapshot()
            return device

    def devices(self) -> list[Device]:
        with self._lock:
            return sorted(self._devices.values(), key=lambda d: d.device_id)

    # -- the service thread ----------------------------------------------------------------

    def _run(self) -> None:
        s = self._settings
        next_tick = time.monotonic() + s.tick_s
        next_snapshot = time.monotonic() + s.snapshot_every_s
        while True:
            try:
                item = self._queue.get(timeout=max(0.0, next_tick - time.monotonic()))
            except queue.Empty:
                item = None
            try:
                if item is _STOP:
                    return
                if item is not None:
                    self._handle(item)
                if self._overflow_from is not None and self._queue.empty():
                    self._catch_up()
                mono = time.monotonic()
                if mono >= next_tick:
                    next_tick = mono + s.tick_s
                    with self._lock:
                        self._emit(self._engine.tick(self._clock()))
                    self._flush_unsaved()
                if mono >= next_snapshot:
                    next_snapshot = mono + s.snapshot_every_s
                    self._reload_devices()
                    self._save_snapshot()
            except Exception:  # one bad item must not stop alerting
                log.exception("alert service: error handling %s", item[0] if item else "tick")

    def _handle(self, item: tuple[Any, ...]) -> None:
        if item[0] == _READINGS:
            _, readings, received_at = item
            with self._qlock:
                self._queued -= len(readings)
                self._metrics.queued.set(self._queued)
            self._process(readings, received_at)
        elif item[0] == _STATUS:
            _, device_id, status, at = item
            with self._lock:
                self._emit(self._engine.status(device_id, status, at))

    def _process(self, readings: Sequence[Reading], received_at: datetime) -> None:
        started = time.perf_counter()
        with self._lock:
            events = self._engine.process(readings, received_at, self._store.device_readings)
            if self._processed_upto is None or received_at > self._processed_upto:
                self._processed_upto = received_at
            self._emit(events)
        self._metrics.process_seconds.observe(time.perf_counter() - started)

    def _replay(self, since: datetime, snapshot: dict[str, Any] | None) -> int:
        """Judge the readings stored after ``since``, grouped by their receive time. With
        the snapshot's high-water marks, readings it had judged already are skipped."""
        s = self._settings
        rows = self._store.readings_received_since(
            since - timedelta(seconds=s.replay_margin_s),
            since - timedelta(seconds=s.replay_max_age_s),
            1_000_000,
        )
        hwm: dict[str, datetime] = {}
        for did, ds in (snapshot or {}).get("devices", {}).items():
            if ds.get("hwm"):
                hwm[did] = datetime.fromisoformat(ds["hwm"])
        n = 0
        for rx, group in groupby(rows, key=lambda row: row[1]):
            batch = [r for r, _ in group if rx > since or (h := hwm.get(r.device_id)) is None or r.ts > h]
            if batch:
                self._process(batch, rx)
                n += len(batch)
        log.info("alert service: replayed %d readings stored after %s", n, since.isoformat())
        return n

    def _catch_up(self) -> None:
        with self._qlock:
            since, self._overflow_from = self._overflow_from, None
        if since is not None:
            self._replay(since - timedelta(microseconds=1), None)

    # -- outputs ------------------------------------------------------------------------------

    def _site(self, device_id: str) -> str | None:
        d = self._devices.get(device_id)
        return None if d is None else d.site_id

    def _event_json(self, ev: AlertEvent) -> dict[str, Any]:
        site = self._site(ev.alert.device_id)
        body = ev.to_dict()
        body["alert"]["site_id"] = site
        return {"id": event_id(ev), "site_id": site, **body}

    def _move_site(
        self, device_id: str, before: str | None, after: str | None, by: str, at: datetime
    ) -> None:
        """Record a device's new site in its alerts' trails (lock held; the store has moved
        their rows already). Those watching the old site learn that the alerts left it."""
        if before != after:
            events = self._engine.move_site(device_id, before, after, by, at)
            self._emit(events, also_topic=before or UNASSIGNED_SITE)

    def _emit(self, events: list[AlertEvent], *, also_topic: str | None = None) -> None:
        """Record, publish and hand out events (called with the lock held, in order);
        ``also_topic``: a site topic (its last part) that gets them too."""
        if not events:
            return
        now = self._clock()
        prefix = self._settings.topic_prefix
        queued = False
        for ev in events:
            site = self._site(ev.alert.device_id)
            doc = self._event_json(ev)
            payload = orjson.dumps(doc)
            jobs = self._webhooks.jobs(doc["id"], payload, now)
            try:
                if self._unsaved:
                    raise StorageUnavailable("earlier events are still unsaved")  # keep the order
                self._store.record_alert(ev.alert, site, now, jobs)
                queued = queued or bool(jobs)
            except StorageUnavailable as exc:
                self._metrics.store_errors.inc()
                log.warning("alert %d: not stored yet (%s); retrying", ev.alert.id, exc)
                self._unsaved.append((ev, site, jobs))
            topics = {site or UNASSIGNED_SITE}
            if also_topic is not None:
                topics.add(also_topic)
            for topic_site in sorted(topics):
                self._client.publish(f"{prefix}/alerts/{topic_site}", payload, qos=1)
            self._metrics.events.labels(ev.kind.value).inc()
            for listener in self._listeners:
                try:
                    listener(doc)
                except Exception:
                    log.exception("alert listener failed")
        self._metrics.open_alerts.set(len(self._engine.alerts(open_only=True)))
        if queued:
            self._webhooks.wake()

    def _flush_unsaved(self) -> None:
        with self._lock:
            while self._unsaved:
                ev, site, jobs = self._unsaved[0]
                try:
                    self._store.record_alert(ev.alert, site, self._clock(), jobs)
                except StorageUnavailable:
                    return
                self._unsaved.pop(0)
                if jobs:
                    self._webhooks.wake()

    def _save_snapshot(self) -> None:
        with self._lock:
            if self._processed_upto is None:
                return
            snapshot = self._engine.snapshot()
            taken_at = self._processed_upto
        try:
            self._store.save_engine_snapshot(snapshot, taken_at)
        except StorageUnavailable as exc:
            log.warning(
                "alert engine snapshot not saved (%s); next try in %.0f s",
                exc,
                self._settings.snapshot_every_s,
            )

    # -- setup ---------------------------------------------------------------------------------

    def _reload_devices(self) -> None:
        """Pick up assignments written by another process (``origincast devices assign``)."""
        try:
            stored = self._store.list_devices()
        except StorageUnavailable:
            return
        with self._lock:
            now = self._clock()
            for d in stored:
                old = self._devices.get(d.device_id)
                if old != d:
                    self._devices[d.device_id] = d
                    self._sync_assignment(d, now)
                    # Who changed it is not recorded with the assignment: the engine's name.
                    self._move_site(d.device_id, None if old is None else old.site_id, d.site_id, SYSTEM, now)

    def _load_profiles(self) -> dict[str, Profile]:
        profiles = builtin_profiles()
        for pid, definition in self._store.list_profiles().items():
            try:
                profiles[pid] = Profile.from_dict(definition)
            except RuleError as exc:
                log.error("custom profile %r is invalid and not used: %s", pid, exc)
        return profiles

    def _sync_assignment(self, d: Device, now: datetime) -> None:
        pid = d.profile_id if d.profile_id in self._engine.profiles else None
        if d.profile_id is not None and pid is None:
            log.error("device %s: profile %r does not exist; no rules apply", d.device_id, d.profile_id)
        # Only a change of profile starts the rules over; a new site or name does not.
        if self._engine.profile_of(d.device_id) != pid:
            self._engine.assign(d.device_id, pid, now)

    def _make_client(self) -> mqtt.Client:
        s = self._settings
        v5 = s.mqtt.protocol == "5"
        client = mqtt.Client(
            CallbackAPIVersion.VERSION2,
            client_id=s.client_id,
            protocol=mqtt.MQTTv5 if v5 else mqtt.MQTTv311,
        )
        if s.mqtt.username is not None:
            client.username_pw_set(s.mqtt.username, s.mqtt.password)
        if s.mqtt.tls:
            client.tls_set()
        # Events while the broker is away stay in paho's queue and go out on reconnect.
        client.max_queued_messages_set(0)
        client.max_inflight_messages_set(100)
        client.on_connect = self._on_connect
        client.on_disconnect = self._on_disconnect
        client.on_message = self._on_message
        return client

    def _on_connect(
        self, client: mqtt.Client, userdata: object, flags: mqtt.ConnectFlags, reason: ReasonCode,
        properties: Properties | None,
    ) -> None:  # fmt: skip
        if reason.is_failure:
            log.error("alert service: broker refused the connection: %s", reason)
            return
        client.subscribe(f"{self._settings.topic_prefix}/+/status", qos=1)
        self._connected.set()

    def _on_disconnect(self, client: mqtt.Client, userdata: object, flags: object, reason: ReasonCode,
                       properties: Properties | None) -> None:  # fmt: skip
        self._connected.clear()

    def _on_message(self, client: mqtt.Client, userdata: object, msg: mqtt.MQTTMessage) -> None:
        parts = msg.topic.split("/")
        if len(parts) != 3 or parts[2] != "status":
            return
        status = msg.payload.decode("utf-8", "replace").strip().lower()
        if status in ("online", "offline"):
            self.status(parts[1], status)


__all__ = ["UNASSIGNED_SITE", "AlertService", "EventListener", "event_id"]
