"""Webhook delivery of alert events: durable, signed, retried with exponential backoff, recorded.

Each event goes to every configured URL as its JSON body with
``X-Origincast-Signature: sha256=<hex HMAC-SHA256 of the body>`` (the receiver recomputes
it with the shared secret) and ``X-Origincast-Event: <event id>`` (the same id on every
retry and after a restart, so a receiver can drop repeats). A 2xx answer is a delivery;
anything else, a refused connection or a timeout, is retried after ``backoff_s``, then
twice that, … up to ``attempts`` in all. Every attempt is written to
``webhook_deliveries`` and counted in the metrics, so failures are visible.

Durable: the deliveries of an event are rows of ``webhook_outbox`` (url, event id, body,
the next attempt's number, its due time), written by the alert store in the transaction
that records the alert change (``WebhookSender.jobs`` makes them, the service hands them
to ``record_alert``). An event recorded is therefore never lost before it is sent: a stop
or a crash leaves its rows, and the next start takes them up at their due times. The
sender thread claims one due row at a time (a lease of about twice the request timeout;
on PostgreSQL ``FOR UPDATE SKIP LOCKED``), attempts it, and in one transaction records the
attempt and removes the row (delivered, or given up) or moves it to its next due time.
Two engines on one database never send a row at the same time; a crashed sender's
claim lapses after its lease, and that one row is then sent again (same event id).

One sender thread does the requests: a slow receiver delays the others (each request is
bounded by ``timeout_s``) but never the engine, which only writes rows and wakes the
thread. At stop the thread finishes the request in flight (at most ``timeout_s``),
releases its claims and ends; pending deliveries stay in the outbox for the next start.
Rows for a URL no longer configured stay there untouched (a warning at start says so).
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import threading
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable
from datetime import UTC, datetime, timedelta

from telemetry.alerts.metrics import AlertMetrics
from telemetry.alerts.settings import WebhookSettings
from telemetry.storage.alerts import AlertStore, PendingWebhook, WebhookDelivery, WebhookJob
from telemetry.storage.base import StorageUnavailable

log = logging.getLogger(__name__)

SIGNATURE_HEADER = "X-Origincast-Signature"
EVENT_HEADER = "X-Origincast-Event"


def sign(secret: str, body: bytes) -> str:
    """The signature header's value for ``body``."""
    return "sha256=" + hmac.new(secret.encode("utf-8"), body, hashlib.sha256).hexdigest()


