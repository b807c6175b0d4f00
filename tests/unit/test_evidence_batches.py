"""The writer's open readings batches (telemetry.storage.evidence_batches), without a
database: which batch each reading goes to, what is due for sealing, and the invariants
the stores rely on (a batch never spans the window, never holds more than its maximum,
every reading lies within the span of the batch's anchor; sealing from memory gives the
record the rows give)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from itertools import count

from hypothesis import given, settings
from hypothesis import strategies as st

from telemetry.evidence.canonical import readings_batch_from_packed, readings_batch_from_rows
from telemetry.readings import Reading
from telemetry.storage.evidence_batches import BatchLimits, OpenBatch, OpenBatches, Plan, ts_us

T0 = datetime(2026, 11, 1, tzinfo=UTC)
MINUTE = 60_000_000


def r(device: str, seconds: float, temp: float = 3.0, seq: int | None = None) -> Reading:
    return Reading(device, T0 + timedelta(seconds=seconds), temp, seq=seq)


class Ids:
    """The store's part: ids for the batches a transaction opens."""

    def __init__(self) -> None:
        self._next = count(100)

    def fill(self, plan: Plan) -> Plan:
        for i in plan.new_slots:
            plan.batch_ids[i] = next(self._next)
        return plan


def write(batches: OpenBatches, ids: Ids, rows: list[Reading], inserted: list[bool] | None = None, now=0.0):
    plan = ids.fill(batches.plan(rows))
    batches.committed(plan, inserted, now=now)
    return plan


def sealed_counts(batches: OpenBatches, now: float = 0.0) -> list[tuple[str, int]]:
    due = batches.due(now=now)
    batches.sealed(due)
    return [(b.device_id, b.count) for b in due]


def test_a_reading_a_minute_makes_batches_of_15() -> None:
    batches, ids = OpenBatches(BatchLimits.of(900, 1000)), Ids()
    for m in range(40):
        write(batches, ids, [r("truck", 60 * m)])
        got = sealed_counts(batches)  # as the store does after each commit
        # the window is over when a reading says so: the 16th and the 31st
        assert got == ([("truck", 15)] if m in (15, 30) else [])
    assert [(b.count, b.anchor_us) for b in batches.pending()] == [(10, ts_us(T0) + 30 * MINUTE)]


def test_a_batch_holds_at_most_the_maximum_and_is_due_when_full() -> None:
    batches, ids = OpenBatches(BatchLimits.of(900, 10)), Ids()
    write(batches, ids, [r("fast", s) for s in range(25)])
    assert sealed_counts(batches) == [("fast", 10), ("fast", 10)]
    write(batches, ids, [r("fast", 25 + s) for s in range(5)])
    assert sealed_counts(batches) == [("fast", 10)]  # full: due without waiting for the next reading


def test_late_readings_join_while_the_range_stays_under_the_span() -> None:
    batches, ids = OpenBatches(BatchLimits.of(900, 1000)), Ids()
    write(batches, ids, [r("d", 600), r("d", 700)])
    write(batches, ids, [r("d", 0)])  # 700 - 0 > 900? no: joins
    assert [b.count for b in batches.pending()] == [3]
    write(batches, ids, [r("d", 950)])  # 950 - 0 ≥ 900: a batch of its own; the first retires
    assert sealed_counts(batches) == [("d", 3)]
    record = batches.pending()[0].record()
    assert (record.count, record.ts_first_us) == (1, ts_us(T0) + 950_000_000)


def test_devices_interleaved_and_only_inserted_rows_counted() -> None:
    batches, ids = OpenBatches(BatchLimits.of(900, 1000)), Ids()
    rows = [r("a", 0), r("b", 0), r("a", 60), r("b", 60), r("a", 120)]
    plan = write(batches, ids, rows, inserted=[True, False, True, True, False])
    assert len(plan.slots) == 2 and plan.row_slot == [0, 1, 0, 1, 0]
    assert sorted((b.device_id, b.count) for b in batches.pending()) == [("a", 2), ("b", 1)]
    # a batch opened for duplicates only is nobody's: the store removes its row
    plan = ids.fill(batches.plan([r("c", 0)]))
    assert plan.empty_new_batches([False]) == plan.batch_ids
    batches.committed(plan, [False])
    assert {b.device_id for b in batches.pending()} == {"a", "b"}


