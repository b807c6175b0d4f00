"""RFC 3161 time anchoring of the evidence log.

At a shipment's close the checkpoint then signed is sent to a timestamp authority (TSA,
``evidence.tsa_url``): the request carries SHA-256 of the checkpoint's signed note, the
answer is a token in which the TSA signs that hash together with the time. A checkpoint
commits to every leaf before it, so the token dates the whole record up to the close:
nobody (the merchant included) can have written it later than that.

The close never waits for the TSA and never fails because of it. ``Timestamper.anchor``
stores a pending request (``evidence_timestamps``, a row without a response) and wakes
the background loop, which makes the request and, while the TSA is down or answers
wrongly, retries every ``retry_s`` seconds until it is answered. A bundle built
meanwhile says "no timestamp yet".

The response is checked before it is stored: granted, over our hash, with our nonce.
Whether the TSA's certificate is one to trust is for the verifier to decide with the
certificates it chooses (``origincast verify --tsa-cert``), not for the server.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import sqlite3
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import aiohttp
import rfc3161_client

from telemetry.evidence.log import SignedCheckpoint
from telemetry.storage import StorageUnavailable, Store

log = logging.getLogger(__name__)

REQUEST_TYPE = "application/timestamp-query"
REPLY_TYPE = "application/timestamp-reply"
MAX_REPLY_BYTES = 64 * 1024  # a token with a certificate chain is a few KiB
PENDING_BATCH = 20  # requests retried per round, oldest first
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_US = timedelta(microseconds=1)


class TimestampError(RuntimeError):
    """The TSA could not be reached or gave no usable token (the message says which)."""


@dataclass(frozen=True, slots=True)
class TsaSettings:
    url: str | None = None  # None: no time anchoring
    timeout_s: float = 10.0
    retry_s: float = 60.0


@dataclass(frozen=True, slots=True)
class StoredTimestamp:
    """One row of ``evidence_timestamps``: a request, and its answer once there is one."""

    key_name: str
    key_id: int
    tree_size: int
    note: str
    tsa_url: str
    requested_at: datetime
    attempts: int
    last_error: str | None
    response: bytes | None
    gen_time: datetime | None

    @property
    def stamped(self) -> bool:
        return self.response is not None


def message_of(note: str) -> bytes:
    """The bytes a checkpoint's token is over: the whole signed note, UTF-8."""
    return note.encode("utf-8")


class TimestampClient:
    """Asks one TSA for a token over a message (RFC 3161 over HTTP, RFC 3161 §3.4)."""

    def __init__(self, url: str, timeout_s: float) -> None:
        self._url = url
        self._timeout = aiohttp.ClientTimeout(total=timeout_s)

    @property
    def url(self) -> str:
        return self._url

    async def stamp(self, message: bytes) -> tuple[bytes, datetime]:
        """The DER TimeStampResp and its time, once checked to be a granted token over
        SHA-256 of ``message`` answering this very request (its nonce)."""
        request = (
            rfc3161_client.TimestampRequestBuilder()
            .data(message)
            .hash_algorithm(rfc3161_client.HashAlgorithm.SHA256)
            .nonce(nonce=True)
            .cert_request(cert_request=True)
            .build()
        )
        try:
            async with (
                aiohttp.ClientSession(timeout=self._timeout) as session,
                session.post(
                    self._url, data=request.as_bytes(), headers={"Content-Type": REQUEST_TYPE}
                ) as response,
            ):
                if response.status != 200:
                    raise TimestampError(f"the TSA answered HTTP {response.status}")
                body = await response.content.read(MAX_REPLY_BYTES + 1)
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise TimestampError(f"the TSA is unreachable: {exc or type(exc).__name__}") from None
        if len(body) > MAX_REPLY_BYTES:
            raise TimestampError(f"the TSA's answer is larger than {MAX_REPLY_BYTES} bytes")
        return body, check_response(body, message, request.nonce)


