"""PostgreSQL (and TimescaleDB) implementation of ``ShipmentStore``, mixed into
PostgresStore; everything goes through the store's query pool (``_alert_tx``)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from typing import Any

import psycopg
from psycopg import errors

from telemetry.evidence.log import EvidenceLog
from telemetry.shipments import Segment, Shipment, ShipmentConflict, ShipmentState
from telemetry.storage.alerts import ALERT_COLUMNS, AlertRecord, AuditRecord
from telemetry.storage.alerts_postgres import _record
from telemetry.storage.shipments import (
    SHIPMENT_COLUMNS,
    SHIPMENT_SELECT,
    closed_record,
    opened_record,
    profile_record,
)


def _utc(t: datetime | None) -> datetime | None:
    return None if t is None else t.astimezone(UTC)


def _write_children(conn: psycopg.Connection, s: Shipment) -> None:
    with conn.cursor() as cur:
        cur.execute("DELETE FROM shipment_segments WHERE shipment_id = %s", (s.id,))
        cur.execute("DELETE FROM shipment_streams WHERE shipment_id = %s", (s.id,))
        cur.executemany(
            "INSERT INTO shipment_segments (shipment_id, position, device_id, start_at, end_at, label)"
            " VALUES (%s, %s, %s, %s, %s, %s)",
            [(s.id, i, g.device_id, g.start, g.end, g.label) for i, g in enumerate(s.segments)],
        )
        cur.executemany(
            "INSERT INTO shipment_streams (shipment_id, position, stream_slug) VALUES (%s, %s, %s)",
            [(s.id, i, slug) for i, slug in enumerate(s.streams)],
        )


def _load(conn: psycopg.Connection, rows: Sequence[Sequence[Any]]) -> list[Shipment]:
    if not rows:
        return []
    ids = [r[0] for r in rows]
    segs: dict[str, list[Segment]] = {i: [] for i in ids}
    for sid, d, a, b, lab in conn.execute(
        "SELECT shipment_id, device_id, start_at, end_at, label FROM shipment_segments"
        " WHERE shipment_id = ANY(%s) ORDER BY shipment_id, position",
        (ids,),
    ):
        segs[sid].append(Segment(d, a, b, lab))
    streams: dict[str, list[str]] = {i: [] for i in ids}
    for sid, slug in conn.execute(
        "SELECT shipment_id, stream_slug FROM shipment_streams WHERE shipment_id = ANY(%s)"
        " ORDER BY shipment_id, position",
        (ids,),
    ):
        streams[sid].append(slug)
    return [
        Shipment(
            id=sid,
            product=product,
            batch=batch,
            origin_site=site,
            profile_id=profile,
            state=state,
            opened_at=opened,
            closed_at=closed,
            segments=tuple(segs[sid]),
            streams=tuple(streams[sid]),
            version=version,
            created_at=_utc(created),
            updated_at=_utc(updated),
            opened_leaf=opened_leaf,
            closed_leaf=closed_leaf,
        )
        for (
            sid,
            product,
            batch,
            site,
            profile,
            state,
            opened,
            closed,
            version,
            created,
            updated,
            opened_leaf,
            closed_leaf,
        ) in rows
    ]


class PostgresShipmentStore:
    # Provided by PostgresStore through PostgresAlertStore (the query pool).
    _alert_tx: Callable[[Callable[[psycopg.Connection], Any]], Any]
    # Provided by PostgresStore: its shipment_opened / shipment_closed leaves are appended
    # in the shipment's own transaction, so a shipment never exists without its leaf.
    _evidence: EvidenceLog

    def create_shipment(self, shipment: Shipment) -> Shipment:
        s = shipment
        opened = opened_record(s, profile_record(self, s.profile_id))

        def write(conn: psycopg.Connection) -> list[Shipment]:
            try:
                with conn.transaction():  # a savepoint: the duplicate is reported, not a broken tx
                    conn.execute(
                        f"INSERT INTO shipments ({SHIPMENT_COLUMNS})"
                        " VALUES (%s, %s, %s, %s, %s, %s, %s, %s, 1, now(), now())",
                        (
                            s.id,
                            s.product,
                            s.batch,
                            s.origin_site,
                            s.profile_id,
                            s.state.value,
                            s.opened_at,
                            s.closed_at,
                        ),
                    )
            except errors.UniqueViolation:
                raise ShipmentConflict(f"shipment id {s.id!r} is taken") from None
            _write_children(conn, s)
            (leaf,) = self._evidence.append(conn, [opened])
            conn.execute("UPDATE shipments SET opened_leaf = %s WHERE id = %s", (leaf, s.id))
            rows = conn.execute(f"SELECT {SHIPMENT_SELECT} FROM shipments WHERE id = %s", (s.id,)).fetchall()
            return _load(conn, rows)

        return self._alert_tx(write)[0]

    def get_shipment(self, shipment_id: str) -> Shipment | None:
        def read(conn: psycopg.Connection) -> list[Shipment]:
            rows = conn.execute(
                f"SELECT {SHIPMENT_SELECT} FROM shipments WHERE id = %s", (shipment_id,)
            ).fetchall()
            return _load(conn, rows)

        found = self._alert_tx(read)
        return found[0] if found else None

    def list_shipments(
        self, *, state: str | None = None, origin_site: str | None = None, limit: int = 100
    ) -> list[Shipment]:
        where: list[str] = []
        params: list[str | int] = []
        if state is not None:
            where.append("state = %s")
            params.append(state)
        if origin_site is not None:
            where.append("origin_site = %s")
            params.append(origin_site)
        sql = f"SELECT {SHIPMENT_SELECT} FROM shipments"
        if where:
            sql += " WHERE " + " AND ".join(where)
        sql += " ORDER BY opened_at DESC, id LIMIT %s"
        params.append(limit)
        return self._alert_tx(lambda c: _load(c, c.execute(sql, params).fetchall()))

    def save_shipment(self, shipment: Shipment) -> Shipment:
        s = shipment
        # Closing (the only way to the closed state) appends the shipment_closed leaf.
        closing = closed_record(s) if s.state is ShipmentState.CLOSED and s.closed_leaf is None else None

        def write(conn: psycopg.Connection) -> list[Shipment]:
            cur = conn.execute(
                "UPDATE shipments SET product = %s, batch = %s, origin_site = %s, profile_id = %s,"
                " state = %s, opened_at = %s, closed_at = %s, version = version + 1, updated_at = now()"
                " WHERE id = %s AND version = %s",
                (
                    s.product,
                    s.batch,
                    s.origin_site,
                    s.profile_id,
                    s.state.value,
                    s.opened_at,
                    s.closed_at,
                    s.id,
                    s.version,
                ),
            )
            if cur.rowcount != 1:
                raise ShipmentConflict(
                    f"shipment {s.id} changed since it was read (or is gone); read it again"
                )
            _write_children(conn, s)
            if closing is not None:
                (leaf,) = self._evidence.append(conn, [closing])
                conn.execute("UPDATE shipments SET closed_leaf = %s WHERE id = %s", (leaf, s.id))
            rows = conn.execute(f"SELECT {SHIPMENT_SELECT} FROM shipments WHERE id = %s", (s.id,)).fetchall()
            return _load(conn, rows)

        return self._alert_tx(write)[0]

    def alerts_overlapping(self, device_id: str, start: datetime, end: datetime) -> list[AlertRecord]:
        def read(conn: psycopg.Connection) -> list[AlertRecord]:
            rows = conn.execute(
                f"SELECT {ALERT_COLUMNS} FROM alerts WHERE device_id = %s AND start < %s"
                " AND coalesce(cleared_at, resolved_at, 'infinity'::timestamptz) > %s"
                " ORDER BY start, alert_id",
                (device_id, end, start),
            ).fetchall()
            if not rows:
                return []
            trails: dict[int, list[AuditRecord]] = {r[0]: [] for r in rows}
            for a, q, at, who, act, c, d, leaf in conn.execute(
                "SELECT alert_id, seq, at, actor, action, comment, detail, evidence_leaf FROM alert_audit"
                " WHERE alert_id = ANY(%s) ORDER BY alert_id, seq",
                (list(trails),),
            ):
                trails[a].append(AuditRecord(a, q, at.astimezone(UTC), who, act, c, d, leaf))
            return [_record(r, tuple(trails[r[0]])) for r in rows]

        return self._alert_tx(read)
