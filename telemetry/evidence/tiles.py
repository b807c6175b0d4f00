"""C2SP tlog-tiles: tile and entry-bundle paths, building tiles from stored hashes, and
computing any tree hash back from tiles.

A tile at level L is up to 256 consecutive hashes of Merkle level 8·L: tile (L, N)
holds the perfect subtrees ``(8·L, N·256 + i)``. A partial tile (the right edge) has
width ``floor(size / 256**L) mod 256``.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from telemetry.evidence.merkle import HASH_SIZE, Node, node_hash

TILE_HEIGHT = 8
TILE_WIDTH = 1 << TILE_HEIGHT  # 256 hashes, 8,192 bytes when full
MAX_ENTRY_SIZE = 0xFFFF  # entries are uint16 length-prefixed in a bundle

_ELEMENT = re.compile(r"^x\d{3}$")
_LAST = re.compile(r"^\d{3}$")
_WIDTH = re.compile(r"^[1-9]\d{0,2}$")
_LEVEL = re.compile(r"^(0|[1-9]\d?)$")


class TilePathError(ValueError):
    """A tile path that the spec does not allow."""


def encode_tile_index(n: int) -> str:
    """1234067 → ``x001/x234/067``: 3-digit elements, all but the last prefixed ``x``."""
    if n < 0:
        raise ValueError(f"negative tile index {n}")
    groups = [f"{n % 1000:03d}"]
    n //= 1000
    while n:
        groups.append(f"x{n % 1000:03d}")
        n //= 1000
    return "/".join(reversed(groups))


def _suffix(width: int) -> str:
    if not 1 <= width <= TILE_WIDTH:
        raise ValueError(f"tile width {width} is not within 1..{TILE_WIDTH}")
    return "" if width == TILE_WIDTH else f".p/{width}"


@dataclass(frozen=True, slots=True)
class TileRef:
    """One tile (``level`` 0..63) or entry bundle (``level`` None)."""

    level: int | None
    index: int
    width: int = TILE_WIDTH

    @property
    def path(self) -> str:
        where = "entries" if self.level is None else str(self.level)
        return f"tile/{where}/{encode_tile_index(self.index)}{_suffix(self.width)}"

    @property
    def is_entries(self) -> bool:
        return self.level is None


def tile_path(level: int, index: int, width: int = TILE_WIDTH) -> str:
    return TileRef(level, index, width).path


def entries_path(index: int, width: int = TILE_WIDTH) -> str:
    return TileRef(None, index, width).path


def parse_tile_path(path: str) -> TileRef:
    """``tile/<L>/<N>[.p/<W>]`` or ``tile/entries/<N>[.p/<W>]`` → TileRef; TilePathError
    for anything the spec does not allow (leading zeroes, bad elements, width 256)."""
    parts = path.split("/")
    if len(parts) < 3 or parts[0] != "tile":
        raise TilePathError(f"not a tile path: {path!r}")
    width = TILE_WIDTH
    if parts[-2].endswith(".p"):  # "…/067.p/112": the partial marker sits on the index's last element
        if not _WIDTH.match(parts[-1]) or int(parts[-1]) >= TILE_WIDTH:
            raise TilePathError(f"bad partial tile width in {path!r}")
        width = int(parts[-1])
        parts = [*parts[:-2], parts[-2][:-2]]
    where, elements = parts[1], parts[2:]
    if where == "entries":
        level = None
    elif _LEVEL.match(where) and int(where) <= 63:
        level = int(where)
    else:
        raise TilePathError(f"bad tile level in {path!r}")
    if not elements or not _LAST.match(elements[-1]) or not all(_ELEMENT.match(e) for e in elements[:-1]):
        raise TilePathError(f"bad tile index in {path!r}")
    if len(elements) > 1 and elements[0] == "x000":
        raise TilePathError(f"tile index with a leading zero element in {path!r}")
    index = 0
    for e in elements:
        index = index * 1000 + int(e.lstrip("x"))
    return TileRef(level, index, width)


def tile_width(level: int, index: int, tree_size: int) -> int:
    """How many hashes tile (level, index) holds in a tree of ``tree_size`` leaves (0: it
    does not exist yet). Entry bundles have the widths of level 0."""
    count = tree_size >> (TILE_HEIGHT * level)  # hashes at this tile level
    return max(0, min(TILE_WIDTH, count - index * TILE_WIDTH))


def tiles_for_size(tree_size: int) -> list[TileRef]:
    """Every tile (not entry bundle) of a tree of this size, full ones and the partial
    right edge: what a mirror needs to copy."""
    out: list[TileRef] = []
    level = 0
    while tree_size >> (TILE_HEIGHT * level):
        count = tree_size >> (TILE_HEIGHT * level)
        for n in range((count + TILE_WIDTH - 1) // TILE_WIDTH):
            out.append(TileRef(level, n, tile_width(level, n, tree_size)))
        level += 1
    return out


def tile_nodes(level: int, index: int, width: int) -> list[Node]:
    """The Merkle nodes whose hashes, concatenated, are tile (level, index, width)."""
    base = index * TILE_WIDTH
    return [(TILE_HEIGHT * level, base + i) for i in range(width)]


def tile_from_hashes(hashes: Sequence[bytes]) -> bytes:
    if not 1 <= len(hashes) <= TILE_WIDTH or any(len(h) != HASH_SIZE for h in hashes):
        raise ValueError("a tile is 1..256 hashes of 32 bytes")
    return b"".join(hashes)


def split_tile(data: bytes) -> list[bytes]:
    if not data or len(data) % HASH_SIZE or len(data) > TILE_WIDTH * HASH_SIZE:
        raise ValueError(f"a tile of {len(data)} bytes is not 1..256 hashes")
    return [data[i : i + HASH_SIZE] for i in range(0, len(data), HASH_SIZE)]


def encode_entry_bundle(entries: Sequence[bytes]) -> bytes:
    out = bytearray()
    for e in entries:
        if len(e) > MAX_ENTRY_SIZE:
            raise ValueError(f"an entry of {len(e)} bytes does not fit a uint16 length prefix")
        out += len(e).to_bytes(2, "big")
        out += e
    return bytes(out)


def decode_entry_bundle(data: bytes) -> list[bytes]:
    entries: list[bytes] = []
    pos = 0
    while pos < len(data):
        if pos + 2 > len(data):
            raise ValueError("entry bundle ends inside a length prefix")
        n = int.from_bytes(data[pos : pos + 2], "big")
        pos += 2
        if pos + n > len(data):
            raise ValueError("entry bundle ends inside an entry")
        entries.append(data[pos : pos + n])
        pos += n
    return entries


class TileHashSource:
    """A merkle.HashSource that reads tiles (say, over HTTP from a log) and computes any
    perfect node of a tree of ``tree_size`` from them: a node 8·L + r levels up is the
    root of 2**r consecutive hashes of a level-L tile."""

    def __init__(self, tree_size: int, read_tile: Callable[[int, int, int], bytes]) -> None:
        self._size = tree_size
        self._read = read_tile
        self._tiles: dict[tuple[int, int], list[bytes]] = {}

    def _tile(self, level: int, index: int) -> list[bytes]:
        key = (level, index)
        if key not in self._tiles:
            width = tile_width(level, index, self._size)
            if width == 0:
                raise KeyError(f"tile {level}/{index} is not in a tree of size {self._size}")
            hashes = split_tile(self._read(level, index, width))
            if len(hashes) != width:
                raise ValueError(f"tile {level}/{index} has {len(hashes)} hashes, expected {width}")
            self._tiles[key] = hashes
        return self._tiles[key]

    def node_hashes(self, nodes: Sequence[Node]) -> dict[Node, bytes]:
        out: dict[Node, bytes] = {}
        for level, index in nodes:
            if (index + 1) << level > self._size:
                raise KeyError(f"node {level}/{index} is not complete in a tree of size {self._size}")
            tile_level, r = divmod(level, TILE_HEIGHT)
            first = index << r  # position among the level-8L hashes
            tile = self._tile(tile_level, first // TILE_WIDTH)
            offset = first % TILE_WIDTH
            row = tile[offset : offset + (1 << r)]
            while len(row) > 1:
                row = [node_hash(row[i], row[i + 1]) for i in range(0, len(row), 2)]
            out[(level, index)] = row[0]
        return out
