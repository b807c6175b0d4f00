"""Every stored reading is covered by exactly one sealed readings_batch leaf, on all three
back ends: batches are per device over a time window (telemetry.storage.evidence_batches);
a verifier can fetch a leaf's readings and get its digest back; redeliveries, repeats
within a batch, concurrent writers, a writer killed with its batches open and a live
writer holding some change nothing of that.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import psycopg
import pytest

from telemetry.evidence.canonical import parse_record
from telemetry.evidence.verify import walk_batch_chain
from telemetry.readings import Reading
from telemetry.settings import StorageSettings
from telemetry.storage import open_store
from tests.support.evidence import assert_every_reading_sealed, batch_leaves, check_coverage, log_leaves

T0 = datetime(2026, 11, 1, 8, 0, tzinfo=UTC)
DEAD = ["dead-0", "dead-1", "dead-2"]
REPO = Path(__file__).resolve().parents[2]


def make_store(url: str, **settings: object):
    s = open_store(StorageSettings(url=url, retention_days=30, **settings))  # type: ignore[arg-type]
    s.open()
    s.migrate()
    return s


@pytest.fixture
def store(db_url: str) -> Iterator:
    s = make_store(db_url)
    yield s
    s.close()


def readings(device: str, start: int, n: int, temp: float = 3.4, step_s: int = 60) -> list[Reading]:
    return [
        Reading(
            device, T0 + timedelta(seconds=step_s * i), temp + 0.1 * (i % 7), 81.0, 3.01, i % 2 == 0, 1000 + i
        )
        for i in range(start, start + n)
    ]


def chains_are_whole(store, devices: list[str]) -> None:
    stored = log_leaves(store)
    for device in devices:
        chain = [(leaf.index, leaf.entry) for leaf in stored if parse_record(leaf.entry).device_id == device]
        report = walk_batch_chain(device, chain)
        assert report.errors == [] and report.gaps == [], report


def test_a_live_sensor_gets_a_leaf_per_window(store) -> None:
    """A reading a minute, one per write (a live sensor): a leaf per 15 readings (the
    900 s window), sealed by the write that starts the next window; the readings of the
    open window are recorded, not yet sealed, until seal_pending."""
    a, b = readings("truck-7", 0, 40), readings("room-1", 0, 40, temp=-18.5)
    for ra, rb in zip(a, b, strict=True):
        assert store.write_batch([ra, rb], []).inserted == 2
    assert sorted((r.device_id, r.count) for _, r in batch_leaves(store)) == [
        ("room-1", 15), ("room-1", 15), ("truck-7", 15), ("truck-7", 15),
    ]  # fmt: skip
    window = (T0, T0 + timedelta(hours=1))
    pending = store.pending_readings("truck-7", *window)
    assert [(r.ts, r.seq) for r in pending] == [(r.ts, r.seq) for r in a[30:]]
    assert store.seal_pending() == []
    assert store.pending_readings("truck-7", *window) == []
    assert [r.count for _, r in batch_leaves(store)][-2:] == [10, 10]
    check_coverage(store, 80)
    chains_are_whole(store, ["truck-7", "room-1"])
    # leaves_covering gives exactly the sealed leaves holding the device's readings in a window
    truck = [i for i, r in batch_leaves(store) if r.device_id == "truck-7"]
    start_us = (T0 + timedelta(minutes=14) - datetime(1970, 1, 1, tzinfo=UTC)) // timedelta(microseconds=1)
    assert store.leaves_covering("truck-7", start_us, start_us + 2 * 60_000_000) == truck[:2]


def test_redeliveries_and_repeats_add_nothing(store) -> None:
    a, b = readings("truck-7", 0, 50), readings("room-1", 0, 30, temp=-18.5)
    result = store.write_batch(a[:20] + b[:10], [])
    assert result.inserted == 30
    # a redelivery of part of it, new readings, and a key repeated inside the batch
    again = a[10:40] + b[5:30] + [a[39]]
    result = store.write_batch(again, [])
    assert (result.inserted, result.duplicates) == (20 + 20, 10 + 5 + 1)
    before = len(log_leaves(store))
    assert store.write_batch(a[:40], []).inserted == 0  # all duplicates
    store.seal_pending()
    check_coverage(store, 70)
    chains_are_whole(store, ["truck-7", "room-1"])
    # 40 truck readings a minute apart: windows of 15; 30 room readings: 15 + 15
    assert sorted((r.device_id, r.count) for _, r in batch_leaves(store)) == [
        ("room-1", 15), ("room-1", 15), ("truck-7", 10), ("truck-7", 15), ("truck-7", 15),
    ]  # fmt: skip
    assert before <= len(log_leaves(store))


def test_a_batch_holds_at_most_batch_max_readings(db_url: str) -> None:
    s = make_store(db_url, evidence_batch_max_readings=10)
    try:
        assert s.write_batch(readings("fast", 0, 35, step_s=1), []).inserted == 35
        assert [r.count for _, r in batch_leaves(s)] == [10, 10, 10]  # sealed right after the commit
        assert len(s.pending_readings("fast", T0, T0 + timedelta(hours=1))) == 5
        s.seal_pending(["fast"])
        assert [r.count for _, r in batch_leaves(s)] == [10, 10, 10, 5]
        check_coverage(s, 35)
        chains_are_whole(s, ["fast"])
    finally:
        s.close()


def test_late_readings_inside_an_older_batch_range_stay_apart(store) -> None:
    """A logger flushing old readings after a dead zone: their times fall inside an
    earlier batch's range, but each leaf still hashes exactly its own readings."""
    every_other = readings("truck-9", 0, 40)[::2]
    late = readings("truck-9", 0, 40)[1::2]
    store.write_batch(every_other, [])
    store.write_batch(late, [])
    store.seal_pending()
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
    store.seal_pending()
    check_coverage(store, 4 * 50)


