"""Prometheus metrics of the ingest path, registered on a registry the caller owns."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram


class IngestMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.messages = Counter(
            "origincast_ingest_messages_received", "MQTT messages received", registry=registry
        )
        self.received = Counter(
            "origincast_ingest_readings_received",
            "Readings parsed from received messages",
            registry=registry,
        )
        self.stored = Counter("origincast_ingest_readings_stored", "Readings newly stored", registry=registry)
        self.duplicates = Counter(
            "origincast_ingest_readings_duplicate",
            "Readings already stored (redeliveries), ignored",
            registry=registry,
        )
        self.rejected = Counter(
            "origincast_ingest_rejected",
            "Messages or readings rejected, by reason",
            ["reason"],
            registry=registry,
        )
        self.batch_size = Histogram(
            "origincast_ingest_batch_messages",
            "Messages per committed batch",
            buckets=(1, 10, 50, 100, 250, 500, 1000, 2500, 5000, 10000, 20000),
            registry=registry,
        )
        self.commit_seconds = Histogram(
            "origincast_ingest_commit_seconds",
            "Time to write and commit one batch",
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5),
            registry=registry,
        )
        self.lag = Gauge(
            "origincast_ingest_lag_seconds",
            "Receive-to-commit time of the oldest message of the last batch",
            registry=registry,
        )
        self.pending = Gauge(
            "origincast_ingest_pending_messages",
            "Messages received and not yet committed",
            registry=registry,
        )
        self.broker_connected = Gauge(
            "origincast_ingest_broker_connected", "1 when connected to the broker", registry=registry
        )
        self.db_errors = Counter(
            "origincast_ingest_database_errors",
            "Batch writes that failed because the database was unavailable",
            registry=registry,
        )
