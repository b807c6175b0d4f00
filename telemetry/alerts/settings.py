"""Typed settings of the alert engine; built by web.config, never read from files here."""

from __future__ import annotations

import math
from dataclasses import dataclass, field, fields

from telemetry.settings import MqttSettings


@dataclass(frozen=True, slots=True)
class AlertSettings:
    # Devices without an assignment get this profile (None: no rules until assigned).
    default_profile: str | None = None
    # A reading received this long after its own timestamp is late data (a logger's
    # backfill after a dead zone); an alert it reveals is marked found_late. Equal to the
    # payload contract's max_future_s, so a device clock's allowed skew doesn't count.
    late_after_s: float = 300.0
    # tick() extrapolates a device's last value on the device's own clock (server time
    # minus the lag its last reading arrived with), minus this margin for readings still
    # in flight. A larger value trades alert latency for fewer decisions that later
    # readings contradict.
    tick_grace_s: float = 0.0
    # ...and at most this far past its last reading: beyond that the device counts as
    # silent (the offline rule's business) and its next readings decide.
    max_hold_s: float = 600.0
    # Resolved alerts stay in the engine this long (for late acknowledgements and for
    # recognising an excursion that a second late batch reveals again); the store keeps
    # them for good.
    keep_resolved_s: float = 7 * 86400.0

    def __post_init__(self) -> None:
        for f in fields(self):
            v = getattr(self, f.name)
            if f.name.endswith("_s") and not (isinstance(v, (int, float)) and math.isfinite(v) and v >= 0):
                raise ValueError(f"alert settings: {f.name} must be a number ≥ 0, got {v!r}")


@dataclass(frozen=True, slots=True)
class WebhookSettings:
    urls: tuple[str, ...] = ()
    # HMAC-SHA256 key of the X-Origincast-Signature header; None: requests go unsigned.
    secret: str | None = field(default=None, repr=False)
    # 6 attempts, 4 s doubling: retries after 4, 8, 16, 32 and 64 s, about two minutes in
    # all: long enough for a receiver's restart, short enough that nobody is paged late.
    attempts: int = 6
    backoff_s: float = 4.0
    timeout_s: float = 5.0

    def __post_init__(self) -> None:
        if self.attempts < 1:
            raise ValueError(f"webhooks: attempts must be ≥ 1, got {self.attempts!r}")
        for url in self.urls:
            if not url.startswith(("http://", "https://")):
                raise ValueError(f"webhooks: expected http:// or https:// URLs, got {url!r}")


@dataclass(frozen=True, slots=True)
class AlertServiceSettings:
    """How the alert service runs around the engine (telemetry.alerts.service)."""

    mqtt: MqttSettings = field(default_factory=MqttSettings)
    topic_prefix: str = "origincast"
    client_id: str = "origincast-alerts"
    engine: AlertSettings = field(default_factory=AlertSettings)
    webhooks: WebhookSettings = field(default_factory=WebhookSettings)
    tick_s: float = 1.0
    snapshot_every_s: float = 30.0
    # Readings handed over by ingest and not judged yet, at most; beyond it ingest is not
    # held back: the service drops the hand-over and catches up from the store instead.
    queue_max_readings: int = 500_000
    # On start, readings stored after the snapshot are replayed; received_at comes from
    # the database's clock, the snapshot's time from ours: this margin covers their skew.
    replay_margin_s: float = 5.0
    # ...and only readings whose own time is at most this old (lets TimescaleDB skip
    # old chunks; older late data than this is past any rule's window anyway).
    replay_max_age_s: float = 14 * 86400.0
