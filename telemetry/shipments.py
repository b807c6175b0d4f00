"""Shipments: a product batch's journey, the devices that watched it, and its limits.

A shipment has a short URL-safe id (random, or a slug an operator picks), a product and
batch, the origin site, the alert profile whose temperature limits judge it, a state
(``open`` → ``closed``), and a *route*: segments saying which device watched the goods
from when to when (a pallet goes from a cold room to a truck to a store). Segments are
in time order and never overlap; only the last may still be open (in transit). Linked
streams are plain slugs here: telemetry does not import the stream package.

Everything is a frozen value. Changes are pure functions (``add_segment``, ``close``,
``patch``) that validate and return a new value, so the API, the CLI and tests share one
set of rules; a violation raises ``ShipmentError`` naming the field. The store saves a
value with optimistic concurrency (``version``), so two writers cannot lose each other's
change.

``ShipmentQueries`` gathers what a report needs (readings per segment, alerts of those
devices in those windows, the profile) from a store; ``telemetry.reports`` does the
maths on them.
"""

from __future__ import annotations

import re
import secrets
from base64 import b32encode
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any, Protocol

from telemetry.alerts.rules import Profile, RuleError, builtin_profiles
from telemetry.evidence.canonical import float32
from telemetry.readings import PLAIN_ID, Reading
from telemetry.storage.alerts import AlertRecord

# Lower case only: ids end up in QR codes and printed labels, where case is easily lost.
SHIPMENT_ID_RE = re.compile(r"^[a-z0-9][a-z0-9-]{2,39}$")
_STREAM_RE = re.compile(r"^[a-z0-9][a-z0-9-]{0,63}$")
RANDOM_ID_CHARS = 10  # 50 bits of base32: unguessable enough for an unlisted page
MAX_TEXT = 200
MAX_SEGMENTS = 100
MAX_STREAMS = 20


class ShipmentState(StrEnum):
    OPEN = "open"
    CLOSED = "closed"


class ShipmentError(ValueError):
    """A shipment value that breaks a rule; ``field`` names the offending field."""

    def __init__(self, field_name: str, message: str) -> None:
        super().__init__(f"{field_name}: {message}")
        self.field = field_name


class ShipmentStateError(ShipmentError):
    """The change is valid in itself but not in the shipment's state (closed): a 409."""


class ShipmentConflict(Exception):
    """The stored shipment changed since it was read (another writer won), or its id is
    taken; the caller reads again and retries, or reports 409."""


def new_shipment_id() -> str:
    """10 characters of lower-case base32 (a-z, 2-7) from 50 random bits."""
    return b32encode(secrets.token_bytes(7)).decode("ascii").lower()[:RANDOM_ID_CHARS]


# Times a shipment can have: after the Unix epoch (the stores count from it) and well
# before the calendar's end (a far-future time cannot be shifted to UTC safely).
_EARLIEST = datetime(1970, 1, 1, tzinfo=UTC)
_LATEST = datetime(3000, 1, 1, tzinfo=UTC)


def utc(t: datetime, field_name: str) -> datetime:
    if not isinstance(t, datetime):
        raise ShipmentError(field_name, f"must be a time, got {t!r}")
    if t.tzinfo is None:
        raise ShipmentError(field_name, "must carry a time zone (e.g. 2026-11-24T08:00:00Z)")
    try:
        out = t.astimezone(UTC)
    except OverflowError:
        out = _LATEST
    if not _EARLIEST <= out < _LATEST:
        raise ShipmentError(field_name, "must be between 1970 and 3000")
    return out


def parse_time(value: object, field_name: str) -> datetime:
    """An RFC 3339 / ISO 8601 time with a zone, as the API and the CLI take it."""
    if isinstance(value, datetime):
        return utc(value, field_name)
    if not isinstance(value, str):
        raise ShipmentError(field_name, f"must be an ISO 8601 time text, got {value!r}")
    try:
        t = datetime.fromisoformat(value.strip().replace("Z", "+00:00").replace("z", "+00:00"))
    except ValueError:
        raise ShipmentError(field_name, f"not an ISO 8601 time: {value!r}") from None
    return utc(t, field_name)


