"""SQLite back end: the embedded default of ``origincast demo``; same behaviour, small scale.

One connection (stdlib ``sqlite3``) guarded by a lock serves every thread. WAL journal
with ``synchronous=FULL``: a batch whose write_batch() returned survives a power cut.
Timestamps are INTEGER microseconds since the Unix epoch, UTC.
"""

from __future__ import annotations

import contextlib
import logging
import secrets
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, TypeVar

from telemetry.evidence.log import EvidenceLog
from telemetry.evidence.storage import SqliteEvidenceStorage
from telemetry.readings import Bucket, Reading, Rejection
from telemetry.settings import StorageSettings
from telemetry.storage.alerts_sqlite import SqliteAlertStore
from telemetry.storage.base import StorageUnavailable, WriteResult
from telemetry.storage.evidence_batches import BatchLimits, OpenBatches, Plan
from telemetry.storage.migrate import load_migrations, split_sqlite_statements
from telemetry.storage.sealing import (
    SealingStore,
    SqliteBatchSql,
    register_token,
    sqlite_owner,
    unregister_token,
)
from telemetry.storage.shipments_sqlite import SqliteShipmentStore

log = logging.getLogger(__name__)
T = TypeVar("T")

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_US = timedelta(microseconds=1)

_INSERT_READING = (
    "INSERT OR IGNORE INTO readings"
    " (device_id, ts, temp_c, rh, battery_v, door_open, seq, received_at, evidence_batch)"
    " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)"
)
_INSERT_REJECTION = (
    "INSERT INTO rejected_messages (received_at, topic, payload_head, reason, detail)"
    " VALUES (?, ?, ?, ?, ?)"
)
_READING_COLUMNS = "device_id, ts, temp_c, rh, battery_v, door_open, seq"


def to_us(ts: datetime) -> int:
    """A timezone-aware datetime as integer microseconds since the Unix epoch (exact)."""
    if ts.tzinfo is None:
        raise ValueError(f"naive datetime {ts!r}: timestamps must be timezone-aware")
    delta = ts - _EPOCH
    return (delta.days * 86_400 + delta.seconds) * 1_000_000 + delta.microseconds


def from_us(us: int) -> datetime:
    return _EPOCH + timedelta(microseconds=us)


def clean_text(value: str) -> str:
    """Text the database can store: no NUL, no lone surrogates (from lenient decoding)."""
    if "\x00" in value:
        value = value.replace("\x00", "\\x00")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        value = value.encode("utf-8", "backslashreplace").decode("utf-8")
    return value


def database_path(url: str) -> str:
    """``sqlite:///relative.db``, ``sqlite:////absolute/path.db``, ``sqlite:///:memory:``."""
    if not url.startswith("sqlite://"):
        raise ValueError(f"not a sqlite URL: {url!r}")
    rest = url[len("sqlite://") :]
    rest = rest.split("?", 1)[0]
    if rest in ("", "/", "/:memory:", ":memory:"):
        return ":memory:"
    if not rest.startswith("/"):
        raise ValueError(f"sqlite URL must be sqlite:///path: {url!r}")
    return rest[1:]


def _reading(row: tuple) -> Reading:
    device_id, ts, temp_c, rh, battery_v, door_open, seq = row
    return Reading(
        device_id=device_id,
        ts=from_us(ts),
        temp_c=temp_c,
        rh=rh,
        battery_v=battery_v,
        door_open=None if door_open is None else bool(door_open),
        seq=seq,
    )


