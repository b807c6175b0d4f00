"""Readings batches for the evidence log: which leaf covers which stored reading.

A ``readings_batch`` leaf covers one device's readings over a window, not one ingest
transaction: a fleet whose devices each send a reading every few seconds would otherwise
get a leaf (and its ~0.2-0.3 ms of log work) per reading, and a month of a reading a
minute would be 43,200 leaves for a browser to check.

**Batches.** Every reading row carries ``evidence_batch``, the id of the batch that
covers it (a sequence; ids of rows stored before batches existed are their leaf index,
migration pg 0011 / sqlite 0010). ``evidence_batch_leaves`` maps a sealed batch to its
leaf, append-only like the log. A batch holds readings of one device whose times lie
within ``batch_max_span_s`` of each other (and of the reading that opened it, its
*anchor*), at most ``batch_max_readings`` of them. It is sealed — its leaf appended with
the mapping row, in one transaction — when a reading arrives that does not fit (the
next window has begun), when it is full, when it has been open ``batch_max_span_s`` of
wall-clock time (a device gone quiet), at a clean stop, or on request (a shipment's
close). A live sensor reading every minute thus gets 15 readings a leaf.

**Ingest.** The writer plans each transaction's rows against the open batches it keeps
in memory (``OpenBatches``): each row gets its batch id; a new batch also gets a row in
``evidence_open_batches`` (owner, device, anchor, span) in the same transaction. After
the commit, and only then, the rows really inserted (not redeliveries) are added to the
batch in memory as packed 29-byte digest records; batches then due are sealed in a later
transaction of the same writer (``write_batch`` does it right after its commit, the
ingester's tick once a second when no readings come). Sealing sorts the records by
time (``canonical.readings_batch_from_packed``): the digest a verifier recomputes from
the rows. The ingest transaction itself does no log work at all.

**Ownership.** Only the writer that opened a batch adds rows to it or seals it from
memory; its ``owner`` is stored with the batch.
- PostgreSQL: the owner id comes from a sequence when the writer connects, and that
  connection holds ``pg_advisory_lock(OWNER_LOCK_SPACE, id)`` for its life. The rows of
  its batches are written on that connection only, so a free lock means nobody can add
  to them any more. A lost connection makes the store drop its batches from memory and
  take a new owner id with the next connection; the old id's batches are then sealed
  from the database like anyone else's (``pg_try_advisory_xact_lock`` must succeed in
  the sealing transaction: it fails while the old session still lingers on the server).
- SQLite: owner = host, boot id, pid, the process's start time (``/proc/<pid>/stat``)
  and a token per store. A process that has ended (or a boot that has), or a pid now
  held by another process, is gone; within one process a store's token counts as alive
  from ``open()`` to ``close()``. Another host's owner is never judged (SQLite's WAL
  works on one host only, so there is none in practice). A store whose database failed
  at ``close()`` in a process that goes on running leaves its batches to be sealed when
  that process ends.

**Reconciling.** A batch whose owner is gone (``kill -9``, a lost connection) holds
committed rows nobody will seal from memory: every writer seals such batches *from the
rows in the database* — at its first write or tick (an ingester's start), every 30 s
after (each tick while a connection of its own lost is pending), and at once for a
shipment's devices at its close. The rows are found by ``evidence_batch`` within
``anchor ± span`` of the device's time index, and hash to the same digest as they would
have from memory.

**Seal requests.** A shipment's close must find its devices' readings sealed before
its closing leaf. The closing store seals its own batches and any whose owner is gone;
a batch a live owner holds (``origincast ingest --shared``, or `serve`'s ingester while
the CLI closes) is flagged in ``evidence_open_batches.seal_requested``. Each owner
polls its own flagged batches every tick and seals them; the closer waits for them to
leave ``evidence_open_batches`` (``SEAL_WAIT_S``) and otherwise refuses the close (the
API's 503, the CLI's message): the readings are stored, but not yet provable.

Only readings really inserted are covered: a redelivered reading is already covered by
the batch that first stored it.
"""

from __future__ import annotations

import time
from collections.abc import Collection, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

from telemetry.evidence.canonical import (
    READING_RECORD_SIZE,
    ReadingsBatch,
    pack_reading,
    readings_batch_from_packed,
)
from telemetry.readings import Reading

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_ONE_US = timedelta(microseconds=1)

# How long a shipment's close waits for live owners to seal its devices' batches.
SEAL_WAIT_S = 15.0
# How often a writer looks for batches whose owner is gone (besides its first tick).
RECONCILE_EVERY_S = 30.0
# The ingester's tick: seal requests polled, batches open too long sealed.
SEAL_TICK_S = 1.0


def ts_us(ts: datetime) -> int:
    return (ts - _EPOCH) // _ONE_US


@dataclass(frozen=True, slots=True)
class BatchLimits:
    max_span_us: int
    max_readings: int

    @classmethod
    def of(cls, max_span_s: float, max_readings: int) -> BatchLimits:
        if not max_span_s > 0 or max_readings < 1:
            raise ValueError("a batch needs a positive span and room for a reading")
        return cls(int(max_span_s * 1_000_000), int(max_readings))


