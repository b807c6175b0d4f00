"""PostgreSQL (and TimescaleDB) implementation of ``AlertStore``, mixed into PostgresStore.

Everything goes through the store's query pool (autocommit connections; a transaction
where one is needed): alert writes are few, and the ingest writer connection stays the
readings' own.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from typing import Any, TypeVar

import psycopg
from psycopg.types.json import Jsonb
from psycopg_pool import ConnectionPool

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

_UPSERT_ALERT = (
    f"INSERT INTO alerts ({ALERT_COLUMNS}) VALUES ({', '.join('%(' + c + ')s' for c in ALERT_COLUMN_NAMES)})"
    " ON CONFLICT (alert_id) DO UPDATE SET "
    + ", ".join(
        f"{c} = COALESCE(EXCLUDED.{c}, alerts.{c})" if c in STICKY_COLUMNS else f"{c} = EXCLUDED.{c}"
        for c in ALERT_COLUMN_NAMES
        if c != "alert_id"
    )
)
_INSERT_AUDIT = (
    "INSERT INTO alert_audit (alert_id, seq, at, actor, action, comment, detail, evidence_leaf)"
    " VALUES (%s, %s, %s, %s, %s, %s, %s, %s)"
)


_OUTBOX = "id, url, event_id, body, attempt, due_at"
_OUTBOX_O = "o.id, o.url, o.event_id, o.body, o.attempt, o.due_at"


def _pending(row: Sequence[Any]) -> PendingWebhook:
    i, url, event_id, body, attempt, due = row
    return PendingWebhook(i, url, event_id, bytes(body), attempt, due.astimezone(UTC))


def _utc(t: datetime | None) -> datetime | None:
    return None if t is None else t.astimezone(UTC)


def _record(row: Sequence[Any], audit: tuple[AuditRecord, ...] = ()) -> AlertRecord:
    d = dict(zip(ALERT_COLUMN_NAMES, row, strict=True))
    for k in ("start", "raised_at", "cleared_at", "peak_at", "acknowledged_at", "resolved_at", "updated_at"):
        d[k] = _utc(d[k])
    return AlertRecord(**d, audit=audit)


class PostgresAlertStore:
    # Provided by PostgresStore: the query pool, and the log that alert_event leaves are
    # appended to in the alert's own transaction.
    _pool: ConnectionPool | None
    _evidence: EvidenceLog

    def _alert_tx(self, fn: Callable[[psycopg.Connection], T]) -> T:
        if self._pool is None:
            raise RuntimeError("PostgresStore is not open")
        try:
            with self._pool.connection() as conn, conn.transaction():
                return fn(conn)
        except (psycopg.OperationalError, psycopg.InterfaceError) as exc:
            raise StorageUnavailable(f"alert storage failed: {exc}") from exc

    def record_alert(
        self, alert: Alert, site_id: str | None, at: datetime, webhooks: Sequence[WebhookJob] = ()
    ) -> None:
        values = alert_values(alert, site_id, at)
        audit = audit_values(alert)

        def write(conn: psycopg.Connection) -> None:
            with conn.cursor() as cur:
                cur.execute(_UPSERT_ALERT, values)
                # The trail only grows: the entries past the stored ones are new, and each
                # gets its alert_event leaf in this same transaction (lock taken first).
                first = self._evidence.reserve(conn)
                cur.execute("SELECT coalesce(max(seq), -1) FROM alert_audit WHERE alert_id = %s", (alert.id,))
                have = cur.fetchone()[0]  # type: ignore[index]
                new = [a for a in audit if a[1] > have]
                if not new:
                    return
                cur.executemany(
                    _INSERT_AUDIT,
                    [(*a[:6], None if a[6] is None else Jsonb(a[6]), first + k) for k, a in enumerate(new)],
                )
                if self._evidence.append(conn, alert_event_records(alert, new)) != [
                    first + k for k in range(len(new))
                ]:
                    raise RuntimeError("evidence leaves out of step with the alert audit entries")
                # A new version: its deliveries go into the outbox with it, or neither does.
                cur.executemany(
                    "INSERT INTO webhook_outbox (url, event_id, body, attempt, due_at)"
                    " VALUES (%s, %s, %s, 1, %s) ON CONFLICT (event_id, url) DO NOTHING",
                    [(w.url, w.event_id, w.body, w.due_at) for w in webhooks],
                )

        self._alert_tx(write)

    def list_alerts(self, query: AlertFilter) -> list[AlertRecord]:
        where: list[str] = []
        params: dict[str, Any] = {"limit": query.limit}
        if query.state == ACTIVE:
            where.append("state <> 'resolved'")
        elif query.state is not None:
            where.append("state = %(state)s")
            params["state"] = query.state
        for col, value in (
            ("device_id", query.device_id),
            ("site_id", query.site_id),
            ("severity", query.severity),
        ):
            if value is not None:
                where.append(f"{col} = %({col})s")
                params[col] = value
        if query.since is not None:
            where.append("raised_at >= %(since)s")
            params["since"] = query.since
        sql = f"SELECT {ALERT_COLUMNS} FROM alerts"
        if where:
            sql += " WHERE " + " AND ".join(where)
        sql += " ORDER BY raised_at DESC, alert_id DESC LIMIT %(limit)s"
        return [_record(r) for r in self._alert_tx(lambda c: c.execute(sql, params).fetchall())]

    def get_alert(self, alert_id: int) -> AlertRecord | None:
        def read(conn: psycopg.Connection) -> AlertRecord | None:
            row = conn.execute(
                f"SELECT {ALERT_COLUMNS} FROM alerts WHERE alert_id = %s", (alert_id,)
            ).fetchone()
            if row is None:
                return None
            audit = conn.execute(
                "SELECT alert_id, seq, at, actor, action, comment, detail, evidence_leaf FROM alert_audit"
                " WHERE alert_id = %s ORDER BY seq",
                (alert_id,),
            ).fetchall()
            trail = tuple(
                AuditRecord(a, s, at.astimezone(UTC), ac, act, c, d, ev)
                for a, s, at, ac, act, c, d, ev in audit
            )
            return _record(row, trail)

        return self._alert_tx(read)

    def max_alert_id(self) -> int:
        row = self._alert_tx(lambda c: c.execute("SELECT coalesce(max(alert_id), 0) FROM alerts").fetchone())
        return int(row[0]) if row else 0

    def upsert_device(self, device: Device) -> None:
        def write(c: psycopg.Connection) -> None:
            c.execute(
                "INSERT INTO devices (device_id, site_id, profile_id, name) VALUES (%s, %s, %s, %s)"
                " ON CONFLICT (device_id) DO UPDATE SET site_id = EXCLUDED.site_id,"
                " profile_id = EXCLUDED.profile_id, name = EXCLUDED.name, updated_at = now()",
                (device.device_id, device.site_id, device.profile_id, device.name),
            )
            # Its alerts still being handled go with it; resolved ones stay where they happened.
            c.execute(
                "UPDATE alerts SET site_id = %s, updated_at = now()"
                " WHERE device_id = %s AND state <> 'resolved' AND site_id IS DISTINCT FROM %s",
                (device.site_id, device.device_id, device.site_id),
            )

        self._alert_tx(write)

    def get_device(self, device_id: str) -> Device | None:
        row = self._alert_tx(
            lambda c: c.execute(
                "SELECT device_id, site_id, profile_id, name FROM devices WHERE device_id = %s", (device_id,)
            ).fetchone()
        )
        return None if row is None else Device(*row)

    def list_devices(self) -> list[Device]:
        rows = self._alert_tx(
            lambda c: c.execute(
                "SELECT device_id, site_id, profile_id, name FROM devices ORDER BY device_id"
            ).fetchall()
        )
        return [Device(*r) for r in rows]

    def save_profile(self, profile_id: str, definition: dict[str, Any]) -> None:
        self._alert_tx(
            lambda c: c.execute(
                "INSERT INTO alert_profiles (profile_id, definition) VALUES (%s, %s)"
                " ON CONFLICT (profile_id) DO UPDATE SET definition = EXCLUDED.definition,"
                " updated_at = now()",
                (profile_id, Jsonb(definition)),
            )
        )

    def list_profiles(self) -> dict[str, dict[str, Any]]:
        rows = self._alert_tx(
            lambda c: c.execute(
                "SELECT profile_id, definition FROM alert_profiles ORDER BY profile_id"
            ).fetchall()
        )
        return {p: d for p, d in rows}

    def save_engine_snapshot(self, snapshot: dict[str, Any], taken_at: datetime) -> None:
        self._alert_tx(
            lambda c: c.execute(
                "INSERT INTO alert_engine_state (id, snapshot, taken_at) VALUES (1, %s, %s)"
                " ON CONFLICT (id) DO UPDATE SET snapshot = EXCLUDED.snapshot, taken_at = EXCLUDED.taken_at",
                (Jsonb(snapshot), taken_at),
            )
        )

    def load_engine_snapshot(self) -> tuple[dict[str, Any], datetime] | None:
        row = self._alert_tx(
            lambda c: c.execute("SELECT snapshot, taken_at FROM alert_engine_state WHERE id = 1").fetchone()
        )
        return None if row is None else (row[0], row[1].astimezone(UTC))

    def device_readings(self, device_id: str, start: datetime, end: datetime) -> list[Reading]:
        rows = self._alert_tx(
            lambda c: c.execute(
                "SELECT device_id, ts, temp_c, rh, battery_v, door_open, seq FROM readings"
                " WHERE device_id = %s AND ts >= %s AND ts <= %s ORDER BY ts",
                (device_id, start, end),
            ).fetchall()
        )
        return [Reading(d, ts.astimezone(UTC), t, rh, b, door, s) for d, ts, t, rh, b, door, s in rows]

    def readings_received_since(
        self, since: datetime, min_ts: datetime, limit: int = 100_000
    ) -> list[tuple[Reading, datetime]]:
        rows = self._alert_tx(
            lambda c: c.execute(
                "SELECT device_id, ts, temp_c, rh, battery_v, door_open, seq, received_at FROM readings"
                " WHERE received_at > %s AND ts >= %s ORDER BY received_at, device_id, ts LIMIT %s",
                (since, min_ts, limit),
            ).fetchall()
        )
        return [
            (Reading(d, ts.astimezone(UTC), t, rh, b, door, s), rx.astimezone(UTC))
            for d, ts, t, rh, b, door, s, rx in rows
        ]

    def record_webhook_delivery(self, delivery: WebhookDelivery) -> None:
        d = delivery
        self._alert_tx(
            lambda c: c.execute(
                "INSERT INTO webhook_deliveries (url, event_id, attempt, status, error, at)"
                " VALUES (%s, %s, %s, %s, %s, %s)",
                (d.url, d.event_id, d.attempt, d.status, d.error, d.at),
            )
        )

    def claim_webhooks(
        self, urls: Sequence[str], now: datetime, owner: str, lease_until: datetime, limit: int
    ) -> list[PendingWebhook]:
        if not urls:
            return []
        # SKIP LOCKED: a row another sender is claiming right now is passed over, not waited
        # for; the lease then keeps it out of reach until its attempt is done or lapsed.
        rows = self._alert_tx(
            lambda c: c.execute(
                "UPDATE webhook_outbox o SET lease_owner = %(owner)s, lease_until = %(until)s"
                " FROM (SELECT id FROM webhook_outbox WHERE url = ANY(%(urls)s) AND due_at <= %(now)s"
                " AND (lease_until IS NULL OR lease_until <= %(now)s)"
                " ORDER BY due_at, id LIMIT %(limit)s FOR UPDATE SKIP LOCKED) c"
                f" WHERE o.id = c.id RETURNING {_OUTBOX_O}",
                {"owner": owner, "until": lease_until, "urls": list(urls), "now": now, "limit": limit},
            ).fetchall()
        )
        return sorted((_pending(r) for r in rows), key=lambda p: (p.due_at, p.id))

    def finish_webhook(
        self, job: PendingWebhook, owner: str, delivery: WebhookDelivery, retry_at: datetime | None
    ) -> None:
        d = delivery

        def finish(c: psycopg.Connection) -> None:
            c.execute(
                "INSERT INTO webhook_deliveries (url, event_id, attempt, status, error, at)"
                " VALUES (%s, %s, %s, %s, %s, %s)",
                (d.url, d.event_id, d.attempt, d.status, d.error, d.at),
            )
            if retry_at is None:
                c.execute("DELETE FROM webhook_outbox WHERE id = %s AND lease_owner = %s", (job.id, owner))
            else:
                c.execute(
                    "UPDATE webhook_outbox SET attempt = %s, due_at = %s,"
                    " lease_owner = NULL, lease_until = NULL WHERE id = %s AND lease_owner = %s",
                    (job.attempt + 1, retry_at, job.id, owner),
                )

        self._alert_tx(finish)

    def release_webhooks(self, owner: str) -> int:
        def release(c: psycopg.Connection) -> int:
            sql = "UPDATE webhook_outbox SET lease_owner = NULL, lease_until = NULL WHERE lease_owner = %s"
            return c.execute(sql, (owner,)).rowcount

        return self._alert_tx(release)

    def next_webhook_due(self, urls: Sequence[str]) -> datetime | None:
        if not urls:
            return None
        row = self._alert_tx(
            lambda c: c.execute(
                "SELECT min(greatest(due_at, lease_until)) FROM webhook_outbox WHERE url = ANY(%s)",
                (list(urls),),
            ).fetchone()
        )
        return None if row is None else _utc(row[0])

    def pending_webhooks(self, event_id: str | None = None, limit: int = 100) -> list[PendingWebhook]:
        sql = f"SELECT {_OUTBOX} FROM webhook_outbox"
        params: tuple[Any, ...] = (limit,)
        if event_id is not None:
            sql += " WHERE event_id = %s"
            params = (event_id, limit)
        sql += " ORDER BY due_at, id LIMIT %s"
        return [_pending(r) for r in self._alert_tx(lambda c: c.execute(sql, params).fetchall())]

    def webhook_deliveries(self, event_id: str | None = None, limit: int = 100) -> list[WebhookDelivery]:
        sql = "SELECT url, event_id, attempt, status, error, at FROM webhook_deliveries"
        params: tuple[Any, ...] = (limit,)
        if event_id is not None:
            sql += " WHERE event_id = %s"
            params = (event_id, limit)
        sql += " ORDER BY at DESC, id DESC LIMIT %s"
        rows = self._alert_tx(lambda c: c.execute(sql, params).fetchall())
        return [WebhookDelivery(u, e, a, s, err, at.astimezone(UTC)) for u, e, a, s, err, at in rows]
