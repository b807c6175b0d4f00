"""The alerting part of the storage interface: assignments, profiles, alerts and their
audit trail, the engine's snapshot, the webhook outbox and attempts, and the readings the
engine asks for (a device's span for late-data replays, what arrived after a snapshot).

Row types here are plain values; the back ends implement ``AlertStore`` (mixed into
their store classes), and ``Store`` extends it, so one object serves ingest and alerts.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Protocol

from telemetry.alerts.lifecycle import Action, Alert, AuditEntry
from telemetry.evidence.canonical import AlertEvent
from telemetry.readings import Reading

ALERT_STATES = ("open", "acknowledged", "resolved")
# Alerts still needing someone: "open" or "acknowledged" (not resolved yet).
ACTIVE = "active"


@dataclass(frozen=True, slots=True)
class Device:
    device_id: str
    site_id: str | None = None
    profile_id: str | None = None
    name: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "device_id": self.device_id,
            "site_id": self.site_id,
            "profile_id": self.profile_id,
            "name": self.name,
        }


@dataclass(frozen=True, slots=True)
class AlertFilter:
    state: str | None = None  # one of ALERT_STATES, or ACTIVE
    device_id: str | None = None
    site_id: str | None = None
    severity: str | None = None
    since: datetime | None = None  # raised_at ≥ since
    limit: int = 100


@dataclass(frozen=True, slots=True)
class AuditRecord:
    alert_id: int
    seq: int  # position in the alert's trail, from 0 (the "raised" entry)
    at: datetime
    actor: str
    action: str
    comment: str
    detail: dict[str, Any] | None
    evidence_leaf: int | None = None  # its alert_event leaf in the evidence log

    def to_dict(self) -> dict[str, Any]:
        return {
            "seq": self.seq,
            "at": self.at.isoformat(),
            "actor": self.actor,
            "action": self.action,
            "comment": self.comment,
            "detail": self.detail,
            "evidence_leaf": self.evidence_leaf,
        }


@dataclass(frozen=True, slots=True)
class AlertRecord:
    alert_id: int
    device_id: str
    site_id: str | None
    profile_id: str
    rule_id: str
    kind: str
    severity: str
    state: str
    metric: str | None
    threshold: float | None
    start: datetime
    raised_at: datetime
    cleared_at: datetime | None
    peak: float | None
    peak_at: datetime | None
    found_late: bool
    acknowledged_by: str | None
    acknowledged_at: datetime | None
    ack_comment: str | None
    resolved_by: str | None
    resolved_at: datetime | None
    resolution_comment: str | None
    updated_at: datetime
    audit: tuple[AuditRecord, ...] = ()

    def to_dict(self, *, with_audit: bool = False) -> dict[str, Any]:
        def iso(t: datetime | None) -> str | None:
            return None if t is None else t.isoformat()

        d: dict[str, Any] = {
            "id": self.alert_id,
            "device_id": self.device_id,
            "site_id": self.site_id,
            "profile_id": self.profile_id,
            "rule_id": self.rule_id,
            "rule_kind": self.kind,
            "severity": self.severity,
            "status": self.state,
            "metric": self.metric,
            "threshold": self.threshold,
            "start": iso(self.start),
            "raised_at": iso(self.raised_at),
            "cleared_at": iso(self.cleared_at),
            "duration_s": None if self.cleared_at is None else (self.cleared_at - self.start).total_seconds(),
            "peak": self.peak,
            "peak_at": iso(self.peak_at),
            "found_late": self.found_late,
            "acknowledged_by": self.acknowledged_by,
            "acknowledged_at": iso(self.acknowledged_at),
            "ack_comment": self.ack_comment,
            "resolved_by": self.resolved_by,
            "resolved_at": iso(self.resolved_at),
            "resolution_comment": self.resolution_comment,
            "updated_at": iso(self.updated_at),
        }
        if with_audit:
            d["audit"] = [a.to_dict() for a in self.audit]
        return d


@dataclass(frozen=True, slots=True)
class WebhookDelivery:
    url: str
    event_id: str
    attempt: int  # 1, 2, …
    status: int | None  # the HTTP status, None when no answer came (refused, timeout)
    error: str | None  # None when delivered (2xx)
    at: datetime


@dataclass(frozen=True, slots=True)
class WebhookJob:
    """One delivery to queue: an event's body for one URL, first tried at ``due_at``."""

    url: str
    event_id: str
    body: bytes
    due_at: datetime


