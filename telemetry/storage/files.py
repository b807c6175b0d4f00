"""The rows of uploaded files (telemetry.files), for both dialects, written with the
evidence leaf that fingerprints each file in one transaction.

It works through what every store offers the evidence log (``evidence`` and
``evidence_connection()``): a PostgreSQL pool connection in autocommit mode, where
``conn.transaction()`` is the transaction, or SQLite's one connection under the store's
lock, where we BEGIN IMMEDIATE ourselves.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager
from datetime import UTC, datetime, timedelta
from typing import Any, Protocol

from telemetry.evidence.canonical import MediaManifest, TestReport
from telemetry.evidence.log import EvidenceLog
from telemetry.files import FileKind, StoredFile

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_US = timedelta(microseconds=1)
_COLUMNS = (
    "id, product_batch, shipment_id, kind, sha256, size, content_type, name, uploaded_at,"
    " uploaded_by, evidence_leaf"
)


class EvidenceStore(Protocol):
    @property
    def evidence(self) -> EvidenceLog: ...

    def evidence_connection(self) -> AbstractContextManager[Any]: ...


def _us(t: datetime) -> int:
    return (t - _EPOCH) // _US


class FileCatalog:
    def __init__(self, store: Callable[[], EvidenceStore]) -> None:
        # Looked up per call: the store opens in the app's cleanup_ctx, after this is made.
        self._store = store

    @contextmanager
    def _tx(self) -> Iterator[tuple[Any, bool]]:
        with self._store().evidence_connection() as conn:
            if isinstance(conn, sqlite3.Connection):
                conn.execute("BEGIN IMMEDIATE")
                try:
                    yield conn, True
                    conn.execute("COMMIT")
                except BaseException:
                    conn.execute("ROLLBACK")
                    raise
            else:
                with conn.transaction():
                    yield conn, False

    @contextmanager
    def _read(self) -> Iterator[tuple[Any, bool]]:
        with self._store().evidence_connection() as conn:
            yield conn, isinstance(conn, sqlite3.Connection)

    def add(
        self,
        *,
        product_batch: str,
        shipment_id: str | None,
        kind: FileKind,
        sha256: str,
        size: int,
        content_type: str,
        name: str,
        uploaded_by: str | None,
        at: datetime,
    ) -> StoredFile:
        """The upload's row and its evidence leaf, committed together."""
        cls = TestReport if kind is FileKind.TEST_REPORT else MediaManifest
        record = cls(
            sha256=sha256,
            size=size,
            content_type=content_type,
            name=name,
            at_us=_us(at),
            product_batch=product_batch,
            shipment_id=shipment_id,
        )
        log = self._store().evidence
        with self._tx() as (conn, lite):
            (leaf,) = log.append(conn, [record])
            params = (product_batch, shipment_id, kind.value, sha256, size, content_type, name)
            if lite:
                cur = conn.execute(
                    "INSERT INTO batch_files (product_batch, shipment_id, kind, sha256, size, content_type,"
                    " name, uploaded_at, uploaded_by, evidence_leaf) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    (*params, _us(at), uploaded_by, leaf),
                )
                new_id = int(cur.lastrowid)
            else:
                new_id = conn.execute(
                    "INSERT INTO batch_files (product_batch, shipment_id, kind, sha256, size, content_type,"
                    " name, uploaded_at, uploaded_by, evidence_leaf)"
                    " VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s) RETURNING id",
                    (*params, at, uploaded_by, leaf),
                ).fetchone()[0]
        return StoredFile(
            int(new_id),
            product_batch,
            shipment_id,
            kind,
            sha256,
            size,
            content_type,
            name,
            at,
            uploaded_by,
            leaf,
        )

    def for_batch(self, product_batch: str, shipment_id: str | None = None) -> list[StoredFile]:
        """A batch's files, oldest first; with ``shipment_id``, those of the batch that
        name no shipment or name this one."""
        with self._read() as (conn, lite):
            p = "?" if lite else "%s"
            sql = f"SELECT {_COLUMNS} FROM batch_files WHERE product_batch = {p}"
            params: list[object] = [product_batch]
            if shipment_id is not None:
                sql += f" AND (shipment_id IS NULL OR shipment_id = {p})"
                params.append(shipment_id)
            rows = conn.execute(sql + " ORDER BY id", params).fetchall()
        return [_row(r) for r in rows]

    def by_sha256(self, sha256: str) -> StoredFile | None:
        with self._read() as (conn, lite):
            p = "?" if lite else "%s"
            row = conn.execute(
                f"SELECT {_COLUMNS} FROM batch_files WHERE sha256 = {p} ORDER BY id LIMIT 1", (sha256,)
            ).fetchone()
        return None if row is None else _row(row)


def _row(r: Sequence[Any]) -> StoredFile:
    at = r[8]
    when = at.astimezone(UTC) if isinstance(at, datetime) else _EPOCH + timedelta(microseconds=int(at))
    return StoredFile(
        id=int(r[0]),
        product_batch=r[1],
        shipment_id=r[2],
        kind=FileKind(r[3]),
        sha256=r[4],
        size=int(r[5]),
        content_type=r[6],
        name=r[7],
        uploaded_at=when,
        uploaded_by=r[9],
        evidence_leaf=int(r[10]),
    )


__all__ = ["FileCatalog"]
