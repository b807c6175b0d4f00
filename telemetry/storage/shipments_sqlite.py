"""SQLite implementation of ``ShipmentStore``, mixed into SqliteStore (its one connection
and lock; times as integer microseconds)."""

from __future__ import annotations

import json
import sqlite3
import time
from collections.abc import Callable, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

from telemetry.evidence.log import EvidenceLog
from telemetry.shipments import Segment, Shipment, ShipmentConflict, ShipmentState
from telemetry.storage.alerts import ALERT_COLUMNS, AlertRecord, AuditRecord
from telemetry.storage.alerts_sqlite import _record
from telemetry.storage.shipments import (
    SHIPMENT_COLUMNS,
    SHIPMENT_SELECT,
    closed_record,
    opened_record,
    profile_record,
)

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def _us(t: datetime) -> int:
    d = t - _EPOCH
    return (d.days * 86_400 + d.seconds) * 1_000_000 + d.microseconds


def _dt(us: int | None) -> datetime | None:
    return None if us is None else _EPOCH + timedelta(microseconds=us)


def _write_children(conn: sqlite3.Connection, s: Shipment) -> None:
    conn.execute("DELETE FROM shipment_segments WHERE shipment_id = ?", (s.id,))
    conn.execute("DELETE FROM shipment_streams WHERE shipment_id = ?", (s.id,))
    conn.executemany(
        "INSERT INTO shipment_segments (shipment_id, position, device_id, start_at, end_at, label)"
        " VALUES (?, ?, ?, ?, ?, ?)",
        [
            (s.id, i, g.device_id, _us(g.start), None if g.end is None else _us(g.end), g.label)
            for i, g in enumerate(s.segments)
        ],
    )
    conn.executemany(
        "INSERT INTO shipment_streams (shipment_id, position, stream_slug) VALUES (?, ?, ?)",
        [(s.id, i, slug) for i, slug in enumerate(s.streams)],
    )


