"""One contract, three back ends: SQLite, PostgreSQL and TimescaleDB (Apache edition).

Every test runs against a fresh database of each back end (the ``db_url`` fixture);
the results must be the same everywhere.
"""

from __future__ import annotations

import sqlite3
import threading
from collections import defaultdict
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import psycopg
import pytest

from telemetry.evidence.storage import load_migrations as load_evidence_migrations
from telemetry.readings import Bucket, Reading, Rejection
from telemetry.settings import StorageSettings
from telemetry.storage import StorageUnavailable, WriteResult, open_store
from telemetry.storage.migrate import load_migrations
from telemetry.storage.sqlite import database_path
from tests.support.evidence import check_coverage

RETENTION_DAYS = 30
T0 = datetime(2026, 11, 1, 8, 0, tzinfo=UTC)


@pytest.fixture
def backend(request: pytest.FixtureRequest, db_url: str) -> str:
    """Which back end db_url is: "sqlite", "postgres" or "timescale"."""
    return str(request.node.callspec.params["db_url"])


def make_store(url: str):
    store = open_store(StorageSettings(url=url, retention_days=RETENTION_DAYS))
    store.open()
    return store


@pytest.fixture
def store(db_url: str) -> Iterator:
    s = make_store(db_url)
    s.migrate()
    yield s
    s.close()


def raw_rows(url: str, sql: str) -> list[tuple]:
    """Run SQL on the database behind the store, bypassing it."""
    if url.startswith("sqlite:"):
        conn = sqlite3.connect(database_path(url))
        try:
            return conn.execute(sql).fetchall()
        finally:
            conn.close()
    with psycopg.connect(url, autocommit=True) as conn:
        return conn.execute(sql).fetchall()


def readings_of(device: str, n: int, start: datetime = T0, step_s: int = 60) -> list[Reading]:
    return [
        Reading(
            device_id=device,
            ts=start + timedelta(seconds=i * step_s),
            temp_c=2.5 + (i % 8) * 0.25,
            rh=80.0 + i % 5,
            battery_v=3.0,
            door_open=i % 2 == 0,
            seq=i,
        )
        for i in range(n)
    ]


# -- schema ----------------------------------------------------------------------------


def test_migrate_is_idempotent_and_records_versions(db_url: str, backend: str) -> None:
    dialect = "sqlite" if backend == "sqlite" else "postgres"
    expected = [(m.version, m.name) for m in load_migrations(dialect)]
    s = make_store(db_url)
    try:
        # the store's own, then the evidence log's (kept in its own package and table)
        evidence = [name for _, name, _ in load_evidence_migrations(dialect)]
        assert s.migrate() == [name for _, name in expected] + evidence
        assert s.migrate() == []
    finally:
        s.close()
    rows = raw_rows(db_url, "SELECT version, name, applied_at FROM schema_migrations ORDER BY 1")
    assert [(v, n) for v, n, _ in rows] == expected
    assert all(at is not None for _, _, at in rows)
    # a second process opening the same database finds nothing to do
    other = make_store(db_url)
    try:
        assert other.migrate() == []
        assert other.count_readings() == 0
    finally:
        other.close()


def test_concurrent_migrations_apply_each_version_once(db_url: str, backend: str) -> None:
    stores = [make_store(db_url) for _ in range(3)]
    results: list[list[str]] = []
    failures: list[BaseException] = []
    barrier = threading.Barrier(len(stores))

    def run(s) -> None:
        barrier.wait()
        try:
            results.append(s.migrate())
        except BaseException as exc:  # reported below
            failures.append(exc)

    threads = [threading.Thread(target=run, args=(s,)) for s in stores]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    for s in stores:
        s.close()
    assert failures == []
    dialect = "sqlite" if backend == "sqlite" else "postgres"
    names = [m.name for m in load_migrations(dialect)]
    evidence = [name for _, name, _ in load_evidence_migrations(dialect)]
    assert sorted(n for applied in results for n in applied) == sorted(names + evidence)
    assert len(raw_rows(db_url, "SELECT version FROM schema_migrations")) == len(names)
    assert len(raw_rows(db_url, "SELECT version FROM evidence_schema_migrations")) == len(evidence)


