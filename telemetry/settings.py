"""Typed settings for the telemetry package; built by web.config, never read from files here."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True, slots=True)
class MqttSettings:
    host: str = "127.0.0.1"
    port: int = 1883
    username: str | None = None
    password: str | None = field(default=None, repr=False)
    tls: bool = False
    # "5" or "3.1.1"; the embedded broker (amqtt) speaks 3.1.1 only.
    protocol: str = "5"
    keepalive_s: int = 30


@dataclass(frozen=True, slots=True)
class PayloadLimits:
    max_payload_bytes: int = 256 * 1024
    max_readings_per_message: int = 10_000
    # A sensor's physical range: thermistors and PT100s in cold chain read -80..+85 °C;
    # anything outside is a fault, not a temperature.
    min_temp_c: float = -100.0
    max_temp_c: float = 150.0
    # Clocks drift; a reading more than this far ahead of the server clock is rejected.
    max_future_s: float = 300.0
    # Older than this is rejected too (a logger with a reset clock reports 1970).
    max_age_days: float = 3650.0


@dataclass(frozen=True, slots=True)
class IngestSettings:
    mqtt: MqttSettings = field(default_factory=MqttSettings)
    client_id: str = "origincast-ingest"
    # Shared-subscription group name (MQTT 5 "$share/<group>/..."); None subscribes plainly.
    shared_group: str | None = None
    topic_prefix: str = "origincast"
    batch_max_rows: int = 5000  # messages per batch at most
    # ...and payload bytes: bounds the rows of one transaction when messages carry arrays.
    batch_max_bytes: int = 1024 * 1024
    batch_max_delay_s: float = 0.05
    # MQTT 5 Receive Maximum: the broker never has more unacknowledged messages in
    # flight to us than this, which bounds our memory (the backpressure).
    receive_maximum: int = 65535
    session_expiry_s: int = 7 * 24 * 3600
    limits: PayloadLimits = field(default_factory=PayloadLimits)
    reconnect_min_s: float = 0.2
    reconnect_max_s: float = 10.0


@dataclass(frozen=True, slots=True)
class StorageSettings:
    url: str = "sqlite:///origincast.db"
    # EC 37/2005 and FSMA ask for at least a year; keep a margin.
    retention_days: int = 400
    chunk_interval_hours: int = 24
    # Off, ingest writes no readings_batch leaves (readings are left uncovered by the
    # evidence log). The switch exists only so bench/evidence.py can measure what the log
    # costs per reading; web.config never sets it, so every server runs with the log on.
    evidence_log: bool = True
    # A readings_batch leaf covers one device's readings within this much reading time,
    # and is sealed at the latest this long (wall clock) after it opened
    # (telemetry/storage/evidence_batches.py): a reading a minute makes 15 a leaf.
    evidence_batch_max_span_s: float = 900.0
    # ...and at most this many readings.
    evidence_batch_max_readings: int = 1000