def check_response(body: bytes, message: bytes, nonce: int | None) -> datetime:
    """The token's time if ``body`` is a granted TimeStampResp over SHA-256 of
    ``message`` (with ``nonce`` when given); TimestampError naming what is wrong."""
    try:
        response = rfc3161_client.decode_timestamp_response(body)
    except ValueError as exc:
        raise TimestampError(f"the TSA's answer is not a timestamp response: {exc}") from None
    if response.status != rfc3161_client.PKIStatus.GRANTED:
        raise TimestampError(f"the TSA refused: status {response.status} {response.status_string}")
    info = response.tst_info
    if info.message_imprint.message != hashlib.sha256(message).digest():
        raise TimestampError("the TSA's token is over another hash than the checkpoint's")
    if nonce is not None and info.nonce != nonce:
        raise TimestampError("the TSA's token answers another request (nonce differs)")
    return info.gen_time.astimezone(UTC)


class TimestampStore:
    """``evidence_timestamps`` over the store's evidence connections (both dialects)."""

    _COLUMNS = (
        "key_name, key_id, tree_size, note, tsa_url, requested_at, attempts, last_error, response, gen_time"
    )

    def __init__(self, store: Callable[[], Store]) -> None:
        # Looked up per call: the store opens in the app's cleanup_ctx.
        self._store = store

    def request(self, cp: SignedCheckpoint, key_name: str, key_id: int, tsa_url: str, at: datetime) -> None:
        """A pending request for this checkpoint (none if there is already a row)."""
        with self._store().evidence_transaction() as conn:
            lite = isinstance(conn, sqlite3.Connection)
            p = "?" if lite else "%s"
            conn.execute(
                "INSERT INTO evidence_timestamps (key_name, key_id, tree_size, note, tsa_url, requested_at)"
                f" VALUES ({p}, {p}, {p}, {p}, {p}, {p}) ON CONFLICT DO NOTHING",
                (key_name, key_id, cp.size, cp.note, tsa_url, _when(at, lite)),
            )

    def pending(self, key_name: str, key_id: int, limit: int = PENDING_BATCH) -> list[StoredTimestamp]:
        with self._store().evidence_connection() as conn:
            lite = isinstance(conn, sqlite3.Connection)
            p = "?" if lite else "%s"
            rows = conn.execute(
                f"SELECT {self._COLUMNS} FROM evidence_timestamps"
                f" WHERE key_name = {p} AND key_id = {p} AND response IS NULL"
                f" ORDER BY requested_at LIMIT {p}",
                (key_name, key_id, limit),
            ).fetchall()
        return [_row(r) for r in rows]

    def answered(self, row: StoredTimestamp, response: bytes, gen_time: datetime, at: datetime) -> None:
        self._update(row, "response = {p}, gen_time = {p}, stamped_at = {p}, attempts = attempts + 1,"
                     " last_error = NULL", (response, gen_time, at))  # fmt: skip

    def failed(self, row: StoredTimestamp, error: str) -> None:
        self._update(row, "attempts = attempts + 1, last_error = {p}", (error[:1000],))

    def _update(self, row: StoredTimestamp, assignments: str, values: tuple[Any, ...]) -> None:
        with self._store().evidence_transaction() as conn:
            lite = isinstance(conn, sqlite3.Connection)
            p = "?" if lite else "%s"
            converted = tuple(_when(v, lite) if isinstance(v, datetime) else v for v in values)
            conn.execute(
                f"UPDATE evidence_timestamps SET {assignments.format(p=p)}"
                f" WHERE key_name = {p} AND key_id = {p} AND tree_size = {p} AND response IS NULL",
                (*converted, row.key_name, row.key_id, row.tree_size),
            )

    def covering(self, key_name: str, key_id: int, leaf: int) -> StoredTimestamp | None:
        """The first checkpoint (of this key) sent for timestamping that includes leaf
        ``leaf``: the answered one if any is answered, else the oldest pending one."""
        with self._store().evidence_connection() as conn:
            lite = isinstance(conn, sqlite3.Connection)
            p = "?" if lite else "%s"
            rows = conn.execute(
                f"SELECT {self._COLUMNS} FROM evidence_timestamps"
                f" WHERE key_name = {p} AND key_id = {p} AND tree_size > {p}"
                " ORDER BY (response IS NULL), tree_size LIMIT 1",
                (key_name, key_id, leaf),
            ).fetchall()
        return _row(rows[0]) if rows else None


