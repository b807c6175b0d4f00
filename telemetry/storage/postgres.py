"""PostgreSQL back end, with or without TimescaleDB (one class; ``kind`` says which).

Writes: ONE dedicated writer connection, guarded by a lock, used by ``write_batch``
only. The hot path is an optimistic binary COPY straight into ``readings``; a batch
holding a key already stored (a redelivery) fails that COPY with a unique violation
and is redone through a temporary staging table and ``INSERT … ON CONFLICT DO
NOTHING``. Queries go through a small connection pool. Everything is opened in
``open()`` and closed in ``close()``; the writer connects lazily and, after any
connection-level error, is dropped and reconnected on the next call.

``migrate()`` applies the SQL files of ``migrations/postgres`` in order under an
advisory lock, then sets up TimescaleDB when the server has it: a hypertable always;
compression, a retention policy and the ``readings_15m`` continuous aggregate only
under the Timescale License (the Apache edition has none of them, and retention is
``drop_chunks`` run by ``apply_retention()``).
"""

from __future__ import annotations

import contextlib
import logging
import threading
from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar

import psycopg
from psycopg import errors
from psycopg.conninfo import conninfo_to_dict, make_conninfo
from psycopg_pool import ConnectionPool

from telemetry.evidence.log import EvidenceLog
from telemetry.evidence.storage import PostgresEvidenceStorage
from telemetry.readings import Bucket, Reading, Rejection
from telemetry.settings import StorageSettings
from telemetry.storage.alerts_postgres import PostgresAlertStore
from telemetry.storage.base import StorageUnavailable, WriteResult
from telemetry.storage.evidence_batches import BatchLimits, OpenBatches, Plan, first_of_each_key
from telemetry.storage.migrate import load_migrations
from telemetry.storage.sealing import OWNER_LOCK_SPACE, PostgresBatchSql, SealingStore
from telemetry.storage.shipments_postgres import PostgresShipmentStore

log = logging.getLogger(__name__)
T = TypeVar("T")

# pg_advisory_lock key serialising migrate() across processes ("origcast" in ASCII).
MIGRATION_LOCK_KEY = 0x6F72_6967_6361_7374

FEATURES = ("timescaledb", "hypertable", "compression", "retention_policy", "continuous_aggregate")

_READING_COLUMNS = "device_id, ts, temp_c, rh, battery_v, door_open, seq"
# A reading row is the Reading tuple and the id of the evidence batch covering it.
_READING_TYPES = ["text", "timestamptz", "float4", "float4", "float4", "bool", "int8", "int8"]
_COPY_READINGS = f"COPY readings ({_READING_COLUMNS}, evidence_batch) FROM STDIN (FORMAT BINARY)"
# A batch holding keys stored already (a redelivery) is staged whole, then inserted with
# ON CONFLICT DO NOTHING, which says which rows went in (and waits for, rather than
# races, another writer inserting the same keys); in key order, so two such writers
# take their row locks in the same order.
_STAGE = "readings_incoming"
_CREATE_STAGE = (
    f"CREATE TEMP TABLE IF NOT EXISTS {_STAGE} (device_id text, ts timestamptz, temp_c real, rh real,"
    " battery_v real, door_open boolean, seq bigint, evidence_batch bigint) ON COMMIT DELETE ROWS"
)
_COPY_STAGE = f"COPY {_STAGE} ({_READING_COLUMNS}, evidence_batch) FROM STDIN (FORMAT BINARY)"
_INSERT_STAGED = (
    f"INSERT INTO readings ({_READING_COLUMNS}, evidence_batch)"
    f" SELECT {_READING_COLUMNS}, evidence_batch FROM {_STAGE} ORDER BY device_id, ts"
    " ON CONFLICT (device_id, ts) DO NOTHING RETURNING device_id, ts"
)
_INSERT_REJECTION = (
    "INSERT INTO rejected_messages (received_at, topic, payload_head, reason, detail)"
    " VALUES (%s, %s, %s, %s, %s)"
)
# Distinct device ids by walking the primary key (a "loose index scan"): one index
# probe per device instead of reading every row.
_DEVICES_CTE = (
    "WITH RECURSIVE devices(device_id) AS ("
    " (SELECT device_id FROM readings ORDER BY device_id LIMIT 1)"
    " UNION ALL"
    " SELECT (SELECT r.device_id FROM readings r WHERE r.device_id > d.device_id"
    " ORDER BY r.device_id LIMIT 1) FROM devices d WHERE d.device_id IS NOT NULL)"
)
_LATEST_OF = (
    " CROSS JOIN LATERAL (SELECT r.device_id, r.ts, r.temp_c, r.rh, r.battery_v,"
    " r.door_open, r.seq FROM readings r WHERE r.device_id = d.device_id"
    " ORDER BY r.ts DESC LIMIT 1) l"
)
_EPOCH_SQL = "'1970-01-01 00:00:00+00'::timestamptz"