@dataclass(frozen=True, slots=True)
class PendingWebhook:
    """A row of the webhook outbox: a delivery not done yet."""

    id: int
    url: str
    event_id: str
    body: bytes
    attempt: int  # the number of the next attempt (1 for a first try)
    due_at: datetime


def alert_values(alert: Alert, site_id: str | None, at: datetime) -> dict[str, Any]:
    """The alerts row of an alert version, as named values (times still datetimes)."""
    resolved_at = None
    if alert.cleared_at is not None:
        resolved_at = next((e.at for e in reversed(alert.audit) if e.action is Action.RESOLVED), None)
    return {
        "alert_id": alert.id,
        "device_id": alert.device_id,
        "site_id": site_id,
        "profile_id": alert.profile_id,
        "rule_id": alert.rule_id,
        "kind": alert.rule_kind,
        "severity": alert.severity.value,
        "state": alert.status.value,
        "metric": alert.metric,
        "threshold": alert.threshold,
        "start": alert.start,
        "raised_at": alert.raised_at,
        "cleared_at": alert.cleared_at,
        "peak": alert.peak,
        "peak_at": alert.peak_at,
        "found_late": alert.found_late,
        "acknowledged_by": alert.acknowledged_by,
        "acknowledged_at": alert.acknowledged_at,
        "ack_comment": alert.ack_comment or None,
        "resolved_by": alert.resolved_by,
        "resolved_at": resolved_at,
        "resolution_comment": alert.resolution_comment or None,
        "updated_at": at,
    }


ALERT_COLUMNS = (
    "alert_id, device_id, site_id, profile_id, rule_id, kind, severity, state, metric, threshold,"
    " start, raised_at, cleared_at, peak, peak_at, found_late, acknowledged_by, acknowledged_at,"
    " ack_comment, resolved_by, resolved_at, resolution_comment, updated_at"
)
ALERT_COLUMN_NAMES = tuple(c.strip() for c in ALERT_COLUMNS.split(","))
# Columns a later write never blanks: a replay after a crash can re-emit an alert version
# older than what a person already recorded (an acknowledgement made just before the
# crash); the person's record wins.
STICKY_COLUMNS = frozenset(
    {
        "acknowledged_by",
        "acknowledged_at",
        "ack_comment",
        "resolved_by",
        "resolved_at",
        "resolution_comment",
        "cleared_at",
    }
)


def audit_values(alert: Alert) -> list[tuple[int, int, datetime, str, str, str, dict[str, Any] | None]]:
    """(alert_id, seq, at, actor, action, comment, detail) of every entry of the trail;
    the store inserts those it does not have yet (the trail only grows)."""
    return [
        (alert.id, i, e.at, e.by, e.action.value, e.comment, _detail(e)) for i, e in enumerate(alert.audit)
    ]


def _detail(e: AuditEntry) -> dict[str, Any] | None:
    if e.detail is not None:
        return e.detail
    return None if e.value is None else {"value": e.value}


_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_ONE_US = timedelta(microseconds=1)


def alert_event_records(alert: Alert, audit: list[tuple]) -> list[AlertEvent]:
    """The evidence log's record of each new audit entry (rows as ``audit_values``)."""
    return [
        AlertEvent(
            alert_id=str(alert.id),
            alert_kind=alert.rule_kind,
            change=action,
            at_us=(at - _EPOCH) // _ONE_US,
            actor=actor or None,
            comment=comment or None,
            device_id=alert.device_id,
        )
        for _id, _seq, at, actor, action, comment, _detail in audit
    ]


