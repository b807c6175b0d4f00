"""Leaf records of the evidence log and their RFC 8785 canonical JSON.

Every leaf is the canonical JSON (RFC 8785, via ``rfc8785``) of one record carrying
``"v": 1`` and ``"kind"``. Times are integers of microseconds since the Unix epoch (UTC,
``*_us``): exact for both stores and below 2**53, so a browser's JSON numbers hold them.
Hashes are lowercase hex. A record is at most 65,535 bytes (an entry bundle's uint16
length prefix), so free text such as comments is bounded.
"""

from __future__ import annotations

import hashlib
import json
import re
import struct
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, replace
from itertools import pairwise
from typing import Any, ClassVar, Literal, Protocol, overload

import rfc8785

VERSION = 1
MAX_RECORD_SIZE = 0xFFFF
_SHA256_HEX = re.compile(r"^[0-9a-f]{64}$")

JSONValue = Any  # what rfc8785 accepts: None, bool, int, float, str, lists and str-keyed dicts


class RecordError(ValueError):
    """A record that cannot be a leaf (bad field, too large, not canonical)."""


def canonical_json(value: JSONValue) -> bytes:
    try:
        return rfc8785.dumps(value)
    except (rfc8785.CanonicalizationError, TypeError, ValueError) as exc:
        raise RecordError(f"not canonicalisable: {exc}") from None


_F32 = struct.Struct("<f")


def float32(value: float) -> float:
    """The value as PostgreSQL's ``real`` stores it (what JavaScript's Math.fround does):
    a reading must hash the same before the COPY and after reading it back."""
    return _F32.unpack(_F32.pack(value))[0]


def _safe_int(n: object) -> str:
    if isinstance(n, bool) or not isinstance(n, int) or not -(2**53) < n < 2**53:
        raise RecordError(f"{n!r} is not an integer a JSON number holds exactly")
    return str(n)


def reading_record(
    ts_us: int,
    temp_c: float,
    rh: float | None = None,
    battery_v: float | None = None,
    door_open: bool | None = None,
    seq: int | None = None,
) -> dict[str, JSONValue]:
    """One reading as the batch digest sees it: float32 values, absent fields left out."""
    rec: dict[str, JSONValue] = {"ts_us": int(ts_us), "temp_c": float32(temp_c)}
    if rh is not None:
        rec["rh"] = float32(rh)
    if battery_v is not None:
        rec["battery_v"] = float32(battery_v)
    if door_open is not None:
        rec["door_open"] = bool(door_open)
    if seq is not None:
        rec["seq"] = int(seq)
    return rec


# A reading as the batch digest sees it: 29 bytes, little-endian: ts_us (int64), temp_c,
# rh, battery_v (float32; 0 when absent), seq (int64; 0 when absent), then a flags byte:
# 1 rh present, 2 battery_v present, 4 seq present, 8 door_open present, 16 door open.
# Binary, not JSON: the ingest path hashes every reading it stores, and packing is
# ~0.3 µs a reading where even a fast JSON form costs several; a browser builds the
# same bytes with a DataView (float32 rounding is Math.fround's, round-half-even).
_READING_BYTES = struct.Struct("<qfffqB")
READING_RECORD_SIZE = _READING_BYTES.size


def pack_reading(ts_us: int, temp_c: float, rh: float | None = None, battery_v: float | None = None,
                 door_open: bool | None = None, seq: int | None = None) -> bytes:  # fmt: skip
    """One reading's 29-byte digest record (what an ingest path keeps of each reading of
    a batch it has not sealed yet: ``readings_batch_from_packed`` seals them)."""
    flags = (
        (1 if rh is not None else 0)
        | (2 if battery_v is not None else 0)
        | (4 if seq is not None else 0)
        | (0 if door_open is None else 24 if door_open else 8)
    )
    if seq is not None and not 0 <= seq < 2**53:
        raise RecordError(f"seq {seq!r} is outside 0..2**53-1")
    return _READING_BYTES.pack(ts_us, temp_c, rh or 0.0, battery_v or 0.0, seq or 0, flags)


_pack_reading = pack_reading