@dataclass(slots=True)
class OpenBatch:
    """A batch in the writer's memory: its packed digest records, in arrival order."""

    batch_id: int
    device_id: str
    anchor_us: int
    opened_at: float  # time.monotonic() of its first commit
    # The time range admission is judged on: every reading planned into the batch and
    # the anchor (a superset of what was inserted, so each row stays within the span of
    # the anchor, which reconciling relies on).
    ts_min: int
    ts_max: int
    count: int = 0
    packed: bytearray = field(default_factory=bytearray)
    retired: bool = False  # takes no more rows: sealed at the next chance

    def record(self) -> ReadingsBatch:
        return readings_batch_from_packed(self.device_id, self.packed)


class _Slot:
    """One batch's share of a transaction being planned: its rows' packed records (in
    row order) and the batch's range and count with them. A plain class: the live-fleet
    shape (a reading per device per transaction) makes one per reading."""

    __slots__ = ("anchor_us", "batch", "count", "device_id", "parts", "ts_max", "ts_min")

    def __init__(
        self, device_id: str, batch: OpenBatch | None, anchor_us: int, ts_min: int, ts_max: int, count: int,
        parts: list[bytes],
    ) -> None:  # fmt: skip
        self.device_id = device_id
        self.batch = batch  # the open batch it continues; None: a new one
        self.anchor_us = anchor_us
        self.ts_min = ts_min
        self.ts_max = ts_max
        self.count = count  # rows, counting the open batch's
        self.parts = parts


@dataclass(slots=True)
class Plan:
    """Where each row of one transaction goes. ``batch_ids[i]`` is slot i's id; the new
    slots' ids are filled in by the store when it opens them in the transaction."""

    slots: list[_Slot]
    row_slot: list[int]
    row_ts: list[int]  # each row's time in µs since the epoch
    batch_ids: list[int | None]
    split: bool = False  # some device's rows went to more than one batch

    @property
    def new_slots(self) -> list[int]:
        return [i for i, s in enumerate(self.slots) if s.batch is None]

    def row_batch_ids(self) -> list[int]:
        ids = self.batch_ids
        return [ids[s] for s in self.row_slot]  # type: ignore[misc]

    def inserted_parts(self, inserted: Sequence[bool]) -> list[list[bytes]]:
        """Each slot's records of the rows really inserted."""
        out: list[list[bytes]] = [[] for _ in self.slots]
        nth = [0] * len(self.slots)
        for ok, s in zip(inserted, self.row_slot, strict=True):
            if ok:
                out[s].append(self.slots[s].parts[nth[s]])
            nth[s] += 1
        return out

    def empty_new_batches(self, inserted: Sequence[bool]) -> list[int]:
        """Ids of batches opened for this transaction that got no row (all duplicates)."""
        parts = self.inserted_parts(inserted)
        return [self.batch_ids[i] for i in self.new_slots if not parts[i]]  # type: ignore[misc]


