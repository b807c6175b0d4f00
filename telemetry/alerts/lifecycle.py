"""The alert record and its lifecycle: open → acknowledged → resolved, with an audit trail.

An ``Alert`` is immutable: every change makes a new one with one more ``AuditEntry``. An
event can hand out the alert itself as its snapshot without copying, and a consumer
(MQTT publisher, webhook queue, store) never sees it change under it.

Two clocks meet here, and both are kept on purpose:
- event time (``start``, ``raised_at``, ``cleared_at``, ``peak_at``): when it happened,
  judged on the readings' own timestamps: what an inspector asks about;
- recorded time (each audit entry's ``at``): when the engine or a person acted on it. For
  an excursion found in a logger's late upload the two differ by hours, and the record
  has to show both.

ThingsBoard's two flags (active/cleared × acknowledged/unacknowledged) map onto this:
acknowledgement and resolution are recorded separately, so an alert that cleared by itself
overnight can still be acknowledged with a comment in the morning (HACCP wants the
corrective action recorded either way). ``status`` gives the single lifecycle state.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from enum import StrEnum
from typing import Any

from telemetry.alerts.rules import Severity

SYSTEM = "system"  # the `by` of what the engine did by itself


class LifecycleError(ValueError):
    """An acknowledge/resolve that the alert's state does not allow (or bad arguments)."""


class UnknownAlert(LifecycleError, KeyError):
    """No alert with that id (never raised, or resolved long enough ago to be dropped)."""

    def __str__(self) -> str:  # KeyError would repr() the message
        return str(self.args[0]) if self.args else ""


class AlertStatus(StrEnum):
    OPEN = "open"
    ACKNOWLEDGED = "acknowledged"
    RESOLVED = "resolved"


class Action(StrEnum):
    RAISED = "raised"
    PEAK = "peak"  # a worse value than any before in this excursion
    ACKNOWLEDGED = "acknowledged"
    RESOLVED = "resolved"
    SITE_CHANGED = "site_changed"  # its device was put on another site; detail {"from", "to"}


class EventKind(StrEnum):
    RAISED = "raised"
    UPDATED = "updated"
    ACKNOWLEDGED = "acknowledged"
    RESOLVED = "resolved"


@dataclass(frozen=True, slots=True)
class AuditEntry:
    at: datetime  # recorded time: when this change was made
    action: Action
    by: str  # SYSTEM or the user
    comment: str = ""
    value: float | None = None  # the new peak, for PEAK entries
    detail: dict[str, Any] | None = None  # what else the change says (SITE_CHANGED: from, to)

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {
            "at": self.at.isoformat(),
            "action": self.action.value,
            "by": self.by,
            "comment": self.comment,
            "value": self.value,
        }
        if self.detail is not None:  # absent rather than null: older consumers see no change
            d["detail"] = self.detail
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> AuditEntry:
        return cls(
            datetime.fromisoformat(d["at"]),
            Action(d["action"]),
            d["by"],
            d["comment"],
            d["value"],
            d.get("detail"),
        )