def readings_digest(readings: Iterable[Mapping[str, JSONValue]]) -> str:
    """SHA-256 (hex) of a batch's readings (``reading_record`` dicts) packed as 29-byte
    records (see ``_READING_BYTES``) in ascending ``ts_us``: independent of arrival
    order, and what a verifier recomputes from the raw readings the server hands out."""
    ordered = sorted(readings, key=lambda r: r["ts_us"])
    h = hashlib.sha256()
    for r in ordered:
        h.update(
            _pack_reading(
                r["ts_us"], r["temp_c"], r.get("rh"), r.get("battery_v"), r.get("door_open"), r.get("seq")
            )
        )
    return h.hexdigest()


ReadingRow = tuple[int, float, "float | None", "float | None", "bool | None", "int | None"]


def readings_batch_from_packed(device_id: str, packed: bytes | bytearray) -> ReadingsBatch:
    """The ``readings_batch`` of records made by ``pack_reading``, concatenated in any
    order: sorted by time here (a device's readings have distinct times), so the record
    equals ``readings_batch_from_rows`` of the same readings."""
    size = READING_RECORD_SIZE
    if not packed or len(packed) % size:
        raise RecordError(f"packed readings must be a non-empty multiple of {size} bytes")
    fields = list(_READING_BYTES.iter_unpack(packed))
    ts = [f[0] for f in fields]
    view = memoryview(packed)
    if any(a >= b for a, b in pairwise(ts)):
        order = sorted(range(len(ts)), key=ts.__getitem__)
        data = b"".join([view[i * size : (i + 1) * size] for i in order])
        first, last = ts[order[0]], ts[order[-1]]
    else:
        data, first, last = bytes(view), ts[0], ts[-1]
    seqs = [f[4] for f in fields if f[5] & 4]
    return ReadingsBatch(
        device_id=device_id,
        count=len(fields),
        ts_first_us=first,
        ts_last_us=last,
        readings_sha256=hashlib.sha256(data).hexdigest(),
        seq_first=min(seqs) if seqs else None,
        seq_last=max(seqs) if seqs else None,
    )


def readings_batch_from_rows(device_id: str, rows: Iterable[ReadingRow]) -> ReadingsBatch:
    """``readings_batch`` for the ingest path: rows of (ts_us, temp_c, rh, battery_v,
    door_open, seq), hashed without building a dict per reading; the same record."""
    ordered = sorted(rows, key=lambda r: r[0])
    if not ordered:
        raise RecordError("a readings batch needs at least one reading")
    pack = _pack_reading
    digest = hashlib.sha256(b"".join([pack(*r) for r in ordered])).hexdigest()
    seqs = [r[5] for r in ordered if r[5] is not None]
    return ReadingsBatch(
        device_id=device_id,
        count=len(ordered),
        ts_first_us=ordered[0][0],
        ts_last_us=ordered[-1][0],
        readings_sha256=digest,
        seq_first=min(seqs) if seqs else None,
        seq_last=max(seqs) if seqs else None,
    )


def unpack_readings(packed: bytes | bytearray) -> list[dict[str, JSONValue]]:
    """The ``reading_record`` dicts of concatenated 29-byte digest records, in their
    order: a verifier's reading of the records a trust page or a bundle carries (their
    SHA-256 is the batch's digest when they are its readings in time order)."""
    if len(packed) % READING_RECORD_SIZE:
        raise RecordError(f"packed readings must be a multiple of {READING_RECORD_SIZE} bytes")
    out: list[dict[str, JSONValue]] = []
    for ts_us, temp_c, rh, battery_v, seq, flags in _READING_BYTES.iter_unpack(packed):
        rec: dict[str, JSONValue] = {"ts_us": ts_us, "temp_c": temp_c}
        if flags & 1:
            rec["rh"] = rh
        if flags & 2:
            rec["battery_v"] = battery_v
        if flags & 8:
            rec["door_open"] = bool(flags & 16)
        if flags & 4:
            rec["seq"] = seq
        out.append(rec)
    return out


# -- common checks ---------------------------------------------------------------------


def _text(name: str, value: object, *, optional: bool = False, max_len: int = 4096) -> str | None:
    if value is None and optional:
        return None
    if not isinstance(value, str) or not value:
        raise RecordError(f"{name} must be a non-empty string")
    if len(value) > max_len:
        raise RecordError(f"{name} is longer than {max_len} characters")
    return value