class OpenBatches:
    """One writer's open batches (one per device at most) and those retired but not
    yet sealed. Not thread-safe: the store calls it under its write lock."""

    def __init__(self, limits: BatchLimits) -> None:
        self.limits = limits
        self._open: dict[str, OpenBatch] = {}
        self._retired: list[OpenBatch] = []
        self._next_age_check = 0.0  # no open batch is old enough before then

    def __len__(self) -> int:
        return len(self._open) + len(self._retired)

    def plan(self, readings: Sequence[Reading]) -> Plan:
        """Assign each reading a batch, as if all of them were new (a duplicate found
        later only leaves its batch smaller)."""
        # The ingest path's per-reading work: written for speed (locals, no calls but
        # the record's packing).
        span, most = self.limits.max_span_us, self.limits.max_readings
        epoch, one_us, pack, open_batch = _EPOCH, _ONE_US, pack_reading, self._open.get
        slots: list[_Slot] = []
        current: dict[str, int] = {}
        row_slot: list[int] = []
        row_ts: list[int] = []
        append_row = row_slot.append
        append_ts = row_ts.append
        for device, ts, temp_c, rh, battery_v, door_open, seq in readings:
            t = (ts - epoch) // one_us
            append_ts(t)
            packed = pack(t, temp_c, rh, battery_v, door_open, seq)
            s = current.get(device)
            if s is not None:
                slot = slots[s]
                lo, hi = slot.ts_min, slot.ts_max
                if slot.count < most and (t if t > hi else hi) - (t if t < lo else lo) < span:
                    if t < lo:
                        slot.ts_min = t
                    elif t > hi:
                        slot.ts_max = t
                    slot.count += 1
                    slot.parts.append(packed)
                    append_row(s)
                    continue
            else:
                b = open_batch(device)
                if b is not None:
                    lo, hi, n = b.ts_min, b.ts_max, b.count
                    s = current[device] = len(slots)
                    if n < most and (t if t > hi else hi) - (t if t < lo else lo) < span:
                        lo, hi = (t if t < lo else lo), (t if t > hi else hi)
                        slots.append(_Slot(device, b, b.anchor_us, lo, hi, n + 1, [packed]))
                        append_row(s)
                        continue
                    # kept though it takes no row: committed() retires it if the next one takes rows
                    slots.append(_Slot(device, b, b.anchor_us, lo, hi, n, []))
            # a batch of its own: the device's first row here, or one its batch cannot take
            s = current[device] = len(slots)
            slots.append(_Slot(device, None, t, t, t, 1, [packed]))
            append_row(s)
        ids = [None if sl.batch is None else sl.batch.batch_id for sl in slots]
        return Plan(slots, row_slot, row_ts, ids, len(slots) > len(current))

    def committed(self, plan: Plan, inserted: Sequence[bool] | None = None, now: float | None = None) -> None:
        """The plan's transaction committed: add the rows really inserted (all of them
        when ``inserted`` is None) to the batches in memory."""
        now = time.monotonic() if now is None else now
        most = self.limits.max_readings
        kept = None if inserted is None else plan.inserted_parts(inserted)
        # A device's last batch with rows stays open (unless full); the ones before it take
        # no more (a batch closed only by redeliveries that did not fit stays open too).
        last: dict[str, OpenBatch] = {}
        opened, split = self._open, plan.split
        for i, slot in enumerate(plan.slots):
            parts = slot.parts if kept is None else kept[i]
            batch = slot.batch
            if batch is None:
                if not parts:
                    continue  # only duplicates: the store removed its open row
                batch_id = plan.batch_ids[i]
                assert batch_id is not None, "a new batch was not given its id"
                batch = OpenBatch(batch_id, slot.device_id, slot.anchor_us, now, slot.ts_min, slot.ts_max)
            else:
                batch.ts_min, batch.ts_max = slot.ts_min, slot.ts_max
            n = len(parts)
            if n:
                batch.count += n
                batch.packed += parts[0] if n == 1 else b"".join(parts)
            if not split:  # the usual case: one batch per device in the transaction
                if batch.count >= most:
                    self._retire(batch)
                else:
                    opened[slot.device_id] = batch
                continue
            before = last.get(slot.device_id)
            if before is not None and before is not batch:
                self._retire(before)
            last[slot.device_id] = batch
        for device, batch in last.items():
            if batch.count >= most:
                self._retire(batch)
            else:
                opened[device] = batch

    def _retire(self, batch: OpenBatch) -> None:
        if not batch.retired:
            batch.retired = True
            if self._open.get(batch.device_id) is batch:
                del self._open[batch.device_id]
            self._retired.append(batch)

    def due(self, now: float | None = None, requested: Collection[int] = ()) -> list[OpenBatch]:
        """Batches to seal now: retired (a later reading did not fit, or full), open as
        long as the span in wall-clock time, or requested."""
        now = time.monotonic() if now is None else now
        out = list(self._retired)
        if now >= self._next_age_check or requested:
            age = self.limits.max_span_us / 1_000_000
            oldest = now
            for b in self._open.values():
                if now - b.opened_at >= age or b.batch_id in requested:
                    out.append(b)
                oldest = min(oldest, b.opened_at)
            # batches opened later are younger: none is due before the oldest one (which
            # is due again at once if its sealing failed)
            self._next_age_check = oldest + age
        return out

    def pending(self, device_ids: Collection[str] | None = None) -> list[OpenBatch]:
        """Every batch not sealed yet (of the given devices)."""
        out = list(self._retired) + list(self._open.values())
        return out if device_ids is None else [b for b in out if b.device_id in device_ids]

    def sealed(self, batches: Iterable[OpenBatch]) -> None:
        gone = {id(b) for b in batches}
        self._retired = [b for b in self._retired if id(b) not in gone]
        for b in [b for b in self._open.values() if id(b) in gone]:
            del self._open[b.device_id]

    def drop_all(self) -> list[OpenBatch]:
        """Forget every batch (their owner is lost: they are sealed from the database)."""
        out = self.pending()
        self._open.clear()
        self._retired.clear()
        return out


def record_from_rows(device_id: str, rows: Iterable[Reading]) -> ReadingsBatch | None:
    """A batch's record from its rows read back from the database (None: no rows)."""
    packed = bytearray()
    for r in rows:
        packed += pack_reading(ts_us(r.ts), r.temp_c, r.rh, r.battery_v, r.door_open, r.seq)
    return readings_batch_from_packed(device_id, packed) if packed else None


def first_of_each_key(readings: Sequence[Reading]) -> list[Reading]:
    """The batch without repeats of a (device, ts) key: the first of them wins, as the
    stores have always done."""
    seen: set[tuple[str, datetime]] = set()
    out = []
    for r in readings:
        key = (r.device_id, r.ts)
        if key not in seen:
            seen.add(key)
            out.append(r)
    return out


assert READING_RECORD_SIZE == 29  # the records kept in memory are the digest's own