def _text(value: object, field_name: str, *, required: bool) -> str | None:
    if value is None or (isinstance(value, str) and not value.strip()):
        if required:
            raise ShipmentError(field_name, "is required")
        return None
    if not isinstance(value, str):
        raise ShipmentError(field_name, f"must be text, got {type(value).__name__}")
    value = value.strip()
    if len(value) > MAX_TEXT or any(ord(c) < 32 for c in value):
        raise ShipmentError(field_name, f"must be one line of at most {MAX_TEXT} characters")
    return value


def _plain_id(value: object, field_name: str, pattern: re.Pattern[str], what: str) -> str:
    if not isinstance(value, str) or not pattern.match(value):
        raise ShipmentError(field_name, f"must be {what}, got {value!r}")
    return value


def check_shipment_id(value: object) -> str:
    return _plain_id(value, "id", SHIPMENT_ID_RE, "3-40 of a-z 0-9 '-' starting with a letter or digit")


@dataclass(frozen=True, slots=True)
class Segment:
    """One device watching the goods over [start, end); end None: still watching."""

    device_id: str
    start: datetime
    end: datetime | None = None
    label: str | None = None  # "Truck 7, Shanghai → Hangzhou": what a reader sees in the route

    def __post_init__(self) -> None:
        _plain_id(self.device_id, "segments.device_id", PLAIN_ID, "1-64 of A-Z a-z 0-9 _ . -")
        object.__setattr__(self, "start", utc(self.start, "segments.start"))
        if self.end is not None:
            end = utc(self.end, "segments.end")
            if end <= self.start:
                raise ShipmentError("segments.end", f"must be after the segment's start ({self.start})")
            object.__setattr__(self, "end", end)
        object.__setattr__(self, "label", _text(self.label, "segments.label", required=False))

    def to_dict(self) -> dict[str, Any]:
        return {
            "device_id": self.device_id,
            "start": iso(self.start),
            "end": None if self.end is None else iso(self.end),
            "label": self.label,
        }

    @classmethod
    def from_dict(cls, data: object) -> Segment:
        if not isinstance(data, Mapping):
            raise ShipmentError("segments", "each segment must be an object")
        unknown = set(data) - {"device_id", "start", "end", "label"}
        if unknown:
            raise ShipmentError("segments", f"unknown field(s) {', '.join(sorted(unknown))}")
        end = data.get("end")
        return cls(
            device_id=data.get("device_id"),  # type: ignore[arg-type]
            start=parse_time(data.get("start"), "segments.start"),
            end=None if end is None else parse_time(end, "segments.end"),
            label=data.get("label"),
        )


def iso(t: datetime) -> str:
    return t.astimezone(UTC).isoformat().replace("+00:00", "Z")