@dataclass(frozen=True, slots=True)
class Alert:
    id: int
    device_id: str
    profile_id: str
    rule_id: str
    rule_kind: str
    severity: Severity
    start: datetime  # event time the condition began
    raised_at: datetime  # event time it became an alert (start + delay, for duration rules)
    metric: str | None = None
    threshold: float | None = None
    peak: float | None = None  # the worst value of the excursion (None where it means nothing)
    peak_at: datetime | None = None
    found_late: bool = False  # raised from data that arrived late (backfill, out of order)
    acknowledged_at: datetime | None = None
    acknowledged_by: str | None = None
    ack_comment: str = ""
    cleared_at: datetime | None = None  # event time the clear condition held, or the manual resolution
    resolved_by: str | None = None  # SYSTEM when the clear condition resolved it
    resolution_comment: str = ""
    audit: tuple[AuditEntry, ...] = ()

    @property
    def status(self) -> AlertStatus:
        if self.cleared_at is not None:
            return AlertStatus.RESOLVED
        if self.acknowledged_at is not None:
            return AlertStatus.ACKNOWLEDGED
        return AlertStatus.OPEN

    @property
    def is_open(self) -> bool:
        """Not resolved yet (open or acknowledged)."""
        return self.cleared_at is None

    @property
    def duration(self) -> timedelta | None:
        """How long the excursion lasted (start → cleared); None while unresolved."""
        return None if self.cleared_at is None else self.cleared_at - self.start

    def duration_until(self, now: datetime) -> timedelta:
        return (self.cleared_at or now) - self.start

    def to_dict(self) -> dict[str, Any]:
        def iso(t: datetime | None) -> str | None:
            return None if t is None else t.isoformat()

        return {
            "id": self.id,
            "device_id": self.device_id,
            "profile_id": self.profile_id,
            "rule_id": self.rule_id,
            "rule_kind": self.rule_kind,
            "severity": self.severity.value,
            "status": self.status.value,
            "start": iso(self.start),
            "raised_at": iso(self.raised_at),
            "metric": self.metric,
            "threshold": self.threshold,
            "peak": self.peak,
            "peak_at": iso(self.peak_at),
            "found_late": self.found_late,
            "acknowledged_at": iso(self.acknowledged_at),
            "acknowledged_by": self.acknowledged_by,
            "ack_comment": self.ack_comment,
            "cleared_at": iso(self.cleared_at),
            "resolved_by": self.resolved_by,
            "resolution_comment": self.resolution_comment,
            "duration_s": None if self.duration is None else self.duration.total_seconds(),
            "audit": [a.to_dict() for a in self.audit],
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Alert:
        def dt(key: str) -> datetime | None:
            v = d.get(key)
            return None if v is None else datetime.fromisoformat(v)

        return cls(
            id=d["id"],
            device_id=d["device_id"],
            profile_id=d["profile_id"],
            rule_id=d["rule_id"],
            rule_kind=d["rule_kind"],
            severity=Severity(d["severity"]),
            start=datetime.fromisoformat(d["start"]),
            raised_at=datetime.fromisoformat(d["raised_at"]),
            metric=d["metric"],
            threshold=d["threshold"],
            peak=d["peak"],
            peak_at=dt("peak_at"),
            found_late=d["found_late"],
            acknowledged_at=dt("acknowledged_at"),
            acknowledged_by=d["acknowledged_by"],
            ack_comment=d["ack_comment"],
            cleared_at=dt("cleared_at"),
            resolved_by=d["resolved_by"],
            resolution_comment=d["resolution_comment"],
            audit=tuple(AuditEntry.from_dict(a) for a in d["audit"]),
        )


@dataclass(frozen=True, slots=True)
class AlertEvent:
    """One change of one alert, for the outputs (table, MQTT, webhooks, live feed)."""

    kind: EventKind
    alert: Alert  # the alert as it is after the change

    def to_dict(self) -> dict[str, Any]:
        return {"event": self.kind.value, "alert": self.alert.to_dict()}


# -- transitions: pure functions from one alert version to the next ------------------------


def with_peak(alert: Alert, value: float, at_event: datetime, recorded: datetime) -> Alert:
    return replace(
        alert,
        peak=value,
        peak_at=at_event,
        audit=(*alert.audit, AuditEntry(recorded, Action.PEAK, SYSTEM, value=value)),
    )


def _check_user(user: object) -> str:
    if not isinstance(user, str) or not user.strip():
        raise LifecycleError("a user is required")
    return user


def acknowledged(alert: Alert, user: str, comment: str, at: datetime) -> Alert:
    """Record who took notice. Allowed once, before or after resolution (see module doc)."""
    _check_user(user)
    if alert.acknowledged_at is not None:
        raise LifecycleError(
            f"alert {alert.id} was already acknowledged by {alert.acknowledged_by} at "
            f"{alert.acknowledged_at.isoformat()}"
        )
    return replace(
        alert,
        acknowledged_at=at,
        acknowledged_by=user,
        ack_comment=comment,
        audit=(*alert.audit, AuditEntry(at, Action.ACKNOWLEDGED, user, comment)),
    )


def resolved(alert: Alert, by: str, comment: str, at: datetime, cleared_at: datetime) -> Alert:
    """Close the alert. ``cleared_at`` is event time (the clear condition's moment, or the
    manual resolution); it is never before ``raised_at``."""
    if alert.cleared_at is not None:
        raise LifecycleError(
            f"alert {alert.id} is already resolved (by {alert.resolved_by} at {alert.cleared_at.isoformat()})"
        )
    return replace(
        alert,
        # A device clock a little ahead gives a raised_at in the server's future; a
        # person resolving "now" must not produce a negative duration.
        cleared_at=max(cleared_at, alert.raised_at),
        resolved_by=by,
        resolution_comment=comment,
        audit=(*alert.audit, AuditEntry(at, Action.RESOLVED, by, comment)),
    )


def site_changed(alert: Alert, by: str, site_from: str | None, site_to: str | None, at: datetime) -> Alert:
    """Record that the alert's device moved to another site (the alert goes with it). Only
    an alert not resolved yet moves: a resolved one stays where it happened."""
    _check_user(by)
    if not alert.is_open:
        raise LifecycleError(f"alert {alert.id} is resolved; it stays on its site")
    # The comment says it in words too, for the pages that show only the comment.
    text = f"{site_from or '-'} → {site_to or '-'}"
    entry = AuditEntry(at, Action.SITE_CHANGED, by, text, detail={"from": site_from, "to": site_to})
    return replace(alert, audit=(*alert.audit, entry))


def resolved_by_hand(alert: Alert, user: str, comment: str, at: datetime) -> Alert:
    _check_user(user)
    if not isinstance(comment, str) or not comment.strip():
        raise LifecycleError("resolving by hand needs a comment (what was done about it)")
    return resolved(alert, user, comment, at, at)
