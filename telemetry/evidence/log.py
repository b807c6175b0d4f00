"""EvidenceLog: the append-only log over SQL storage.

The in-memory frontier (the right edge of the tree) makes an append O(log n): one leaf
hash, the nodes it completes, and the new root. It is a cache of the database, checked
at each append against the stored head (size and root after the last leaf), so a
rolled-back transaction or another process appending only costs a reload of
O(log n) nodes.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from telemetry.evidence import merkle
from telemetry.evidence.canonical import (
    Correction,
    LeafRecord,
    LeafRef,
    ReadingsBatch,
    RecordError,
    canonical,
)
from telemetry.evidence.merkle import Frontier, Node
from telemetry.evidence.note import Checkpoint, NoteSigner, open_checkpoint, sign_checkpoint
from telemetry.evidence.storage import EvidenceStorage, StoredLeaf
from telemetry.evidence.tiles import TILE_HEIGHT, TILE_WIDTH, encode_entry_bundle, tile_width


class IntegrityError(RuntimeError):
    """The stored log disagrees with itself or with a checkpoint it signed: someone
    changed it behind the log's back. The log refuses to sign anything further."""


@dataclass(frozen=True, slots=True)
class SignedCheckpoint:
    size: int
    root_hash: bytes
    note: str


class _StoredNodes:
    """merkle.HashSource over one cursor."""

    def __init__(self, storage: EvidenceStorage, cur: Any) -> None:
        self._storage = storage
        self._cur = cur

    def node_hashes(self, nodes: Sequence[Node]) -> dict[Node, bytes]:
        got = self._storage.fetch_nodes(self._cur, nodes)
        missing = [n for n in nodes if n not in got]
        if missing:
            raise IntegrityError(f"tree nodes missing from storage: {missing[:5]}")
        return got


