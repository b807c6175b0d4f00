"""The one narrow interface every storage back end implements.

Methods are synchronous: the ingester calls them from its own writer thread, the web
tier through ``asyncio.to_thread``. Each back end is safe to call from several threads.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Protocol

from telemetry.evidence.log import EvidenceLog
from telemetry.readings import Bucket, Reading, Rejection
from telemetry.storage.alerts import AlertStore
from telemetry.storage.shipments import ShipmentStore


class StorageUnavailable(Exception):
    """The database cannot be reached now; the caller retries with backoff."""


@dataclass(frozen=True, slots=True)
class WriteResult:
    inserted: int  # new rows stored
    duplicates: int  # rows whose (device_id, ts) was already stored: redeliveries


class Store(AlertStore, ShipmentStore, Protocol):
    kind: str  # "timescale", "postgres" or "sqlite"

    def open(self) -> None: ...

    def close(self) -> None: ...

    def migrate(self) -> list[str]:
        """Apply pending migrations; return the names applied (empty when up to date)."""
        ...

    def write_batch(
        self, readings: Sequence[Reading], rejections: Sequence[Rejection]
    ) -> WriteResult:
        """Store readings (idempotent on device_id+ts) and rejections in ONE transaction.

        Returns only after commit. Raises StorageUnavailable when the database is down;
        then nothing of the batch may be assumed stored, and a retry is safe.
        """
        ...

    @property
    def evidence(self) -> EvidenceLog:
        """The evidence log in this database. Readings are covered by readings_batch
        leaves sealed per device over a time window (telemetry.storage.evidence_batches):
        write_batch gives each new row its batch and seals the batches then due, in a
        transaction after the readings' own."""
        ...

    def seal_due(self) -> int:
        """The writer's tick (about once a second): seal this store's batches open as
        long as the window or asked for by a closer, and batches whose owner is gone.
        Returns the number of leaves written."""
        ...

    def seal_pending(self, device_ids: Collection[str] | None = None, *, wait_s: float = 0.0) -> list[str]:
        """Seal now every batch this store holds (of the given devices, or all) and those
        whose owner is gone; with devices and ``wait_s``, have live owners seal theirs and
        wait for them. Returns the devices whose readings are still not all sealed."""
        ...

    def pending_readings(self, device_id: str, start: datetime, end: datetime) -> list[Reading]:
        """A device's stored readings in [start, end) that no sealed readings_batch leaf
        covers yet, in time order: recorded, not yet sealed (and readings stored with
        the log off, which never will be)."""
        ...

    def evidence_connection(self) -> AbstractContextManager[Any]:
        """A DB-API connection for the evidence log's reads and for appends outside
        ingest (PostgreSQL: autocommit, append inside ``conn.transaction()``; SQLite:
        the store's connection under its lock, append inside BEGIN IMMEDIATE)."""
        ...

    def evidence_transaction(self) -> AbstractContextManager[Any]:
        """A connection inside a transaction that commits when the block ends: for
        appending to the evidence log, and signing checkpoints, outside ingest."""
        ...

    def leaves_covering(self, device_id: str, start_us: int, end_us: int) -> list[int]:
        """The indices of the readings_batch leaves covering a device's readings in
        [start_us, end_us), ascending."""
        ...

    def readings_of_leaf(self, device_id: str, leaf: int, ts_first_us: int, ts_last_us: int) -> list[Reading]:
        """The readings a readings_batch leaf covers (its device and time range, then
        its index), in time order: what a verifier recomputes the leaf's digest from."""
        ...

    def latest(self, device_ids: Sequence[str] | None = None) -> list[Reading]:
        """The latest reading of each device (of the given ones, or all)."""
        ...

    def history(
        self, device_id: str, start: datetime, end: datetime, bucket: timedelta
    ) -> list[Bucket]:
        """min/max/mean/count of one device's readings in [start, end), bucketed."""
        ...

    def count_readings(self, device_id: str | None = None) -> int: ...

    def recent_rejections(self, limit: int = 100) -> list[Rejection]: ...

    def apply_retention(self) -> int:
        """Drop readings older than the retention period; return how many chunks/rows."""
        ...
