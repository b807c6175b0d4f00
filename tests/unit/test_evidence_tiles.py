"""C2SP tlog-tiles: paths and widths as the spec's own examples state them, and any
tree hash recomputed from tiles equal to the tree's."""

from __future__ import annotations

import pytest

from telemetry.evidence import merkle
from telemetry.evidence.merkle import MemoryTree
from telemetry.evidence.tiles import (
    TileHashSource,
    TilePathError,
    TileRef,
    decode_entry_bundle,
    encode_entry_bundle,
    encode_tile_index,
    entries_path,
    parse_tile_path,
    tile_from_hashes,
    tile_nodes,
    tile_path,
    tile_width,
    tiles_for_size,
)


def test_index_encoding_of_the_spec() -> None:
    assert encode_tile_index(1234067) == "x001/x234/067"
    assert encode_tile_index(0) == "000"
    assert encode_tile_index(999) == "999"
    assert encode_tile_index(1000) == "x001/000"
    assert tile_path(0, 1234067) == "tile/0/x001/x234/067"
    assert tile_path(2, 5, 17) == "tile/2/005.p/17"
    assert entries_path(272, 112) == "tile/entries/272.p/112"
    assert entries_path(3) == "tile/entries/003"


@pytest.mark.parametrize(
    "ref",
    [TileRef(0, 0), TileRef(0, 1234067), TileRef(63, 7, 1), TileRef(None, 272, 112), TileRef(5, 1000, 255)],
)
def test_paths_parse_back(ref: TileRef) -> None:
    assert parse_tile_path(ref.path) == ref


@pytest.mark.parametrize(
    "bad",
    [
        "tile/0/1",
        "tile/0/0001",
        "tile/00/001",
        "tile/64/001",
        "tile/0/x000/001",
        "tile/0/001.p/256",
        "tile/0/001.p/0",
        "tile/0/001.p/012",
        "tile/0/001/x002",
        "tile/0/y001/002",
        "tiles/0/001",
        "tile/entries",
        "tile/0/.p/3",
    ],
)
def test_paths_the_spec_forbids(bad: str) -> None:
    with pytest.raises(TilePathError):
        parse_tile_path(bad)


def test_widths_of_the_specs_70000_example() -> None:
    # "a tree of size 70,000 will be represented by 273 full level 0 tiles, one partial
    # level 0 tile of width 112, one full level 1 tile, one partial level 1 tile of
    # width 17, and one partial level 2 tile of width 1"
    tiles = tiles_for_size(70_000)
    level0 = [t for t in tiles if t.level == 0]
    assert len(level0) == 274 and all(t.width == 256 for t in level0[:273]) and level0[273].width == 112
    assert [(t.index, t.width) for t in tiles if t.level == 1] == [(0, 256), (1, 17)]
    assert [(t.index, t.width) for t in tiles if t.level == 2] == [(0, 1)]
    assert len(tiles) == 277
    # "a tree of size 256 will be represented by a full level 0 tile and a partial
    # level 1 tile of width 1"
    assert tiles_for_size(256) == [TileRef(0, 0, 256), TileRef(1, 0, 1)]
    assert tile_width(0, 274, 70_000) == 0
    assert tiles_for_size(0) == []


def test_entry_bundles_are_uint16_length_prefixed() -> None:
    entries = [b"", b"a", b"x" * 300, bytes(65535)]
    data = encode_entry_bundle(entries)
    assert data[:2] == b"\x00\x00" and data[2:5] == b"\x00\x01a" and data[5:7] == (300).to_bytes(2, "big")
    assert decode_entry_bundle(data) == entries
    with pytest.raises(ValueError):
        encode_entry_bundle([bytes(65536)])
    with pytest.raises(ValueError):
        decode_entry_bundle(data[:-1])


def _tiles_of(tree: MemoryTree) -> dict[tuple[int, int, int], bytes]:
    out = {}
    for ref in tiles_for_size(tree.size):
        assert ref.level is not None
        nodes = tile_nodes(ref.level, ref.index, ref.width)
        got = tree.node_hashes(nodes)
        out[(ref.level, ref.index, ref.width)] = tile_from_hashes([got[n] for n in nodes])
    return out


@pytest.mark.parametrize("size", [1, 2, 255, 256, 257, 511, 70_000])
def test_every_hash_recomputed_from_tiles(size: int) -> None:
    tree = MemoryTree(merkle.leaf_hash(i.to_bytes(4, "big")) for i in range(size))
    tiles = _tiles_of(tree)
    reads: list[tuple[int, int, int]] = []

    def read(level: int, index: int, width: int) -> bytes:
        reads.append((level, index, width))
        return tiles[(level, index, width)]

    source = TileHashSource(size, read)
    assert merkle.root(source, size) == tree.root()
    for index in {0, size // 3, size - 1}:
        assert merkle.inclusion_proof(source, index, size) == merkle.inclusion_proof(tree, index, size)
    for old in {1, size // 2 or 1, size}:
        assert merkle.consistency_proof(source, old, size) == merkle.consistency_proof(tree, old, size)
    assert len(reads) == len(set(reads))  # each tile fetched once
    with pytest.raises(KeyError):
        source.node_hashes([(0, size)])
