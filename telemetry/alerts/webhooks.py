"""Webhook delivery of alert events: signed, retried with exponential backoff, recorded.

Each event goes to every configured URL as its JSON body with
``X-Origincast-Signature: sha256=<hex HMAC-SHA256 of the body>`` (the receiver recomputes
it with the shared secret) and ``X-Origincast-Event: <event id>`` (the same id on every
retry and after a restart's replay, so a receiver can drop repeats). A 2xx answer is a
delivery; anything else, a refused connection or a timeout, is retried after
``backoff_s``, then twice that, … up to ``attempts`` in all. Every attempt is written to
``webhook_deliveries`` and counted in the metrics, so failures are visible.

One sender thread does the requests: a slow receiver delays the others (each request is
bounded by ``timeout_s``) but never the engine, which only enqueues. Retries still
pending at stop are dropped (their attempts so far are on record).
"""

from __future__ import annotations

import hashlib
import heapq
import hmac
import itertools
import logging
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime

from telemetry.alerts.metrics import AlertMetrics
from telemetry.alerts.settings import WebhookSettings
from telemetry.storage.alerts import WebhookDelivery

log = logging.getLogger(__name__)

SIGNATURE_HEADER = "X-Origincast-Signature"
EVENT_HEADER = "X-Origincast-Event"


def sign(secret: str, body: bytes) -> str:
    """The signature header's value for ``body``."""
    return "sha256=" + hmac.new(secret.encode("utf-8"), body, hashlib.sha256).hexdigest()


@dataclass(order=True, slots=True)
class _Job:
    due: float
    seq: int
    url: str = field(compare=False)
    event_id: str = field(compare=False)
    body: bytes = field(compare=False)
    attempt: int = field(compare=False, default=1)


class WebhookSender:
    def __init__(
        self,
        settings: WebhookSettings,
        record: Callable[[WebhookDelivery], None],
        metrics: AlertMetrics,
    ) -> None:
        self._settings = settings
        self._record = record  # the store's record_webhook_delivery
        self._metrics = metrics
        self._cond = threading.Condition()
        self._heap: list[_Job] = []
        self._seq = itertools.count()
        self._stopping = False
        self._thread: threading.Thread | None = None

    @property
    def enabled(self) -> bool:
        return bool(self._settings.urls)

    def start(self) -> None:
        if not self.enabled:
            return
        self._thread = threading.Thread(target=self._run, name="alert-webhooks", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 10.0) -> None:
        with self._cond:
            self._stopping = True
            self._cond.notify_all()
        if self._thread is not None:
            self._thread.join(timeout)
        if self._heap:
            log.warning("webhooks: %d deliveries still pending at stop are dropped", len(self._heap))

    def submit(self, event_id: str, body: bytes) -> None:
        """Queue one event for every URL; returns at once."""
        if not self.enabled:
            return
        now = time.monotonic()
        with self._cond:
            for url in self._settings.urls:
                heapq.heappush(self._heap, _Job(now, next(self._seq), url, event_id, body))
            self._cond.notify_all()

    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._stopping and (not self._heap or self._heap[0].due > time.monotonic()):
                    wait = None if not self._heap else max(0.0, self._heap[0].due - time.monotonic())
                    self._cond.wait(wait)
                if self._stopping:
                    return
                job = heapq.heappop(self._heap)
            self._attempt(job)

    def _attempt(self, job: _Job) -> None:
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
        try:
            self._record(
                WebhookDelivery(job.url, job.event_id, job.attempt, status, error, datetime.now(UTC))
            )
        except Exception:  # the record is for people; the delivery itself goes on
            log.exception("webhooks: could not record a delivery attempt")
        if error is None:
            self._metrics.webhook_deliveries.inc()
            return
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
            return
        delay = s.backoff_s * 2 ** (job.attempt - 1)
        log.warning(
            "webhook %s: attempt %d for %s failed (%s); retrying in %.1f s",
            job.url,
            job.attempt,
            job.event_id,
            error,
            delay,
        )
        with self._cond:
            heapq.heappush(
                self._heap,
                _Job(
                    time.monotonic() + delay,
                    next(self._seq),
                    job.url,
                    job.event_id,
                    job.body,
                    job.attempt + 1,
                ),
            )
            self._cond.notify_all()
