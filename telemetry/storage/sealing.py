"""Sealing readings batches into the evidence log: the SQL of the batch tables per
dialect, and the part of a store that seals (see telemetry.storage.evidence_batches
for what a batch is, who owns it and when it is sealed).

``SealingStore`` is mixed into both stores. Each provides ``_write_guard()`` (its write
lock), ``_tx(fn)`` (``fn(conn)`` in a transaction of its writer, committed; the lock
held by the caller), ``_current_owner()`` and its ``BatchSql``.
"""

from __future__ import annotations

import logging
import os
import socket
import time
from collections.abc import Callable, Collection, Sequence
from contextlib import AbstractContextManager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, TypeVar

from telemetry.evidence.canonical import ReadingsBatch
from telemetry.evidence.log import EvidenceLog
from telemetry.readings import Reading
from telemetry.storage.base import StorageUnavailable
from telemetry.storage.evidence_batches import (
    RECONCILE_EVERY_S,
    OpenBatch,
    OpenBatches,
    record_from_rows,
)

log = logging.getLogger(__name__)

T = TypeVar("T")
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
# pg_advisory_lock(OWNER_LOCK_SPACE, owner id): held by a PostgreSQL writer connection
# for its life ("ocow"; the two-key form never meets the log's one-key locks).
OWNER_LOCK_SPACE = 0x6F63_6F77
_POLL_S = 0.1


class BatchSql:
    """What sealing needs from the database, in the caller's transaction; ``_p`` is the
    placeholder. ``owner`` strings are the dialect's own (see ``gone``)."""

    _p = "?"

    def _sql(self, sql: str) -> str:
        return sql.replace("?", self._p)

    def map_sealed(self, conn: Any, pairs: Sequence[tuple[int, int]]) -> None:
        """Batches (id, leaf index) sealed: the mapping rows, and out of the open ones."""
        conn.cursor().executemany(
            self._sql("INSERT INTO evidence_batch_leaves (batch_id, leaf_idx) VALUES (?, ?)"), pairs
        )
        self.forget(conn, [b for b, _ in pairs])

    def forget(self, conn: Any, ids: Sequence[int]) -> None:
        conn.cursor().executemany(
            self._sql("DELETE FROM evidence_open_batches WHERE batch_id = ?"), [(i,) for i in ids]
        )

    def owners(self, conn: Any, me: str | None, devices: Collection[str] | None) -> list[str]:
        """Owners other than ``me`` with open batches (of the devices, when given)."""
        cur = conn.cursor()
        if devices is None:
            cur.execute(
                self._sql("SELECT DISTINCT owner FROM evidence_open_batches WHERE owner <> ?"), (me or "",)
            )
            return [r[0] for r in cur.fetchall()]
        out: set[str] = set()
        for d in devices:
            cur.execute(
                self._sql(
                    "SELECT DISTINCT owner FROM evidence_open_batches WHERE device_id = ? AND owner <> ?"
                ),
                (d, me or ""),
            )
            out.update(r[0] for r in cur.fetchall())
        return sorted(out)

    def open_batches(
        self, conn: Any, owner: str, slots: Sequence[tuple[str, int]], span_us: int
    ) -> list[int]:  # pragma: no cover
        """New open batches of ``owner``, one per (device, anchor µs) slot: their ids, in order."""
        raise NotImplementedError

    def gone(self, conn: Any, owners: Sequence[str]) -> list[str]:  # pragma: no cover
        """The owners that can add no more rows, held so until the transaction ends."""
        raise NotImplementedError

    def batches_of(
        self, conn: Any, owners: Sequence[str], devices: Collection[str] | None
    ) -> list[tuple[int, str, int, int]]:
        """(batch id, device, anchor µs, span µs) of the owners' open batches."""
        cur = conn.cursor()
        out = []
        for o in owners:
            cur.execute(
                self._sql(
                    "SELECT batch_id, device_id, anchor_us, span_us FROM evidence_open_batches"
                    " WHERE owner = ? ORDER BY batch_id"
                ),
                (o,),
            )
            out += [
                (int(b), d, int(a), int(s))
                for b, d, a, s in cur.fetchall()
                if devices is None or d in devices
            ]
        return out

    def rows_of(
        self, conn: Any, batch_id: int, device_id: str, anchor_us: int, span_us: int
    ) -> list[Reading]:
        """A batch's stored readings: every one lies within the span of the anchor."""
        raise NotImplementedError  # pragma: no cover

    def requested(self, conn: Any, owner: str) -> set[int]:
        cur = conn.cursor()
        cur.execute(
            self._sql(
                "SELECT batch_id FROM evidence_open_batches WHERE owner = ? AND seal_requested IS NOT NULL"
            ),
            (owner,),
        )
        return {int(r[0]) for r in cur.fetchall()}

    def request(self, conn: Any, devices: Collection[str], me: str | None) -> list[int]:
        """Flag the devices' batches that other owners hold; their ids."""
        raise NotImplementedError  # pragma: no cover

    def still_open(self, conn: Any, ids: Sequence[int]) -> list[tuple[int, str]]:
        cur = conn.cursor()
        out = []
        for i in ids:
            cur.execute(
                self._sql("SELECT batch_id, device_id FROM evidence_open_batches WHERE batch_id = ?"), (i,)
            )
            out += [(int(b), d) for b, d in cur.fetchall()]
        return out


