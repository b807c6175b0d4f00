"""SQLite implementation of ``AlertStore``, mixed into SqliteStore (its one connection and
lock; times as integer microseconds, JSON as text)."""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from collections.abc import Callable, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar

from telemetry.alerts.lifecycle import Alert
from telemetry.evidence.log import EvidenceLog
from telemetry.readings import Reading
from telemetry.storage.alerts import (
    ACTIVE,
    ALERT_COLUMN_NAMES,
    ALERT_COLUMNS,
    STICKY_COLUMNS,
    AlertFilter,
    AlertRecord,
    AuditRecord,
    Device,
    PendingWebhook,
    WebhookDelivery,
    WebhookJob,
    alert_event_records,
    alert_values,
    audit_values,
)
from telemetry.storage.base import StorageUnavailable

T = TypeVar("T")

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_TIME_COLUMNS = (
    "start",
    "raised_at",
    "cleared_at",
    "peak_at",
    "acknowledged_at",
    "resolved_at",
    "updated_at",
)

_UPSERT_ALERT = (
    f"INSERT INTO alerts ({ALERT_COLUMNS}) VALUES ({', '.join(':' + c for c in ALERT_COLUMN_NAMES)})"
    " ON CONFLICT (alert_id) DO UPDATE SET "
    + ", ".join(
        f"{c} = COALESCE(excluded.{c}, alerts.{c})" if c in STICKY_COLUMNS else f"{c} = excluded.{c}"
        for c in ALERT_COLUMN_NAMES
        if c != "alert_id"
    )
)
_INSERT_AUDIT = (
    "INSERT INTO alert_audit (alert_id, seq, at, actor, action, comment, detail, evidence_leaf)"
    " VALUES (?, ?, ?, ?, ?, ?, ?, ?)"
)
_READING = "device_id, ts, temp_c, rh, battery_v, door_open, seq"
_OUTBOX = "id, url, event_id, body, attempt, due_at"


def _us(t: datetime) -> int:
    d = t - _EPOCH
    return (d.days * 86_400 + d.seconds) * 1_000_000 + d.microseconds


def _dt(us: int | None) -> datetime | None:
    return None if us is None else _EPOCH + timedelta(microseconds=us)


def _now_us() -> int:
    return time.time_ns() // 1000


def _reading(row: Sequence[Any]) -> Reading:
    d, ts, t, rh, b, door, s = row
    return Reading(d, _EPOCH + timedelta(microseconds=ts), t, rh, b, None if door is None else bool(door), s)


def _pending(row: Sequence[Any]) -> PendingWebhook:
    i, url, event_id, body, attempt, due = row
    return PendingWebhook(i, url, event_id, bytes(body), attempt, _EPOCH + timedelta(microseconds=due))


def _record(row: Sequence[Any], audit: tuple[AuditRecord, ...] = ()) -> AlertRecord:
    d = dict(zip(ALERT_COLUMN_NAMES, row, strict=True))
    for k in _TIME_COLUMNS:
        d[k] = _dt(d[k])
    d["found_late"] = bool(d["found_late"])
    return AlertRecord(**d, audit=audit)


