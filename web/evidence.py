"""The evidence log as the web tier runs it: appends outside ingest, and checkpoints.

Ingest appends the leaves covering readings itself, in its own transactions (the
store's ``evidence``). This service adds what the web tier writes — alert events,
shipments, file manifests — each in its own transaction, and signs a checkpoint every
``checkpoint_interval_s`` while the tree grows (and on demand, at a shipment's close).

Without a signing key the log still grows (every reading stays covered) but nothing is
signed, and the checkpoint endpoints say how to make a key (``origincast keys init``).
The key is read from its file at start and lives only in this object's signer.

At a shipment's close (``close_shipment``, the one sequence the API and the CLI run)
the readings of the route's devices are sealed into leaves first (their batches may be
open in this process's ingester or another's: telemetry.storage.evidence_batches), then
the close is saved with its shipment_closed leaf, then a checkpoint covering that leaf
is signed and, with a timestamp authority configured, sent for an RFC 3161 token
(web.tsa): in the background, retried until the authority answers, so a close never
waits for it or fails because of it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable, Sequence

from telemetry.evidence.canonical import LeafRecord
from telemetry.evidence.keys import KeyFileError, load_key
from telemetry.evidence.log import EvidenceLog, SignedCheckpoint
from telemetry.evidence.note import NoteSigner
from telemetry.shipments import Shipment, ShipmentState
from telemetry.storage import StorageUnavailable, Store
from telemetry.storage.evidence_batches import SEAL_WAIT_S
from web.tsa import StoredTimestamp, Timestamper, TimestampStore, TsaSettings

log = logging.getLogger(__name__)

ON_DEMAND_MIN_INTERVAL_S = 1.0


class NoSigningKey(RuntimeError):
    """The server has no signing key, so it signs no checkpoints."""


class ReadingsNotSealed(RuntimeError):
    """A shipment's devices have readings in batches their ingester did not seal in time:
    closing now would leave them out of what the close's checkpoint proves."""

    def __init__(self, devices: Sequence[str], wait_s: float) -> None:
        super().__init__(
            f"the readings of {', '.join(devices)} are held in open evidence batches by an ingester"
            f" that did not seal them within {wait_s:g} s; the shipment is not closed, try again"
        )
        self.devices = list(devices)


async def close_shipment(
    store: Store,
    shipment: Shipment,
    save: Callable[[], Awaitable[Shipment]],
    closed: Callable[[Shipment], Awaitable[None]] | None,
    wait_s: float | None = None,
) -> Shipment:
    """Close a shipment the one way: seal its route's devices' readings (this store's
    batches, those of writers gone, and those of live ingesters, asked and waited for),
    then ``save`` (which stores the close and its shipment_closed leaf), then ``closed``
    (the checkpoint covering that leaf and the timestamp request). A shipment closed
    already goes straight to ``save``, which refuses it."""
    wait_s = SEAL_WAIT_S if wait_s is None else wait_s
    devices = sorted({s.device_id for s in shipment.segments})
    if devices and shipment.state is ShipmentState.OPEN:
        left = await asyncio.to_thread(store.seal_pending, devices, wait_s=wait_s)
        if left:
            raise ReadingsNotSealed(left, wait_s)
    saved = await save()
    if closed is not None:
        await closed(saved)
    return saved


