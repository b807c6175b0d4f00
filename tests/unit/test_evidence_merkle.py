"""RFC 6962 hashing and proofs: published vectors, then random trees against a direct
transcription of RFC 6962's recursive definitions."""

from __future__ import annotations

import hashlib

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from telemetry.evidence import merkle
from telemetry.evidence.merkle import (
    EMPTY_ROOT,
    Frontier,
    MemoryTree,
    ProofError,
    consistency_proof,
    inclusion_proof,
    leaf_hash,
    node_hash,
    verify_consistency,
    verify_inclusion,
)

# -- vectors copied from transparency-dev/merkle: rfc6962/rfc6962_test.go ----------------


def test_rfc6962_hasher_vectors() -> None:
    assert EMPTY_ROOT.hex() == "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
    assert leaf_hash(b"").hex() == "6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d"
    assert leaf_hash(b"L123456").hex() == "395aa064aa4c29f7010acfe3f25db9485bbd4b91897b6ad7ad547639252b4d56"
    assert (
        node_hash(b"N123", b"N456").hex()
        == "aa217fe888e47007fa15edab33c2b492a722cb106c64667fc2b044444de66bbb"
    )


# -- vectors copied from transparency-dev/merkle: proof/verify_test.go -------------------
# Leaves of the reference tree, the roots of its first 1..8 leaves, and known-good
# inclusion (leaf number 1-based, size, proof) and consistency (size1, size2, proof).

LEAVES = [
    bytes.fromhex(h)
    for h in [
        "",
        "00",
        "10",
        "2021",
        "3031",
        "40414243",
        "5051525354555657",
        "606162636465666768696a6b6c6d6e6f",
    ]
]
ROOTS = [
    bytes.fromhex(h)
    for h in [
        "6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d",
        "fac54203e7cc696cf0dfcb42c92a1d9dbaf70ad9e621f4bd8d98662f00e3c125",
        "aeb6bcfe274b70a14fb067a5e5578264db0fa9b51af5e0ba159158f329e06e77",
        "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
        "4e3bbb1f7b478dcfe71fb631631519a3bca12c9aefca1612bfce4c13a86264d4",
        "76e67dadbcdf1e10e1b74ddc608abd2f98dfb16fbce75277b5232a127f2087ef",
        "ddb89be403809e325750d3d263cd78929c2942b7942a34b77e122c9594a74c8c",
        "5dc9da79a70659a9ad559cb701ded9a2ab9d823aad2f4960cfe370eff4604328",
    ]
]


def _h(*hexes: str) -> list[bytes]:
    return [bytes.fromhex(h) for h in hexes]


INCLUSION = [
    (1, 1, []),
    (
        1,
        8,
        _h(
            "96a296d224f285c67bee93c30f8a309157f0daa35dc5b87e410b78630a09cfc7",
            "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
            "6b47aaf29ee3c2af9af889bc1fb9254dabd31177f16232dd6aab035ca39bf6e4",
        ),
    ),
    (
        6,
        8,
        _h(
            "bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b",
            "ca854ea128ed050b41b35ffc1b87b8eb2bde461e9e3b5596ece6b9d5975a0ae0",
            "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
        ),
    ),
    (3, 3, _h("fac54203e7cc696cf0dfcb42c92a1d9dbaf70ad9e621f4bd8d98662f00e3c125")),
    (
        2,
        5,
        _h(
            "6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d",
            "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
            "bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b",
        ),
    ),
]

CONSISTENCY = [
    (1, 1, []),
    (
        1,
        8,
        _h(
            "96a296d224f285c67bee93c30f8a309157f0daa35dc5b87e410b78630a09cfc7",
            "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
            "6b47aaf29ee3c2af9af889bc1fb9254dabd31177f16232dd6aab035ca39bf6e4",
        ),
    ),
    (
        6,
        8,
        _h(
            "0ebc5d3437fbe2db158b9f126a1d118e308181031d0a949f8dededebc558ef6a",
            "ca854ea128ed050b41b35ffc1b87b8eb2bde461e9e3b5596ece6b9d5975a0ae0",
            "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
        ),
    ),
    (
        2,
        5,
        _h(
            "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
            "bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b",
        ),
    ),
    (
        6,
        7,
        _h(
            "0ebc5d3437fbe2db158b9f126a1d118e308181031d0a949f8dededebc558ef6a",
            "b08693ec2e721597130641e8211e7eedccb4c26413963eee6c1e2ed16ffb1a5f",
            "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
        ),
    ),
]
SOME_HASH = bytes.fromhex("abacaba000000000000000000000000000000000000000000060061e00123456")


@pytest.fixture(scope="module")
def tree() -> MemoryTree:
    t = MemoryTree()
    for leaf in LEAVES:
        t.append(leaf)
    return t