def test_a_quiet_device_is_sealed_by_the_tick(db_url: str) -> None:
    """A batch open as long as the window (wall clock) is sealed by the next tick even
    though no reading ever starts the next window."""
    s = make_store(db_url, evidence_batch_max_span_s=1.0)
    try:
        s.write_batch(readings("quiet", 0, 1), [])
        assert batch_leaves(s) == []
        time.sleep(1.1)
        assert s.seal_due() == 1
        check_coverage(s, 1)
    finally:
        s.close()


def test_clean_close_seals_every_open_batch(db_url: str) -> None:
    s = make_store(db_url)
    s.write_batch(readings("a", 0, 7) + readings("b", 0, 3), [])
    assert batch_leaves(s) == []
    s.close()
    assert_every_reading_sealed(db_url, 10)


# A writer that is killed with its batches open: a process of its own, its store never closed.
_WRITE_THEN_DIE = """
import os, signal, sys
from datetime import UTC, datetime, timedelta
from telemetry.readings import Reading
from telemetry.settings import StorageSettings
from telemetry.storage import open_store
s = open_store(StorageSettings(url=sys.argv[1]))
s.open()
t0 = datetime(2026, 11, 2, tzinfo=UTC)
for i in range(int(sys.argv[2])):
    at = t0 + timedelta(seconds=20 * i)
    s.write_batch([Reading(f"dead-{d}", at, 2.0 + d, seq=i) for d in range(3)], [])
print(len(s._batches), flush=True)
os.kill(os.getpid(), signal.SIGKILL)
"""


def test_batches_of_a_killed_writer_are_sealed_from_the_stored_rows(db_url: str) -> None:
    store = make_store(db_url)
    try:
        store.write_batch(readings("alive", 0, 5), [])  # this store's own open batch
        out = subprocess.run(
            [sys.executable, "-c", _WRITE_THEN_DIE, db_url, "100"],
            cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)}, capture_output=True, text=True,
            timeout=120,
        )  # fmt: skip
        assert out.returncode == -signal.SIGKILL, out.stderr
        assert int(out.stdout) == 3  # each device's last window was open when it died
        # 100 readings 20 s apart per device: windows of 45; the killed writer sealed two each
        assert len(batch_leaves(store)) == 6
        assert len(store.pending_readings("dead-0", T0, T0 + timedelta(days=2))) == 10
        # A writer starting now (an ingester restarted) finds the owner gone at its first
        # tick and seals its batches from the stored rows; the live store's batch stays.
        fresh = make_store(db_url)
        try:
            sealed = fresh.seal_due()
            while sealed < 3 and fresh.seal_pending(DEAD):  # PostgreSQL: the dead session may linger
                time.sleep(0.1)
            assert [r.count for _, r in batch_leaves(store)] == [45] * 6 + [10, 10, 10]
        finally:
            fresh.close()
        pending = store.pending_readings("alive", T0, T0 + timedelta(days=1))
        assert [r.ts for r in pending] == [r.ts for r in readings("alive", 0, 5)]
        store.seal_pending()
        check_coverage(store, 305)
        chains_are_whole(store, [*DEAD, "alive"])
    finally:
        store.close()
    assert_every_reading_sealed(db_url, 305)


def test_a_live_writers_batches_are_sealed_by_it_on_request(db_url: str) -> None:
    """Two live writers (two ingesters): neither seals the other's open batch; a closer
    asks, and the owner's tick seals it."""
    owner, closer = make_store(db_url), make_store(db_url)
    ticking = threading.Event()
    stop = threading.Event()

    def tick() -> None:
        while not stop.is_set():
            owner.seal_due()
            ticking.set()
            stop.wait(0.05)

    try:
        owner.write_batch(readings("reefer", 0, 5), [])
        assert closer.seal_pending() == []  # its own: none; the owner is alive
        assert closer.seal_pending(["reefer"]) == ["reefer"]
        assert batch_leaves(closer) == []
        # asked and not answered (the owner does not tick): still open after the wait
        assert closer.seal_pending(["reefer"], wait_s=0.3) == ["reefer"]
        assert batch_leaves(closer) == []
        ticker = threading.Thread(target=tick)
        ticker.start()
        assert ticking.wait(30)
        assert closer.seal_pending(["reefer"], wait_s=30) == []
        assert [r.count for _, r in batch_leaves(closer)] == [5]
        stop.set()
        ticker.join(30)
        check_coverage(closer, 5)
    finally:
        stop.set()
        owner.close()
        closer.close()


def test_the_batch_to_leaf_mapping_is_append_only(db_url: str, store) -> None:
    store.write_batch(readings("d", 0, 3), [])
    store.seal_pending()
    for sql in (
        "UPDATE evidence_batch_leaves SET leaf_idx = leaf_idx + 1",
        "DELETE FROM evidence_batch_leaves",
        "INSERT INTO evidence_batch_leaves (batch_id, leaf_idx) SELECT batch_id, leaf_idx + 7 FROM"
        " evidence_batch_leaves",
    ):
        with pytest.raises(Exception, match=r"append-only|duplicate key|UNIQUE"):
            _raw(db_url, sql)
    check_coverage(store, 3)


def _raw(url: str, sql: str) -> None:
    if url.startswith("sqlite:"):
        import sqlite3

        conn = sqlite3.connect(url.removeprefix("sqlite:///"))
        try:
            conn.execute(sql)
            conn.commit()
        finally:
            conn.close()
    else:
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute(sql)


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
    stored = log_leaves(store)
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