def _reading(row: Sequence[Any], ts: datetime) -> Reading:
    device_id, _, temp_c, rh, battery_v, door_open, seq = row
    return Reading(device_id, ts, temp_c, rh, battery_v, None if door_open is None else bool(door_open), seq)


class SqliteBatchSql(BatchSql):
    _p = "?"

    def __init__(self) -> None:
        self._me = _process_identity()

    def open_batches(
        self, conn: Any, owner: str, slots: Sequence[tuple[str, int]], span_us: int
    ) -> list[int]:
        cur = conn.cursor()
        ids = []
        for device, anchor in slots:
            cur.execute(
                "INSERT INTO evidence_open_batches (device_id, owner, anchor_us, span_us)"
                " VALUES (?, ?, ?, ?)",
                (device, owner, anchor, span_us),
            )
            ids.append(int(cur.lastrowid))
        return ids

    def gone(self, conn: Any, owners: Sequence[str]) -> list[str]:
        # BEGIN IMMEDIATE (the caller's) keeps every other writer out meanwhile.
        return [o for o in owners if not _sqlite_owner_alive(o, self._me)]

    def rows_of(
        self, conn: Any, batch_id: int, device_id: str, anchor_us: int, span_us: int
    ) -> list[Reading]:
        cur = conn.cursor()
        cur.execute(
            "SELECT device_id, ts, temp_c, rh, battery_v, door_open, seq FROM readings"
            " WHERE device_id = ? AND ts > ? AND ts < ? AND evidence_batch = ? ORDER BY ts",
            (device_id, anchor_us - span_us, anchor_us + span_us, batch_id),
        )
        return [_reading(r, _EPOCH + timedelta(microseconds=r[1])) for r in cur.fetchall()]

    def request(self, conn: Any, devices: Collection[str], me: str | None) -> list[int]:
        cur = conn.cursor()
        now = time.time_ns() // 1000
        ids: list[int] = []
        for d in devices:
            cur.execute(
                "UPDATE evidence_open_batches SET seal_requested = coalesce(seal_requested, ?)"
                " WHERE device_id = ? AND owner <> ? RETURNING batch_id",
                (now, d, me or ""),
            )
            ids += [int(r[0]) for r in cur.fetchall()]
        return ids