class AlertStore(Protocol):
    def record_alert(
        self, alert: Alert, site_id: str | None, at: datetime, webhooks: Sequence[WebhookJob] = ()
    ) -> None:
        """Upsert the alert's row and append the audit entries not stored yet, in ONE
        transaction, with ``webhooks`` put in the outbox when this version is new (it adds
        audit entries): a version recorded again (a replay after a crash) is not sent
        again, and one recorded is never lost before it is sent."""
        ...

    def list_alerts(self, query: AlertFilter) -> list[AlertRecord]:
        """Alerts matching the filter, newest (raised_at) first, without audit."""
        ...

    def get_alert(self, alert_id: int) -> AlertRecord | None:
        """One alert with its audit trail."""
        ...

    def max_alert_id(self) -> int:
        """The highest alert id stored (0 when none)."""
        ...

    def upsert_device(self, device: Device) -> None:
        """Store the assignment; when the site changes, the device's alerts not resolved
        yet move to the new site in the same transaction (the service records the move in
        each alert's trail)."""
        ...

    def get_device(self, device_id: str) -> Device | None: ...

    def list_devices(self) -> list[Device]: ...

    def save_profile(self, profile_id: str, definition: dict[str, Any]) -> None: ...

    def list_profiles(self) -> dict[str, dict[str, Any]]:
        """The custom profiles' definitions by id."""
        ...

    def save_engine_snapshot(self, snapshot: dict[str, Any], taken_at: datetime) -> None: ...

    def load_engine_snapshot(self) -> tuple[dict[str, Any], datetime] | None: ...

    def device_readings(self, device_id: str, start: datetime, end: datetime) -> list[Reading]:
        """One device's readings with start ≤ ts ≤ end, in ts order (the engine's History)."""
        ...

    def readings_received_since(
        self, since: datetime, min_ts: datetime, limit: int = 100_000
    ) -> list[tuple[Reading, datetime]]:
        """Readings stored after ``since`` (received_at > since) with ts ≥ ``min_ts``, with
        their received_at, in received_at order. ``min_ts`` lets TimescaleDB skip chunks."""
        ...

    def record_webhook_delivery(self, delivery: WebhookDelivery) -> None: ...

    def claim_webhooks(
        self, urls: Sequence[str], now: datetime, owner: str, lease_until: datetime, limit: int
    ) -> list[PendingWebhook]:
        """Outbox rows for ``urls`` due by ``now`` and claimed by nobody (or whose claim has
        lapsed), oldest due first, now claimed by ``owner`` until ``lease_until``. Two
        senders never get the same row (PostgreSQL: FOR UPDATE SKIP LOCKED)."""
        ...

    def finish_webhook(
        self, job: PendingWebhook, owner: str, delivery: WebhookDelivery, retry_at: datetime | None
    ) -> None:
        """Record the attempt and, in the same transaction, remove the row (delivered or
        given up: ``retry_at`` None) or release it for attempt + 1 at ``retry_at``. A row
        whose claim ``owner`` lost meanwhile is left to its new owner."""
        ...

    def release_webhooks(self, owner: str) -> int:
        """Drop ``owner``'s claims (a clean stop): the rows are due again as they were."""
        ...

    def next_webhook_due(self, urls: Sequence[str]) -> datetime | None:
        """When the next row for ``urls`` can be claimed (its due time, or its claim's end)."""
        ...

    def pending_webhooks(self, event_id: str | None = None, limit: int = 100) -> list[PendingWebhook]:
        """Outbox rows, oldest due first."""
        ...

    def webhook_deliveries(self, event_id: str | None = None, limit: int = 100) -> list[WebhookDelivery]:
        """Newest first."""
        ...


__all__ = [
    "ACTIVE",
    "ALERT_STATES",
    "AlertFilter",
    "AlertRecord",
    "AlertStore",
    "AuditRecord",
    "Device",
    "PendingWebhook",
    "WebhookDelivery",
    "WebhookJob",
    "alert_values",
    "audit_values",
]