@overload
def _int(name: str, value: object, *, optional: Literal[False] = False, minimum: int = 0) -> int: ...
@overload
def _int(name: str, value: object, *, optional: bool, minimum: int = 0) -> int | None: ...
def _int(name: str, value: object, *, optional: bool = False, minimum: int = 0) -> int | None:
    if value is None and optional:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum or value >= 2**53:
        raise RecordError(f"{name} must be an integer in [{minimum}, 2**53)")
    return value


def _sha256(name: str, value: object) -> str:
    if not isinstance(value, str) or not _SHA256_HEX.match(value):
        raise RecordError(f"{name} must be 64 lowercase hex digits")
    return value


class LeafRecord(Protocol):
    kind: ClassVar[str]

    def to_json(self) -> dict[str, JSONValue]: ...


def canonical(record: LeafRecord) -> bytes:
    """The leaf bytes of a record; RecordError if they exceed an entry's 65,535 bytes."""
    value = record.to_json()
    if type(record) in _FLAT_KINDS:
        # only str, int, bool, None and ASCII keys: there Python's compact sorted JSON is
        # RFC 8785 byte for byte (the tests hold it to rfc8785), at a tenth of the CPU
        for v in value.values():
            if isinstance(v, int) and not isinstance(v, bool):
                _safe_int(v)
        try:
            data = json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()
        except UnicodeEncodeError as exc:
            raise RecordError(f"not canonicalisable: {exc}") from None
    else:
        data = canonical_json(value)
    if len(data) > MAX_RECORD_SIZE:
        raise RecordError(f"a {record.kind} record of {len(data)} bytes exceeds {MAX_RECORD_SIZE}")
    return data


# -- the record kinds ------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class LeafRef:
    """A pointer to a leaf: its index and its RFC 6962 leaf hash."""

    index: int
    leaf_hash: bytes

    def to_json(self) -> dict[str, JSONValue]:
        return {"index": self.index, "leaf_hash": self.leaf_hash.hex()}

    @classmethod
    def from_json(cls, value: object) -> LeafRef:
        if not isinstance(value, dict) or set(value) != {"index", "leaf_hash"}:
            raise RecordError("a leaf pointer is {index, leaf_hash}")
        return cls(
            _int("prev.index", value["index"]), bytes.fromhex(_sha256("prev.leaf_hash", value["leaf_hash"]))
        )


@dataclass(frozen=True, slots=True)
class ReadingsBatch:
    """One device's readings committed together. ``prev`` points at the device's previous
    batch leaf (None for its first): EvidenceLog.append fills it in under the log's lock,
    so the batches of a device form a chain in which a missing one is provable."""

    kind: ClassVar[str] = "readings_batch"
    device_id: str
    count: int
    ts_first_us: int
    ts_last_us: int
    readings_sha256: str
    seq_first: int | None = None
    seq_last: int | None = None
    prev: LeafRef | None = None

    def __post_init__(self) -> None:
        _text("device_id", self.device_id, max_len=256)
        _int("count", self.count, minimum=1)
        _int("ts_first_us", self.ts_first_us, minimum=-(2**53))
        _int("ts_last_us", self.ts_last_us, minimum=-(2**53))
        if self.ts_last_us < self.ts_first_us:
            raise RecordError("ts_last_us is before ts_first_us")
        _sha256("readings_sha256", self.readings_sha256)
        _int("seq_first", self.seq_first, optional=True)
        _int("seq_last", self.seq_last, optional=True)
        if (self.seq_first is None) != (self.seq_last is None):
            raise RecordError("seq_first and seq_last go together")
        if self.seq_first is not None and self.seq_last < self.seq_first:  # type: ignore[operator]
            raise RecordError("seq_last is below seq_first")

    def with_prev(self, prev: LeafRef | None) -> ReadingsBatch:
        return replace(self, prev=prev)

    def to_json(self) -> dict[str, JSONValue]:
        return {
            "v": VERSION,
            "kind": self.kind,
            "device_id": self.device_id,
            "count": self.count,
            "ts_first_us": self.ts_first_us,
            "ts_last_us": self.ts_last_us,
            "seq_first": self.seq_first,
            "seq_last": self.seq_last,
            "readings_sha256": self.readings_sha256,
            "prev": None if self.prev is None else self.prev.to_json(),
        }