_RETRYABLE_CONFLICTS = (errors.DeadlockDetected, errors.SerializationFailure)


def clean_text(value: str) -> str:
    """Text PostgreSQL can store: no NUL, no lone surrogates (from lenient decoding)."""
    if "\x00" in value:
        value = value.replace("\x00", "\\x00")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        value = value.encode("utf-8", "backslashreplace").decode("utf-8")
    return value


def _conninfo(url: str) -> str:
    """The URL plus what every connection of ours needs: UTC session time zone (so
    timestamptz values come back in UTC), a connect timeout and TCP keepalives (so a
    vanished server is noticed, not waited on forever)."""
    params = conninfo_to_dict(url)
    options = " ".join(filter(None, [str(params.get("options") or ""), "-c TimeZone=UTC"]))
    extra: dict[str, Any] = {"options": options}
    defaults = {
        "connect_timeout": 5,
        "keepalives": 1,
        "keepalives_idle": 10,
        "keepalives_interval": 5,
        "keepalives_count": 3,
        "application_name": "origincast",
    }
    for key, value in defaults.items():
        if key not in params:
            extra[key] = value
    return make_conninfo(url, **extra)


def _utc(ts: datetime) -> datetime:
    return ts if ts.tzinfo is UTC else ts.astimezone(UTC)


def _reading(row: tuple) -> Reading:
    device_id, ts, temp_c, rh, battery_v, door_open, seq = row
    return Reading(device_id, _utc(ts), temp_c, rh, battery_v, door_open, seq)


