"""Readings batches for the evidence log: which leaf covers which stored reading.

Every reading a store inserts is covered by one ``readings_batch`` leaf written in the
same transaction: one leaf per device per committed batch, and the reading row keeps
that leaf's index (``evidence_leaf``), so a verifier can fetch exactly the readings a
leaf hashed — a reading flushed late by a logger may fall inside an older batch's time
range, so time alone would not say which batch holds it.

The store takes the log's lock first (``EvidenceLog.reserve``), so it knows the next
index before it writes a row; devices get consecutive indices in the order they first
appear in the batch. Only readings really inserted are covered: a redelivered reading
is already covered by the leaf of the batch that first stored it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from telemetry.evidence.canonical import ReadingsBatch, readings_batch_from_rows
from telemetry.readings import Reading

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_ONE_US = timedelta(microseconds=1)


def ts_us(ts: datetime) -> int:
    return (ts - _EPOCH) // _ONE_US


@dataclass(frozen=True, slots=True)
class BatchPlan:
    rows: list[tuple]  # each reading's COPY row, with its leaf index appended
    records: list[ReadingsBatch]  # one per device, in index order
    first_index: int

    @property
    def indices(self) -> list[int]:
        return list(range(self.first_index, self.first_index + len(self.records)))


def plan_batches(readings: Sequence[Reading], first_index: int) -> BatchPlan:
    """Leaf records for ``readings`` (already free of keys stored before and of repeats
    within the batch), numbered from ``first_index``, and the rows to insert."""
    leaf_of: dict[str, int] = {}
    per_device: dict[str, list[tuple]] = {}
    rows: list[tuple] = []
    for r in readings:
        leaf = leaf_of.get(r.device_id)
        if leaf is None:
            leaf = leaf_of[r.device_id] = first_index + len(leaf_of)
            per_device[r.device_id] = []
        per_device[r.device_id].append((ts_us(r.ts), r.temp_c, r.rh, r.battery_v, r.door_open, r.seq))
        rows.append((*r, leaf))
    records = [readings_batch_from_rows(device, dev_rows) for device, dev_rows in per_device.items()]
    return BatchPlan(rows, records, first_index)


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
