"""Multi-leaf inclusion proofs (telemetry/evidence/merkle.py): random trees and random
sets of leaves against a direct transcription of RFC 6962's definition of a tree's hash,
then every way a proof must fail: a changed or moved leaf, a hash missing, a hash too
many, a changed hash, another tree size, a leaf claimed that the proof was not for."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from telemetry.evidence import merkle
from telemetry.evidence.canonical import AlertEvent
from telemetry.evidence.log import EvidenceLog
from telemetry.evidence.merkle import (
    MemoryTree,
    ProofError,
    inclusion_proof,
    leaf_hash,
    multi_inclusion_proof,
    multi_inclusion_ranges,
    root_from_multi_inclusion_proof,
    verify_multi_inclusion,
)
from telemetry.evidence.storage import SqliteEvidenceStorage


def _mth(leaves: list[bytes]) -> bytes:
    """RFC 6962 2.1: MTH(D[n]), straight from the definition."""
    if len(leaves) == 1:
        return leaf_hash(leaves[0])
    k = 1 << ((len(leaves) - 1).bit_length() - 1)
    return merkle.node_hash(_mth(leaves[:k]), _mth(leaves[k:]))


def _expected_proof(leaves: list[bytes], wanted: set[int], offset: int = 0) -> list[bytes]:
    """The multi-leaf proof by its definition: going down RFC 6962's split, left before
    right, the hash of every subtree that holds none of the wanted leaves."""
    if not any(offset <= i < offset + len(leaves) for i in wanted):
        return [_mth(leaves)]
    if len(leaves) == 1:
        return []
    k = 1 << ((len(leaves) - 1).bit_length() - 1)
    return _expected_proof(leaves[:k], wanted, offset) + _expected_proof(leaves[k:], wanted, offset + k)


def _tree(leaves: list[bytes]) -> MemoryTree:
    t = MemoryTree()
    for leaf in leaves:
        t.append(leaf)
    return t


trees = st.lists(st.binary(max_size=6), min_size=1, max_size=140, unique=True)


@st.composite
def cases(draw: st.DrawFn) -> tuple[list[bytes], int, list[int]]:
    leaves = draw(trees)
    size = draw(st.integers(1, len(leaves)))
    picked = draw(st.lists(st.integers(0, size - 1), min_size=1, max_size=size, unique=True))
    return leaves, size, sorted(picked)


@settings(max_examples=300, deadline=None)
@given(cases())
def test_random_sets_of_leaves_prove_against_the_rfc6962_root(
    case: tuple[list[bytes], int, list[int]],
) -> None:
    leaves, size, picked = case
    t = _tree(leaves)
    proof = multi_inclusion_proof(t, picked, size)
    assert proof == _expected_proof(leaves[:size], set(picked))
    hashes = {i: leaf_hash(leaves[i]) for i in picked}
    assert root_from_multi_inclusion_proof(size, hashes, proof) == _mth(leaves[:size]) == t.root(size)
    verify_multi_inclusion(size, hashes, proof, t.root(size))
    # never more hashes than the per-leaf proofs hold together, each needed node once
    assert len(proof) <= sum(len(inclusion_proof(t, i, size)) for i in picked)
    assert len(set(multi_inclusion_ranges(picked, size))) == len(proof)


@settings(max_examples=300, deadline=None)
@given(cases(), st.data())
def test_a_wrong_proof_fails(case: tuple[list[bytes], int, list[int]], data: st.DataObject) -> None:
    leaves, size, picked = case
    t = _tree(leaves)
    root = t.root(size)
    proof = multi_inclusion_proof(t, picked, size)
    hashes = {i: leaf_hash(leaves[i]) for i in picked}

    def refused(h: dict[int, bytes], p: list[bytes], n: int = size) -> None:
        with pytest.raises(ProofError):
            verify_multi_inclusion(n, h, p, root)

    # a wrong leaf: one of them changed
    changed = data.draw(st.sampled_from(picked))
    refused({**hashes, changed: leaf_hash(leaves[changed] + b"x")}, proof)
    # a leaf at another index than its own
    if len(picked) < size:
        other = data.draw(st.integers(0, size - 1).filter(lambda i: i not in hashes))
        refused({i: h for i, h in hashes.items() if i != changed} | {other: hashes[changed]}, proof)
        # a leaf claimed that the proof was not made for
        refused({**hashes, other: leaf_hash(leaves[other])}, proof)
    if proof:
        # a hash missing, wherever it was
        gone = data.draw(st.integers(0, len(proof) - 1))
        refused(hashes, proof[:gone] + proof[gone + 1 :])
        # a hash changed
        bad = bytearray(proof[gone])
        bad[data.draw(st.integers(0, 31))] ^= 1 << data.draw(st.integers(0, 7))
        refused(hashes, [*proof[:gone], bytes(bad), *proof[gone + 1 :]])
    # a hash too many, anywhere
    at = data.draw(st.integers(0, len(proof)))
    refused(hashes, [*proof[:at], leaf_hash(b"extra"), *proof[at:]])
    # a checkpoint of another size (its own root: a checkpoint signs the two together)
    for n in {size - 1, size + 1, size * 2} - {size}:
        if 1 <= n <= len(leaves):
            with pytest.raises(ProofError):
                verify_multi_inclusion(n, hashes, proof, t.root(n))
    # a proof that is not made of hashes
    if proof:
        refused(hashes, [proof[0][:31], *proof[1:]])


def test_edge_cases() -> None:
    t = _tree([bytes([i]) for i in range(8)])
    assert multi_inclusion_proof(t, range(8), 8) == []  # every leaf: nothing to add
    verify_multi_inclusion(8, {i: leaf_hash(bytes([i])) for i in range(8)}, [], t.root())
    # one leaf: the hashes of its ordinary proof, root-down instead of leaf-up
    assert sorted(multi_inclusion_proof(t, [5], 8)) == sorted(inclusion_proof(t, 5, 8))
    assert multi_inclusion_proof(t, [5, 5, 5], 8) == multi_inclusion_proof(t, [5], 8)
    with pytest.raises(ProofError, match="at least one leaf"):
        multi_inclusion_ranges([], 8)
    with pytest.raises(ProofError, match="not in a tree of size 8"):
        multi_inclusion_ranges([8], 8)
    with pytest.raises(ProofError, match="not in a tree of size 8"):
        multi_inclusion_ranges([-1, 3], 8)
    with pytest.raises(ProofError, match="not in a tree"):
        root_from_multi_inclusion_proof(0, {0: leaf_hash(b"")}, [])
    with pytest.raises(ProofError, match="too short"):
        root_from_multi_inclusion_proof(8, {0: leaf_hash(bytes([0]))}, [])
    with pytest.raises(ProofError, match="too long"):
        root_from_multi_inclusion_proof(1, {0: leaf_hash(b"a")}, [leaf_hash(b"b")])


def test_from_the_stored_log(tmp_path: Path) -> None:
    """EvidenceLog.multi_inclusion_proof reads the stored nodes (SQLite) and equals the
    proof of the same tree held in memory, for a tree size below the log's too."""
    conn = sqlite3.connect(tmp_path / "log.db", isolation_level=None)
    storage = SqliteEvidenceStorage()
    storage.migrate(conn)
    log = EvidenceLog(storage)
    t0 = 1_764_000_000_000_000
    records = [AlertEvent(f"a-{i}", "excursion_high", "raised", t0 + i) for i in range(300)]
    conn.execute("BEGIN IMMEDIATE")
    log.append(conn, records)
    conn.execute("COMMIT")
    entries = [leaf.entry for leaf in log.leaves(conn, 0, 300)]
    t = _tree(entries)
    for size, picked in ((300, [0, 1, 2, 150, 299]), (257, list(range(100, 200))), (1, [0])):
        proof = log.multi_inclusion_proof(conn, picked, size)
        assert proof == multi_inclusion_proof(t, picked, size)
        verify_multi_inclusion(size, {i: leaf_hash(entries[i]) for i in picked}, proof, t.root(size))
    with pytest.raises(ValueError, match="no tree of size 301"):
        log.multi_inclusion_proof(conn, [0], 301)
    conn.close()
