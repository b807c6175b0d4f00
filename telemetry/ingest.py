"""The MQTT consumer: QoS 1 in, batches committed to the store, acknowledged after commit.

Flow: paho's network thread appends each message to ``_pending``; one writer thread takes
batches (by size or age), parses them, writes readings and rejections in one transaction,
and only then acknowledges the batch's messages, in arrival order. A crash anywhere before
the acknowledgement makes the broker redeliver; the store ignores what it already has.

Backpressure: with MQTT 5 we announce a Receive Maximum, so the broker never has more
unacknowledged messages in flight to us than that; while the database is slow or down the
broker keeps the rest queued for our persistent session, and our memory stays bounded.

Evidence: the write stage also ticks the store's sealing about once a second
(``Store.seal_due``: batches open for their whole window, seal requests, batches left by
a writer that is gone, starting at once), and a clean stop seals every batch this
ingester holds (telemetry.storage.evidence_batches).
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

from telemetry.metrics import IngestMetrics
from telemetry.mqtt_client import BatchAckClient
from telemetry.payloads import parse_message
from telemetry.readings import Reading, Rejection
from telemetry.settings import IngestSettings
from telemetry.storage.base import StorageUnavailable, Store, WriteResult
from telemetry.storage.evidence_batches import SEAL_TICK_S

log = logging.getLogger(__name__)

# (topic, payload, packet id (0 for QoS 0), connection generation, monotonic receive time)
_Message = tuple[bytes, bytes, int, int, float]


@dataclass(slots=True)
class IngestStatus:
    broker_connected: bool
    database_ok: bool
    pending_messages: int  # received, waiting for a batch
    unacked_messages: int  # received and not yet acknowledged (pending + being written)
    last_commit_at: float | None  # time.time() of the last committed batch
    last_error: str | None


class Ingester:
    """One MQTT ingest consumer. ``start()`` and ``stop()`` are blocking, thread-based."""

    def __init__(
        self,
        settings: IngestSettings,
        store: Store,
        metrics: IngestMetrics,
        on_committed: Callable[[list[Reading], datetime], None] | None = None,
    ) -> None:
        self._settings = settings
        self._store = store
        self._metrics = metrics
        # Called in the write stage after each commit, before the acks, with the batch's
        # readings and the commit time (the alert service: it must only hand them over).
        self._on_committed = on_committed
        self._cond = threading.Condition()
        self._pending: list[_Message] = []
        self._pending_bytes = 0
        # Messages taken from _pending and not yet acknowledged (parsing, queued, writing).
        self._taken = 0
        # One parsed batch waits here while the previous one is written; None ends the stage.
        self._parsed: queue.Queue[tuple[list[_Message], list[Reading], list[Rejection]] | None] = queue.Queue(
            1
        )
        self._first_pending_at = 0.0
        self._accepting = False
        self._stopping = False
        self._generation = 0
        self._connected = False
        self._database_ok = True
        self._last_commit_at: float | None = None
        self._last_error: str | None = None
        self._threads: list[threading.Thread] = []
        self._client = self._make_client()

    # -- lifecycle -------------------------------------------------------------------

    def start(self) -> None:
        s = self._settings.mqtt
        self._accepting = True
        self._threads = [
            threading.Thread(target=self._parse_loop, name="ingest-parse", daemon=True),
            threading.Thread(target=self._write_loop, name="ingest-write", daemon=True),
        ]
        for t in self._threads:
            t.start()
        props = None
        kwargs: dict[str, object] = {}
        if self._is_v5:
            props = Properties(PacketTypes.CONNECT)
            props.SessionExpiryInterval = self._settings.session_expiry_s
            props.ReceiveMaximum = self._settings.receive_maximum
            kwargs["clean_start"] = False
        self._client.connect_async(s.host, s.port, keepalive=s.keepalive_s, properties=props, **kwargs)  # type: ignore[arg-type]
        self._client.loop_start()

    def stop(self, timeout: float = 10.0) -> None:
        """Stop taking messages, commit and acknowledge what was taken, then disconnect."""
        self._accepting = False
        with self._cond:
            self._stopping = True
            self._cond.notify_all()
        deadline = time.monotonic() + timeout
        for t in self._threads:
            t.join(max(0.0, deadline - time.monotonic()))
        # The queued PUBACKs go out before the DISCONNECT: paho writes packets in order.
        self._client.disconnect()
        self._client.loop_stop()
        self._metrics.broker_connected.set(0)
        try:
            left = self._store.seal_pending()
            if left:
                log.warning("stopped with readings of %s not sealed", ", ".join(left))
        except StorageUnavailable as exc:
            # the next writer to start seals them from the stored rows
            log.warning("stopped without sealing the open readings batches: %s", exc)
        except Exception:
            log.exception("sealing the open readings batches at stop failed")

    def status(self) -> IngestStatus:
        with self._cond:
            pending = len(self._pending)
            taken = self._taken
        return IngestStatus(
            broker_connected=self._connected,
            database_ok=self._database_ok,
            pending_messages=pending,
            unacked_messages=pending + taken,
            last_commit_at=self._last_commit_at,
            last_error=self._last_error,
        )

    # -- MQTT side (paho's network thread) ---------------------------------------------

    @property
    def _is_v5(self) -> bool:
        return self._settings.mqtt.protocol == "5"

    def _make_client(self) -> BatchAckClient:
        s = self._settings
        if self._is_v5:
            client = BatchAckClient(
                CallbackAPIVersion.VERSION2,
                client_id=s.client_id,
                protocol=mqtt.MQTTv5,
                manual_ack=True,
            )
        else:
            client = BatchAckClient(
                CallbackAPIVersion.VERSION2,
                client_id=s.client_id,
                clean_session=False,
                protocol=mqtt.MQTTv311,
                manual_ack=True,
            )
        if s.mqtt.username is not None:
            client.username_pw_set(s.mqtt.username, s.mqtt.password)
        if s.mqtt.tls:
            client.tls_set()
        client.reconnect_delay_set(max(1, int(s.reconnect_min_s)), max(1, int(s.reconnect_max_s)))
        # paho keeps its own queue of outgoing messages; we publish nothing at QoS>0 here.
        client.max_inflight_messages_set(20)
        client.on_connect = self._on_connect
        client.on_disconnect = self._on_disconnect
        client.on_raw_message = self._on_message
        return client

    @property
    def topic_filter(self) -> str:
        topic = f"{self._settings.topic_prefix}/+/telemetry"
        if self._settings.shared_group:
            return f"$share/{self._settings.shared_group}/{topic}"
        return topic

    def _on_connect(
        self,
        client: mqtt.Client,
        userdata: object,
        flags: mqtt.ConnectFlags,
        reason: ReasonCode,
        properties: Properties | None,
    ) -> None:
        if reason.is_failure:
            self._last_error = f"broker refused the connection: {reason}"
            log.error("%s", self._last_error)
            return
        with self._cond:
            # Packet ids of messages taken on an earlier connection mean nothing now;
            # the broker redelivers those messages and the store ignores the repeats.
            self._generation += 1
        self._connected = True
        self._metrics.broker_connected.set(1)
        client.subscribe(self.topic_filter, qos=1)
        log.info("connected to broker, subscribed to %s", self.topic_filter)

    def _on_disconnect(
        self,
        client: mqtt.Client,
        userdata: object,
        flags: mqtt.DisconnectFlags,
        reason: ReasonCode,
        properties: Properties | None,
    ) -> None:
        self._connected = False
        self._metrics.broker_connected.set(0)
        if not self._stopping:
            log.warning("disconnected from broker (%s); reconnecting", reason)

    def _on_message(self, topic: bytes, payload: bytes, mid: int, qos: int) -> None:
        if not self._accepting:
            return  # not acknowledged: the broker delivers it again to our next session
        now = time.monotonic()
        with self._cond:
            pending = self._pending
            if not pending:
                # Wake the parse stage so the batch's age timer starts now, not at its
                # next idle wake-up.
                self._first_pending_at = now
                self._cond.notify_all()
            pending.append((topic, payload, mid, self._generation, now))
            self._pending_bytes += len(payload)
            if len(pending) == self._settings.batch_max_rows or (
                self._pending_bytes >= self._settings.batch_max_bytes
                and self._pending_bytes - len(payload) < self._settings.batch_max_bytes
            ):
                self._cond.notify_all()

    # -- parse stage ---------------------------------------------------------------------
    # Parsing (Python, ours) and writing (mostly the database's time) run in two threads
    # with one parsed batch between them, so the next batch is parsed while the database
    # commits the last one. The write stage handles batches in the order they were taken,
    # which keeps the PUBACKs in arrival order.

    def _take_batch(self) -> list[_Message] | None:
        """Wait for a full or old-enough batch; None when stopping and nothing is left."""
        s = self._settings
        with self._cond:
            while True:
                n = len(self._pending)
                if n >= s.batch_max_rows or self._pending_bytes >= s.batch_max_bytes:
                    break
                if n and (self._stopping or time.monotonic() - self._first_pending_at >= s.batch_max_delay_s):
                    break
                if self._stopping:
                    return None
                wait = 0.5
                if n:
                    wait = max(0.0, self._first_pending_at + s.batch_max_delay_s - time.monotonic())
                self._cond.wait(wait)
            # Cut by count and by bytes: a logger's flush of 100 readings a message must not
            # make one transaction of 500,000 rows.
            size = 0
            cut = 0
            for cut, msg in enumerate(self._pending[: s.batch_max_rows], 1):  # noqa: B007
                size += len(msg[1])
                if size >= s.batch_max_bytes:
                    break
            batch = self._pending[:cut]
            del self._pending[:cut]
            self._pending_bytes -= size
            self._taken += len(batch)
            if self._pending:
                self._first_pending_at = self._pending[0][4]
            self._metrics.pending.set(len(self._pending))
            return batch

    def _parse_loop(self) -> None:
        limits = self._settings.limits
        prefix = self._settings.topic_prefix
        try:
            while True:
                batch = self._take_batch()
                if batch is None:
                    return
                now = datetime.now(UTC)
                readings: list[Reading] = []
                rejections: list[Rejection] = []
                for topic, payload, _mid, _gen, _t in batch:
                    try:
                        result = parse_message(
                            topic.decode("utf-8", "replace"), payload, limits, now, prefix=prefix
                        )
                    except Exception:  # parse_message never raises by contract; a bug must not stop ingest
                        log.exception("parse_message raised; message left unacknowledged")
                        continue
                    readings.extend(result.readings)
                    if result.rejections:
                        rejections.extend(result.rejections)
                self._parsed.put((batch, readings, rejections))
        finally:
            self._parsed.put(None)

    # -- write stage ---------------------------------------------------------------------

    def _write_loop(self) -> None:
        next_tick = time.monotonic()  # the first tick seals what a crashed writer left
        while True:
            try:
                item = self._parsed.get(timeout=max(0.0, next_tick - time.monotonic()))
            except queue.Empty:
                pass  # nothing to write before the tick is due
            else:
                if item is None:
                    return
                batch, readings, rejections = item
                try:
                    self._commit_and_ack(batch, readings, rejections)
                except Exception:  # a bug must not silently kill ingest: log, keep the batch unacked
                    log.exception("unexpected error while writing a batch; it will be redelivered")
                    self._last_error = "internal error while writing a batch (see log)"
                finally:
                    with self._cond:
                        self._taken -= len(batch)
            if time.monotonic() >= next_tick:
                self._seal_tick()
                next_tick = time.monotonic() + SEAL_TICK_S

    def _seal_tick(self) -> None:
        try:
            self._store.seal_due()
        except StorageUnavailable as exc:
            log.debug("sealing postponed: %s", exc)
        except Exception:
            log.exception("sealing readings batches failed; retried at the next tick")

    def _commit_and_ack(
        self, batch: list[_Message], readings: list[Reading], rejections: list[Rejection]
    ) -> None:
        m = self._metrics
        started = time.monotonic()
        result_w = self._write_with_retry(readings, rejections)
        if result_w is None:
            return  # stopping with the database down: unacked, the broker keeps them
        committed = time.monotonic()
        if self._on_committed is not None and readings:
            try:
                self._on_committed(readings, datetime.now(UTC))
            except Exception:  # a consumer's bug must not stop ingest or hold the acks back
                log.exception("on_committed callback failed")
        # Acknowledge only QoS 1 messages (mid 0 is QoS 0) of the live connection, in
        # arrival order.
        with self._cond:
            generation = self._generation
        self._client.ack_many([mid for _, _, mid, gen, _ in batch if mid and gen == generation])
        m.messages.inc(len(batch))
        m.received.inc(len(readings))
        m.stored.inc(result_w.inserted)
        if result_w.duplicates:
            m.duplicates.inc(result_w.duplicates)
        for r in rejections:
            m.rejected.labels(r.reason).inc()
        m.batch_size.observe(len(batch))
        m.commit_seconds.observe(committed - started)
        m.lag.set(committed - batch[0][4])
        self._last_commit_at = time.time()

    def _write_with_retry(self, readings: list[Reading], rejections: list[Rejection]) -> WriteResult | None:
        """Retry until committed; None if asked to stop while the database is down."""
        delay = self._settings.reconnect_min_s
        while True:
            try:
                result = self._store.write_batch(readings, rejections)
            except StorageUnavailable as exc:
                self._database_ok = False
                self._last_error = f"database unavailable: {exc}"
                self._metrics.db_errors.inc()
                if self._stopping:
                    return None
                log.warning("%s; retrying in %.1f s", self._last_error, delay)
                with self._cond:
                    self._cond.wait(delay)
                delay = min(delay * 2, self._settings.reconnect_max_s)
                continue
            self._database_ok = True
            self._last_error = None
            return result
