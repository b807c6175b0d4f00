"""A database written before readings batches (a leaf per device per ingest transaction,
rows carrying the leaf's index) keeps its meaning after migration pg 0011 / sqlite 0010:
old rows' batch id is their leaf index, mapped to itself; new batch ids come above every
leaf index; verifiers' reads (readings_of_leaf, leaves_covering) work across both. On
TimescaleDB the rename happens on a hypertable.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from telemetry.evidence.canonical import readings_batch_from_rows
from telemetry.readings import Reading
from telemetry.settings import StorageSettings
from telemetry.storage import open_store
from telemetry.storage import postgres as pg_module
from telemetry.storage import sqlite as sqlite_module
from telemetry.storage.evidence_batches import ts_us
from telemetry.storage.migrate import load_migrations
from tests.support.evidence import assert_every_reading_sealed, batch_leaves, check_coverage

T0 = datetime(2026, 10, 1, tzinfo=UTC)
NEW = {"sqlite": "0010_evidence_batches", "postgres": "0011_evidence_batches"}


def _old_style_batch(store, rows: list[Reading]) -> int:
    """What ingest did before batches: the log's lock first, the rows with the next leaf
    index, then the leaf, in one transaction."""
    lite = store.kind == "sqlite"
    sql = (
        "INSERT INTO readings (device_id, ts, temp_c, rh, battery_v, door_open, seq, evidence_leaf)"
        " VALUES (?, ?, ?, ?, ?, ?, ?, ?)"
    )
    with store.evidence_transaction() as conn:
        leaf = store.evidence.reserve(conn)
        for r in rows:
            ts = ts_us(r.ts) if lite else r.ts
            values = (r.device_id, ts, r.temp_c, r.rh, r.battery_v, r.door_open, r.seq, leaf)
            conn.execute(sql if lite else sql.replace("?", "%s"), values)
        record = readings_batch_from_rows(
            rows[0].device_id, [(ts_us(r.ts), r.temp_c, r.rh, r.battery_v, r.door_open, r.seq) for r in rows]
        )
        assert store.evidence.append(conn, [record]) == [leaf]
    return leaf


def test_old_rows_keep_their_leaves_after_the_migration(db_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    old_leaves = 3
    dialect = "sqlite" if db_url.startswith("sqlite") else "postgres"
    before = [m for m in load_migrations(dialect) if m.name != NEW[dialect]]
    module = sqlite_module if dialect == "sqlite" else pg_module
    monkeypatch.setattr(module, "load_migrations", lambda _d: before)
    store = open_store(StorageSettings(url=db_url))
    store.open()
    try:
        store.migrate()
        old = [
            Reading("reefer", T0 + timedelta(minutes=i), 2.5 + i / 10, seq=i) for i in range(3 * old_leaves)
        ]
        leaves = [_old_style_batch(store, old[i : i + 3]) for i in range(0, len(old), 3)]
        assert leaves == list(range(old_leaves))
    finally:
        store.close()
    monkeypatch.undo()

    store = open_store(StorageSettings(url=db_url))
    store.open()
    try:
        assert store.migrate() == [NEW[dialect]]
        for leaf in leaves:
            got = store.readings_of_leaf("reefer", leaf, ts_us(old[0].ts), ts_us(old[-1].ts))
            assert [r.seq for r in got] == [3 * leaf, 3 * leaf + 1, 3 * leaf + 2]
        start = ts_us(T0)
        assert store.leaves_covering("reefer", start, start + 3600_000_000) == leaves
        assert store.pending_readings("reefer", T0, T0 + timedelta(days=1)) == []
        # new readings go into batches whose ids lie above every leaf index
        new = [Reading("reefer", T0 + timedelta(hours=2, minutes=i), 3.0, seq=100 + i) for i in range(20)]
        store.write_batch(new, [])
        store.seal_pending()
        assert [r.count for _, r in batch_leaves(store)] == [3] * old_leaves + [15, 5]
        check_coverage(store, len(old) + len(new))
    finally:
        store.close()
    assert_every_reading_sealed(db_url, len(old) + len(new))
    batch_ids = _batch_ids(db_url)
    assert min(batch_ids - set(leaves)) >= old_leaves


def _batch_ids(url: str) -> set[int]:
    if url.startswith("sqlite:"):
        import sqlite3

        conn = sqlite3.connect(url.removeprefix("sqlite:///"))
        try:
            return {int(r[0]) for r in conn.execute("SELECT DISTINCT evidence_batch FROM readings")}
        finally:
            conn.close()
    import psycopg

    with psycopg.connect(url) as conn:
        return {int(r[0]) for r in conn.execute("SELECT DISTINCT evidence_batch FROM readings")}