class PostgresBatchSql(BatchSql):
    _p = "%s"

    def open_batches(
        self, conn: Any, owner: str, slots: Sequence[tuple[str, int]], span_us: int
    ) -> list[int]:
        # One round trip whatever the count; ids come back with their slot's position.
        rows = conn.execute(
            "WITH n AS (SELECT nextval('evidence_batch_ids') AS id, u.device_id, u.anchor_us, u.ord"
            " FROM unnest(%s::text[], %s::bigint[]) WITH ORDINALITY AS u(device_id, anchor_us, ord)),"
            " ins AS (INSERT INTO evidence_open_batches (batch_id, device_id, owner, anchor_us, span_us)"
            " SELECT id, device_id, %s, anchor_us, %s FROM n)"
            " SELECT id FROM n ORDER BY ord",
            ([d for d, _ in slots], [a for _, a in slots], owner, span_us),
        ).fetchall()
        return [int(r[0]) for r in rows]

    def map_sealed(self, conn: Any, pairs: Sequence[tuple[int, int]]) -> None:
        ids = [b for b, _ in pairs]
        conn.execute(
            "WITH m AS (INSERT INTO evidence_batch_leaves (batch_id, leaf_idx)"
            " SELECT * FROM unnest(%s::bigint[], %s::bigint[]))"
            " DELETE FROM evidence_open_batches WHERE batch_id = ANY(%s)",
            (ids, [i for _, i in pairs], ids),
        )

    def forget(self, conn: Any, ids: Sequence[int]) -> None:
        if ids:
            conn.execute("DELETE FROM evidence_open_batches WHERE batch_id = ANY(%s)", (list(ids),))

    def gone(self, conn: Any, owners: Sequence[str]) -> list[str]:
        if not owners:
            return []
        rows = conn.execute(
            "SELECT o FROM unnest(%s::text[]) AS o WHERE pg_try_advisory_xact_lock(%s, o::int)",
            (list(owners), OWNER_LOCK_SPACE),
        ).fetchall()
        return [r[0] for r in rows]

    def rows_of(
        self, conn: Any, batch_id: int, device_id: str, anchor_us: int, span_us: int
    ) -> list[Reading]:
        low = _EPOCH + timedelta(microseconds=anchor_us - span_us)
        high = _EPOCH + timedelta(microseconds=anchor_us + span_us)
        rows = conn.execute(
            "SELECT device_id, ts, temp_c, rh, battery_v, door_open, seq FROM readings"
            " WHERE device_id = %s AND ts > %s AND ts < %s AND evidence_batch = %s ORDER BY ts",
            (device_id, low, high, batch_id),
        ).fetchall()
        return [_reading(r, r[1].astimezone(UTC)) for r in rows]

    def request(self, conn: Any, devices: Collection[str], me: str | None) -> list[int]:
        rows = conn.execute(
            "UPDATE evidence_open_batches SET seal_requested = coalesce(seal_requested, now())"
            " WHERE device_id = ANY(%s) AND owner <> %s RETURNING batch_id",
            (sorted(devices), me or ""),
        ).fetchall()
        return [int(r[0]) for r in rows]

    def still_open(self, conn: Any, ids: Sequence[int]) -> list[tuple[int, str]]:
        rows = conn.execute(
            "SELECT batch_id, device_id FROM evidence_open_batches WHERE batch_id = ANY(%s)", (list(ids),)
        ).fetchall()
        return [(int(b), d) for b, d in rows]


# -- SQLite owners: this process, and whether another one is still running ---------------

# Tokens of this process's SqliteStores that are open: their batches are alive.
_LIVE_TOKENS: set[str] = set()


def _boot_id() -> str:
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        return "-"