def readings_batch(device_id: str, readings: Iterable[Mapping[str, JSONValue]]) -> ReadingsBatch:
    """The batch record of one device's readings (``reading_record`` dicts); its ``prev``
    is left for EvidenceLog.append. Sequence numbers, when the readings carry them, give
    the range the batch covers (min..max)."""
    rows = list(readings)
    if not rows:
        raise RecordError("a readings batch needs at least one reading")
    ts = [r["ts_us"] for r in rows]
    seqs = [r["seq"] for r in rows if r.get("seq") is not None]
    return ReadingsBatch(
        device_id=device_id,
        count=len(rows),
        ts_first_us=min(ts),
        ts_last_us=max(ts),
        readings_sha256=readings_digest(rows),
        seq_first=min(seqs) if seqs else None,
        seq_last=max(seqs) if seqs else None,
    )


@dataclass(frozen=True, slots=True)
class AlertEvent:
    """A change of an alert's state (raised, acknowledged, resolved, cleared, …)."""

    kind: ClassVar[str] = "alert_event"
    alert_id: str
    alert_kind: str
    change: str
    at_us: int
    actor: str | None = None
    comment: str | None = None
    device_id: str | None = None

    def __post_init__(self) -> None:
        _text("alert_id", self.alert_id, max_len=256)
        _text("alert_kind", self.alert_kind, max_len=256)
        _text("change", self.change, max_len=64)
        _int("at_us", self.at_us, minimum=-(2**53))
        _text("actor", self.actor, optional=True, max_len=256)
        _text("comment", self.comment, optional=True, max_len=8000)
        _text("device_id", self.device_id, optional=True, max_len=256)

    def to_json(self) -> dict[str, JSONValue]:
        return {
            "v": VERSION,
            "kind": self.kind,
            "alert_id": self.alert_id,
            "alert_kind": self.alert_kind,
            "change": self.change,
            "at_us": self.at_us,
            "actor": self.actor,
            "comment": self.comment,
            "device_id": self.device_id,
        }


@dataclass(frozen=True, slots=True)
class FileManifest:
    """A file's fingerprint: an origin clip or photo (media_manifest) or a test report."""

    kind: ClassVar[str] = "media_manifest"
    sha256: str
    size: int
    content_type: str
    name: str
    at_us: int
    stream: str | None = None
    product_batch: str | None = None
    shipment_id: str | None = None

    def __post_init__(self) -> None:
        _sha256("sha256", self.sha256)
        _int("size", self.size)
        _text("content_type", self.content_type, max_len=128)
        _text("name", self.name, max_len=1024)
        _int("at_us", self.at_us, minimum=-(2**53))
        _text("stream", self.stream, optional=True, max_len=256)
        _text("product_batch", self.product_batch, optional=True, max_len=256)
        _text("shipment_id", self.shipment_id, optional=True, max_len=256)

    def to_json(self) -> dict[str, JSONValue]:
        return {
            "v": VERSION,
            "kind": self.kind,
            "sha256": self.sha256,
            "size": self.size,
            "content_type": self.content_type,
            "name": self.name,
            "at_us": self.at_us,
            "stream": self.stream,
            "product_batch": self.product_batch,
            "shipment_id": self.shipment_id,
        }


@dataclass(frozen=True, slots=True)
class MediaManifest(FileManifest):
    kind: ClassVar[str] = "media_manifest"


@dataclass(frozen=True, slots=True)
class TestReport(FileManifest):
    kind: ClassVar[str] = "test_report"
    __test__: ClassVar[bool] = False  # not a pytest test class, despite its name