def test_kind_and_features(store, db_url: str, backend: str) -> None:
    assert store.kind == backend
    features = store.features()
    assert features["hypertable"] is (backend == "timescale")
    assert features["timescaledb"] is (backend == "timescale")
    # the Apache edition (what runs here) has no compression, policies or aggregates
    assert features["compression"] is False
    assert features["retention_policy"] is False
    assert features["continuous_aggregate"] is False
    if backend == "timescale":
        assert store.license == "apache"
        rows = raw_rows(db_url, "SELECT * FROM timescaledb_information.hypertables")
        names = raw_rows(db_url, "SELECT hypertable_name FROM timescaledb_information.hypertables")
        assert len(rows) == 1
        assert names == [("readings",)]
        interval = raw_rows(
            db_url,
            "SELECT time_interval FROM timescaledb_information.dimensions"
            " WHERE hypertable_name = 'readings'",
        )
        assert interval == [(timedelta(hours=24),)]
    # another store on the same database (a web node that does not migrate) agrees
    reader = make_store(db_url)
    try:
        assert reader.kind == backend
        assert reader.features() == features
    finally:
        reader.close()


# -- write_batch -----------------------------------------------------------------------


def test_write_batch_stores_rows_exactly(store, db_url: str) -> None:
    batch = [
        Reading("truck-1", T0, 3.5, 81.25, 3.0, False, 7),
        Reading("truck-2", T0 + timedelta(microseconds=123_456), -18.25, 55.5, 2.75, True, 2**40),
        Reading("store-9", T0 - timedelta(days=3), 4.0),
    ]
    assert store.write_batch(batch, []) == WriteResult(inserted=3, duplicates=0)
    assert store.count_readings() == 3
    assert store.latest() == sorted(batch, key=lambda r: r.device_id)
    for r in store.latest():
        assert r.ts.utcoffset() == timedelta(0)
    received = raw_rows(db_url, "SELECT received_at FROM readings")
    assert len(received) == 3 and all(at is not None for (at,) in received)


def test_none_optional_fields_round_trip(store) -> None:
    bare = Reading("bare-1", T0, -20.0)
    assert bare.rh is None and bare.battery_v is None and bare.door_open is None
    assert store.write_batch([bare], []) == WriteResult(1, 0)
    assert store.latest(["bare-1"]) == [bare]


def test_empty_batch(store) -> None:
    assert store.write_batch([], []) == WriteResult(0, 0)
    assert store.count_readings() == 0


def test_repeated_batch_is_all_duplicates(store) -> None:
    batch = readings_of("truck-1", 500) + readings_of("truck-2", 500)
    assert store.write_batch(batch, []) == WriteResult(1000, 0)
    assert store.write_batch(batch, []) == WriteResult(0, 1000)
    assert store.count_readings() == 1000
    assert store.count_readings("truck-1") == 500


def test_half_overlapping_batch_inserts_only_the_new_half(store) -> None:
    all_rows = readings_of("truck-1", 1000)
    first, second = all_rows[:500], all_rows[250:]
    assert store.write_batch(first, []) == WriteResult(500, 0)
    assert store.write_batch(second, []) == WriteResult(500, 250)
    assert store.count_readings("truck-1") == 1000
    # the stored values are those of the first delivery, which the overlap repeats
    assert store.latest() == [all_rows[-1]]


def test_redelivery_with_changed_values_keeps_the_first(store) -> None:
    original = Reading("truck-1", T0, 3.0, seq=1)
    store.write_batch([original], [])
    changed = Reading("truck-1", T0, 9.0, seq=99)
    new = Reading("truck-1", T0 + timedelta(minutes=1), 4.0, seq=2)
    assert store.write_batch([changed, new], []) == WriteResult(1, 1)
    buckets = store.history("truck-1", T0, T0 + timedelta(hours=1), timedelta(hours=1))
    assert [(b.min_c, b.max_c, b.count) for b in buckets] == [(3.0, 4.0, 2)]


def test_in_batch_duplicates_first_wins(store) -> None:
    first = Reading("truck-1", T0, 3.0, seq=1)
    second = Reading("truck-1", T0, 5.0, seq=2)
    other = Reading("truck-1", T0 + timedelta(seconds=1), 4.0, seq=3)
    assert store.write_batch([first, second, other, first], []) == WriteResult(2, 2)
    assert store.count_readings() == 2
    hist = store.history("truck-1", T0, T0 + timedelta(seconds=1), timedelta(seconds=1))
    assert hist == [Bucket("truck-1", T0, 3.0, 3.0, 3.0, 1)]
    # in-batch duplicates plus an already stored key, in one batch (slow path)
    third = Reading("truck-1", T0 + timedelta(seconds=2), 6.0)
    assert store.write_batch([third, third, first], []) == WriteResult(1, 2)
    assert store.count_readings() == 3