class SqliteShipmentStore:
    # Provided by SqliteStore through SqliteAlertStore (one lock, one connection).
    _alert_tx: Callable[[Callable[[sqlite3.Connection], Any]], Any]
    _alert_read: Callable[[Callable[[sqlite3.Connection], Any]], Any]
    # Provided by SqliteStore: shipment leaves are appended in the shipment's transaction.
    _evidence: EvidenceLog

    def _load(self, conn: sqlite3.Connection, rows: Sequence[Sequence[Any]]) -> list[Shipment]:
        out = []
        for row in rows:
            sid, product, batch, site, profile, state, opened, closed, version, created, updated = row[:11]
            opened_leaf, closed_leaf = row[11:13]
            segs = conn.execute(
                "SELECT device_id, start_at, end_at, label FROM shipment_segments"
                " WHERE shipment_id = ? ORDER BY position",
                (sid,),
            ).fetchall()
            streams = conn.execute(
                "SELECT stream_slug FROM shipment_streams WHERE shipment_id = ? ORDER BY position", (sid,)
            ).fetchall()
            out.append(
                Shipment(
                    id=sid,
                    product=product,
                    batch=batch,
                    origin_site=site,
                    profile_id=profile,
                    state=state,
                    opened_at=_dt(opened),  # type: ignore[arg-type]
                    closed_at=_dt(closed),
                    segments=tuple(Segment(d, _dt(a), _dt(b), lab) for d, a, b, lab in segs),  # type: ignore[arg-type]
                    streams=tuple(r[0] for r in streams),
                    version=version,
                    created_at=_dt(created),
                    updated_at=_dt(updated),
                    opened_leaf=opened_leaf,
                    closed_leaf=closed_leaf,
                )
            )
        return out

    def create_shipment(self, shipment: Shipment) -> Shipment:
        now = time.time_ns() // 1000
        s = shipment
        # read before the transaction: the store's lock is held inside it
        opened = opened_record(s, profile_record(self, s.profile_id))

        def write(conn: sqlite3.Connection) -> None:
            try:
                conn.execute(
                    f"INSERT INTO shipments ({SHIPMENT_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, 1, ?, ?)",
                    (
                        s.id,
                        s.product,
                        s.batch,
                        s.origin_site,
                        s.profile_id,
                        s.state.value,
                        _us(s.opened_at),
                        None if s.closed_at is None else _us(s.closed_at),
                        now,
                        now,
                    ),
                )
            except sqlite3.IntegrityError:
                raise ShipmentConflict(f"shipment id {s.id!r} is taken") from None
            _write_children(conn, s)
            (leaf,) = self._evidence.append(conn, [opened])
            conn.execute("UPDATE shipments SET opened_leaf = ? WHERE id = ?", (leaf, s.id))

        self._alert_tx(write)
        got = self.get_shipment(s.id)
        assert got is not None
        return got

    def get_shipment(self, shipment_id: str) -> Shipment | None:
        def read(conn: sqlite3.Connection) -> list[Shipment]:
            rows = conn.execute(f"SELECT {SHIPMENT_SELECT} FROM shipments WHERE id = ?", (shipment_id,))
            return self._load(conn, rows.fetchall())

        found = self._alert_read(read)
        return found[0] if found else None

    def list_shipments(
        self, *, state: str | None = None, origin_site: str | None = None, limit: int = 100
    ) -> list[Shipment]:
        where: list[str] = []
        params: list[str | int] = []
        if state is not None:
            where.append("state = ?")
            params.append(state)
        if origin_site is not None:
            where.append("origin_site = ?")
            params.append(origin_site)
        sql = f"SELECT {SHIPMENT_SELECT} FROM shipments"
        if where:
            sql += " WHERE " + " AND ".join(where)
        sql += " ORDER BY opened_at DESC, id LIMIT ?"
        params.append(limit)

        def read(conn: sqlite3.Connection) -> list[Shipment]:
            return self._load(conn, conn.execute(sql, params).fetchall())

        return self._alert_read(read)

    def save_shipment(self, shipment: Shipment) -> Shipment:
        s = shipment
        now = time.time_ns() // 1000
        # Closing (the only way to the closed state) appends the shipment_closed leaf.
        closing = closed_record(s) if s.state is ShipmentState.CLOSED and s.closed_leaf is None else None

        def write(conn: sqlite3.Connection) -> None:
            cur = conn.execute(
                "UPDATE shipments SET product = ?, batch = ?, origin_site = ?, profile_id = ?, state = ?,"
                " opened_at = ?, closed_at = ?, version = version + 1, updated_at = ?"
                " WHERE id = ? AND version = ?",
                (
                    s.product,
                    s.batch,
                    s.origin_site,
                    s.profile_id,
                    s.state.value,
                    _us(s.opened_at),
                    None if s.closed_at is None else _us(s.closed_at),
                    now,
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
                conn.execute("UPDATE shipments SET closed_leaf = ? WHERE id = ?", (leaf, s.id))

        self._alert_tx(write)
        got = self.get_shipment(s.id)
        assert got is not None
        return got

    def alerts_overlapping(self, device_id: str, start: datetime, end: datetime) -> list[AlertRecord]:
        def read(conn: sqlite3.Connection) -> list[AlertRecord]:
            rows = conn.execute(
                f"SELECT {ALERT_COLUMNS} FROM alerts WHERE device_id = ? AND start < ?"
                " AND coalesce(cleared_at, resolved_at, 9223372036854775807) > ?"
                " ORDER BY start, alert_id",
                (device_id, _us(end), _us(start)),
            ).fetchall()
            out = []
            for row in rows:
                trail = conn.execute(
                    "SELECT alert_id, seq, at, actor, action, comment, detail, evidence_leaf FROM alert_audit"
                    " WHERE alert_id = ? ORDER BY seq",
                    (row[0],),
                ).fetchall()
                audit = tuple(
                    AuditRecord(
                        a,
                        q,
                        _EPOCH + timedelta(microseconds=at),
                        who,
                        act,
                        c,
                        None if d is None else json.loads(d),
                        leaf,
                    )
                    for a, q, at, who, act, c, d, leaf in trail
                )
                out.append(_record(row, audit))
            return out

        return self._alert_read(read)
