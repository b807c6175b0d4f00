"""RFC 6962 / RFC 9162 Merkle tree hashing, proof generation and proof verification.

A tree of ``size`` leaves is addressed by its *perfect* subtrees: ``(level, index)``
is the subtree of ``2**level`` leaves starting at leaf ``index << level``. Those are
the only nodes a log ever stores (they never change once complete); every other hash a
proof needs (the ragged right edge of a tree) is folded from them. Proof generation
first plans which perfect nodes it needs, fetches them in one go from a ``HashSource``
(memory, SQL, tiles) and then hashes: a database answers one query per batch of
proofs, not one per node.

A multi-leaf inclusion proof (``multi_inclusion_proof``) proves many leaves at once: the
hashes of the subtrees that hold none of them, each once, in a fixed order; a verifier
hashes every other node once. For the thousands of leaves of a shipment's trust page
it is a fraction of the per-leaf proofs' size and hashing.
"""

from __future__ import annotations

import hashlib
from bisect import bisect_left
from collections.abc import Iterable, Mapping, Sequence
from typing import Protocol

HASH_SIZE = 32
EMPTY_ROOT = hashlib.sha256(b"").digest()

Node = tuple[int, int]  # (level, index) of a perfect subtree
Range = tuple[int, int]  # [start, end) of leaves


class ProofError(ValueError):
    """A proof that does not verify, or arguments no proof can exist for."""


def leaf_hash(entry: bytes) -> bytes:
    return hashlib.sha256(b"\x00" + entry).digest()


def node_hash(left: bytes, right: bytes) -> bytes:
    return hashlib.sha256(b"\x01" + left + right).digest()


def _split(n: int) -> int:
    """The largest power of two smaller than n (n >= 2): RFC 6962's k."""
    return 1 << ((n - 1).bit_length() - 1)


def range_nodes(start: int, end: int) -> list[Node]:
    """The perfect subtrees that make up [start, end), left to right.

    Only for the ranges RFC 6962's recursion produces, whose start is a multiple of the
    smallest power of two not below their size; for those the binary digits of the size,
    highest first, are the subtrees.
    """
    size = end - start
    if size <= 0:
        raise ValueError(f"empty range [{start}, {end})")
    nodes: list[Node] = []
    pos = start
    for level in range(size.bit_length() - 1, -1, -1):
        if size >> level & 1:
            if pos % (1 << level):
                raise ValueError(f"[{start}, {end}) is not a subtree of an RFC 6962 tree")
            nodes.append((level, pos >> level))
            pos += 1 << level
    return nodes


def fold(hashes: Sequence[bytes]) -> bytes:
    """The hash of a range from its perfect subtrees (left to right): right to left,
    because RFC 6962 splits a ragged range into a full left part and the rest."""
    acc = hashes[-1]
    for h in reversed(hashes[:-1]):
        acc = node_hash(h, acc)
    return acc


def inclusion_ranges(index: int, size: int) -> list[Range]:
    """The ranges whose hashes form PATH(index, D[size]), leaf to root (RFC 6962 2.1.1)."""
    if not 0 <= index < size:
        raise ProofError(f"leaf {index} is not in a tree of size {size}")
    out: list[Range] = []
    start, end = 0, size
    while end - start > 1:
        k = _split(end - start)
        if index - start < k:
            out.append((start + k, end))
            end = start + k
        else:
            out.append((start, start + k))
            start += k
    out.reverse()
    return out


def consistency_ranges(old: int, new: int) -> list[Range]:
    """The ranges whose hashes form PROOF(old, D[new]) (RFC 6962 2.1.2); empty when the
    sizes are equal or the old tree is empty."""
    if not 0 <= old <= new:
        raise ProofError(f"no consistency proof from size {old} to size {new}")
    if old in (0, new):
        return []
    out: list[Range] = []
    start, end, m, whole = 0, new, old, True
    while True:
        n = end - start
        if m == n:
            if not whole:
                out.append((start, end))
            break
        k = _split(n)
        if m <= k:
            out.append((start + k, end))
            end = start + k
        else:
            out.append((start, start + k))
            start += k
            m -= k
            whole = False
    out.reverse()
    return out


class HashSource(Protocol):
    """Where perfect-subtree hashes come from. Every node asked for lies inside the tree
    the caller is proving against; a source that lacks one raises KeyError."""

    def node_hashes(self, nodes: Sequence[Node]) -> Mapping[Node, bytes]: ...


def hashes_for_ranges(source: HashSource, ranges: Sequence[Range]) -> list[bytes]:
    plans = [range_nodes(s, e) for s, e in ranges]
    wanted = list(dict.fromkeys(n for plan in plans for n in plan))
    got = source.node_hashes(wanted) if wanted else {}
    return [fold([got[n] for n in plan]) for plan in plans]


def root(source: HashSource, size: int) -> bytes:
    if size == 0:
        return EMPTY_ROOT
    return hashes_for_ranges(source, [(0, size)])[0]


