"""Every stored reading is covered by exactly one evidence leaf, written in the same
transaction, on all three back ends: a verifier can fetch a leaf's readings and get its
digest back; redeliveries, repeats within a batch and concurrent writers change nothing.
"""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import pytest

from telemetry.evidence.canonical import parse_record, reading_record, readings_digest
from telemetry.evidence.merkle import leaf_hash, verify_inclusion
from telemetry.evidence.verify import walk_batch_chain
from telemetry.readings import Reading
from telemetry.settings import StorageSettings
from telemetry.storage import open_store
from telemetry.storage.evidence_batches import ts_us

T0 = datetime(2026, 11, 1, 8, 0, tzinfo=UTC)


@pytest.fixture
def store(db_url: str) -> Iterator:
    s = open_store(StorageSettings(url=db_url, retention_days=30))
    s.open()
    s.migrate()
    yield s
    s.close()


def readings(device: str, start: int, n: int, temp: float = 3.4) -> list[Reading]:
    return [
        Reading(device, T0 + timedelta(minutes=i), temp + 0.1 * (i % 7), 81.0, 3.01, i % 2 == 0, 1000 + i)
        for i in range(start, start + n)
    ]


def leaves(store) -> list:
    with store.evidence_connection() as conn:
        size = store.evidence.size(conn)
        return store.evidence.leaves(conn, 0, size)


def check_coverage(store, expected_count: int) -> None:
    """Each batch leaf's readings, fetched back, hash to its digest; together they are
    every stored reading, each exactly once; every leaf is in the tree."""
    covered: Counter[tuple[str, datetime]] = Counter()
    stored = leaves(store)
    with store.evidence_connection() as conn:
        size = store.evidence.size(conn)
        root = store.evidence.root(conn, size)
        proofs = store.evidence.inclusion_proofs(conn, range(size), size)
    for leaf in stored:
        verify_inclusion(leaf.index, size, leaf_hash(leaf.entry), proofs[leaf.index], root)
        record = parse_record(leaf.entry)
        if record.kind != "readings_batch":
            continue
        got = store.readings_of_leaf(record.device_id, leaf.index, record.ts_first_us, record.ts_last_us)
        assert len(got) == record.count, (leaf.index, len(got), record.count)
        digest = readings_digest(
            [reading_record(ts_us(r.ts), r.temp_c, r.rh, r.battery_v, r.door_open, r.seq) for r in got]
        )
        assert digest == record.readings_sha256, f"leaf {leaf.index}: stored readings do not match"
        covered.update((r.device_id, r.ts) for r in got)
    assert sum(covered.values()) == expected_count == store.count_readings()
    assert all(n == 1 for n in covered.values())


def test_batches_are_covered_and_redeliveries_add_nothing(store) -> None:
    a, b = readings("truck-7", 0, 50), readings("room-1", 0, 30, temp=-18.5)
    result = store.write_batch(a[:20] + b[:10], [])
    assert result.inserted == 30
    # a redelivery of part of it, new readings, and a key repeated inside the batch
    again = a[10:40] + b[5:30] + [a[39]]
    result = store.write_batch(again, [])
    assert (result.inserted, result.duplicates) == (20 + 20, 10 + 5 + 1)
    # a batch that is all duplicates writes no leaf
    before = len(leaves(store))
    assert store.write_batch(a[:40], []).inserted == 0
    assert len(leaves(store)) == before == 4
    check_coverage(store, 70)
    # each device's batches form a chain with no gap (seq runs on)
    stored = leaves(store)
    for device in ("truck-7", "room-1"):
        chain = [(leaf.index, leaf.entry) for leaf in stored if parse_record(leaf.entry).device_id == device]
        assert len(chain) == 2
        report = walk_batch_chain(device, chain)
        assert report.errors == [] and report.gaps == [], report


def test_late_readings_inside_an_older_batch_range_stay_apart(store) -> None:
    """A logger flushing old readings after a dead zone: their times fall inside an
    earlier batch's range, but each leaf still hashes exactly its own readings."""
    every_other = readings("truck-9", 0, 40)[::2]
    late = readings("truck-9", 0, 40)[1::2]
    store.write_batch(every_other, [])
    store.write_batch(late, [])
    check_coverage(store, 40)


def test_concurrent_writers_each_cover_their_own(store) -> None:
    errors: list[BaseException] = []

    def write(device: str) -> None:
        try:
            for k in range(10):
                store.write_batch(readings(device, k * 5, 5), [])
        except BaseException as exc:  # surfaced below
            errors.append(exc)

    threads = [threading.Thread(target=write, args=(f"dev-{i}",)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert errors == []
    check_coverage(store, 4 * 50)


def test_alert_audit_entries_are_logged_once_each(store) -> None:
    from telemetry.alerts import Alert, AuditEntry, Severity
    from telemetry.alerts.lifecycle import SYSTEM, Action, acknowledged, resolved_by_hand, with_peak

    a = Alert(
        id=7,
        device_id="truck-9",
        profile_id="chilled",
        rule_id="upper",
        rule_kind="limit",
        severity=Severity.MAJOR,
        start=T0,
        raised_at=T0 + timedelta(minutes=10),
        metric="temp_c",
        threshold=4.0,
        peak=6.5,
        peak_at=T0 + timedelta(minutes=9),
        audit=(AuditEntry(T0 + timedelta(minutes=10), Action.RAISED, SYSTEM, "", 6.5),),
    )
    store.record_alert(a, "fleet", T0)
    store.record_alert(a, "fleet", T0)  # a replay: nothing new
    a2 = with_peak(a, 7.25, T0 + timedelta(minutes=12), T0 + timedelta(minutes=12))
    a3 = acknowledged(a2, "mei", "driver called", T0 + timedelta(minutes=15))
    store.record_alert(a3, "fleet", T0 + timedelta(minutes=15))
    store.record_alert(a2, "fleet", T0 + timedelta(minutes=16))  # an older version, replayed late
    a4 = resolved_by_hand(a3, "mei", "cargo moved to truck 3", T0 + timedelta(minutes=20))
    store.record_alert(a4, "fleet", T0 + timedelta(minutes=20))
    stored = leaves(store)
    events = [parse_record(leaf.entry) for leaf in stored]
    assert [(e.kind, e.change, e.actor, e.comment) for e in events] == [
        ("alert_event", "raised", "system", None),
        ("alert_event", "peak", "system", None),
        ("alert_event", "acknowledged", "mei", "driver called"),
        ("alert_event", "resolved", "mei", "cargo moved to truck 3"),
    ]
    trail = store.get_alert(7).audit
    assert [e.evidence_leaf for e in trail] == [leaf.index for leaf in stored]
    check_coverage(store, 0)