class PostgresStore(PostgresAlertStore, PostgresShipmentStore, SealingStore):
    def __init__(self, settings: StorageSettings) -> None:
        self._settings = settings
        self._conninfo = _conninfo(settings.url)
        self._write_lock = threading.Lock()
        self._writer: psycopg.Connection | None = None
        self._stage_ready = False  # the writer connection has its temp staging table
        self._pool: ConnectionPool | None = None
        self._features: dict[str, bool] | None = None
        self.license: str | None = None  # current_setting('timescaledb.license')
        self.kind = "postgres"
        # Seals the readings batches into leaves (telemetry.storage.evidence_batches).
        self._evidence = EvidenceLog(PostgresEvidenceStorage())
        self._batches = OpenBatches(
            BatchLimits.of(settings.evidence_batch_max_span_s, settings.evidence_batch_max_readings)
        )
        self._batch_sql = PostgresBatchSql()
        # The writer connection's owner id (its session holds the owner lock); None
        # until it connects. Owners of connections lost since: their batches are sealed
        # from the database once their lock is free.
        self._owner: int | None = None
        self._lost_owners: set[str] = set()
        self._next_reconcile = 0.0  # the first write or tick looks for batches left open

    @property
    def evidence(self) -> EvidenceLog:
        return self._evidence

    def evidence_connection(self) -> AbstractContextManager[psycopg.Connection]:
        """A pooled connection (autocommit: use ``conn.transaction()`` to append) for
        the evidence log's readers and for appenders outside ingest."""
        if self._pool is None:
            raise RuntimeError("PostgresStore is not open")
        return self._pool.connection()

    @contextlib.contextmanager
    def evidence_transaction(self) -> Iterator[psycopg.Connection]:
        """A connection inside a transaction, for appending to the evidence log (and
        signing checkpoints) outside ingest; committed when the block ends."""
        try:
            with self.evidence_connection() as conn, conn.transaction():
                yield conn
        except (psycopg.OperationalError, psycopg.InterfaceError) as exc:
            raise StorageUnavailable(f"evidence write failed: {exc}") from exc

    # -- lifecycle -------------------------------------------------------------------

    def open(self) -> None:
        if self._pool is not None:
            return
        self._pool = ConnectionPool(
            self._conninfo,
            min_size=1,
            max_size=4,
            kwargs={"autocommit": True},
            check=ConnectionPool.check_connection,
            timeout=5.0,
            name="origincast-storage",
            open=False,
        )
        # wait=False: a server that is down now does not stop the process starting;
        # queries raise StorageUnavailable until it is back.
        self._pool.open(wait=False)
        try:
            self._load_features()
        except StorageUnavailable:
            log.warning("database not reachable at open(); storage features detected later")

    def close(self) -> None:
        """Seal this store's open batches (a clean stop), then close."""
        with self._write_lock:
            if self._pool is not None and len(self._batches):
                try:
                    self._seal_own(self._batches.pending())
                except Exception:  # the next writer seals them from the stored rows
                    log.exception("closing with %d readings batches unsealed", len(self._batches))
            self._drop_writer()
        if self._pool is not None:
            self._pool.close()
            self._pool = None

    # -- schema ------------------------------------------------------------------------

    def migrate(self) -> list[str]:
        """Apply pending migrations in order, each in its own transaction, then set up
        TimescaleDB where available. Two processes migrating at once are serialised by
        a session advisory lock; the second finds nothing left to do."""
        try:
            with psycopg.connect(self._conninfo, autocommit=True) as conn:
                conn.execute("SELECT pg_advisory_lock(%s)", (MIGRATION_LOCK_KEY,))
                try:
                    applied = self._apply_migrations(conn)
                    applied += PostgresEvidenceStorage().migrate(conn)
                    self._features = self._setup_timescale(conn)
                finally:
                    if not conn.closed and not conn.broken:
                        conn.execute("SELECT pg_advisory_unlock(%s)", (MIGRATION_LOCK_KEY,))
        except (psycopg.OperationalError, psycopg.InterfaceError) as exc:
            raise StorageUnavailable(f"migrate failed: {exc}") from exc
        self._set_kind()
        return applied

    def _apply_migrations(self, conn: psycopg.Connection) -> list[str]:
        conn.execute(
            "CREATE TABLE IF NOT EXISTS schema_migrations ("
            " version integer PRIMARY KEY, name text NOT NULL,"
            " applied_at timestamptz NOT NULL DEFAULT now())"
        )
        done = {v for (v,) in conn.execute("SELECT version FROM schema_migrations")}
        applied: list[str] = []
        for migration in load_migrations("postgres"):
            if migration.version in done:
                continue
            with conn.transaction():
                conn.execute(migration.sql)
                conn.execute(
                    "INSERT INTO schema_migrations (version, name) VALUES (%s, %s)",
                    (migration.version, migration.name),
                )
            log.info("postgres migration applied: %s", migration.name)
            applied.append(migration.name)
        return applied

    def _setup_timescale(self, conn: psycopg.Connection) -> dict[str, bool]:
        features = dict.fromkeys(FEATURES, False)
        details: dict[str, str] = {}
        available = conn.execute(
            "SELECT 1 FROM pg_available_extensions WHERE name = 'timescaledb'"
        ).fetchone()
        if available:
            try:
                with conn.transaction():
                    conn.execute("CREATE EXTENSION IF NOT EXISTS timescaledb")
                features["timescaledb"] = True
            except psycopg.DatabaseError as exc:
                if conn.closed or conn.broken:
                    raise
                # installed but not in shared_preload_libraries, or a role that may not
                # create extensions: run as plain PostgreSQL, and say so
                log.warning("timescaledb is available but cannot be created: %s", exc)
                details["timescaledb"] = str(exc).strip()
        license_ = None
        if features["timescaledb"]:
            chunk = timedelta(hours=self._settings.chunk_interval_hours)
            with conn.transaction():
                conn.execute(
                    "SELECT create_hypertable('readings', 'ts', chunk_time_interval => %s,"
                    " if_not_exists => true, migrate_data => true)",
                    (chunk,),
                )
                # applies to chunks created from now on, when the setting changed
                conn.execute("SELECT set_chunk_time_interval('readings', %s)", (chunk,))
            features["hypertable"] = True
            details["hypertable"] = f"chunk_time_interval={chunk}"
            license_ = self._read_license(conn)
            details["timescaledb"] = f"license={license_}"
            if license_ == "timescale":
                self._setup_licensed_features(conn, features, details)
        self.license = license_
        with conn.transaction():
            for name in FEATURES:
                conn.execute(
                    "INSERT INTO storage_features (feature, enabled, detail) VALUES (%s, %s, %s)"
                    " ON CONFLICT (feature) DO UPDATE SET enabled = EXCLUDED.enabled,"
                    " detail = EXCLUDED.detail, updated_at = now()",
                    (name, features[name], details.get(name)),
                )
        log.info("storage features: %s (license %s)", features, license_)
        return features

    def _read_license(self, conn: psycopg.Connection) -> str | None:
        row = conn.execute("SELECT current_setting('timescaledb.license', true)").fetchone()
        return row[0] if row else None

    def _setup_licensed_features(
        self, conn: psycopg.Connection, features: dict[str, bool], details: dict[str, str]
    ) -> None:
        """Timescale License only: compression, retention policy, continuous aggregate.

        Each is an optimisation (apply_retention() runs drop_chunks whatever the
        license), so one that fails is logged and recorded, and migrate() goes on.
        """
        retention = timedelta(days=self._settings.retention_days)

        def compression() -> None:
            row = conn.execute(
                "SELECT compression_enabled FROM timescaledb_information.hypertables"
                " WHERE hypertable_name = 'readings'"
            ).fetchone()
            if not (row and row[0]):
                conn.execute(
                    "ALTER TABLE readings SET (timescaledb.compress,"
                    " timescaledb.compress_segmentby = 'device_id',"
                    " timescaledb.compress_orderby = 'ts DESC')"
                )
            conn.execute(
                "SELECT add_compression_policy('readings', INTERVAL '7 days', if_not_exists => true)"
            )

        def retention_policy() -> None:
            # replaced each time, so a changed retention_days takes effect
            conn.execute("SELECT remove_retention_policy('readings', if_exists => true)")
            conn.execute("SELECT add_retention_policy('readings', %s)", (retention,))

        def continuous_aggregate() -> None:
            exists = conn.execute(
                "SELECT 1 FROM timescaledb_information.continuous_aggregates"
                " WHERE view_name = 'readings_15m'"
            ).fetchone()
            if not exists:
                # 15 minutes divides a day: time_bucket's default origin (2000-01-03)
                # gives the same, epoch-aligned buckets as history()
                conn.execute(
                    "CREATE MATERIALIZED VIEW readings_15m WITH (timescaledb.continuous) AS"
                    " SELECT device_id, time_bucket(INTERVAL '15 minutes', ts) AS bucket,"
                    " min(temp_c) AS min_c, max(temp_c) AS max_c, avg(temp_c) AS mean_c,"
                    " count(*) AS n"
                    " FROM readings GROUP BY device_id, bucket WITH NO DATA"
                )
            conn.execute(
                "SELECT add_continuous_aggregate_policy('readings_15m',"
                " start_offset => INTERVAL '3 days', end_offset => INTERVAL '15 minutes',"
                " schedule_interval => INTERVAL '15 minutes', if_not_exists => true)"
            )

        steps = {
            "compression": compression,
            "retention_policy": retention_policy,
            "continuous_aggregate": continuous_aggregate,
        }
        for name, step in steps.items():
            try:
                with conn.transaction():
                    step()
                features[name] = True
            except psycopg.DatabaseError as exc:
                if conn.closed or conn.broken:
                    raise
                log.warning("timescaledb %s not enabled: %s", name, exc)
                details[name] = f"failed: {str(exc).strip()}"

    def features(self) -> dict[str, bool]:
        """Which optional server features the schema uses, as recorded by migrate()."""
        if self._features is None:
            self._load_features()
        assert self._features is not None
        return dict(self._features)

    def _load_features(self) -> None:
        try:
            rows = self._query(
                "SELECT feature, enabled, detail FROM storage_features"
                " UNION ALL SELECT 'license', true, current_setting('timescaledb.license', true)"
            )
        except errors.UndefinedTable:
            rows = []  # not migrated yet
        features = dict.fromkeys(FEATURES, False)
        for name, enabled, detail in rows:
            if name == "license":
                self.license = detail
            elif name in features:
                features[name] = bool(enabled)
        self._features = features
        self._set_kind()

    def _set_kind(self) -> None:
        self.kind = "timescale" if self._features and self._features["hypertable"] else "postgres"

    def _hypertable(self) -> bool:
        return self.features()["hypertable"]

    # -- ingest ------------------------------------------------------------------------

    def write_batch(
        self, readings: Sequence[Reading], rejections: Sequence[Rejection]
    ) -> WriteResult:
        """Store the batch in one transaction; see Store.write_batch.

        ``duplicates`` counts every reading not inserted: keys already stored and keys
        repeated in the batch (the first of those wins). A connection lost during the
        commit leaves its outcome unknown: StorageUnavailable is raised and the retry
        reports the readings that did land as duplicates (rejections of such a batch
        may then be recorded twice; they have no key).
        """
        # Readings are tuples in COPY column order: the batch itself is the rows. A key
        # twice in one batch (a device re-sending within one batch window) fails the fast
        # COPY like a redelivery does, and the slow path keeps the first of them.
        rows = readings
        rejected = [
            (
                j.received_at,
                clean_text(j.topic),
                clean_text(j.payload_head),
                clean_text(j.reason),
                clean_text(j.detail),
            )
            for j in rejections
        ]
        if not rows and not rejected:
            return WriteResult(0, len(readings))
        with self._write_lock:
            conn = self._writer_connection()
            try:
                inserted = self._write(conn, rows, rejected)
            except (psycopg.OperationalError, psycopg.InterfaceError) as exc:
                self._drop_writer()
                raise StorageUnavailable(f"write_batch failed: {exc}") from exc
            except BaseException:
                if conn.closed or conn.broken:
                    self._drop_writer()
                    raise
                try:
                    conn.rollback()
                except psycopg.Error:
                    self._drop_writer()
                raise
        return WriteResult(inserted=inserted, duplicates=len(readings) - inserted)

    def _write(self, conn: psycopg.Connection, rows: Sequence[Reading], rejected: list[tuple]) -> int:
        # Fast path: everything is new (the usual case). One binary COPY of the rows with
        # their batch ids (and the new batches' rows), one commit; then the batches.
        try:
            with conn.cursor() as cur:
                plan = self._copy_rows(conn, cur, rows) if rows else None
                if rejected:
                    cur.executemany(_INSERT_REJECTION, rejected)
            conn.commit()
            self._committed(plan, None)
            return len(rows)
        except (errors.UniqueViolation, *_RETRYABLE_CONFLICTS) as exc:
            # a key already stored (a redelivery), or a lock conflict with another writer
            # inserting the same keys: redo the batch the slow, conflict-tolerant way
            conn.rollback()
            log.debug("batch of %d readings takes the slow path: %s", len(rows), exc.sqlstate)
        for attempt in range(3):
            try:
                plan, inserted = self._write_slow(conn, rows, rejected)
                conn.commit()
                self._committed(plan, inserted)
                return sum(inserted)
            except _RETRYABLE_CONFLICTS as exc:
                conn.rollback()
                log.info("slow path conflict (%s), attempt %d of 3", exc.sqlstate, attempt + 1)
                if attempt == 2:
                    raise
        raise AssertionError("unreachable")

    def _committed(self, plan: Plan | None, inserted: list[bool] | None) -> None:
        if plan is not None:
            self._batches.committed(plan, None if inserted is None or all(inserted) else inserted)
            self._after_commit()

    def _write_slow(
        self, conn: psycopg.Connection, rows: Sequence[Reading], rejected: list[tuple]
    ) -> tuple[Plan | None, list[bool]]:
        unique = first_of_each_key(rows)
        with conn.cursor() as cur:
            if not self._stage_ready:
                cur.execute(_CREATE_STAGE)
            plan, batch_ids = self._plan_rows(conn, unique)
            with cur.copy(_COPY_STAGE) as copy:
                copy.set_types(_READING_TYPES)
                for r, batch in zip(unique, batch_ids, strict=True):
                    copy.write_row((*r, batch))
            cur.execute(_INSERT_STAGED)
            stored = set(cur.fetchall())
            inserted = [(r.device_id, r.ts) in stored for r in unique]
            if plan is not None:
                self._batch_sql.forget(conn, plan.empty_new_batches(inserted))
            if rejected:
                cur.executemany(_INSERT_REJECTION, rejected)
        # the temp table survives the commit (only its rows go); it dies with the session
        self._stage_ready = True
        return plan, inserted

    def _copy_rows(
        self, conn: psycopg.Connection, cur: psycopg.Cursor, rows: Sequence[Reading]
    ) -> Plan | None:
        """COPY new readings with the ids of the batches that will cover them, in the
        caller's transaction (see telemetry.storage.evidence_batches)."""
        plan, batch_ids = self._plan_rows(conn, rows)
        with cur.copy(_COPY_READINGS) as copy:
            copy.set_types(_READING_TYPES)
            for r, batch in zip(rows, batch_ids, strict=True):
                copy.write_row((*r, batch))
        return plan

    def _plan_rows(
        self, conn: psycopg.Connection, rows: Sequence[Reading]
    ) -> tuple[Plan | None, list[int | None]]:
        """Each row's batch, the new batches opened in this transaction."""
        if not self._settings.evidence_log:  # bench/evidence.py's baseline only
            return None, [None] * len(rows)
        plan = self._batches.plan(rows)
        new = plan.new_slots
        if new:
            opened = self._batch_sql.open_batches(
                conn,
                self._current_owner(),
                [(plan.slots[i].device_id, plan.slots[i].anchor_us) for i in new],
                self._batches.limits.max_span_us,
            )
            for i, batch_id in zip(new, opened, strict=True):
                plan.batch_ids[i] = batch_id
        return plan, plan.row_batch_ids()  # type: ignore[return-value]

    # -- sealing (telemetry.storage.sealing) -------------------------------------------

    def _write_guard(self) -> threading.Lock:
        return self._write_lock

    def _current_owner(self) -> str:
        self._writer_connection()
        return str(self._owner)

    def _tx(self, fn: Callable[[psycopg.Connection], T]) -> T:
        conn = self._writer_connection()
        try:
            out = fn(conn)
            conn.commit()
            return out
        except (psycopg.OperationalError, psycopg.InterfaceError) as exc:
            self._drop_writer()
            raise StorageUnavailable(f"sealing failed: {exc}") from exc
        except BaseException:
            if conn.closed or conn.broken:
                self._drop_writer()
                raise
            try:
                conn.rollback()
            except psycopg.Error:
                self._drop_writer()
            raise

    def _writer_connection(self) -> psycopg.Connection:
        if self._pool is None:
            raise RuntimeError("PostgresStore is not open")
        if self._writer is not None and (self._writer.closed or self._writer.broken):
            self._drop_writer()
        if self._writer is None:
            try:
                conn = psycopg.connect(self._conninfo, autocommit=False)
            except psycopg.Error as exc:
                raise StorageUnavailable(f"cannot connect: {exc}") from exc
            try:
                # this connection's owner id, and the lock that says it is alive
                row = conn.execute(
                    "SELECT id, pg_advisory_lock(%s, id) FROM"
                    " (SELECT nextval('evidence_batch_owners')::int AS id) AS s",
                    (OWNER_LOCK_SPACE,),
                ).fetchone()
                conn.commit()
            except psycopg.Error as exc:
                conn.close()
                if isinstance(exc, psycopg.OperationalError | psycopg.InterfaceError):
                    raise StorageUnavailable(f"cannot take a writer's owner id: {exc}") from exc
                raise
            assert row is not None
            self._writer, self._owner = conn, int(row[0])
            self._stage_ready = False
        return self._writer

    def _drop_writer(self) -> None:
        conn, self._writer = self._writer, None
        self._stage_ready = False
        if self._owner is not None:
            # Rows of a commit cut off may be stored without this store knowing: the
            # batches are sealed from the database, under the owner id's lock.
            self._batches.drop_all()
            self._lost_owners.add(str(self._owner))
            self._owner = None
        if conn is not None:
            try:
                conn.close()
            except Exception:  # already broken: nothing more to release
                log.debug("closing a broken writer connection", exc_info=True)

    # -- queries -----------------------------------------------------------------------

    def _query(self, sql: str, params: Sequence[Any] | dict[str, Any] | None = None) -> list:
        if self._pool is None:
            raise RuntimeError("PostgresStore is not open")
        try:
            with self._pool.connection() as conn:
                return conn.execute(sql, params).fetchall()
        except (psycopg.OperationalError, psycopg.InterfaceError) as exc:
            raise StorageUnavailable(f"query failed: {exc}") from exc

    def latest(self, device_ids: Sequence[str] | None = None) -> list[Reading]:
        select = "SELECT l.device_id, l.ts, l.temp_c, l.rh, l.battery_v, l.door_open, l.seq"
        if device_ids is None:
            rows = self._query(
                f"{_DEVICES_CTE} {select} FROM devices d {_LATEST_OF}"
                " WHERE d.device_id IS NOT NULL ORDER BY l.device_id"
            )
        else:
            rows = self._query(
                f"{select} FROM unnest(%s::text[]) AS d(device_id) {_LATEST_OF}"
                " ORDER BY l.device_id",
                (sorted(set(device_ids)),),
            )
        return [_reading(row) for row in rows]

    def leaves_covering(self, device_id: str, start_us: int, end_us: int) -> list[int]:
        rows = self._query(
            "SELECT DISTINCT m.leaf_idx FROM readings r JOIN evidence_batch_leaves m"
            " ON m.batch_id = r.evidence_batch"
            f" WHERE r.device_id = %s AND r.ts >= {_EPOCH_SQL} + %s * interval '1 microsecond'"
            f" AND r.ts < {_EPOCH_SQL} + %s * interval '1 microsecond' ORDER BY 1",
            (device_id, start_us, end_us),
        )
        return [int(r[0]) for r in rows]

    def readings_of_leaf(self, device_id: str, leaf: int, ts_first_us: int, ts_last_us: int) -> list[Reading]:
        rows = self._query(
            f"SELECT {_READING_COLUMNS} FROM readings"
            f" WHERE device_id = %s AND ts BETWEEN {_EPOCH_SQL} + %s * interval '1 microsecond'"
            f" AND {_EPOCH_SQL} + %s * interval '1 microsecond'"
            " AND evidence_batch = (SELECT batch_id FROM evidence_batch_leaves WHERE leaf_idx = %s)"
            " ORDER BY ts",
            (device_id, ts_first_us, ts_last_us, leaf),
        )
        return [_reading(row) for row in rows]

    def pending_readings(self, device_id: str, start: datetime, end: datetime) -> list[Reading]:
        rows = self._query(
            "SELECT r.device_id, r.ts, r.temp_c, r.rh, r.battery_v, r.door_open, r.seq FROM readings r"
            " LEFT JOIN evidence_batch_leaves m ON m.batch_id = r.evidence_batch"
            " WHERE r.device_id = %s AND r.ts >= %s AND r.ts < %s AND m.batch_id IS NULL ORDER BY r.ts",
            (device_id, start, end),
        )
        return [_reading(row) for row in rows]

    def history(
        self, device_id: str, start: datetime, end: datetime, bucket: timedelta
    ) -> list[Bucket]:
        if bucket <= timedelta(0):
            raise ValueError(f"bucket must be positive: {bucket!r}")
        # Both align buckets to the Unix epoch (time_bucket's default origin is a Monday
        # in 2000, which differs for week-long buckets), so all back ends agree.
        if self._hypertable():
            bucket_sql = f"time_bucket(%(w)s::interval, ts, {_EPOCH_SQL})"
        else:
            bucket_sql = f"date_bin(%(w)s::interval, ts, {_EPOCH_SQL})"
        rows = self._query(
            f"SELECT {bucket_sql} AS b, min(temp_c), max(temp_c), avg(temp_c), count(*)"
            " FROM readings WHERE device_id = %(d)s AND ts >= %(s)s AND ts < %(e)s"
            " GROUP BY b ORDER BY b",
            {"w": bucket, "d": device_id, "s": start, "e": end},
        )
        return [
            Bucket(device_id, _utc(b), float(lo), float(hi), float(mean), int(n))
            for b, lo, hi, mean, n in rows
        ]

    def count_readings(self, device_id: str | None = None) -> int:
        if device_id is None:
            rows = self._query("SELECT count(*) FROM readings")
        else:
            rows = self._query("SELECT count(*) FROM readings WHERE device_id = %s", (device_id,))
        return int(rows[0][0])

    def recent_rejections(self, limit: int = 100) -> list[Rejection]:
        rows = self._query(
            "SELECT topic, payload_head, reason, detail, received_at FROM rejected_messages"
            " ORDER BY received_at DESC, id DESC LIMIT %s",
            (limit,),
        )
        return [
            Rejection(topic=t, payload_head=p, reason=r, detail=d, received_at=_utc(at))
            for t, p, r, d, at in rows
        ]

    def apply_retention(self) -> int:
        """Drop readings older than the retention period (and rejections as old).

        On a hypertable: ``drop_chunks`` (whole chunks entirely older than the cutoff, so
        up to one chunk interval more is kept); returns the number of chunks dropped.
        On plain PostgreSQL: a DELETE; returns the number of rows deleted.
        """
        retention = timedelta(days=self._settings.retention_days)
        if self._pool is None:
            raise RuntimeError("PostgresStore is not open")
        hypertable = self._hypertable()
        try:
            with self._pool.connection() as conn, conn.transaction():
                if hypertable:
                    row = conn.execute(
                        "SELECT count(*) FROM drop_chunks('readings',"
                        " older_than => now() - %s::interval)",
                        (retention,),
                    ).fetchone()
                    dropped = int(row[0]) if row else 0
                else:
                    # device_id = ANY(all devices) makes it a primary-key range scan per
                    # device instead of a scan of the whole table
                    dropped = conn.execute(
                        "DELETE FROM readings WHERE device_id = ANY(ARRAY("
                        f"{_DEVICES_CTE} SELECT device_id FROM devices"
                        " WHERE device_id IS NOT NULL)) AND ts < now() - %s::interval",
                        (retention,),
                    ).rowcount
                conn.execute(
                    "DELETE FROM rejected_messages WHERE received_at < now() - %s::interval",
                    (retention,),
                )
        except (psycopg.OperationalError, psycopg.InterfaceError) as exc:
            raise StorageUnavailable(f"apply_retention failed: {exc}") from exc
        return dropped