def test_rejections_stored_and_listed(store) -> None:
    rejections = [
        Rejection("origincast/t1/telemetry", "{not json", "malformed_json", "line 1", T0),
        Rejection(
            "origincast/t2/telemetry",
            '{"ts": 1}',
            "missing_field",
            "temp_c is required",
            T0 + timedelta(seconds=5),
        ),
    ]
    good = Reading("t3", T0, 4.0)
    assert store.write_batch([good], rejections) == WriteResult(1, 0)
    listed = store.recent_rejections()
    assert listed == list(reversed(rejections))  # newest first
    assert store.recent_rejections(limit=1) == [rejections[1]]
    # rejections alone, and text a database cannot hold as is (NUL, lone surrogate)
    odd = Rejection("origincast/t4/telemetry", "ab\x00cd\udcff", "bad_utf8", "x", T0 + timedelta(1))
    assert store.write_batch([], [odd]) == WriteResult(0, 0)
    head = store.recent_rejections(limit=1)[0]
    assert head.reason == "bad_utf8"
    assert "\x00" not in head.payload_head and head.payload_head.startswith("ab")
    assert len(store.recent_rejections()) == 3


def test_rejections_commit_with_the_readings_even_on_the_slow_path(store) -> None:
    batch = readings_of("truck-1", 10)
    store.write_batch(batch, [])
    rejection = Rejection("origincast/truck-1/telemetry", "x", "malformed_json", "", T0)
    assert store.write_batch(batch + readings_of("truck-2", 3), [rejection]) == WriteResult(3, 10)
    assert store.recent_rejections() == [rejection]