@dataclass(frozen=True, slots=True)
class ShipmentOpened:
    """A shipment begins: what it carries and the limits it is held to."""

    kind: ClassVar[str] = "shipment_opened"
    shipment_id: str
    at_us: int
    product: str | None = None
    product_batch: str | None = None
    origin_site: str | None = None
    profile: Mapping[str, JSONValue] | None = None

    def __post_init__(self) -> None:
        _text("shipment_id", self.shipment_id, max_len=256)
        _int("at_us", self.at_us, minimum=-(2**53))
        for name in ("product", "product_batch", "origin_site"):
            _text(name, getattr(self, name), optional=True, max_len=1024)
        if self.profile is not None and not isinstance(self.profile, Mapping):
            raise RecordError("profile must be a JSON object")

    def to_json(self) -> dict[str, JSONValue]:
        return {
            "v": VERSION,
            "kind": self.kind,
            "shipment_id": self.shipment_id,
            "at_us": self.at_us,
            "product": self.product,
            "product_batch": self.product_batch,
            "origin_site": self.origin_site,
            "profile": None if self.profile is None else dict(self.profile),
        }


@dataclass(frozen=True, slots=True)
class ShipmentClosed:
    """A shipment ends; ``summary`` may carry the report's figures as the server saw them."""

    kind: ClassVar[str] = "shipment_closed"
    shipment_id: str
    at_us: int
    summary: Mapping[str, JSONValue] | None = None

    def __post_init__(self) -> None:
        _text("shipment_id", self.shipment_id, max_len=256)
        _int("at_us", self.at_us, minimum=-(2**53))
        if self.summary is not None and not isinstance(self.summary, Mapping):
            raise RecordError("summary must be a JSON object")

    def to_json(self) -> dict[str, JSONValue]:
        return {
            "v": VERSION,
            "kind": self.kind,
            "shipment_id": self.shipment_id,
            "at_us": self.at_us,
            "summary": None if self.summary is None else dict(self.summary),
        }


@dataclass(frozen=True, slots=True)
class Correction:
    """Nothing in the log changes: a mistake is answered by a leaf naming the one it
    amends, why, and (optionally) what should be read instead."""

    kind: ClassVar[str] = "correction"
    amends: int
    reason: str
    at_us: int
    actor: str | None = None
    replacement: Mapping[str, JSONValue] | None = None

    def __post_init__(self) -> None:
        _int("amends", self.amends)
        _text("reason", self.reason, max_len=8000)
        _int("at_us", self.at_us, minimum=-(2**53))
        _text("actor", self.actor, optional=True, max_len=256)
        if self.replacement is not None and not isinstance(self.replacement, Mapping):
            raise RecordError("replacement must be a JSON object")

    def to_json(self) -> dict[str, JSONValue]:
        return {
            "v": VERSION,
            "kind": self.kind,
            "amends": self.amends,
            "reason": self.reason,
            "at_us": self.at_us,
            "actor": self.actor,
            "replacement": None if self.replacement is None else dict(self.replacement),
        }


RECORD_KINDS: dict[str, type] = {
    cls.kind: cls
    for cls in (
        ReadingsBatch,
        AlertEvent,
        MediaManifest,
        TestReport,
        ShipmentOpened,
        ShipmentClosed,
        Correction,
    )
}


# records whose JSON holds no floats and no caller-supplied objects
_FLAT_KINDS = frozenset({ReadingsBatch, AlertEvent, MediaManifest, TestReport})


def parse_record(entry: bytes) -> LeafRecord:
    """A leaf's bytes back to its typed record; RecordError unless the bytes are exactly
    the canonical form of a known record (a verifier trusts nothing else)."""
    try:
        value = json.loads(entry)
    except (ValueError, UnicodeDecodeError) as exc:
        raise RecordError(f"leaf is not JSON: {exc}") from None
    if not isinstance(value, dict) or value.get("v") != VERSION:
        raise RecordError("leaf is not a version 1 record")
    cls = RECORD_KINDS.get(value.get("kind"))  # type: ignore[arg-type]
    if cls is None:
        raise RecordError(f"unknown leaf kind {value.get('kind')!r}")
    fields = {k: v for k, v in value.items() if k not in ("v", "kind")}
    if cls is ReadingsBatch and fields.get("prev") is not None:
        fields["prev"] = LeafRef.from_json(fields["prev"])
    try:
        record = cls(**fields)
    except TypeError as exc:
        raise RecordError(f"{value['kind']} leaf has unexpected fields: {exc}") from None
    if canonical(record) != entry:
        raise RecordError(f"{value['kind']} leaf is not in canonical form")
    return record
