"""SQLite back end details that the contract suite does not reach."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

import pytest

from telemetry.readings import Reading
from telemetry.settings import StorageSettings
from telemetry.storage.migrate import load_migrations, split_sqlite_statements
from telemetry.storage.sqlite import SqliteStore, database_path, from_us, to_us


@pytest.mark.parametrize(
    ("url", "path"),
    [
        ("sqlite:///origincast.db", "origincast.db"),
        ("sqlite:///data/x.db", "data/x.db"),
        ("sqlite:////var/lib/origincast/x.db", "/var/lib/origincast/x.db"),
        ("sqlite:///:memory:", ":memory:"),
        ("sqlite://", ":memory:"),
    ],
)
def test_database_path(url: str, path: str) -> None:
    assert database_path(url) == path


def test_microseconds_round_trip_exactly() -> None:
    for ts in [
        datetime(1970, 1, 1, tzinfo=UTC),
        datetime(2026, 11, 24, 8, 0, 0, 123_457, tzinfo=UTC),
        datetime(1969, 12, 31, 23, 59, 59, 999_999, tzinfo=UTC),
        datetime(2100, 1, 1, tzinfo=UTC),
    ]:
        assert from_us(to_us(ts)) == ts
    assert to_us(datetime(1970, 1, 1, 0, 0, 1, tzinfo=UTC)) == 1_000_000
    # another offset, same instant
    cet = timezone(timedelta(hours=1))
    assert to_us(datetime(1970, 1, 1, 1, 0, 0, tzinfo=cet)) == 0
    with pytest.raises(ValueError):
        to_us(datetime(2026, 1, 1))  # naive


def test_split_statements_keeps_semicolons_in_comments_and_strings() -> None:
    script = "-- a; b\nCREATE TABLE t (x TEXT DEFAULT ';');\n\n-- tail comment\nCREATE INDEX i ON t (x);\n"
    assert split_sqlite_statements(script) == [
        "-- a; b\nCREATE TABLE t (x TEXT DEFAULT ';');",
        "-- tail comment\nCREATE INDEX i ON t (x);",
    ]


def test_migrations_are_numbered_and_named() -> None:
    for dialect in ("sqlite", "postgres"):
        migrations = load_migrations(dialect)
        assert [m.version for m in migrations] == list(range(1, len(migrations) + 1))
        assert migrations[0].name == "0001_readings"


def test_pragmas_and_buckets_before_1970(tmp_path: Path) -> None:
    store = SqliteStore(StorageSettings(url=f"sqlite:///{tmp_path / 'x.db'}"))
    store.open()
    try:
        store.migrate()
        conn = store._connection()
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert conn.execute("PRAGMA synchronous").fetchone()[0] == 2  # FULL
        epoch = datetime(1970, 1, 1, tzinfo=UTC)
        rows = [Reading("d", epoch + timedelta(minutes=m), float(m)) for m in (-7, -3, 2)]
        store.write_batch(rows, [])
        got = store.history("d", epoch - timedelta(hours=1), epoch + timedelta(hours=1), timedelta(minutes=5))
        assert [(b.start, b.count) for b in got] == [
            (epoch - timedelta(minutes=10), 1),
            (epoch - timedelta(minutes=5), 1),
            (epoch, 1),
        ]
    finally:
        store.close()