def inclusion_proof(source: HashSource, index: int, size: int) -> list[bytes]:
    return hashes_for_ranges(source, inclusion_ranges(index, size))


def inclusion_proofs(source: HashSource, indices: Iterable[int], size: int) -> dict[int, list[bytes]]:
    """Proofs for many leaves against one tree, from one fetch of the shared nodes."""
    wanted = list(dict.fromkeys(indices))
    plans = {i: inclusion_ranges(i, size) for i in wanted}
    flat = [r for i in wanted for r in plans[i]]
    hashes = hashes_for_ranges(source, flat)
    out: dict[int, list[bytes]] = {}
    pos = 0
    for i in wanted:
        n = len(plans[i])
        out[i] = hashes[pos : pos + n]
        pos += n
    return out


def consistency_proof(source: HashSource, old: int, new: int) -> list[bytes]:
    return hashes_for_ranges(source, consistency_ranges(old, new))


def _proved_leaves(indices: Iterable[int], size: int) -> list[int]:
    wanted = sorted(set(indices))
    if not wanted:
        raise ProofError("a multi-leaf proof needs at least one leaf")
    if wanted[0] < 0 or wanted[-1] >= size:
        bad = wanted[0] if wanted[0] < 0 else wanted[-1]
        raise ProofError(f"leaf {bad} is not in a tree of size {size}")
    return wanted


def multi_inclusion_ranges(indices: Iterable[int], size: int) -> list[Range]:
    """The ranges whose hashes form the multi-leaf inclusion proof of ``indices`` in the
    tree of ``size`` leaves: RFC 6962's recursion walked from the root, left subtree
    before right, each subtree holding none of the leaves taken whole (and not entered).
    A verifier walks the same recursion (``root_from_multi_inclusion_proof``)."""
    wanted = _proved_leaves(indices, size)
    out: list[Range] = []

    def walk(start: int, end: int, lo: int, hi: int) -> None:
        # wanted[lo:hi] are the leaves in [start, end)
        if lo == hi:
            out.append((start, end))
        elif end - start > 1:
            k = _split(end - start)
            mid = bisect_left(wanted, start + k, lo, hi)
            walk(start, start + k, lo, mid)
            walk(start + k, end, mid, hi)

    walk(0, size, 0, len(wanted))
    return out


def multi_inclusion_proof(source: HashSource, indices: Iterable[int], size: int) -> list[bytes]:
    return hashes_for_ranges(source, multi_inclusion_ranges(indices, size))


class MemoryTree:
    """Every perfect node of a tree held in memory: for verifiers, tests and bundles."""

    def __init__(self, leaf_hashes: Iterable[bytes] = ()) -> None:
        self._levels: list[list[bytes]] = [[]]
        for h in leaf_hashes:
            self.append_hash(h)

    @property
    def size(self) -> int:
        return len(self._levels[0])

    def append(self, entry: bytes) -> int:
        return self.append_hash(leaf_hash(entry))

    def append_hash(self, h: bytes) -> int:
        index = len(self._levels[0])
        self._levels[0].append(h)
        level, i = 0, index
        while i & 1:
            h = node_hash(self._levels[level][i - 1], h)
            level, i = level + 1, i >> 1
            if len(self._levels) == level:
                self._levels.append([])
            self._levels[level].append(h)
        return index

    def node_hashes(self, nodes: Sequence[Node]) -> dict[Node, bytes]:
        return {(lv, i): self._levels[lv][i] for lv, i in nodes}

    def root(self, size: int | None = None) -> bytes:
        return root(self, self.size if size is None else size)


class Frontier:
    """The right edge of a tree: one perfect subtree per set bit of its size, highest
    first. Appending a leaf costs O(log n) hashes and yields the nodes it completed."""

    __slots__ = ("hashes", "size")

    def __init__(self, size: int = 0, hashes: Sequence[bytes] = ()) -> None:
        if len(hashes) != size.bit_count():
            raise ValueError(f"a frontier of size {size} has {size.bit_count()} hashes, not {len(hashes)}")
        self.size = size
        self.hashes = list(hashes)

    @staticmethod
    def nodes(size: int) -> list[Node]:
        return range_nodes(0, size) if size else []

    def append(self, h: bytes) -> list[tuple[int, int, bytes]]:
        """Add a leaf hash; returns the interior nodes (level, index, hash) it completed."""
        completed: list[tuple[int, int, bytes]] = []
        level, i = 0, self.size
        while i & 1:
            h = node_hash(self.hashes.pop(), h)
            level, i = level + 1, i >> 1
            completed.append((level, i, h))
        self.hashes.append(h)
        self.size += 1
        return completed

    def root(self) -> bytes:
        return fold(self.hashes) if self.hashes else EMPTY_ROOT

    def copy(self) -> Frontier:
        return Frontier(self.size, self.hashes)


# -- verification (RFC 9162 2.1.3.2 and 2.1.4.2) ----------------------------------------