@dataclass(frozen=True, slots=True)
class Shipment:
    id: str
    product: str
    batch: str
    origin_site: str
    profile_id: str
    opened_at: datetime
    state: ShipmentState = ShipmentState.OPEN
    closed_at: datetime | None = None
    segments: tuple[Segment, ...] = ()
    streams: tuple[str, ...] = ()
    version: int = 0  # bumped by the store on every save (optimistic concurrency)
    created_at: datetime | None = None
    updated_at: datetime | None = None
    # The evidence log's shipment_opened / shipment_closed leaves, set by the store in the
    # transaction that opens or closes the shipment (None: made before the log).
    opened_leaf: int | None = None
    closed_leaf: int | None = None

    def __post_init__(self) -> None:
        check_shipment_id(self.id)
        for name in ("product", "batch"):
            object.__setattr__(self, name, _text(getattr(self, name), name, required=True))
        _plain_id(self.origin_site, "origin_site", PLAIN_ID, "1-64 of A-Z a-z 0-9 _ . -")
        _plain_id(self.profile_id, "profile_id", PLAIN_ID, "a profile id")
        object.__setattr__(self, "opened_at", utc(self.opened_at, "opened_at"))
        if not isinstance(self.state, ShipmentState):
            try:
                object.__setattr__(self, "state", ShipmentState(self.state))
            except ValueError:
                raise ShipmentError("state", f"must be open or closed, got {self.state!r}") from None
        if self.state is ShipmentState.CLOSED:
            if self.closed_at is None:
                raise ShipmentError("closed_at", "a closed shipment needs its closing time")
            object.__setattr__(self, "closed_at", utc(self.closed_at, "closed_at"))
            if self.closed_at < self.opened_at:
                raise ShipmentError("closed_at", "must not be before opened_at")
        elif self.closed_at is not None:
            raise ShipmentError("closed_at", "an open shipment has no closing time")
        object.__setattr__(self, "segments", tuple(self.segments))
        object.__setattr__(self, "streams", tuple(self.streams))
        _check_route(self)
        _check_streams(self.streams)

    @property
    def is_open(self) -> bool:
        return self.state is ShipmentState.OPEN

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "product": self.product,
            "batch": self.batch,
            "origin_site": self.origin_site,
            "profile_id": self.profile_id,
            "state": self.state.value,
            "opened_at": iso(self.opened_at),
            "closed_at": None if self.closed_at is None else iso(self.closed_at),
            "segments": [s.to_dict() for s in self.segments],
            "streams": list(self.streams),
            "version": self.version,
            "opened_leaf": self.opened_leaf,
            "closed_leaf": self.closed_leaf,
        }


def _check_route(s: Shipment) -> None:
    if len(s.segments) > MAX_SEGMENTS:
        raise ShipmentError("segments", f"at most {MAX_SEGMENTS} segments")
    for i, seg in enumerate(s.segments):
        if not isinstance(seg, Segment):
            raise ShipmentError("segments", f"item {i} is not a segment")
        if seg.start < s.opened_at:
            raise ShipmentError("segments.start", f"segment {i + 1} starts before the shipment opened")
        last = i == len(s.segments) - 1
        if seg.end is None and not last:
            raise ShipmentError("segments.end", f"segment {i + 1} is open but not the last one")
        if s.closed_at is not None:
            if seg.end is None:
                raise ShipmentError("segments.end", "a closed shipment has no open segment")
            if seg.end > s.closed_at:
                raise ShipmentError("segments.end", f"segment {i + 1} ends after the shipment closed")
        if i:
            prev = s.segments[i - 1]
            assert prev.end is not None  # checked above: only the last may be open
            if seg.start < prev.end:
                raise ShipmentError(
                    "segments.start",
                    f"segment {i + 1} starts at {iso(seg.start)}, before segment {i} ends"
                    f" ({iso(prev.end)}): segments are in order and may not overlap",
                )


def _check_streams(streams: Sequence[str]) -> None:
    if len(streams) > MAX_STREAMS:
        raise ShipmentError("streams", f"at most {MAX_STREAMS} linked streams")
    for slug in streams:
        _plain_id(slug, "streams", _STREAM_RE, "stream slugs (1-64 of a-z 0-9 '-')")
    if len(set(streams)) != len(streams):
        raise ShipmentError("streams", "a stream is linked twice")


# -- changes ---------------------------------------------------------------------------------


def _require_open(s: Shipment, field_name: str) -> None:
    if not s.is_open:
        raise ShipmentStateError(field_name, f"shipment {s.id} is closed; its record no longer changes")


def add_segment(s: Shipment, segment: Segment) -> Shipment:
    """Append a segment; an open previous segment ends where the new one starts (the
    goods moved from one device's watch to the next)."""
    _require_open(s, "segments")
    segments = list(s.segments)
    if segments and segments[-1].end is None:
        prev = segments[-1]
        if segment.start <= prev.start:
            raise ShipmentError(
                "segments.start",
                f"must be after the open segment's start ({iso(prev.start)}), which it closes",
            )
        segments[-1] = replace(prev, end=segment.start)
    return replace(s, segments=(*segments, segment))


