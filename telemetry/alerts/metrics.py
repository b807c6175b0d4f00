"""Prometheus metrics of the alert service, registered on a registry the caller owns."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram


class AlertMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.events = Counter(
            "origincast_alert_events", "Alert events emitted, by kind", ["kind"], registry=registry
        )
        self.open_alerts = Gauge(
            "origincast_alert_open", "Alerts not resolved yet (open or acknowledged)", registry=registry
        )
        self.queued = Gauge(
            "origincast_alert_queued_readings",
            "Readings handed over by ingest, not judged yet",
            registry=registry,
        )
        self.dropped = Counter(
            "origincast_alert_dropped_handovers",
            "Readings not handed over because the queue was full (caught up from the store)",
            registry=registry,
        )
        self.process_seconds = Histogram(
            "origincast_alert_process_seconds",
            "Time to judge one batch and record its events",
            buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1, 5),
            registry=registry,
        )
        self.store_errors = Counter(
            "origincast_alert_store_errors", "Alert writes that failed (retried)", registry=registry
        )
        self.webhook_deliveries = Counter(
            "origincast_alert_webhook_deliveries", "Webhook requests answered 2xx", registry=registry
        )
        self.webhook_failures = Counter(
            "origincast_alert_webhook_failures",
            "Webhook attempts that failed (error status, refused, timeout)",
            registry=registry,
        )
        self.webhook_given_up = Counter(
            "origincast_alert_webhook_given_up",
            "Webhook events dropped after the last attempt failed",
            registry=registry,
        )