class SqliteStore(SqliteAlertStore, SqliteShipmentStore, SealingStore):
    kind = "sqlite"

    def __init__(self, settings: StorageSettings) -> None:
        self._settings = settings
        self._path = database_path(settings.url)
        self._lock = threading.Lock()
        self._conn: sqlite3.Connection | None = None
        # Seals the readings batches into leaves (telemetry.storage.evidence_batches).
        self._evidence = EvidenceLog(SqliteEvidenceStorage())
        self._batches = OpenBatches(
            BatchLimits.of(settings.evidence_batch_max_span_s, settings.evidence_batch_max_readings)
        )
        self._batch_sql = SqliteBatchSql()
        self._token = secrets.token_hex(8)
        self._owner = sqlite_owner(self._token)
        self._next_reconcile = 0.0  # the first write or tick looks for batches left open
        self._lost_owners: set[str] = set()  # PostgreSQL's notion; a SQLite writer never loses its own

    @property
    def evidence(self) -> EvidenceLog:
        return self._evidence

    @contextlib.contextmanager
    def evidence_connection(self) -> Iterator[sqlite3.Connection]:
        """The store's one connection, held under its lock (SQLite has one writer) for
        the evidence log's readers and for appenders outside ingest."""
        with self._lock:
            yield self._connection()

    @contextlib.contextmanager
    def evidence_transaction(self) -> Iterator[sqlite3.Connection]:
        """The store's connection inside BEGIN IMMEDIATE, for appending to the evidence
        log (and signing checkpoints) outside ingest; committed when the block ends."""
        with self._lock:
            conn = self._connection()
            try:
                conn.execute("BEGIN IMMEDIATE")
            except sqlite3.OperationalError as exc:
                raise StorageUnavailable(f"evidence write failed: {exc}") from exc
            try:
                yield conn
            except BaseException:
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
                raise
            conn.execute("COMMIT")

    # -- lifecycle -------------------------------------------------------------------

    def open(self) -> None:
        with self._lock:
            if self._conn is not None:
                return
            if self._path != ":memory:":
                Path(self._path).parent.mkdir(parents=True, exist_ok=True)
            try:
                # isolation_level=None: no implicit transactions; we BEGIN/COMMIT ourselves.
                conn = sqlite3.connect(
                    self._path, timeout=10.0, isolation_level=None, check_same_thread=False
                )
                conn.execute("PRAGMA journal_mode=WAL")
                conn.execute("PRAGMA synchronous=FULL")
                conn.execute("PRAGMA busy_timeout=10000")
            except sqlite3.Error as exc:
                raise StorageUnavailable(f"cannot open {self._path}: {exc}") from exc
            self._conn = conn
            register_token(self._token)

    def close(self) -> None:
        """Seal this store's open batches (a clean stop), then close."""
        if self._conn is not None and len(self._batches):
            try:
                with self._lock:
                    self._seal_own(self._batches.pending())
            except Exception:  # the next writer seals them from the stored rows
                log.exception("closing with %d readings batches unsealed", len(self._batches))
        with self._lock:
            unregister_token(self._token)
            if self._conn is not None:
                self._conn.close()
                self._conn = None

    def _connection(self) -> sqlite3.Connection:
        if self._conn is None:
            raise RuntimeError("SqliteStore is not open")
        return self._conn

    def features(self) -> dict[str, bool]:
        return {
            "timescaledb": False,
            "hypertable": False,
            "compression": False,
            "retention_policy": False,
            "continuous_aggregate": False,
        }

    # -- schema ------------------------------------------------------------------------

    def migrate(self) -> list[str]:
        """Apply pending migrations, each in its own transaction; safe across processes
        (BEGIN IMMEDIATE takes the database's write lock before the version is checked)."""
        applied: list[str] = []
        with self._lock:
            conn = self._connection()
            try:
                conn.execute(
                    "CREATE TABLE IF NOT EXISTS schema_migrations ("
                    " version INTEGER PRIMARY KEY, name TEXT NOT NULL,"
                    " applied_at INTEGER NOT NULL)"
                )
                for migration in load_migrations("sqlite"):
                    conn.execute("BEGIN IMMEDIATE")
                    try:
                        done = conn.execute(
                            "SELECT 1 FROM schema_migrations WHERE version = ?",
                            (migration.version,),
                        ).fetchone()
                        if done is None:
                            for statement in split_sqlite_statements(migration.sql):
                                conn.execute(statement)
                            conn.execute(
                                "INSERT INTO schema_migrations (version, name, applied_at)"
                                " VALUES (?, ?, ?)",
                                (migration.version, migration.name, time.time_ns() // 1000),
                            )
                        conn.execute("COMMIT")
                    except BaseException:
                        conn.execute("ROLLBACK")
                        raise
                    if done is None:
                        log.info("sqlite migration applied: %s", migration.name)
                        applied.append(migration.name)
                applied += SqliteEvidenceStorage().migrate(conn)
                if "0010_evidence_batches" in applied:
                    # new batch ids above every leaf index (the log's tables come after ours)
                    conn.execute(
                        "UPDATE sqlite_sequence SET seq = max(seq, (SELECT coalesce(max(idx), -1)"
                        " FROM evidence_leaves)) WHERE name = 'evidence_open_batches'"
                    )
            except sqlite3.OperationalError as exc:
                raise StorageUnavailable(f"sqlite migrate failed: {exc}") from exc
        return applied

    # -- ingest ------------------------------------------------------------------------

    def write_batch(
        self, readings: Sequence[Reading], rejections: Sequence[Rejection]
    ) -> WriteResult:
        received_at = time.time_ns() // 1000
        rejected = [
            (
                to_us(j.received_at),
                clean_text(j.topic),
                clean_text(j.payload_head),
                clean_text(j.reason),
                clean_text(j.detail),
            )
            for j in rejections
        ]
        with self._lock:
            conn = self._connection()
            plan: Plan | None = None
            inserted_mask: list[bool] | None = None
            try:
                conn.execute("BEGIN IMMEDIATE")
                try:
                    inserted = 0
                    if readings:
                        inserted, plan, inserted_mask = self._insert_rows(conn, readings, received_at)
                    if rejected:
                        conn.executemany(_INSERT_REJECTION, rejected)
                    conn.execute("COMMIT")
                except BaseException:
                    if conn.in_transaction:
                        conn.execute("ROLLBACK")
                    raise
            except sqlite3.OperationalError as exc:
                # locked past busy_timeout, disk full, I/O error: retry later
                raise StorageUnavailable(f"sqlite write failed: {exc}") from exc
            if plan is not None:
                self._batches.committed(plan, None if inserted == len(readings) else inserted_mask)
                self._after_commit()
        return WriteResult(inserted=inserted, duplicates=len(readings) - inserted)

    def _insert_rows(
        self, conn: sqlite3.Connection, readings: Sequence[Reading], received_at: int
    ) -> tuple[int, Plan | None, list[bool] | None]:
        """Insert the new readings, each with the id of the batch that will cover it (see
        telemetry.storage.evidence_batches), in the caller's BEGIN IMMEDIATE."""
        if not self._settings.evidence_log:  # bench/evidence.py's baseline only
            inserted = 0
            for r in readings:
                door = None if r.door_open is None else int(r.door_open)
                unbatched = (
                    r.device_id, to_us(r.ts), r.temp_c, r.rh, r.battery_v, door, r.seq, received_at, None
                )
                inserted += conn.execute(_INSERT_READING, unbatched).rowcount
            return inserted, None, None
        plan = self._batches.plan(readings)
        ids, slots, span = plan.batch_ids, plan.slots, self._batches.limits.max_span_us
        mask: list[bool] = []
        execute = conn.execute
        for r, s, t in zip(readings, plan.row_slot, plan.row_ts, strict=True):
            batch = ids[s]
            if batch is None:  # a new batch: its row in evidence_open_batches gives its id
                batch = ids[s] = self._batch_sql.open_batches(
                    conn, self._owner, [(slots[s].device_id, slots[s].anchor_us)], span
                )[0]
            door = None if r.door_open is None else int(r.door_open)
            # OR IGNORE: the first of equal keys wins, in the batch and across batches
            row = (r.device_id, t, r.temp_c, r.rh, r.battery_v, door, r.seq, received_at, batch)
            mask.append(execute(_INSERT_READING, row).rowcount == 1)
        inserted = sum(mask)
        if inserted < len(mask):
            self._batch_sql.forget(conn, plan.empty_new_batches(mask))
        return inserted, plan, mask

    # -- sealing (telemetry.storage.sealing) -------------------------------------------

    def _write_guard(self) -> threading.Lock:
        return self._lock

    def _current_owner(self) -> str:
        return self._owner

    def _tx(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        conn = self._connection()
        try:
            conn.execute("BEGIN IMMEDIATE")
            try:
                out = fn(conn)
                conn.execute("COMMIT")
            except BaseException:
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
                raise
        except sqlite3.OperationalError as exc:
            raise StorageUnavailable(f"sqlite write failed: {exc}") from exc
        return out

    def _read(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        try:
            return fn(self._connection())
        except sqlite3.OperationalError as exc:
            raise StorageUnavailable(f"sqlite query failed: {exc}") from exc

    # -- queries -----------------------------------------------------------------------

    def _query(self, sql: str, params: Sequence[Any] | Mapping[str, Any] = ()) -> list[tuple]:
        with self._lock:
            try:
                return self._connection().execute(sql, params).fetchall()
            except sqlite3.OperationalError as exc:
                raise StorageUnavailable(f"sqlite query failed: {exc}") from exc

    def latest(self, device_ids: Sequence[str] | None = None) -> list[Reading]:
        if device_ids is None:
            # bare-column-with-max(): SQLite returns the other columns of the max row;
            # the (device_id, ts) key makes it one index walk per device
            rows = self._query(
                "SELECT device_id, max(ts), temp_c, rh, battery_v, door_open, seq"
                " FROM readings GROUP BY device_id ORDER BY device_id"
            )
        else:
            rows = []
            for device_id in sorted(set(device_ids)):
                rows += self._query(
                    f"SELECT {_READING_COLUMNS} FROM readings WHERE device_id = ?"
                    " ORDER BY ts DESC LIMIT 1",
                    (device_id,),
                )
        return [_reading(row) for row in rows]

    def leaves_covering(self, device_id: str, start_us: int, end_us: int) -> list[int]:
        rows = self._query(
            "SELECT DISTINCT m.leaf_idx FROM readings r JOIN evidence_batch_leaves m"
            " ON m.batch_id = r.evidence_batch WHERE r.device_id = ? AND r.ts >= ? AND r.ts < ? ORDER BY 1",
            (device_id, start_us, end_us),
        )
        return [int(r[0]) for r in rows]

    def readings_of_leaf(self, device_id: str, leaf: int, ts_first_us: int, ts_last_us: int) -> list[Reading]:
        rows = self._query(
            f"SELECT {_READING_COLUMNS} FROM readings WHERE device_id = ? AND ts BETWEEN ? AND ?"
            " AND evidence_batch = (SELECT batch_id FROM evidence_batch_leaves WHERE leaf_idx = ?)"
            " ORDER BY ts",
            (device_id, ts_first_us, ts_last_us, leaf),
        )
        return [_reading(row) for row in rows]

    def pending_readings(self, device_id: str, start: datetime, end: datetime) -> list[Reading]:
        rows = self._query(
            "SELECT r.device_id, r.ts, r.temp_c, r.rh, r.battery_v, r.door_open, r.seq FROM readings r"
            " LEFT JOIN evidence_batch_leaves m ON m.batch_id = r.evidence_batch"
            " WHERE r.device_id = ? AND r.ts >= ? AND r.ts < ? AND m.batch_id IS NULL ORDER BY r.ts",
            (device_id, to_us(start), to_us(end)),
        )
        return [_reading(row) for row in rows]

    def history(
        self, device_id: str, start: datetime, end: datetime, bucket: timedelta
    ) -> list[Bucket]:
        width = bucket // _US
        if width <= 0:
            raise ValueError(f"bucket must be positive: {bucket!r}")
        # floor to a multiple of the width counted from the Unix epoch (also before 1970)
        rows = self._query(
            "SELECT ts - (((ts % :w) + :w) % :w) AS b, min(temp_c), max(temp_c),"
            " avg(temp_c), count(*)"
            " FROM readings WHERE device_id = :d AND ts >= :s AND ts < :e"
            " GROUP BY b ORDER BY b",
            {"w": width, "d": device_id, "s": to_us(start), "e": to_us(end)},
        )
        return [
            Bucket(
                device_id=device_id,
                start=from_us(b),
                min_c=lo,
                max_c=hi,
                mean_c=mean,
                count=n,
            )
            for b, lo, hi, mean, n in rows
        ]

    def count_readings(self, device_id: str | None = None) -> int:
        if device_id is None:
            rows = self._query("SELECT count(*) FROM readings")
        else:
            rows = self._query("SELECT count(*) FROM readings WHERE device_id = ?", (device_id,))
        return int(rows[0][0])

    def recent_rejections(self, limit: int = 100) -> list[Rejection]:
        rows = self._query(
            "SELECT topic, payload_head, reason, detail, received_at FROM rejected_messages"
            " ORDER BY received_at DESC, id DESC LIMIT ?",
            (limit,),
        )
        return [
            Rejection(topic=t, payload_head=p, reason=r, detail=d, received_at=from_us(at))
            for t, p, r, d, at in rows
        ]

    def apply_retention(self) -> int:
        """Delete readings (and rejections) older than the retention period; return the
        number of readings deleted."""
        cutoff = time.time_ns() // 1000 - self._settings.retention_days * 86_400_000_000
        with self._lock:
            conn = self._connection()
            try:
                conn.execute("BEGIN IMMEDIATE")
                try:
                    deleted = conn.execute("DELETE FROM readings WHERE ts < ?", (cutoff,)).rowcount
                    conn.execute("DELETE FROM rejected_messages WHERE received_at < ?", (cutoff,))
                    conn.execute("COMMIT")
                except BaseException:
                    if conn.in_transaction:
                        conn.execute("ROLLBACK")
                    raise
            except sqlite3.OperationalError as exc:
                raise StorageUnavailable(f"sqlite retention failed: {exc}") from exc
        return deleted