class WebhookSender:
    """See the module doc. ``start()``/``stop()`` block; ``jobs`` and ``wake`` are thread-safe."""

    def __init__(
        self,
        settings: WebhookSettings,
        store: AlertStore,
        metrics: AlertMetrics,
        *,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
        poll_s: float = 5.0,
    ) -> None:
        self._settings = settings
        self._store = store
        self._metrics = metrics
        self._clock = clock
        # The engine wakes the thread for new rows; polling only covers what nobody
        # announced (a lapsed claim, a database that was away).
        self._poll_s = poll_s
        # Long enough for one request and its record; short enough that a crashed
        # sender's row is taken up again soon.
        self._lease = timedelta(seconds=2 * settings.timeout_s + 5.0)
        self._cond = threading.Condition()
        self._woken = False
        self._stopping = False
        self._owner = ""
        self._thread: threading.Thread | None = None

    @property
    def enabled(self) -> bool:
        return bool(self._settings.urls)

    def jobs(self, event_id: str, body: bytes, at: datetime) -> list[WebhookJob]:
        """The outbox rows of one event (one per URL), first due at ``at``."""
        return [WebhookJob(url, event_id, body, at) for url in self._settings.urls]

    def wake(self) -> None:
        """New rows are in the outbox: look now rather than at the next poll."""
        with self._cond:
            self._woken = True
            self._cond.notify_all()

    def start(self) -> None:
        if not self.enabled:
            return
        self._warn_orphans()
        with self._cond:
            self._stopping = False
            self._woken = True  # whatever is due already goes out at once
        # A fresh claim owner per start: claims of an earlier run are never mistaken for ours.
        self._owner = uuid.uuid4().hex
        self._thread = threading.Thread(target=self._run, name="alert-webhooks", daemon=True)
        self._thread.start()

    def stop(self, timeout: float | None = None) -> None:
        """Stop after the request in flight, if any; pending rows stay for the next start."""
        with self._cond:
            self._stopping = True
            self._cond.notify_all()
        thread, self._thread = self._thread, None
        if thread is None:
            return
        thread.join(self._settings.timeout_s + 2.0 if timeout is None else timeout)
        if thread.is_alive():
            log.warning("webhooks: a request still running at stop is abandoned; its claim lapses by itself")

    # -- the sender thread -------------------------------------------------------------------

    def _stopped(self) -> bool:
        with self._cond:
            return self._stopping

    def _run(self) -> None:
        urls = self._settings.urls
        while not self._stopped():
            wait = self._poll_s
            try:
                now = self._clock()
                claimed = self._store.claim_webhooks(urls, now, self._owner, now + self._lease, 1)
                if claimed:
                    self._attempt(claimed[0])
                    continue  # more may be due
                due = self._store.next_webhook_due(urls)
                if due is not None:
                    wait = min(wait, max(0.0, (due - self._clock()).total_seconds()))
            except StorageUnavailable as exc:
                log.warning("webhooks: outbox not reachable (%s); retrying in %.0f s", exc, wait)
            except Exception:  # one bad row must not stop every delivery
                log.exception("webhooks: error in the sender")
            with self._cond:
                if not self._woken and not self._stopping:
                    self._cond.wait(wait)
                self._woken = False
        try:
            self._store.release_webhooks(self._owner)
        except StorageUnavailable as exc:
            log.warning("webhooks: claims not released at stop (%s); they lapse by themselves", exc)

    def _attempt(self, job: PendingWebhook) -> None:
        s = self._settings
        headers = {"Content-Type": "application/json", EVENT_HEADER: job.event_id, "User-Agent": "origincast"}
        if s.secret:
            headers[SIGNATURE_HEADER] = sign(s.secret, job.body)
        status: int | None = None
        error: str | None = None
        try:
            req = urllib.request.Request(job.url, data=job.body, headers=headers, method="POST")
            with urllib.request.urlopen(req, timeout=s.timeout_s) as resp:  # http(s) checked in settings
                status = resp.status
        except urllib.error.HTTPError as exc:
            status = exc.code
            error = f"HTTP {exc.code} {exc.reason}"
        except (urllib.error.URLError, OSError, ValueError) as exc:
            error = str(getattr(exc, "reason", exc)) or type(exc).__name__
        if error is None and status is not None and not 200 <= status < 300:
            error = f"HTTP {status}"
        now = self._clock()
        retry_at: datetime | None = None
        if error is None:
            self._metrics.webhook_deliveries.inc()
        else:
            self._metrics.webhook_failures.inc()
            if job.attempt >= s.attempts:
                self._metrics.webhook_given_up.inc()
                log.error(
                    "webhook %s: event %s not delivered after %d attempts (%s)",
                    job.url,
                    job.event_id,
                    job.attempt,
                    error,
                )
            else:
                delay = s.backoff_s * 2 ** (job.attempt - 1)
                retry_at = now + timedelta(seconds=delay)
                log.warning(
                    "webhook %s: attempt %d for %s failed (%s); retrying in %.1f s",
                    job.url,
                    job.attempt,
                    job.event_id,
                    error,
                    delay,
                )
        delivery = WebhookDelivery(job.url, job.event_id, job.attempt, status, error, now)
        try:
            self._store.finish_webhook(job, self._owner, delivery, retry_at)
        except StorageUnavailable as exc:
            # The row keeps its claim until the lease lapses, then goes again: a repeat
            # the receiver recognises by its event id, never a loss.
            log.warning("webhook %s: attempt for %s not recorded (%s)", job.url, job.event_id, exc)

    def _warn_orphans(self) -> None:
        try:
            pending = self._store.pending_webhooks(limit=1000)
        except StorageUnavailable:
            return
        orphans = {p.url for p in pending if p.url not in self._settings.urls}
        if orphans:
            log.warning(
                "webhooks: the outbox holds deliveries for URLs no longer configured (%s);"
                " they are kept, not sent",
                ", ".join(sorted(orphans)),
            )