def _start_ticks(pid: int) -> str | None:
    """A process's start time (clock ticks after boot): with the pid, it names the process."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[19]
    except (OSError, IndexError):
        return None


def _process_identity() -> tuple[str, str, str, str]:
    pid = os.getpid()
    return socket.gethostname(), _boot_id(), str(pid), _start_ticks(pid) or "-"


def sqlite_owner(token: str) -> str:
    host, boot, pid, start = _process_identity()
    return "|".join((host, boot, pid, start, token))


def _sqlite_owner_alive(owner: str, me: tuple[str, str, str, str]) -> bool:
    try:
        host, boot, pid, start, token = owner.split("|")
    except ValueError:
        return True  # not ours to judge
    if host != me[0]:
        return True
    if boot != me[1]:
        return False  # that boot is over
    if (pid, start) == (me[2], me[3]):
        return token in _LIVE_TOKENS
    now = _start_ticks(int(pid)) if pid.isdigit() else None
    return now is not None and now == start


def register_token(token: str) -> None:
    _LIVE_TOKENS.add(token)


def unregister_token(token: str) -> None:
    _LIVE_TOKENS.discard(token)


# -- the sealing part of a store ----------------------------------------------------------


class SealingStore:
    """Seal, reconcile and request: shared by the SQLite and PostgreSQL stores."""

    _batches: OpenBatches
    _batch_sql: BatchSql
    _evidence: EvidenceLog
    _next_reconcile: float
    _lost_owners: set[str]

    def _write_guard(self) -> AbstractContextManager[Any]:  # pragma: no cover
        raise NotImplementedError

    def _tx(self, fn: Callable[[Any], T]) -> T:  # pragma: no cover
        raise NotImplementedError

    def _current_owner(self) -> str:  # pragma: no cover
        raise NotImplementedError

    def _read(self, fn: Callable[[Any], T]) -> T:
        """``fn(conn)`` that only reads (SQLite: without taking the database's write lock)."""
        return self._tx(fn)

    # -- public ------------------------------------------------------------------------

    def seal_due(self) -> int:
        """The tick: seal this writer's batches that are due or requested, and every
        batch whose owner is gone (at the first tick, then now and then). Leaves written."""
        with self._write_guard():
            owner = self._current_owner()
            requested = self._read(lambda conn: self._batch_sql.requested(conn, owner))
            return self._seal_due_locked(requested)

    def seal_pending(self, device_ids: Collection[str] | None = None, *, wait_s: float = 0.0) -> list[str]:
        """Seal every batch this store holds (of the given devices, or all) and those
        whose owner is gone. With devices and ``wait_s``, ask live owners to seal theirs
        and wait for them as long. Returns the devices with batches still unsealed."""
        devices = None if device_ids is None else set(device_ids)
        with self._write_guard():
            self._seal_own(self._batches.pending(devices))
            self._reconcile_locked(devices)
            if devices is None:
                return []
            me = self._current_owner()
            ids = self._tx(lambda conn: self._batch_sql.request(conn, devices, me)) if wait_s > 0 else []
        if wait_s <= 0:
            with self._write_guard():
                return self._unsealed_devices(devices)
        deadline = time.monotonic() + wait_s
        next_reconcile = time.monotonic() + 1.0
        while ids:
            still = self._still_open(ids, devices, time.monotonic() >= next_reconcile)
            if not still:
                return []
            if time.monotonic() >= deadline:
                return sorted({d for _, d in still})
            if time.monotonic() >= next_reconcile:
                next_reconcile = time.monotonic() + 1.0
            ids = [b for b, _ in still]
            time.sleep(_POLL_S)
        return []

    def _still_open(self, ids: list[int], devices: Collection[str], reconcile: bool) -> list[tuple[int, str]]:
        """Which of the requested batches are open still (first sealing those whose owner
        died meanwhile, when ``reconcile``)."""
        with self._write_guard():
            if reconcile:
                self._reconcile_locked(devices)
            return self._read(lambda conn: self._batch_sql.still_open(conn, ids))

    # -- under the write lock ----------------------------------------------------------

    def _unsealed_devices(self, devices: Collection[str]) -> list[str]:
        def run(conn: Any) -> list[str]:
            owners = self._batch_sql.owners(conn, None, devices)
            held = self._batch_sql.batches_of(conn, owners, devices)
            return sorted({d for _, d, _, _ in held})

        return self._read(run)

    def _after_commit(self) -> None:
        """What a write does after its commit: seal what is due now (never raises: the
        readings are committed whatever happens here; the tick retries)."""
        if not self._batches and not self._lost_owners and time.monotonic() < self._next_reconcile:
            return
        try:
            self._seal_due_locked(())
        except StorageUnavailable as exc:
            log.warning("sealing readings batches postponed: %s", exc)
        except Exception:
            log.exception("sealing readings batches failed; retried at the next tick")

    def _seal_due_locked(self, requested: Collection[int]) -> int:
        sealed = 0
        due = self._batches.due(requested=requested)
        if due:
            sealed += self._seal_own(due)
        if self._lost_owners or time.monotonic() >= self._next_reconcile:
            sealed += self._reconcile_locked(None)
        return sealed

    def _seal_own(self, batches: list[OpenBatch]) -> int:
        """Seal batches from memory: their leaves (one append) and the mapping rows."""
        if not batches:
            return 0
        records = [b.record() for b in batches]

        def run(conn: Any) -> None:
            indices = self._evidence.append(conn, records)
            self._batch_sql.map_sealed(conn, [(b.batch_id, i) for b, i in zip(batches, indices, strict=True)])

        self._tx(run)
        self._batches.sealed(batches)
        return len(batches)

    def _reconcile_locked(self, devices: Collection[str] | None) -> int:
        """Seal, from their stored rows, the open batches whose owner is gone."""
        me = self._current_owner()

        def run(conn: Any) -> tuple[int, list[str]]:
            sql = self._batch_sql
            owners = sql.owners(conn, me, devices)
            gone = sql.gone(conn, owners)
            if not gone:
                return 0, owners
            records: list[ReadingsBatch] = []
            ids: list[int] = []
            empty: list[int] = []
            for batch_id, device, anchor, span in sql.batches_of(conn, gone, devices):
                record = record_from_rows(device, sql.rows_of(conn, batch_id, device, anchor, span))
                if record is None:
                    empty.append(batch_id)  # its rows are gone (retention): nothing to prove
                else:
                    records.append(record)
                    ids.append(batch_id)
            if records:
                indices = self._evidence.append(conn, records)
                sql.map_sealed(conn, list(zip(ids, indices, strict=True)))
            sql.forget(conn, empty)
            if records or empty:
                log.info("sealed %d readings batches left open by %s", len(records), ", ".join(gone))
            return len(records), [o for o in owners if o not in gone]

        n, alive = self._tx(run)
        if devices is None:
            self._next_reconcile = time.monotonic() + RECONCILE_EVERY_S
            self._lost_owners &= set(alive)
        return n