class EvidenceLog:
    """One log: its storage dialect and (for checkpoints) its signing key, whose name is
    the log's origin. Methods take a DB-API connection and work in its transaction."""

    def __init__(self, storage: EvidenceStorage, signer: NoteSigner | None = None) -> None:
        self._storage = storage
        self._signer = signer
        self._frontier = Frontier()
        self._root: bytes | None = None  # root stored with the frontier's last leaf
        self._last_batch: dict[str, LeafRef] = {}

    @property
    def origin(self) -> str | None:
        return None if self._signer is None else self._signer.name

    @property
    def storage(self) -> EvidenceStorage:
        return self._storage

    # -- append ------------------------------------------------------------------------

    def reserve(self, conn: Any) -> int:
        """Take the log's lock for the rest of the caller's transaction and return the
        index the next leaf will get. A writer that must store a leaf's index with the
        data it covers (readings carry their batch's leaf) calls this before writing,
        then ``append``; the lock keeps every other appender out in between."""
        self._storage.require_transaction(conn)
        cur = conn.cursor()
        try:
            self._sync(cur, self._storage.lock_head(cur))
        finally:
            cur.close()
        return self._frontier.size

    def append(self, conn: Any, records: Sequence[LeafRecord]) -> list[int]:
        """Add records as leaves in the caller's open transaction; returns their indices.

        Readings batches must come without ``prev``: it is filled in here, under the lock
        that orders appends, from the device's latest batch leaf. Nothing is committed:
        if the caller rolls back, the leaves vanish with the data they cover.
        """
        if not records:
            return []
        self._storage.require_transaction(conn)
        cur = conn.cursor()
        try:
            self._sync(cur, self._storage.lock_head(cur))
            devices = [r.device_id for r in records if isinstance(r, ReadingsBatch)]
            unknown = [d for d in dict.fromkeys(devices) if d not in self._last_batch]
            if unknown:
                self._last_batch.update(self._storage.last_batches(cur, unknown))
            frontier = self._frontier.copy()
            last_batch: dict[str, LeafRef] = {}
            leaves: list[tuple[int, bytes, bytes, str, str | None, bytes]] = []
            nodes: list[tuple[int, int, bytes]] = []
            for record in records:
                index = frontier.size
                device_id = None
                if isinstance(record, ReadingsBatch):
                    if record.prev is not None:
                        raise RecordError("a readings batch's prev is set by the log, not the caller")
                    device_id = record.device_id
                    prev = last_batch.get(device_id) or self._last_batch.get(device_id)
                    record = record.with_prev(prev)
                elif isinstance(record, Correction) and record.amends >= index:
                    raise RecordError(f"correction amends leaf {record.amends}, which is not in the log")
                entry = canonical(record)
                h = merkle.leaf_hash(entry)
                nodes.extend(frontier.append(h))
                leaves.append((index, h, entry, record.kind, device_id, frontier.root()))
                if device_id is not None:
                    last_batch[device_id] = LeafRef(index, h)
            self._storage.insert(cur, leaves, nodes)
        finally:
            cur.close()
        self._frontier = frontier
        self._root = leaves[-1][5]
        self._last_batch.update(last_batch)
        return [row[0] for row in leaves]

    def _sync(self, cur: Any, head: tuple[int, bytes | None]) -> None:
        size, root = head
        if size == self._frontier.size and root == self._root:
            return
        # a rolled-back append of ours, or another appender: reload from what is stored
        self._last_batch.clear()
        wanted = Frontier.nodes(size)
        got = _StoredNodes(self._storage, cur).node_hashes(wanted)
        frontier = Frontier(size, [got[n] for n in wanted])
        if size and frontier.root() != root:
            raise IntegrityError(f"stored nodes do not fold to the stored root of size {size}")
        self._frontier = frontier
        self._root = root

    # -- reads -------------------------------------------------------------------------

    def size(self, conn: Any) -> int:
        with _cursor(conn) as cur:
            return self._storage.head(cur)[0]

    def root(self, conn: Any, size: int) -> bytes:
        """The root of the tree of ``size`` leaves (any size up to the current one)."""
        if size == 0:
            return merkle.EMPTY_ROOT
        with _cursor(conn) as cur:
            got = self._storage.root_at(cur, size)
        if got is None:
            raise ValueError(f"the log has fewer than {size} leaves")
        return got

    def leaves(self, conn: Any, start: int, end: int) -> list[StoredLeaf]:
        with _cursor(conn) as cur:
            return self._storage.leaves(cur, start, end)

    def device_leaves(self, conn: Any, device_id: str, start: int = 0, end: int = 2**62) -> list[StoredLeaf]:
        """A device's readings-batch leaves with index in [start, end), in order."""
        with _cursor(conn) as cur:
            return self._storage.device_leaves(cur, device_id, start, end)

    def next_device_leaf(self, conn: Any, device_id: str, after: int) -> StoredLeaf | None:
        with _cursor(conn) as cur:
            return self._storage.next_device_leaf(cur, device_id, after)

    def inclusion_proof(self, conn: Any, index: int, size: int) -> list[bytes]:
        return self.inclusion_proofs(conn, [index], size)[index]

    def inclusion_proofs(self, conn: Any, indices: Iterable[int], size: int) -> dict[int, list[bytes]]:
        """Proofs for many leaves against the tree of ``size`` leaves, from one fetch."""
        with _cursor(conn) as cur:
            self._require_size(cur, size)
            return merkle.inclusion_proofs(_StoredNodes(self._storage, cur), indices, size)

    def multi_inclusion_proof(self, conn: Any, indices: Iterable[int], size: int) -> list[bytes]:
        """One proof for many leaves against the tree of ``size`` leaves (merkle's
        multi-leaf proof: each hash it needs once), from one fetch."""
        with _cursor(conn) as cur:
            self._require_size(cur, size)
            return merkle.multi_inclusion_proof(_StoredNodes(self._storage, cur), indices, size)

    def consistency_proof(self, conn: Any, old: int, new: int) -> list[bytes]:
        with _cursor(conn) as cur:
            self._require_size(cur, new)
            return merkle.consistency_proof(_StoredNodes(self._storage, cur), old, new)

    def _require_size(self, cur: Any, size: int) -> None:
        current = self._storage.head(cur)[0]
        if not 0 <= size <= current:
            raise ValueError(f"no tree of size {size}: the log has {current} leaves")

    # -- tiles -------------------------------------------------------------------------

    def tile(self, conn: Any, level: int, index: int, width: int) -> bytes | None:
        """Tile (level, index) of ``width`` hashes, or None if the log is not that big
        yet. A partial tile is a prefix of the full one, so any width up to what the
        tree holds can be served."""
        if not 0 <= level <= 63 or not 1 <= width <= TILE_WIDTH or index < 0:
            raise ValueError("no such tile")
        with _cursor(conn) as cur:
            size = self._storage.head(cur)[0]
            if tile_width(level, index, size) < width:
                return None
            start = index * TILE_WIDTH
            hashes = self._storage.level_range(cur, TILE_HEIGHT * level, start, start + width)
        if len(hashes) != width:
            raise IntegrityError(f"tile {level}/{index} is missing stored hashes")
        return b"".join(hashes)

    def entry_bundle(self, conn: Any, index: int, width: int) -> bytes | None:
        if not 1 <= width <= TILE_WIDTH or index < 0:
            raise ValueError("no such entry bundle")
        with _cursor(conn) as cur:
            size = self._storage.head(cur)[0]
            if tile_width(0, index, size) < width:
                return None
            start = index * TILE_WIDTH
            leaves = self._storage.leaves(cur, start, start + width)
        if len(leaves) != width:
            raise IntegrityError(f"entry bundle {index} is missing stored leaves")
        return encode_entry_bundle([leaf.entry for leaf in leaves])

    # -- checkpoints -------------------------------------------------------------------

    def checkpoint(self, conn: Any, *, force: bool = False) -> SignedCheckpoint:
        """Sign the tree as this connection sees it (committed leaves) and store the note.

        Without ``force`` the latest stored checkpoint is returned when the tree has not
        grown since. Before signing, the stored nodes must fold to the stored root and
        the new tree must be consistent with the last checkpoint this key signed: a log
        must never sign two inconsistent checkpoints, so tampering stops the signing.
        """
        signer = self._signer
        if signer is None:
            raise RuntimeError("this EvidenceLog has no signing key")
        with _cursor(conn) as cur:
            size, stored_root = self._storage.head(cur)
            latest = self._storage.latest_checkpoint(cur, signer.name, signer.key_id)
            if latest is not None and latest[0] == size and not force:
                return SignedCheckpoint(*latest)
            source = _StoredNodes(self._storage, cur)
            root = merkle.root(source, size)
            if size and root != stored_root:
                raise IntegrityError(f"stored nodes do not fold to the stored root of size {size}")
            if latest is not None:
                old_size, old_root, _ = latest
                if old_size > size:
                    raise IntegrityError(f"the log shrank from {old_size} to {size} leaves")
                proof = merkle.consistency_proof(source, old_size, size)
                try:
                    merkle.verify_consistency(old_size, size, old_root, root, proof)
                except merkle.ProofError as exc:
                    raise IntegrityError(
                        f"tree of size {size} is not consistent with checkpoint {old_size}: {exc}"
                    ) from None
            note = sign_checkpoint(Checkpoint(signer.name, size, root), signer)
            self._storage.insert_checkpoint(cur, size, signer.name, signer.key_id, root, note)
        return SignedCheckpoint(size, root, note)

    def latest_checkpoint(self, conn: Any) -> SignedCheckpoint | None:
        signer = self._signer
        if signer is None:
            raise RuntimeError("this EvidenceLog has no signing key")
        with _cursor(conn) as cur:
            got = self._storage.latest_checkpoint(cur, signer.name, signer.key_id)
        return None if got is None else SignedCheckpoint(*got)

    def checkpoint_at(self, conn: Any, size: int) -> SignedCheckpoint | None:
        signer = self._signer
        if signer is None:
            raise RuntimeError("this EvidenceLog has no signing key")
        with _cursor(conn) as cur:
            note = self._storage.checkpoint_at(cur, signer.name, signer.key_id, size)
        if note is None:
            return None
        cp, _ = open_checkpoint(note, signer.verifier())
        return SignedCheckpoint(cp.size, cp.root_hash, note)


class _cursor:
    """A cursor closed on exit (sqlite3 cursors are not context managers)."""

    def __init__(self, conn: Any) -> None:
        self._cur = conn.cursor()

    def __enter__(self) -> Any:
        return self._cur

    def __exit__(self, *exc: object) -> None:
        self._cur.close()