def close(s: Shipment, at: datetime) -> Shipment:
    """Close the shipment at ``at``; an open last segment ends then too."""
    _require_open(s, "state")
    at = utc(at, "closed_at")
    segments = list(s.segments)
    if segments and segments[-1].end is None:
        if at <= segments[-1].start:
            raise ShipmentError("closed_at", "must be after the start of the open segment")
        segments[-1] = replace(segments[-1], end=at)
    return replace(s, state=ShipmentState.CLOSED, closed_at=at, segments=tuple(segments))


PATCHABLE = frozenset({"product", "batch", "origin_site", "profile_id", "streams", "segments", "opened_at"})


def patch(s: Shipment, changes: Mapping[str, Any]) -> Shipment:
    """Apply a JSON merge of the editable fields (an open shipment only). ``segments``
    replaces the whole route (to correct a mistake); ``state`` changes only by close()."""
    unknown = set(changes) - PATCHABLE
    if unknown:
        raise ShipmentError(
            sorted(unknown)[0], "cannot be changed here (editable: " + ", ".join(sorted(PATCHABLE)) + ")"
        )
    _require_open(s, sorted(changes)[0] if changes else "state")
    kwargs: dict[str, Any] = {}
    for name in ("product", "batch", "origin_site", "profile_id"):
        if name in changes:
            kwargs[name] = changes[name]
    if "opened_at" in changes:
        kwargs["opened_at"] = parse_time(changes["opened_at"], "opened_at")
    if "streams" in changes:
        kwargs["streams"] = _stream_list(changes["streams"])
    if "segments" in changes:
        segs = changes["segments"]
        if not isinstance(segs, list):
            raise ShipmentError("segments", "must be a list")
        kwargs["segments"] = tuple(Segment.from_dict(x) for x in segs)
    return replace(s, **kwargs)


def _stream_list(value: object) -> tuple[str, ...]:
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise ShipmentError("streams", "must be a list of stream slugs")
    return tuple(value)


def shipment_from_request(data: Mapping[str, Any], now: datetime) -> Shipment:
    """A new shipment from the API's / CLI's fields (id optional: a random one)."""
    allowed = {"id", "product", "batch", "origin_site", "profile_id", "opened_at", "streams", "segments"}
    unknown = set(data) - allowed
    if unknown:
        raise ShipmentError(sorted(unknown)[0], "unknown field")
    sid = data.get("id")
    opened = data.get("opened_at")
    segs = data.get("segments", [])
    if not isinstance(segs, list):
        raise ShipmentError("segments", "must be a list")
    return Shipment(
        id=new_shipment_id() if sid is None else check_shipment_id(sid),
        product=data.get("product"),  # type: ignore[arg-type]
        batch=data.get("batch"),  # type: ignore[arg-type]
        origin_site=data.get("origin_site"),  # type: ignore[arg-type]
        profile_id=data.get("profile_id"),  # type: ignore[arg-type]
        opened_at=now if opened is None else parse_time(opened, "opened_at"),
        streams=_stream_list(data.get("streams", [])),
        segments=tuple(Segment.from_dict(x) for x in segs),
    )


# -- queries: what a report needs -----------------------------------------------------------


class ReportSource(Protocol):
    """The parts of the store a report reads (telemetry.storage.Store has them all)."""

    def device_readings(self, device_id: str, start: datetime, end: datetime) -> list[Reading]: ...

    def alerts_overlapping(self, device_id: str, start: datetime, end: datetime) -> list[AlertRecord]: ...

    def list_profiles(self) -> dict[str, dict[str, Any]]: ...


@dataclass(frozen=True, slots=True)
class SegmentData:
    """One segment's window (end resolved for an open segment) and what was stored in it."""

    segment: Segment
    start: datetime
    end: datetime
    readings: tuple[Reading, ...]
    alerts: tuple[AlertRecord, ...] = field(default_factory=tuple)


