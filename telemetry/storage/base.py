"""The one narrow interface every storage back end implements.

Methods are synchronous: the ingester calls them from its own writer thread, the web
tier through ``asyncio.to_thread``. Each back end is safe to call from several threads.
"""

from __future__ import annotations

from collections.abc import Sequence
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
        """The evidence log in this database: write_batch appends the leaves covering
        each batch's new readings in the batch's own transaction."""
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