def test_a_batch_closed_only_by_redeliveries_stays_open() -> None:
    batches, ids = OpenBatches(BatchLimits.of(900, 1000)), Ids()
    write(batches, ids, [r("d", 60 * m) for m in range(20, 25)])
    # old readings again (a redelivery): planned into a batch of their own, none inserted
    write(batches, ids, [r("d", 60 * m) for m in range(0, 5)], inserted=[False] * 5)
    assert sealed_counts(batches) == []
    assert [b.count for b in batches.pending()] == [5]


def test_due_by_wall_clock_age_and_by_request() -> None:
    batches, ids = OpenBatches(BatchLimits.of(900, 1000)), Ids()
    write(batches, ids, [r("quiet", 0)], now=100.0)
    write(batches, ids, [r("busy", 0)], now=500.0)
    assert batches.due(now=999.0) == []
    assert [b.device_id for b in batches.due(now=1000.0)] == ["quiet"]
    busy = next(b for b in batches.pending() if b.device_id == "busy")
    assert [b.device_id for b in batches.due(now=1000.5, requested={busy.batch_id})] == ["quiet", "busy"]
    assert [b.device_id for b in batches.due(now=1400.0)] == ["quiet", "busy"]
    assert len(batches.drop_all()) == 2 and len(batches) == 0


def test_pending_by_device() -> None:
    batches, ids = OpenBatches(BatchLimits.of(900, 1000)), Ids()
    write(batches, ids, [r("a", 0), r("b", 0), r("a", 1000)])
    assert sorted(b.device_id for b in batches.pending({"a"})) == ["a", "a"]
    assert [b.device_id for b in batches.pending({"b"})] == ["b"]


_times = st.lists(st.integers(0, 3600), min_size=1, max_size=60, unique=True)


@settings(max_examples=150, deadline=None)
@given(
    writes=st.lists(
        st.tuples(_times, st.lists(st.booleans(), min_size=60, max_size=60)), min_size=1, max_size=6
    ),
    span=st.sampled_from([1, 60, 900]),
    most=st.sampled_from([1, 3, 1000]),
)
def test_invariants_hold_whatever_arrives(writes: list, span: int, most: int) -> None:
    batches, ids = OpenBatches(BatchLimits.of(span, most)), Ids()
    stored: dict[int, list[tuple]] = {}  # batch id -> the rows "in the database"
    anchors: dict[int, int] = {}
    seen: set[int] = set()
    sealed: list[OpenBatch] = []
    for times, mask in writes:
        rows = [r("d", t, 2.0 + t / 1000, seq=t) for t in times]
        plan = ids.fill(batches.plan(rows))
        # a key stored before is never inserted again; the mask drops some of the rest
        inserted = [t not in seen and ok for t, ok in zip(times, mask, strict=False)]
        for row, ok, batch_id, t in zip(rows, inserted, plan.row_batch_ids(), plan.row_ts, strict=True):
            if ok:
                seen.add(ts_us(row.ts) // 1_000_000)
                stored.setdefault(batch_id, []).append((t, row.temp_c, None, None, None, row.seq))
        for i in plan.new_slots:
            anchors[plan.batch_ids[i]] = plan.slots[i].anchor_us  # type: ignore[index]
        batches.committed(plan, inserted)
        due = batches.due(now=0.0)
        batches.sealed(due)
        sealed += due
    sealed += batches.pending()
    assert sorted(b.batch_id for b in sealed) == sorted(stored)  # every stored row's batch, once
    for b in sealed:
        rows = stored[b.batch_id]
        assert b.count == len(rows) <= most
        ts = [t for t, *_ in rows]
        assert max(ts) - min(ts) < span * 1_000_000
        assert all(abs(t - anchors[b.batch_id]) < span * 1_000_000 for t in ts)  # reconciling finds them
        assert b.record() == readings_batch_from_rows("d", rows)  # memory and rows agree


@settings(max_examples=200, deadline=None)
@given(st.lists(st.integers(-(2**40), 2**40), min_size=1, max_size=40, unique=True), st.randoms())
def test_records_from_packed_equal_records_from_rows(times: list[int], rnd) -> None:
    from telemetry.evidence.canonical import pack_reading

    rows = [
        (t, 1.5 + i, None if i % 3 else 80.0, 3.0, None if i % 2 else bool(i % 4), i)
        for i, t in enumerate(times)
    ]
    rnd.shuffle(rows)
    packed = b"".join(pack_reading(*row) for row in rows)
    assert readings_batch_from_packed("x", packed) == readings_batch_from_rows("x", rows)