def test_two_writers_with_overlapping_batches(db_url: str) -> None:
    """Two ingest workers (two stores) receive the same redelivered readings in opposite
    orders at the same time: every key is stored once and counted inserted once."""
    stores = [make_store(db_url) for _ in range(2)]
    stores[0].migrate()
    a, b = readings_of("a", 2000), readings_of("b", 2000)
    keys = a + b
    # First one batch each, crossing (a then b, b then a): on PostgreSQL each COPY
    # waits for the other's uncommitted keys, a deadlock the server breaks by failing
    # one of them, which must then still store its new rows. Then overlapping batches.
    orders = [[a + b, *(keys[i : i + 1000] for i in range(0, 4000, 500))]]
    orders.append([b + a, *(list(reversed(keys))[i : i + 1000] for i in range(0, 4000, 500))])
    inserted = [0, 0]
    failures: list[BaseException] = []
    barrier = threading.Barrier(2)

    def run(n: int) -> None:
        try:
            barrier.wait()
            for batch in orders[n]:
                inserted[n] += stores[n].write_batch(batch, []).inserted
        except BaseException as exc:  # reported below
            failures.append(exc)

    threads = [threading.Thread(target=run, args=(n,)) for n in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    try:
        assert failures == []
        assert sum(inserted) == len(keys)
        assert stores[0].count_readings() == len(keys)
    finally:
        for s in stores:
            s.close()


# -- queries ---------------------------------------------------------------------------


def test_latest_per_device(store) -> None:
    rows = (
        readings_of("a", 5, step_s=60)
        + readings_of("b", 3, start=T0 + timedelta(hours=1))
        + readings_of("c", 1, start=T0 - timedelta(days=400))
    )
    store.write_batch(rows, [])
    latest = store.latest()
    assert [r.device_id for r in latest] == ["a", "b", "c"]
    assert latest[0] == rows[4]
    assert latest[1] == rows[7]
    assert latest[2] == rows[8]
    assert store.latest(["c", "a", "nobody"]) == [rows[4], rows[8]]
    assert store.latest([]) == []


def _expected_buckets(
    rows: list[Reading], device: str, start: datetime, end: datetime, width: timedelta
) -> list[Bucket]:
    epoch = datetime(1970, 1, 1, tzinfo=UTC)
    groups: dict[datetime, list[float]] = defaultdict(list)
    for r in rows:
        if r.device_id == device and start <= r.ts < end:
            groups[epoch + ((r.ts - epoch) // width) * width].append(r.temp_c)
    return [
        Bucket(device, b, min(v), max(v), sum(v) / len(v), len(v))
        for b, v in sorted(groups.items())
    ]


# Buckets of 7 days and of 7 minutes do not divide evenly into the span since another
# origin (time_bucket's default is Monday 2000-01-03), so they prove epoch alignment.
@pytest.mark.parametrize(
    "width",
    [timedelta(minutes=15), timedelta(minutes=7), timedelta(hours=1), timedelta(days=7)],
    ids=["15min", "7min", "1h", "7d"],
)
def test_history_buckets_identical_across_back_ends(store, width: timedelta) -> None:
    # quarter-degree values are exact in float32 (the PostgreSQL column is real), so
    # min/max/mean must match the Python reference, and so each other, exactly
    rows = [
        Reading("t1", T0 + timedelta(seconds=37 * i), -5.0 + (i * 7 % 40) * 0.25)
        for i in range(2000)
    ] + readings_of("t2", 100)
    store.write_batch(rows, [])
    start, end = T0 + timedelta(minutes=3), T0 + timedelta(hours=20)
    got = store.history("t1", start, end, width)
    assert got == _expected_buckets(rows, "t1", start, end, width)
    assert sum(b.count for b in got) == sum(1 for r in rows if r.device_id == "t1" and start <= r.ts < end)
    for b in got:
        assert b.start.utcoffset() == timedelta(0)
        assert isinstance(b.count, int)


def test_history_with_arbitrary_decimals(store) -> None:
    rows = [Reading("t1", T0 + timedelta(minutes=i), 3.1 + i * 0.37) for i in range(60)]
    store.write_batch(rows, [])
    got = store.history("t1", T0, T0 + timedelta(hours=1), timedelta(minutes=10))
    want = _expected_buckets(rows, "t1", T0, T0 + timedelta(hours=1), timedelta(minutes=10))
    assert [(b.start, b.count) for b in got] == [(b.start, b.count) for b in want]
    for g, w in zip(got, want, strict=True):
        # PostgreSQL keeps real (float4): ~7 significant digits
        assert g.min_c == pytest.approx(w.min_c, rel=1e-6)
        assert g.max_c == pytest.approx(w.max_c, rel=1e-6)
        assert g.mean_c == pytest.approx(w.mean_c, rel=1e-6)


def test_history_empty_range_and_other_device(store) -> None:
    store.write_batch(readings_of("t1", 10), [])
    assert store.history("t1", T0 - timedelta(days=1), T0, timedelta(minutes=5)) == []
    assert store.history("t9", T0, T0 + timedelta(days=1), timedelta(minutes=5)) == []


def test_count_readings(store) -> None:
    assert store.count_readings() == 0
    store.write_batch(readings_of("a", 7) + readings_of("b", 5), [])
    assert store.count_readings() == 12
    assert store.count_readings("a") == 7
    assert store.count_readings("b") == 5
    assert store.count_readings("nobody") == 0


def test_apply_retention_drops_old_data_only(store, backend: str) -> None:
    now = datetime.now(UTC)
    old = [
        Reading("t1", now - timedelta(days=90), 1.0),
        Reading("t1", now - timedelta(days=60), 2.0),
        Reading("t2", now - timedelta(days=RETENTION_DAYS + 2), 3.0),
    ]
    recent = [
        Reading("t1", now - timedelta(days=RETENTION_DAYS - 2), 4.0),
        Reading("t1", now - timedelta(hours=1), 5.0),
        Reading("t2", now - timedelta(minutes=1), 6.0),
    ]
    stale = Rejection("origincast/t1/telemetry", "x", "malformed_json", "", now - timedelta(days=60))
    fresh = Rejection("origincast/t1/telemetry", "y", "malformed_json", "", now - timedelta(days=1))
    store.write_batch(old + recent, [stale, fresh])
    dropped = store.apply_retention()
    # rows on PostgreSQL and SQLite; whole chunks (one a day here) on TimescaleDB
    assert dropped == 3
    assert store.count_readings() == 3
    assert store.latest() == [recent[1], recent[2]]
    kept = store.history("t1", now - timedelta(days=400), now, timedelta(days=1))
    assert sorted(b.min_c for b in kept) == [4.0, 5.0]
    assert store.recent_rejections() == [fresh]  # rejections are kept as long, no longer
    assert store.apply_retention() == 0


# -- faults ----------------------------------------------------------------------------


@pytest.mark.parametrize("server", ["postgres", "timescale"])
def test_write_during_crash_restart_raises_then_recovers(
    request: pytest.FixtureRequest, server: str
) -> None:
    pg = request.getfixturevalue(server)
    url = request.getfixturevalue("pg_url" if server == "postgres" else "ts_url")
    s = make_store(url)
    try:
        s.migrate()
        first = readings_of("truck-1", 100)
        assert s.write_batch(first, []) == WriteResult(100, 0)  # the writer is connected
        pg.crash_restart()
        batch = readings_of("truck-1", 100, start=T0 + timedelta(hours=5))
        with pytest.raises(StorageUnavailable):
            s.write_batch(batch, [])
        # the server is back: the next call reconnects; nothing of the failed call stayed
        assert s.write_batch(batch, []) == WriteResult(100, 0)
        assert s.write_batch(first + batch, []) == WriteResult(0, 200)
        assert s.count_readings() == 200  # the query pool recovers too
        # The batch open when the connection died is sealed from the stored rows (its
        # owner's lock died with the session); the rest from memory.
        assert s.seal_pending() == []
        check_coverage(s, 200)
    finally:
        s.close()


@pytest.mark.parametrize("server", ["postgres", "timescale"])
def test_writer_retrying_through_a_crash_loses_and_duplicates_nothing(
    request: pytest.FixtureRequest, server: str
) -> None:
    """A writer thread sending batches (retrying each on StorageUnavailable, as the
    ingester does) while the server crashes and recovers under it."""
    pg = request.getfixturevalue(server)
    url = request.getfixturevalue("pg_url" if server == "postgres" else "ts_url")
    s = make_store(url)
    s.migrate()
    started, crashed = threading.Event(), threading.Event()
    written: list[int] = []  # rows of each batch acknowledged by write_batch
    unavailable = 0
    errors: list[BaseException] = []

    def writer() -> None:
        nonlocal unavailable
        try:
            after_crash = 0
            n = 0
            while after_crash < 3 and n < 10_000:
                batch = readings_of(f"dev-{n % 4}", 500, start=T0 + timedelta(days=n))
                for _attempt in range(300):
                    try:
                        written.append(s.write_batch(batch, []).inserted)
                        break
                    except StorageUnavailable:
                        unavailable += 1
                        crashed.wait(0.1)
                else:
                    raise AssertionError("the store never came back")
                n += 1
                if n == 5:
                    started.set()
                if crashed.is_set():
                    after_crash += 1
        except BaseException as exc:
            errors.append(exc)
        finally:
            started.set()

    t = threading.Thread(target=writer)
    t.start()
    try:
        assert started.wait(60)
        pg.crash_restart()
        crashed.set()
        t.join(300)
        assert not t.is_alive()
        assert errors == []
        assert unavailable >= 1
        # a batch whose commit was cut off may have been stored before the error: its
        # retry then reports duplicates, never a second copy
        assert s.count_readings() == 500 * len(written)
        assert sum(written) <= 500 * len(written)
        # every stored reading sealed exactly once, also those of a commit cut off
        assert s.seal_pending() == []
        check_coverage(s, 500 * len(written))
    finally:
        s.close()


def test_timescale_license_features_degrade_gracefully(
    ts_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Under the Timescale License migrate() also enables compression, a retention
    policy and a continuous aggregate. Here (Apache edition) we pretend the license is
    there: every one of those steps reaches the server, which refuses it for the
    license; migrate() records that and goes on with a working hypertable."""
    from telemetry.storage.postgres import PostgresStore

    monkeypatch.setattr(PostgresStore, "_read_license", lambda self, conn: "timescale")
    s = make_store(ts_url)
    try:
        assert "0001_readings" in s.migrate()
        assert s.kind == "timescale"
        assert s.features() == {
            "timescaledb": True,
            "hypertable": True,
            "compression": False,
            "retention_policy": False,
            "continuous_aggregate": False,
        }
        details = dict(
            raw_rows(
                ts_url,
                "SELECT feature, detail FROM storage_features"
                " WHERE feature IN ('compression', 'retention_policy', 'continuous_aggregate')",
            )
        )
        assert len(details) == 3
        for feature, detail in details.items():
            assert "license" in detail, (feature, detail)
        assert s.write_batch(readings_of("t1", 10), []) == WriteResult(10, 0)
        assert s.migrate() == []
    finally:
        s.close()