class SqliteAlertStore:
    # Provided by SqliteStore: its lock and connection, and the log that alert_event
    # leaves are appended to in the alert's own transaction.
    _lock: threading.Lock
    _evidence: EvidenceLog

    def _connection(self) -> sqlite3.Connection:  # pragma: no cover
        raise NotImplementedError

    def _alert_read(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        with self._lock:
            try:
                return fn(self._connection())
            except sqlite3.OperationalError as exc:
                raise StorageUnavailable(f"sqlite query failed: {exc}") from exc

    def _alert_tx(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        with self._lock:
            conn = self._connection()
            try:
                conn.execute("BEGIN IMMEDIATE")
                try:
                    out = fn(conn)
                    conn.execute("COMMIT")
                    return out
                except BaseException:
                    if conn.in_transaction:
                        conn.execute("ROLLBACK")
                    raise
            except sqlite3.OperationalError as exc:
                raise StorageUnavailable(f"sqlite write failed: {exc}") from exc

    def record_alert(
        self, alert: Alert, site_id: str | None, at: datetime, webhooks: Sequence[WebhookJob] = ()
    ) -> None:
        values = alert_values(alert, site_id, at)
        for k in _TIME_COLUMNS:
            if values[k] is not None:
                values[k] = _us(values[k])
        values["found_late"] = int(values["found_late"])
        audit = audit_values(alert)

        def write(conn: sqlite3.Connection) -> None:
            conn.execute(_UPSERT_ALERT, values)
            # The trail only grows: the entries past the stored ones are new, and each
            # gets its alert_event leaf in this same transaction.
            first = self._evidence.reserve(conn)
            have = conn.execute(
                "SELECT coalesce(max(seq), -1) FROM alert_audit WHERE alert_id = ?", (alert.id,)
            ).fetchone()[0]
            new = [a for a in audit if a[1] > have]
            if not new:
                return
            conn.executemany(
                _INSERT_AUDIT,
                [
                    (a, s, _us(t), actor, action, c, None if d is None else json.dumps(d), first + k)
                    for k, (a, s, t, actor, action, c, d) in enumerate(new)
                ],
            )
            if self._evidence.append(conn, alert_event_records(alert, new)) != [
                first + k for k in range(len(new))
            ]:
                raise RuntimeError("evidence leaves out of step with the alert audit entries")
            # A new version: its deliveries go into the outbox with it, or neither does.
            conn.executemany(
                "INSERT INTO webhook_outbox (url, event_id, body, attempt, due_at, created_at)"
                " VALUES (?, ?, ?, 1, ?, ?) ON CONFLICT (event_id, url) DO NOTHING",
                [(w.url, w.event_id, w.body, _us(w.due_at), _now_us()) for w in webhooks],
            )

        self._alert_tx(write)

    def list_alerts(self, query: AlertFilter) -> list[AlertRecord]:
        where: list[str] = []
        params: dict[str, Any] = {"limit": query.limit}
        if query.state == ACTIVE:
            where.append("state <> 'resolved'")
        elif query.state is not None:
            where.append("state = :state")
            params["state"] = query.state
        for col, value in (
            ("device_id", query.device_id),
            ("site_id", query.site_id),
            ("severity", query.severity),
        ):
            if value is not None:
                where.append(f"{col} = :{col}")
                params[col] = value
        if query.since is not None:
            where.append("raised_at >= :since")
            params["since"] = _us(query.since)
        sql = f"SELECT {ALERT_COLUMNS} FROM alerts"
        if where:
            sql += " WHERE " + " AND ".join(where)
        sql += " ORDER BY raised_at DESC, alert_id DESC LIMIT :limit"
        return [_record(r) for r in self._alert_read(lambda c: c.execute(sql, params).fetchall())]

    def get_alert(self, alert_id: int) -> AlertRecord | None:
        def read(conn: sqlite3.Connection) -> AlertRecord | None:
            row = conn.execute(
                f"SELECT {ALERT_COLUMNS} FROM alerts WHERE alert_id = ?", (alert_id,)
            ).fetchone()
            if row is None:
                return None
            audit = conn.execute(
                "SELECT alert_id, seq, at, actor, action, comment, detail, evidence_leaf FROM alert_audit"
                " WHERE alert_id = ? ORDER BY seq",
                (alert_id,),
            ).fetchall()
            trail = tuple(
                AuditRecord(
                    a,
                    s,
                    _EPOCH + timedelta(microseconds=at),
                    ac,
                    act,
                    c,
                    None if d is None else json.loads(d),
                    ev,
                )
                for a, s, at, ac, act, c, d, ev in audit
            )
            return _record(row, trail)

        return self._alert_read(read)

    def max_alert_id(self) -> int:
        row = self._alert_read(
            lambda c: c.execute("SELECT coalesce(max(alert_id), 0) FROM alerts").fetchone()
        )
        return int(row[0])

    def upsert_device(self, device: Device) -> None:
        def write(c: sqlite3.Connection) -> None:
            now = _now_us()
            c.execute(
                "INSERT INTO devices (device_id, site_id, profile_id, name, updated_at)"
                " VALUES (?, ?, ?, ?, ?)"
                " ON CONFLICT (device_id) DO UPDATE SET site_id = excluded.site_id,"
                " profile_id = excluded.profile_id, name = excluded.name, updated_at = excluded.updated_at",
                (device.device_id, device.site_id, device.profile_id, device.name, now),
            )
            # Its alerts still being handled go with it; resolved ones stay where they happened.
            c.execute(
                "UPDATE alerts SET site_id = ?, updated_at = ?"
                " WHERE device_id = ? AND state <> 'resolved' AND site_id IS NOT ?",
                (device.site_id, now, device.device_id, device.site_id),
            )

        self._alert_tx(write)

    def get_device(self, device_id: str) -> Device | None:
        row = self._alert_read(
            lambda c: c.execute(
                "SELECT device_id, site_id, profile_id, name FROM devices WHERE device_id = ?", (device_id,)
            ).fetchone()
        )
        return None if row is None else Device(*row)

    def list_devices(self) -> list[Device]:
        rows = self._alert_read(
            lambda c: c.execute(
                "SELECT device_id, site_id, profile_id, name FROM devices ORDER BY device_id"
            ).fetchall()
        )
        return [Device(*r) for r in rows]

    def save_profile(self, profile_id: str, definition: dict[str, Any]) -> None:
        self._alert_tx(
            lambda c: c.execute(
                "INSERT INTO alert_profiles (profile_id, definition, updated_at) VALUES (?, ?, ?)"
                " ON CONFLICT (profile_id) DO UPDATE SET definition = excluded.definition,"
                " updated_at = excluded.updated_at",
                (profile_id, json.dumps(definition), _now_us()),
            )
        )

    def list_profiles(self) -> dict[str, dict[str, Any]]:
        rows = self._alert_read(
            lambda c: c.execute(
                "SELECT profile_id, definition FROM alert_profiles ORDER BY profile_id"
            ).fetchall()
        )
        return {p: json.loads(d) for p, d in rows}

    def save_engine_snapshot(self, snapshot: dict[str, Any], taken_at: datetime) -> None:
        self._alert_tx(
            lambda c: c.execute(
                "INSERT INTO alert_engine_state (id, snapshot, taken_at) VALUES (1, ?, ?)"
                " ON CONFLICT (id) DO UPDATE SET snapshot = excluded.snapshot, taken_at = excluded.taken_at",
                (json.dumps(snapshot), _us(taken_at)),
            )
        )

    def load_engine_snapshot(self) -> tuple[dict[str, Any], datetime] | None:
        row = self._alert_read(
            lambda c: c.execute("SELECT snapshot, taken_at FROM alert_engine_state WHERE id = 1").fetchone()
        )
        return None if row is None else (json.loads(row[0]), _EPOCH + timedelta(microseconds=row[1]))

    def device_readings(self, device_id: str, start: datetime, end: datetime) -> list[Reading]:
        rows = self._alert_read(
            lambda c: c.execute(
                f"SELECT {_READING} FROM readings WHERE device_id = ? AND ts >= ? AND ts <= ? ORDER BY ts",
                (device_id, _us(start), _us(end)),
            ).fetchall()
        )
        return [_reading(r) for r in rows]

    def readings_received_since(
        self, since: datetime, min_ts: datetime, limit: int = 100_000
    ) -> list[tuple[Reading, datetime]]:
        rows = self._alert_read(
            lambda c: c.execute(
                f"SELECT {_READING}, received_at FROM readings WHERE received_at > ? AND ts >= ?"
                " ORDER BY received_at, device_id, ts LIMIT ?",
                (_us(since), _us(min_ts), limit),
            ).fetchall()
        )
        return [(_reading(r[:7]), _EPOCH + timedelta(microseconds=r[7])) for r in rows]

    def record_webhook_delivery(self, delivery: WebhookDelivery) -> None:
        d = delivery
        self._alert_tx(
            lambda c: c.execute(
                "INSERT INTO webhook_deliveries (url, event_id, attempt, status, error, at)"
                " VALUES (?, ?, ?, ?, ?, ?)",
                (d.url, d.event_id, d.attempt, d.status, d.error, _us(d.at)),
            )
        )

    def claim_webhooks(
        self, urls: Sequence[str], now: datetime, owner: str, lease_until: datetime, limit: int
    ) -> list[PendingWebhook]:
        if not urls:
            return []

        # One writer at a time (BEGIN IMMEDIATE): the select and the claim are one step.
        def claim(c: sqlite3.Connection) -> list[PendingWebhook]:
            t = _us(now)
            rows = c.execute(
                f"SELECT {_OUTBOX} FROM webhook_outbox WHERE url IN ({', '.join('?' * len(urls))})"
                " AND due_at <= ? AND (lease_until IS NULL OR lease_until <= ?)"
                " ORDER BY due_at, id LIMIT ?",
                (*urls, t, t, limit),
            ).fetchall()
            c.executemany(
                "UPDATE webhook_outbox SET lease_owner = ?, lease_until = ? WHERE id = ?",
                [(owner, _us(lease_until), r[0]) for r in rows],
            )
            return [_pending(r) for r in rows]

        return self._alert_tx(claim)

    def finish_webhook(
        self, job: PendingWebhook, owner: str, delivery: WebhookDelivery, retry_at: datetime | None
    ) -> None:
        d = delivery

        def finish(c: sqlite3.Connection) -> None:
            c.execute(
                "INSERT INTO webhook_deliveries (url, event_id, attempt, status, error, at)"
                " VALUES (?, ?, ?, ?, ?, ?)",
                (d.url, d.event_id, d.attempt, d.status, d.error, _us(d.at)),
            )
            if retry_at is None:
                c.execute("DELETE FROM webhook_outbox WHERE id = ? AND lease_owner = ?", (job.id, owner))
            else:
                c.execute(
                    "UPDATE webhook_outbox SET attempt = ?, due_at = ?,"
                    " lease_owner = NULL, lease_until = NULL WHERE id = ? AND lease_owner = ?",
                    (job.attempt + 1, _us(retry_at), job.id, owner),
                )

        self._alert_tx(finish)

    def release_webhooks(self, owner: str) -> int:
        def release(c: sqlite3.Connection) -> int:
            sql = "UPDATE webhook_outbox SET lease_owner = NULL, lease_until = NULL WHERE lease_owner = ?"
            return c.execute(sql, (owner,)).rowcount

        return self._alert_tx(release)

    def next_webhook_due(self, urls: Sequence[str]) -> datetime | None:
        if not urls:
            return None
        row = self._alert_read(
            lambda c: c.execute(
                "SELECT min(max(due_at, coalesce(lease_until, due_at))) FROM webhook_outbox"
                f" WHERE url IN ({', '.join('?' * len(urls))})",
                tuple(urls),
            ).fetchone()
        )
        return _dt(row[0])

    def pending_webhooks(self, event_id: str | None = None, limit: int = 100) -> list[PendingWebhook]:
        sql = f"SELECT {_OUTBOX} FROM webhook_outbox"
        params: tuple[Any, ...] = (limit,)
        if event_id is not None:
            sql += " WHERE event_id = ?"
            params = (event_id, limit)
        sql += " ORDER BY due_at, id LIMIT ?"
        return [_pending(r) for r in self._alert_read(lambda c: c.execute(sql, params).fetchall())]

    def webhook_deliveries(self, event_id: str | None = None, limit: int = 100) -> list[WebhookDelivery]:
        sql = "SELECT url, event_id, attempt, status, error, at FROM webhook_deliveries"
        params: tuple[Any, ...] = (limit,)
        if event_id is not None:
            sql += " WHERE event_id = ?"
            params = (event_id, limit)
        sql += " ORDER BY at DESC, id DESC LIMIT ?"
        rows = self._alert_read(lambda c: c.execute(sql, params).fetchall())
        return [
            WebhookDelivery(u, e, a, s, err, _EPOCH + timedelta(microseconds=at))
            for u, e, a, s, err, at in rows
        ]