class EvidenceService:
    def __init__(
        self,
        store: Store,
        signer: NoteSigner | None,
        checkpoint_interval_s: float = 60.0,
        tsa: TsaSettings | None = None,
    ) -> None:
        self._store = store
        self._signer = signer
        # Its own EvidenceLog, with the key (the store's appends without one): both sync
        # from the stored head, so they may take turns on the same tree.
        self.log = EvidenceLog(store.evidence.storage, signer)
        self._interval = checkpoint_interval_s
        self._task: asyncio.Task[None] | None = None
        self._on_demand = asyncio.Lock()
        self._last: SignedCheckpoint | None = None
        self._last_at = 0.0
        self.timestamps = TimestampStore(lambda: store)
        self._timestamper: Timestamper | None = None
        if tsa is not None and tsa.url is not None and signer is not None:
            self._timestamper = Timestamper(tsa, self.timestamps, signer.name, signer.key_id)

    @classmethod
    def from_key_file(
        cls, store: Store, key_file: str, checkpoint_interval_s: float, tsa: TsaSettings | None = None
    ) -> EvidenceService:
        signer: NoteSigner | None = None
        if key_file:
            try:
                signer = load_key(key_file)
            except KeyFileError as exc:
                # Serving without checkpoints beats not serving: readings stay covered and
                # a checkpoint signed later covers them all.
                log.warning("evidence log: %s; checkpoints are not signed until there is a key", exc)
        return cls(store, signer, checkpoint_interval_s, tsa)

    @property
    def signer(self) -> NoteSigner | None:
        return self._signer

    @property
    def vkey(self) -> str | None:
        return None if self._signer is None else self._signer.vkey

    @property
    def tsa_url(self) -> str | None:
        """The timestamp authority checkpoints are sent to at a close (None: none)."""
        return None if self._timestamper is None else self._timestamper.url

    @property
    def timestamper(self) -> Timestamper | None:
        return self._timestamper

    async def start(self) -> None:
        if self._signer is not None:
            self._task = asyncio.create_task(self._checkpoint_loop(), name="evidence-checkpoints")
        if self._timestamper is not None:
            await self._timestamper.start()

    async def stop(self) -> None:
        if self._timestamper is not None:
            await self._timestamper.stop()
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        if self._signer is not None:
            # the last leaves of this run get a signature before the process goes
            with contextlib.suppress(StorageUnavailable, RuntimeError):
                await self.checkpoint()

    async def append(self, records: Sequence[LeafRecord]) -> list[int]:
        """Append records in a transaction of their own; returns their leaf indices."""

        def run() -> list[int]:
            with self._store.evidence_transaction() as conn:
                return self.log.append(conn, records)

        return await asyncio.to_thread(run)

    async def checkpoint(self, *, force: bool = False) -> SignedCheckpoint:
        """Sign the current tree (unless the latest checkpoint already covers it)."""
        if self._signer is None:
            raise NoSigningKey("this server has no signing key: run `origincast keys init`")

        def run() -> SignedCheckpoint:
            with self._store.evidence_transaction() as conn:
                return self.log.checkpoint(conn, force=force)

        return await asyncio.to_thread(run)

    async def shipment_closed(self, closed_leaf: int | None) -> SignedCheckpoint | None:
        """Sign a checkpoint that covers a shipment's closing leaf and, with a timestamp
        authority, queue the request for its token. None without a signing key."""
        if self._signer is None:
            return None
        cp = await self.checkpoint()
        if closed_leaf is not None and cp.size <= closed_leaf:
            cp = await self.checkpoint(force=True)
        if self._timestamper is not None:
            await self._timestamper.anchor(cp)
        return cp

    async def timestamp_covering(self, leaf: int) -> StoredTimestamp | None:
        """The timestamp (answered, else pending) of the first anchored checkpoint that
        includes ``leaf``."""
        if self._signer is None:
            return None
        signer = self._signer
        return await asyncio.to_thread(self.timestamps.covering, signer.name, signer.key_id, leaf)

    async def current_checkpoint(self) -> SignedCheckpoint:
        """A checkpoint covering what is committed now, signed on demand (at most once a
        second, whoever asks): a page verifying a reading stored a moment ago needs a
        checkpoint that includes it, not the one of up to a minute ago."""
        now = time.monotonic()
        if self._last is not None and now - self._last_at < ON_DEMAND_MIN_INTERVAL_S:
            return self._last
        async with self._on_demand:
            if self._last is None or time.monotonic() - self._last_at >= ON_DEMAND_MIN_INTERVAL_S:
                self._last = await self.checkpoint()
                self._last_at = time.monotonic()
        return self._last

    async def _checkpoint_loop(self) -> None:
        while True:
            try:
                cp = await self.checkpoint()
                log.debug("evidence checkpoint at size %d", cp.size)
            except StorageUnavailable as exc:
                log.warning("evidence checkpoint postponed: %s", exc)
            except Exception:
                # an IntegrityError above all: the log was changed behind our back, and
                # signing stops (the log refuses); say so loudly every interval
                log.exception("evidence checkpoint refused")
            await asyncio.sleep(self._interval)