def test_roots_of_the_reference_tree(tree: MemoryTree) -> None:
    assert [tree.root(n) for n in range(1, 9)] == ROOTS
    frontier = Frontier()
    for n, leaf in enumerate(LEAVES, start=1):
        frontier.append(leaf_hash(leaf))
        assert frontier.root() == ROOTS[n - 1]


@pytest.mark.parametrize(("leaf", "size", "proof"), INCLUSION)
def test_inclusion_vectors_generated_and_verified(
    tree: MemoryTree, leaf: int, size: int, proof: list
) -> None:
    assert inclusion_proof(tree, leaf - 1, size) == proof
    lh = leaf_hash(LEAVES[leaf - 1])
    root = ROOTS[size - 1]
    verify_inclusion(leaf - 1, size, lh, proof, root)
    # the same corruptions verify_test.go's corruptInclusionProof tries: all must fail
    index = leaf - 1
    probes = [
        (index - 1, size, lh, proof, root),
        (index + 1, size, lh, proof, root),
        (index ^ 2, size, lh, proof, root),
        (index, size * 2, lh, proof, root),
        (index, size // 2, lh, proof, root),
        (index, size, leaf_hash(b"WrongLeaf"), proof, root),
        (index, size, lh, proof, EMPTY_ROOT),
        (index, size, lh, proof, SOME_HASH),
        (index, size, lh, [*proof, b""], root),
        (index, size, lh, [*proof, root], root),
        (index, size, lh, [b"", *proof], root),
        (index, size, lh, [root, *proof], root),
    ]
    for i in range(len(proof)):
        bad = list(proof)
        bad[i] = bytes([bad[i][0] ^ 8]) + bad[i][1:]
        probes.append((index, size, lh, bad, root))
    if proof:
        probes.append((index, size, lh, proof[:-1], root))
    if len(proof) > 1:
        probes.append((index, size, lh, [proof[0], SOME_HASH, *proof[1:]], root))
    for i, s, h, p, r in probes:
        with pytest.raises(ProofError):
            verify_inclusion(i, s, h, p, r)


@pytest.mark.parametrize(("size1", "size2", "proof"), CONSISTENCY)
def test_consistency_vectors_generated_and_verified(
    tree: MemoryTree, size1: int, size2: int, proof: list
) -> None:
    assert consistency_proof(tree, size1, size2) == proof
    root1, root2 = ROOTS[size1 - 1], ROOTS[size2 - 1]
    verify_consistency(size1, size2, root1, root2, proof)
    if not proof:
        return
    probes = [
        (size1 - 1, size2, root1, root2, proof),
        (size1 + 1, size2, root1, root2, proof),
        (size1 ^ 2, size2, root1, root2, proof),
        (size1, size2 * 2, root1, root2, proof),
        (size1, size2 // 2, root1, root2, proof),
        (size1, size2, SOME_HASH, root2, proof),
        (size1, size2, root1, SOME_HASH, proof),
        (size1, size2, root2, root1, proof),
        (size1, size2, root1, root2, []),
        (size1, size2, root1, root2, [*proof, b""]),
        (size1, size2, root1, root2, [*proof, root1]),
        (size1, size2, root1, root2, [*proof, root2]),
        (size1, size2, root1, root2, [b"", *proof]),
        (size1, size2, root1, root2, [root1, *proof]),
        (size1, size2, root1, root2, [root2, *proof]),
        (size1, size2, root1, root2, [proof[0], *proof]),
        (size1, size2, root1, root2, proof[:-1]),
    ]
    for i in range(len(proof)):
        bad = list(proof)
        bad[i] = bytes([bad[i][0] ^ 16]) + bad[i][1:]
        probes.append((size1, size2, root1, root2, bad))
    for s1, s2, r1, r2, p in probes:
        with pytest.raises(ProofError):
            verify_consistency(s1, s2, r1, r2, p)


def test_consistency_edge_cases_from_verify_test() -> None:
    r1, r2 = b"1" * 32, b"2" * 32
    verify_consistency(0, 0, r1, r1, [])
    verify_consistency(0, 1, r1, r2, [])
    verify_consistency(1, 1, r2, r2, [])
    for args in [
        (0, 0, r1, r2, []),
        (1, 1, r1, r2, []),
        (1, 0, r1, r2, []),
        (2, 1, r1, r2, []),
        (1, 2, r1, r2, []),
        (0, 0, EMPTY_ROOT, EMPTY_ROOT, [EMPTY_ROOT]),
        (0, 1, EMPTY_ROOT, EMPTY_ROOT, [EMPTY_ROOT]),
        (1, 1, EMPTY_ROOT, EMPTY_ROOT, [EMPTY_ROOT]),
    ]:
        with pytest.raises(ProofError):
            verify_consistency(*args)


def test_inclusion_edge_cases_from_verify_test() -> None:
    single = leaf_hash(b"data")
    verify_inclusion(0, 1, single, [], single)
    for index, size, leaf, root in [
        (0, 1, single, b""),
        (0, 1, b"", single),
        (0, 1, b"", b""),
        (0, 0, SOME_HASH, EMPTY_ROOT),
        (1, 0, SOME_HASH, EMPTY_ROOT),
        (2, 1, SOME_HASH, EMPTY_ROOT),
    ]:
        with pytest.raises(ProofError):
            verify_inclusion(index, size, leaf, [], root)


# -- random trees against RFC 6962's definitions, written out independently -------------


def _mth(leaves: list[bytes]) -> bytes:
    n = len(leaves)
    if n == 0:
        return hashlib.sha256(b"").digest()
    if n == 1:
        return hashlib.sha256(b"\x00" + leaves[0]).digest()
    k = 1 << ((n - 1).bit_length() - 1)
    return hashlib.sha256(b"\x01" + _mth(leaves[:k]) + _mth(leaves[k:])).digest()


def _path(m: int, leaves: list[bytes]) -> list[bytes]:
    n = len(leaves)
    if n == 1:
        return []
    k = 1 << ((n - 1).bit_length() - 1)
    if m < k:
        return [*_path(m, leaves[:k]), _mth(leaves[k:])]
    return [*_path(m - k, leaves[k:]), _mth(leaves[:k])]


def _subproof(m: int, leaves: list[bytes], whole: bool) -> list[bytes]:
    n = len(leaves)
    if m == n:
        return [] if whole else [_mth(leaves)]
    k = 1 << ((n - 1).bit_length() - 1)
    if m <= k:
        return [*_subproof(m, leaves[:k], whole), _mth(leaves[k:])]
    return [*_subproof(m - k, leaves[k:], False), _mth(leaves[:k])]


def _tree(leaves: list[bytes]) -> MemoryTree:
    t = MemoryTree()
    for leaf in leaves:
        t.append(leaf)
    return t


@settings(max_examples=150, deadline=None)
@given(st.lists(st.binary(max_size=8), min_size=1, max_size=70), st.data())
def test_random_trees_match_rfc6962(leaves: list[bytes], data: st.DataObject) -> None:
    t = _tree(leaves)
    n = len(leaves)
    size = data.draw(st.integers(1, n))
    index = data.draw(st.integers(0, size - 1))
    old = data.draw(st.integers(1, size))
    assert t.root(size) == _mth(leaves[:size])
    proof = inclusion_proof(t, index, size)
    assert proof == _path(index, leaves[:size])
    verify_inclusion(index, size, leaf_hash(leaves[index]), proof, t.root(size))
    cproof = consistency_proof(t, old, size)
    assert cproof == ([] if old == size else _subproof(old, leaves[:size], True))
    verify_consistency(old, size, t.root(old), t.root(size), cproof)
    if cproof:
        with pytest.raises(ProofError):
            verify_consistency(old, size, t.root(old), t.root(size), cproof[:-1])
        with pytest.raises(ProofError):
            verify_consistency(old, size, leaf_hash(b"other"), t.root(size), cproof)


@settings(max_examples=100, deadline=None)
@given(st.lists(st.binary(max_size=4), min_size=2, max_size=40), st.data())
def test_a_changed_leaf_fails_its_proof(leaves: list[bytes], data: st.DataObject) -> None:
    t = _tree(leaves)
    index = data.draw(st.integers(0, len(leaves) - 1))
    proof = inclusion_proof(t, index, len(leaves))
    with pytest.raises(ProofError):
        verify_inclusion(index, len(leaves), leaf_hash(leaves[index] + b"x"), proof, t.root())
    other = data.draw(st.integers(0, len(leaves) - 1).filter(lambda i: i != index))
    if leaves[other] != leaves[index]:
        with pytest.raises(ProofError):
            verify_inclusion(other, len(leaves), leaf_hash(leaves[index]), proof, t.root())


@settings(max_examples=60, deadline=None)
@given(st.integers(0, 5000))
def test_frontier_nodes_are_the_trees_perfect_nodes(n: int) -> None:
    t = _tree([i.to_bytes(4, "big") for i in range(n)])
    f = Frontier()
    completed = []
    for i in range(n):
        completed.extend(f.append(leaf_hash(i.to_bytes(4, "big"))))
    assert f.root() == t.root()
    assert dict(((lv, i), h) for lv, i, h in completed) == t.node_hashes([(lv, i) for lv, i, _ in completed])
    wanted = Frontier.nodes(n)
    again = Frontier(n, [t.node_hashes(wanted)[x] for x in wanted])
    assert again.root() == f.root()


def test_batched_proofs_equal_single_ones() -> None:
    t = _tree([bytes([i % 256, i // 256]) for i in range(1000)])
    many = merkle.inclusion_proofs(t, [0, 1, 500, 999, 500], 1000)
    assert set(many) == {0, 1, 500, 999}
    for i, p in many.items():
        assert p == inclusion_proof(t, i, 1000)