def find_profile(source: ReportSource, profile_id: str) -> Profile | None:
    profiles = builtin_profiles()
    if profile_id in profiles:
        return profiles[profile_id]
    definition = source.list_profiles().get(profile_id)
    if definition is None:
        return None
    try:
        return Profile.from_dict(definition)
    except RuleError:
        return None


def report_end(s: Shipment, as_of: datetime) -> datetime:
    """Where the record ends: the close, or (still open) the moment of the report."""
    return s.closed_at if s.closed_at is not None else max(as_of, s.opened_at)


def gather(source: ReportSource, s: Shipment, as_of: datetime) -> list[SegmentData]:
    """Each segment's readings in [start, end) (half-open, so a reading at a hand-over
    belongs to the next segment only) and its device's alerts overlapping the window."""
    stop = report_end(s, as_of)
    out: list[SegmentData] = []
    for seg in s.segments:
        end = seg.end if seg.end is not None else stop
        if end <= seg.start:  # an open segment that starts after the report time
            out.append(SegmentData(seg, seg.start, seg.start, ()))
            continue
        readings = tuple(r for r in source.device_readings(seg.device_id, seg.start, end) if r.ts < end)
        alerts = tuple(source.alerts_overlapping(seg.device_id, seg.start, end))
        out.append(SegmentData(seg, seg.start, end, readings, alerts))
    return out


def _as_committed(readings: Iterable[Reading], left_out: set[tuple[str, datetime]]) -> Iterator[Reading]:
    for r in readings:
        if (r.device_id, r.ts) not in left_out:
            yield r._replace(temp_c=float32(r.temp_c))


class SealedSource(ReportSource, Protocol):
    """A report source that also knows which readings the evidence log has not sealed yet."""

    def pending_readings(self, device_id: str, start: datetime, end: datetime) -> list[Reading]: ...


@dataclass(frozen=True, slots=True)
class Pending:
    """Readings of the shipment's route stored but not sealed into the evidence log yet (a
    device's current window): a public record cannot show them as verified."""

    count: int
    first: datetime  # earliest reading time among them
    last: datetime
    through: datetime  # where the sealed record ends for an open shipment

    def to_dict(self) -> dict[str, Any]:
        return {
            "count": self.count,
            "first": iso(self.first),
            "last": iso(self.last),
            "through": iso(self.through),
        }


def gather_sealed(
    source: SealedSource, s: Shipment, as_of: datetime
) -> tuple[list[SegmentData], datetime, Pending | None]:
    """``gather`` for the public record: only readings the evidence log has sealed. An open
    shipment's record stops just before its first unsealed reading (the device's current
    window, sealed within the configured span); unsealed readings inside an earlier part
    (a logger's late upload) are left out. Returns the data, the report time to use, and
    what was left out."""
    stop = report_end(s, as_of)
    pending: list[Reading] = []
    for seg in s.segments:
        end = seg.end if seg.end is not None else stop
        if end > seg.start:
            pending.extend(source.pending_readings(seg.device_id, seg.start, end))
    first = min((r.ts for r in pending), default=None)
    through = as_of if first is None or s.closed_at is not None else max(min(as_of, first), s.opened_at)
    left_out = {(r.device_id, r.ts) for r in pending}
    # Temperatures as the log committed them (float32): a verifier recomputes the figures
    # from those, and a reading a rounding away from a limit must count the same on both.
    data = [
        replace(d, readings=tuple(_as_committed(d.readings, left_out)))
        for d in gather(source, s, through)
    ]
    if first is None:
        return data, through, None
    return data, through, Pending(len(pending), first, max(r.ts for r in pending), through)


__all__ = [
    "PATCHABLE",
    "Pending",
    "ReportSource",
    "SealedSource",
    "Segment",
    "SegmentData",
    "Shipment",
    "ShipmentConflict",
    "ShipmentError",
    "ShipmentState",
    "ShipmentStateError",
    "add_segment",
    "check_shipment_id",
    "close",
    "find_profile",
    "gather",
    "gather_sealed",
    "iso",
    "new_shipment_id",
    "parse_time",
    "patch",
    "report_end",
    "shipment_from_request",
]