def _when(t: datetime, lite: bool) -> Any:
    return (t - _EPOCH) // _US if lite else t


def _time(v: Any) -> datetime | None:
    if v is None:
        return None
    return v.astimezone(UTC) if isinstance(v, datetime) else _EPOCH + timedelta(microseconds=int(v))


def _row(r: Any) -> StoredTimestamp:
    requested = _time(r[5])
    assert requested is not None
    return StoredTimestamp(
        key_name=r[0],
        key_id=int(r[1]),
        tree_size=int(r[2]),
        note=r[3],
        tsa_url=r[4],
        requested_at=requested,
        attempts=int(r[6]),
        last_error=r[7],
        response=None if r[8] is None else bytes(r[8]),
        gen_time=_time(r[9]),
    )


class Timestamper:
    """Requests tokens for checkpoints and keeps retrying those not answered yet.

    ``anchor`` only records the request and wakes the loop; the loop (started by
    ``start``, ended by ``stop``) asks the TSA, oldest request first."""

    def __init__(
        self,
        settings: TsaSettings,
        store: TimestampStore,
        key_name: str,
        key_id: int,
        client: TimestampClient | None = None,
    ) -> None:
        if settings.url is None:
            raise ValueError("a Timestamper needs a TSA URL")
        self._settings = settings
        self._store = store
        self._key = (key_name, key_id)
        self._client = client or TimestampClient(settings.url, settings.timeout_s)
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    @property
    def url(self) -> str:
        return self._client.url

    async def start(self) -> None:
        # Requests left pending by an earlier run are retried straight away.
        self._wake.set()
        self._task = asyncio.create_task(self._loop(), name="evidence-timestamps")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    async def anchor(self, cp: SignedCheckpoint) -> None:
        """Record a request for a token over ``cp`` and have the loop make it now."""
        await asyncio.to_thread(
            self._store.request, cp, self._key[0], self._key[1], self.url, datetime.now(UTC)
        )
        self._wake.set()

    async def run_once(self) -> int:
        """Ask the TSA for every pending request (a bounded round); how many were answered."""
        pending = await asyncio.to_thread(self._store.pending, *self._key)
        done = 0
        for row in pending:
            try:
                response, gen_time = await self._client.stamp(message_of(row.note))
            except TimestampError as exc:
                log.warning(
                    "timestamp of checkpoint %d from %s postponed (attempt %d): %s",
                    row.tree_size, self.url, row.attempts + 1, exc,
                )  # fmt: skip
                await asyncio.to_thread(self._store.failed, row, str(exc))
                continue
            await asyncio.to_thread(self._store.answered, row, response, gen_time, datetime.now(UTC))
            log.info("checkpoint %d timestamped by %s at %s", row.tree_size, self.url, gen_time.isoformat())
            done += 1
        return done

    async def _loop(self) -> None:
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self._settings.retry_s)
            self._wake.clear()
            try:
                await self.run_once()
            except StorageUnavailable as exc:
                log.warning("timestamps postponed: %s", exc)
            except Exception:
                log.exception("timestamp round failed; retrying in %.0f s", self._settings.retry_s)


__all__ = [
    "REPLY_TYPE",
    "REQUEST_TYPE",
    "StoredTimestamp",
    "TimestampClient",
    "TimestampError",
    "TimestampStore",
    "Timestamper",
    "TsaSettings",
    "check_response",
    "message_of",
]