def _check_hash(name: str, h: bytes) -> None:
    if len(h) != HASH_SIZE:
        raise ProofError(f"{name} is {len(h)} bytes, not {HASH_SIZE}")


def root_from_inclusion_proof(index: int, size: int, leaf: bytes, proof: Sequence[bytes]) -> bytes:
    """The root a proof leads to from a leaf hash; ProofError if it has the wrong shape."""
    if not 0 <= index < size:
        raise ProofError(f"leaf {index} is not in a tree of size {size}")
    _check_hash("leaf hash", leaf)
    fn, sn, r = index, size - 1, leaf
    for pos, p in enumerate(proof):
        _check_hash(f"proof[{pos}]", p)
        if sn == 0:
            raise ProofError(f"inclusion proof is too long ({len(proof)} hashes)")
        if fn & 1 or fn == sn:
            r = node_hash(p, r)
            while not fn & 1 and fn != 0:
                fn >>= 1
                sn >>= 1
        else:
            r = node_hash(r, p)
        fn >>= 1
        sn >>= 1
    if sn != 0:
        raise ProofError(f"inclusion proof is too short ({len(proof)} hashes)")
    return r


def verify_inclusion(index: int, size: int, leaf: bytes, proof: Sequence[bytes], root_hash: bytes) -> None:
    _check_hash("root hash", root_hash)
    if root_from_inclusion_proof(index, size, leaf, proof) != root_hash:
        raise ProofError(f"leaf {index} is not in the tree of size {size} with that root")


def root_from_multi_inclusion_proof(size: int, leaves: Mapping[int, bytes], proof: Sequence[bytes]) -> bytes:
    """The root a multi-leaf inclusion proof leads to from the leaves' hashes (index ->
    leaf hash); ProofError if the proof has the wrong shape for them and ``size``
    (a hash too few or too many)."""
    wanted = _proved_leaves(leaves, size)
    for index in wanted:
        _check_hash(f"leaf hash {index}", leaves[index])
    for pos, p in enumerate(proof):
        _check_hash(f"proof[{pos}]", p)
    used = 0

    def walk(start: int, end: int, lo: int, hi: int) -> bytes:
        nonlocal used
        if lo == hi:
            if used == len(proof):
                raise ProofError(f"multi-leaf proof is too short ({len(proof)} hashes)")
            used += 1
            return proof[used - 1]
        if end - start == 1:
            return leaves[wanted[lo]]
        k = _split(end - start)
        mid = bisect_left(wanted, start + k, lo, hi)
        left = walk(start, start + k, lo, mid)
        return node_hash(left, walk(start + k, end, mid, hi))

    got = walk(0, size, 0, len(wanted))
    if used != len(proof):
        raise ProofError(f"multi-leaf proof is too long ({len(proof)} hashes, {used} used)")
    return got


def verify_multi_inclusion(
    size: int, leaves: Mapping[int, bytes], proof: Sequence[bytes], root_hash: bytes
) -> None:
    """ProofError unless every leaf (index -> leaf hash) is in the tree of ``size`` with
    that root."""
    _check_hash("root hash", root_hash)
    if root_from_multi_inclusion_proof(size, leaves, proof) != root_hash:
        raise ProofError(f"the {len(leaves)} leaves are not all in the tree of size {size} with that root")


def verify_consistency(old: int, new: int, old_root: bytes, new_root: bytes, proof: Sequence[bytes]) -> None:
    """ProofError unless the tree of size ``new`` extends the one of size ``old``."""
    _check_hash("old root", old_root)
    _check_hash("new root", new_root)
    for pos, p in enumerate(proof):
        _check_hash(f"proof[{pos}]", p)
    if old > new:
        raise ProofError(f"size {old} is larger than size {new}")
    if old == new:
        if proof:
            raise ProofError("trees of equal size need an empty consistency proof")
        if old_root != new_root:
            raise ProofError(f"two different roots for size {old}")
        return
    if old == 0:
        if proof:
            raise ProofError("consistency with the empty tree needs an empty proof")
        return
    if not proof:
        raise ProofError("empty consistency proof")
    path = list(proof)
    if old & (old - 1) == 0:
        path.insert(0, old_root)
    fn, sn = old - 1, new - 1
    while fn & 1:
        fn >>= 1
        sn >>= 1
    fr = sr = path[0]
    for c in path[1:]:
        if sn == 0:
            raise ProofError(f"consistency proof is too long ({len(proof)} hashes)")
        if fn & 1 or fn == sn:
            fr = node_hash(c, fr)
            sr = node_hash(c, sr)
            while not fn & 1 and fn != 0:
                fn >>= 1
                sn >>= 1
        else:
            sr = node_hash(sr, c)
        fn >>= 1
        sn >>= 1
    if sn != 0:
        raise ProofError(f"consistency proof is too short ({len(proof)} hashes)")
    if fr != old_root:
        raise ProofError(f"proof does not lead to the root of size {old}")
    if sr != new_root:
        raise ProofError(f"proof does not lead to the root of size {new}")
