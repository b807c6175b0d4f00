"""The payload contract: one MQTT telemetry message -> accepted Readings and/or Rejections.

Topic: ``<prefix>/<device_id>/telemetry``. The device id always comes from the topic
(the broker's ACL lets a device publish only there), never from the payload.

Accepted payloads (UTF-8 JSON, at most ``PayloadLimits.max_payload_bytes``):

1. One reading object::

       {"ts": "2026-11-24T08:00:00Z" | 1795507200000, "temp_c": 3.4,
        "rh": 81.0, "battery_v": 3.01, "door_open": false, "seq": 1234}

   ``ts`` and ``temp_c`` are required, the rest optional (``null`` = absent); unknown
   keys are ignored.
2. A JSON array of such objects (a logger flushing its buffer).
3. ThingsBoard style ``{"ts": <ms>, "values": {...}}`` (and arrays of those; an array
   may mix styles 1 and 3). Value names, first present wins:
   temperature > temp_c > temp, humidity > rh, battery > battery_v, door_open > door;
   ``seq`` is read from ``values`` too.
4. A SenML pack (RFC 8428, JSON): an array whose first object has no ``ts`` and one of
   the keys bn, bt, bu, bv, bver, n, v, vb, vs, vd. See ``_senml`` for the rules.

Decisions (each is tested in tests/unit/test_payloads.py):

- ``ts`` numbers are epoch MILLISECONDS, integer or float (sub-ms kept to the µs).
  Values below 1e11 (before 1973-03-03) are rejected as ``bad_ts`` with a detail that
  says milliseconds are expected: a device sending seconds has a firmware bug, and
  guessing the unit would make the same number mean two instants. (SenML is the
  exception: its times are seconds, by RFC 8428.)
- ``ts`` strings must be RFC 3339 with an offset (``Z``/``z`` or ``±hh:mm``; ``T``,
  ``t`` or a space between date and time; any number of fraction digits, truncated to
  µs). Python's ``fromisoformat`` accepts much more (week dates, ``+0530``, no
  seconds); that is checked structurally first. A naive string is ``bad_ts``.
- Numbers: bool is never a number, NaN/±Infinity are rejected (orjson already refuses
  them as JSON, and 1e400), ``seq`` must be an integer in 0..2**53-1 (what every JSON
  reader, a browser verifying the evidence log included, holds exactly).
  ``rh`` must lie in 0..100 %, ``battery_v`` in 0..100 V; a bad optional field rejects
  the whole entry (one entry -> one Reading or one Rejection), it is not dropped.
- ``null`` for ``ts``/``temp_c`` counts as missing; ``{}``, ``[]`` and an empty or
  blank payload are ``empty``.
- ``too_many_readings`` and ``oversized`` reject the whole message (no partial
  processing): both exist to bound the work one message can cause.
- Duplicate timestamps inside one message: the first accepted reading wins, later ones
  are dropped silently (storage is idempotent on (device_id, ts) anyway). A rejected
  entry does not shadow a later good one with the same ts.
- A leading UTF-8 BOM is tolerated (RFC 8259 §8.1 allows ignoring it).
- Reading.ts is an aware datetime with tzinfo ``datetime.timezone.utc``.

Nothing in the payload or topic can make ``parse_message`` raise: every failure is a
Rejection (an unexpected bug becomes ``internal_error``, which the tests forbid).
Only a caller bug raises: a naive ``now``.

Hot path: one ``orjson.loads``, a cached topic lookup, integer µs arithmetic for the
time window, and a Reading built without the frozen-dataclass ``__init__`` overhead
(see ``_new_reading``).
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from types import MappingProxyType
from typing import Any, Final

import orjson

from telemetry.readings import Reading, Rejection
from telemetry.settings import PayloadLimits

__all__ = [
    "REASONS",
    "ParseResult",
    "device_id_from_topic",
    "parse_message",
]

#: Every ``Rejection.reason`` this module produces, with what it means. Stable codes:
#: they are metric labels and appear in operator tooling.
REASONS: Final = MappingProxyType(
    {
        "bad_topic": "the topic is not <prefix>/<device_id>/telemetry with a valid device id",
        "oversized": "the payload is larger than max_payload_bytes (not parsed)",
        "not_utf8": "the payload is not UTF-8 text (e.g. CBOR or a binary frame)",
        "malformed_json": "the payload is UTF-8 but not valid JSON (incl. nesting too deep)",
        "empty": "nothing to read: empty payload, {} or [], or a SenML pack without values",
        "unknown_format": "valid JSON but none of the accepted shapes",
        "too_many_readings": "more entries than max_readings_per_message (whole message)",
        "missing_ts": "an entry without ts (or ts null)",
        "missing_temp": "an entry (or a SenML time) without a temperature",
        "bad_type": "a field has the wrong JSON type (e.g. a string or bool for a number)",
        "bad_ts": "ts is not RFC 3339 with offset nor plausible epoch milliseconds",
        "bad_value": "a number is not finite or outside its field's range (rh, battery, seq)",
        "bad_unit": "a SenML record has a unit this field cannot take",
        "temp_out_of_range": "temperature outside [min_temp_c, max_temp_c]",
        "ts_in_future": "ts later than now + max_future_s",
        "ts_too_old": "ts earlier than now - max_age_days",
        "internal_error": "a bug in this parser (never expected; the message is rejected)",
    }
)


@dataclass(slots=True)
class ParseResult:
    readings: list[Reading]
    rejections: list[Rejection]


# --------------------------------------------------------------------------- topic

_ID_CHARS: Final = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_.:-")
_MAX_ID_LEN: Final = 64


def device_id_from_topic(topic: str, prefix: str = "origincast") -> str | None:
    """``"<prefix>/<device_id>/telemetry"`` -> device_id; None if the topic does not match.

    Device ids are 1..64 characters of ``[A-Za-z0-9_.:-]``.
    """
    if type(topic) is not str or len(topic) > len(prefix) + _MAX_ID_LEN + 11:
        return None
    parts = topic.split("/")
    if len(parts) != 3 or parts[0] != prefix or parts[2] != "telemetry":
        return None
    device_id = parts[1]
    if device_id and len(device_id) <= _MAX_ID_LEN and _ID_CHARS.issuperset(device_id):
        return device_id
    return None


# Valid topics seen recently: a cached lookup instead of split + validation. lru_cache is
# bounded and thread-safe (the ingester and the live feed parse on different threads).
_cached_device_id = functools.lru_cache(maxsize=65_536)(device_id_from_topic)


# --------------------------------------------------------------------------- helpers

_UTC: Final = UTC
_EPOCH: Final = datetime(1970, 1, 1, tzinfo=_UTC)
_ONE_US: Final = timedelta(microseconds=1)
_MS_MIN: Final = 100_000_000_000  # epoch ms below this (1973-03-03) are taken as a unit bug
_FAST_US_MAX: Final = 2**33 * 1_000_000  # fromtimestamp(us / 1e6) is exact below this
# 2**53 - 1: every JSON reader (a browser verifying the evidence log) holds it exactly.
_SEQ_MAX: Final = 2**53 - 1
_RH_MAX: Final = 100.0
_BATTERY_MAX_V: Final = 100.0
_HEAD_BYTES: Final = 200
_BOM: Final = b"\xef\xbb\xbf"
_fromtimestamp = datetime.fromtimestamp
_fromisoformat = datetime.fromisoformat


class _Reject(Exception):
    """Internal: carries a (reason, detail) out of nested validation; never escapes."""

    __slots__ = ("detail", "reason")

    def __init__(self, reason: str, detail: str) -> None:
        self.reason = reason
        self.detail = detail


def _reading_factory():
    """A Reading constructor without NamedTuple's keyword handling.

    ``tuple.__new__`` with a ready tuple builds the same object in about half the time of
    ``Reading(...)``; used only while Reading is the 7-field tuple this was written for.
    A unit test checks both build equal objects.
    """
    names = ("device_id", "ts", "temp_c", "rh", "battery_v", "door_open", "seq")
    if getattr(Reading, "_fields", None) != names:  # pragma: no cover - Reading changed shape
        return Reading
    new = tuple.__new__

    def new_reading(device_id, ts, temp_c, rh=None, battery_v=None, door_open=None, seq=None):
        return new(Reading, (device_id, ts, temp_c, rh, battery_v, door_open, seq))

    return new_reading


_new_reading = _reading_factory()


def _dt_from_us(us: int) -> datetime:
    if 0 <= us < _FAST_US_MAX:
        return _fromtimestamp(us / 1e6, _UTC)
    try:
        return _EPOCH + timedelta(0, 0, us)
    except OverflowError:
        raise _Reject("bad_ts", f"{_secs(us)} s since 1970 is outside years 1..9999") from None


def _iso(us: int) -> str:
    try:
        return _dt_from_us(us).isoformat().replace("+00:00", "Z")
    except (_Reject, OverflowError, ValueError, OSError):
        return f"{_secs(us)} s since 1970"


def _secs(us: int) -> str:
    """µs as seconds for a detail: 3 decimals, or 6 significant digits when huge."""
    s = us / 1e6
    return f"{s:.3f}" if -1e12 < s < 1e12 else f"{s:.6g}"


def _kind(v: Any) -> str:
    t = type(v)
    if t is str:
        return "a string"
    if t is bool:
        return "a boolean"
    if t is int:
        return "an integer"
    if t is float:
        return "a number"
    if t is dict:
        return "an object"
    if t is list:
        return "an array"
    if v is None:
        return "null"
    return t.__name__


def _show(v: Any) -> str:
    """A short, safe rendering of a device-sent value for a detail sentence."""
    t = type(v)
    if t is str:
        return repr(v[:40]) + ("…" if len(v) > 40 else "")
    if t is bool or t is int or t is float or v is None:
        s = "null" if v is None else ("true" if v is True else "false" if v is False else repr(v))
        return s if len(s) <= 40 else s[:40] + "…"
    return _kind(v)


def _head(payload: Any) -> str:
    try:
        if isinstance(payload, str):
            return payload[:_HEAD_BYTES]
        return bytes(payload[:_HEAD_BYTES]).decode("utf-8", errors="replace")
    except Exception:
        return ""


def _sec_to_us(x: int | float) -> int:
    if type(x) is int:
        return x * 1_000_000
    return round(x * 1e6)


# --------------------------------------------------------------------------- field checks


def _ts_str(s: str, name: str) -> tuple[int, datetime]:
    """RFC 3339 (with offset) -> (epoch µs, aware UTC datetime)."""
    n = len(s)
    if (
        19 <= n <= 40
        and s.isascii()
        and s[4] == "-"
        and s[7] == "-"
        and s[10] in "Tt "
        and s[13] == ":"
        and s[16] == ":"
    ):
        last = s[-1]
        if last == "Z" or last == "z":
            tzlen = 1
        elif n >= 25 and s[-6] in "+-" and s[-3] == ":":
            tzlen = 6
        else:
            tzlen = 0
        frac = s[19 : n - tzlen]
        if not frac or (len(frac) >= 2 and frac[0] == "." and frac[1:].isdigit()):
            if tzlen == 0:
                try:
                    _fromisoformat(s)
                except ValueError:
                    pass
                else:
                    raise _Reject(
                        "bad_ts",
                        f"{name} {_show(s)} has no UTC offset; add Z or ±hh:mm "
                        "(e.g. 2026-11-24T08:00:00Z)",
                    )
            else:
                if s[10] != "T" or last == "z":
                    s = s.upper()
                try:
                    dt = _fromisoformat(s)
                except ValueError as e:
                    raise _Reject(
                        "bad_ts", f"{name} {_show(s)} is not a valid date-time: {e}"
                    ) from None
                if dt.tzinfo is not _UTC:
                    try:
                        dt = dt.astimezone(_UTC)
                    except OverflowError:
                        raise _Reject(
                            "bad_ts", f"{name} {_show(s)} is outside years 1..9999 in UTC"
                        ) from None
                return (dt - _EPOCH) // _ONE_US, dt
    raise _Reject(
        "bad_ts",
        f"{name} {_show(s)} is neither an RFC 3339 date-time (e.g. 2026-11-24T08:00:00Z) "
        "nor epoch milliseconds",
    )


def _ts(v: Any, name: str) -> tuple[int, datetime | None]:
    """ts as sent -> (epoch µs, datetime if already built)."""
    t = type(v)
    if t is int:
        if v >= _MS_MIN:
            return v * 1000, None
    elif t is float:
        if _MS_MIN <= v < 1e300:
            return round(v * 1000.0), None
        if v != v or v in (math.inf, -math.inf):
            raise _Reject("bad_ts", f"{name} is {_show(v)}, not a finite number")
    elif t is str:
        return _ts_str(v, name)
    elif v is None:
        raise _Reject("missing_ts", f"{name} is null")
    else:
        raise _Reject(
            "bad_type",
            f"{name} is {_kind(v)}, expected an RFC 3339 string or epoch milliseconds",
        )
    # a number below 1e11: not milliseconds of this era
    if v < 0:
        raise _Reject("bad_ts", f"{name} {_show(v)} is negative; epoch milliseconds expected")
    if 1e8 <= v < 1e11:
        raise _Reject(
            "bad_ts",
            f"{name} {_show(v)} looks like epoch seconds; epoch milliseconds are expected "
            f"(e.g. {int(v) * 1000})",
        )
    raise _Reject(
        "bad_ts",
        f"{name} {_show(v)} is not plausible epoch milliseconds (before 1973-03-03); "
        "epoch milliseconds are expected (e.g. 1764000000000)",
    )


def _window(us: int, lo_us: int, hi_us: int, name: str, now_us: int, lim: PayloadLimits):
    if us > hi_us:
        raise _Reject(
            "ts_in_future",
            f"{name} {_iso(us)} is {_secs(us - now_us)} s ahead of the server clock "
            f"({_iso(now_us)}); at most {lim.max_future_s:g} s is allowed",
        )
    if us < lo_us:
        raise _Reject(
            "ts_too_old",
            f"{name} {_iso(us)} is {(now_us - us) / 86_400e6:.1f} days before the server "
            f"clock ({_iso(now_us)}); at most {lim.max_age_days:g} days is allowed",
        )


def _temp(v: Any, name: str, lim: PayloadLimits) -> float:
    t = type(v)
    if t is float:
        c = v
    elif t is int:
        c = float(v)
    elif v is None:
        raise _Reject("missing_temp", f"{name} is null")
    else:
        raise _Reject("bad_type", f"{name} is {_kind(v)} ({_show(v)}), expected a number")
    if lim.min_temp_c <= c <= lim.max_temp_c:
        return c
    return _temp_reject(c, name, lim)


def _temp_reject(c: float, name: str, lim: PayloadLimits):
    if c != c or c in (math.inf, -math.inf):
        raise _Reject("bad_value", f"{name} is {c!r}, not a finite number")
    raise _Reject(
        "temp_out_of_range",
        f"{name} is {c!r} °C, outside the sensor range "
        f"{lim.min_temp_c:g}..{lim.max_temp_c:g} °C",
    )


def _number(v: Any, name: str, lo: float, hi: float, unit: str) -> float:
    t = type(v)
    if t is float:
        x = v
    elif t is int:
        x = float(v)
    else:
        raise _Reject("bad_type", f"{name} is {_kind(v)} ({_show(v)}), expected a number")
    if lo <= x <= hi:
        return x
    if x != x or x in (math.inf, -math.inf):
        raise _Reject("bad_value", f"{name} is {x!r}, not a finite number")
    raise _Reject("bad_value", f"{name} is {x!r} {unit}, outside {lo:g}..{hi:g} {unit}")


def _bool(v: Any, name: str) -> bool:
    if v is True or v is False:
        return v
    raise _Reject("bad_type", f"{name} is {_kind(v)} ({_show(v)}), expected true or false")


def _seq(v: Any, name: str) -> int:
    if type(v) is not int:
        raise _Reject("bad_type", f"{name} is {_kind(v)} ({_show(v)}), expected an integer")
    if 0 <= v <= _SEQ_MAX:
        return v
    raise _Reject("bad_value", f"{name} is {v}, expected an integer in 0..2**53-1")


# --------------------------------------------------------------------------- JSON shapes


class _Ctx:
    """Constants for one (limits, now): the accepted time window in epoch µs."""

    __slots__ = ("age_us", "future_us", "hi_us", "lim", "lo_us", "now", "now_us")

    def __init__(self, now: datetime, now_us: int, age_us: int, future_us: int, lim: PayloadLimits):
        self.now = now
        self.now_us = now_us
        self.age_us = age_us
        self.future_us = future_us
        self.lo_us = now_us - age_us
        self.hi_us = now_us + future_us
        self.lim = lim


def _object(obj: dict, device_id: str, cx: _Ctx) -> Reading:
    """One reading object, plain (format 1) or ThingsBoard (format 3)."""
    ts = obj.get("ts")
    if "values" in obj and (type(obj["values"]) is dict or "temp_c" not in obj):
        return _thingsboard(obj, ts, device_id, cx)
    temp = obj.get("temp_c")
    # The common case, inline: integer ms and a float/int temperature in range.
    if type(ts) is int and ts >= _MS_MIN:
        us = ts * 1000
        dt = None
    elif ts is None:
        if not obj:
            raise _Reject("empty", "the object has no fields")
        raise _Reject("missing_ts", "ts is missing" if "ts" not in obj else "ts is null")
    else:
        us, dt = _ts(ts, "ts")
    if temp is None:
        raise _Reject("missing_temp", "temp_c is missing" if "temp_c" not in obj else "temp_c is null")
    lim = cx.lim
    if type(temp) is float and lim.min_temp_c <= temp <= lim.max_temp_c:
        pass
    else:
        temp = _temp(temp, "temp_c", lim)
    if len(obj) > 2:  # optional fields present (or unknown keys)
        rh = obj.get("rh")
        if rh is not None:
            rh = _number(rh, "rh", 0.0, _RH_MAX, "%")
        battery_v = obj.get("battery_v")
        if battery_v is not None:
            battery_v = _number(battery_v, "battery_v", 0.0, _BATTERY_MAX_V, "V")
        door_open = obj.get("door_open")
        if door_open is not None and door_open is not True and door_open is not False:
            _bool(door_open, "door_open")
        seq = obj.get("seq")
        if seq is not None:
            seq = _seq(seq, "seq")
    else:
        rh = battery_v = door_open = seq = None
    if us > cx.hi_us or us < cx.lo_us:
        _window(us, cx.lo_us, cx.hi_us, "ts", cx.now_us, lim)
    if dt is None:
        dt = _fromtimestamp(us / 1e6, _UTC) if 0 <= us < _FAST_US_MAX else _dt_from_us(us)
    return _new_reading(device_id, dt, temp, rh, battery_v, door_open, seq)


_TB_TEMP: Final = ("temperature", "temp_c", "temp")
_TB_RH: Final = ("humidity", "rh")
_TB_BATTERY: Final = ("battery", "battery_v")
_TB_DOOR: Final = ("door_open", "door")


def _first(values: dict, names: tuple[str, ...]) -> tuple[str, Any]:
    for n in names:
        v = values.get(n)
        if v is not None:
            return n, v
    return names[0], None


def _thingsboard(obj: dict, ts: Any, device_id: str, cx: _Ctx) -> Reading:
    values = obj["values"]
    if type(values) is not dict:
        raise _Reject("bad_type", f"values is {_kind(values)}, expected an object")
    if ts is None:
        raise _Reject("missing_ts", "ts is missing" if "ts" not in obj else "ts is null")
    us, dt = _ts(ts, "ts")
    name, temp = _first(values, _TB_TEMP)
    if temp is None:
        raise _Reject(
            "missing_temp", "values has no temperature (temperature, temp_c or temp)"
        )
    lim = cx.lim
    temp = _temp(temp, "values." + name, lim)
    name, rh = _first(values, _TB_RH)
    if rh is not None:
        rh = _number(rh, "values." + name, 0.0, _RH_MAX, "%")
    name, battery_v = _first(values, _TB_BATTERY)
    if battery_v is not None:
        battery_v = _number(battery_v, "values." + name, 0.0, _BATTERY_MAX_V, "V")
    name, door_open = _first(values, _TB_DOOR)
    if door_open is not None:
        door_open = _bool(door_open, "values." + name)
    seq = values.get("seq")
    if seq is not None:
        seq = _seq(seq, "values.seq")
    _window(us, cx.lo_us, cx.hi_us, "ts", cx.now_us, lim)
    if dt is None:
        dt = _dt_from_us(us)
    return _new_reading(device_id, dt, temp, rh, battery_v, door_open, seq)


# --------------------------------------------------------------------------- SenML

_SENML_KEYS: Final = frozenset({"bn", "bt", "bu", "bv", "bver", "n", "v", "vb", "vs", "vd"})
_SENML_BASE: Final = ("bn", "bt", "bu", "bv", "bs", "bver")
_SENML_VALUES: Final = ("v", "vb", "vs", "vd", "s")
_SENML_VERSION: Final = 10
_SENML_RELATIVE_US: Final = 2**28 * 1_000_000  # RFC 8428 §4.5.3: smaller times are relative
_SENML_MAX_ABS_S: Final = 1e12  # beyond any datetime; keeps the µs arithmetic finite
_TEMP, _RH, _BATTERY, _DOOR = range(4)
_SENML_NAMES: Final = {
    "temp": _TEMP,
    "temperature": _TEMP,
    "rh": _RH,
    "humidity": _RH,
    "battery": _BATTERY,
    "battery_v": _BATTERY,
    "door": _DOOR,
    "door_open": _DOOR,
}
_KELVIN_OFFSET: Final = 273.15


class _Group:
    """The SenML records that share one resolved time."""

    __slots__ = ("battery", "door", "hint", "records", "rh", "temp", "temp_failed")

    def __init__(self) -> None:
        self.temp: float | None = None
        self.rh: float | None = None
        self.battery: float | None = None
        self.door: bool | None = None
        self.temp_failed = False
        self.records: list[int] = []
        self.hint: str | None = None


def _senml_seconds(v: Any, what: str) -> int:
    t = type(v)
    if t is int or t is float:
        if -_SENML_MAX_ABS_S < v < _SENML_MAX_ABS_S:
            return _sec_to_us(v)
        raise _Reject("bad_ts", f"{what} is {_show(v)} s, out of range")
    raise _Reject("bad_type", f"{what} is {_kind(v)} ({_show(v)}), expected a number of seconds")


def _last_segment(name: str) -> str:
    return name[max(name.rfind(":"), name.rfind("/"), name.rfind(".")) + 1 :]


def _senml(records: list, device_id: str, cx: _Ctx, readings: list, rejected: list) -> None:
    """A SenML pack (RFC 8428) -> Readings, one per resolved time.

    - Records are resolved as in RFC 8428 §4.6: base fields (bn, bt, bu, bv) apply to
      their record and every later one until changed; name = bn + n, time = bt + t,
      value = bv + v, unit = u or bu. bver above 10 or any field whose name ends in
      "_" (must-understand, §4.4) rejects the whole pack, as do malformed base fields.
    - Times are epoch seconds; a resolved time below 2**28 is relative to ``now``.
    - Names are matched on ``n``, else on the last ``:``/``/``/``.`` segment of the
      resolved name: temp|temperature (unit Cel, K converted, or none), rh|humidity
      (%RH or none), battery|battery_v (V or none), door|door_open (vb). Kelvin is
      converted and rounded to 1e-9 °C (296.25 K -> 23.1). Any other name is ignored,
      but still marks its time as having data (so a time without a temperature is
      reported, with a hint when an unknown name carries a Cel/K unit).
    - Records with the same resolved time merge into one Reading; for a field given
      twice at one time the first record wins. A time without a valid temperature
      record is ``missing_temp`` (unless its temperature record was itself rejected).
    - ``bad_*`` problems of one record reject that record (detail "record <i>"); the
      other records of its time still make a Reading if a temperature is among them.
    """
    bn = ""
    bt_us = 0
    bu: Any = None
    bv: float = 0.0
    groups: dict[int, _Group] = {}
    lim = cx.lim
    for i, rec in enumerate(records):
        if type(rec) is not dict:
            rejected.append(("bad_type", f"record {i} is {_kind(rec)}, expected an object"))
            continue
        for k in rec:
            if k.endswith("_"):
                raise _Reject(
                    "unknown_format",
                    f"record {i} has the must-understand field {_show(k)} "
                    "(RFC 8428 §4.4), which this reader does not know; pack not used",
                )
        if "bver" in rec:
            ver = rec["bver"]
            if type(ver) is not int or ver < 1:
                raise _Reject("bad_type", f"record {i}: bver is {_show(ver)}, expected a positive integer")
            if ver > _SENML_VERSION:
                raise _Reject(
                    "unknown_format",
                    f"record {i}: SenML version {ver} is newer than {_SENML_VERSION}, "
                    "the newest this reader understands",
                )
        if "bn" in rec:
            bn = rec["bn"]
            if type(bn) is not str:
                raise _Reject("bad_type", f"record {i}: bn is {_kind(bn)}, expected a string")
        if "bt" in rec:
            bt_us = _senml_seconds_base(rec["bt"], i)
        if "bu" in rec:
            bu = rec["bu"]
            if bu is not None and type(bu) is not str:
                raise _Reject("bad_type", f"record {i}: bu is {_kind(bu)}, expected a string")
        if "bv" in rec:
            x = rec["bv"]
            if type(x) is not int and type(x) is not float:
                raise _Reject("bad_type", f"record {i}: bv is {_kind(x)}, expected a number")
            bv = x
        if "v" not in rec and "vb" not in rec and not any(k in rec for k in _SENML_VALUES):
            if not any(k in rec for k in _SENML_BASE):
                rejected.append(
                    ("bad_value", f"record {i} has no value (v, vb, vs, vd or s) and no base field")
                )
            continue
        label: Any = rec.get("n", "")
        try:
            n = label
            if type(n) is not str:
                raise _Reject("bad_type", f"n is {_kind(n)}, expected a string")
            full = bn + n
            label = n or full
            kind = _SENML_NAMES.get(n) if n else None
            if kind is None:
                kind = _SENML_NAMES.get(_last_segment(full))
            if "t" in rec:
                t_us = _senml_seconds(rec["t"], "t")
                total = bt_us + t_us
            else:
                total = bt_us
            ts_us = cx.now_us + total if total < _SENML_RELATIVE_US else total
            unit = rec.get("u", bu)
            if unit is not None and type(unit) is not str:
                raise _Reject("bad_type", f"u is {_kind(unit)}, expected a string")
            g = groups.get(ts_us)
            if g is None:
                g = groups[ts_us] = _Group()
            g.records.append(i)
            if kind is None:
                if g.hint is None and unit in ("Cel", "K"):
                    g.hint = f"record {i} ({_show(full)}, {unit}) is not named temp or temperature"
                continue
            if kind == _TEMP:
                if g.temp is not None:
                    continue
                try:
                    g.temp = _senml_temp(rec, bv, unit, lim)
                except _Reject:
                    g.temp_failed = True
                    raise
            elif kind == _RH:
                if g.rh is None:
                    _senml_unit(unit, ("%RH",), "a humidity")
                    g.rh = _number(_senml_v(rec, bv), "v", 0.0, _RH_MAX, "%")
            elif kind == _BATTERY:
                if g.battery is None:
                    _senml_unit(unit, ("V",), "a battery voltage")
                    g.battery = _number(_senml_v(rec, bv), "v", 0.0, _BATTERY_MAX_V, "V")
            elif g.door is None:
                if "vb" not in rec:
                    raise _Reject("bad_type", "a door record needs a boolean value vb")
                g.door = _bool(rec["vb"], "vb")
        except _Reject as e:
            rejected.append((e.reason, f"record {i} ({_show(label)}): {e.detail}"))
    if len(groups) > lim.max_readings_per_message:
        raise _Reject(
            "too_many_readings",
            f"the SenML pack has {len(groups)} distinct times, over the limit of "
            f"{lim.max_readings_per_message}",
        )
    if not groups and not rejected:
        raise _Reject("empty", "the SenML pack has no record with a value")
    for ts_us, g in groups.items():
        where = "record " + str(g.records[0]) if len(g.records) == 1 else (
            "records " + ", ".join(map(str, g.records[:10])) + ("…" if len(g.records) > 10 else "")
        )
        if g.temp is None:
            if not g.temp_failed:
                hint = f"; {g.hint}" if g.hint else ""
                rejected.append(
                    (
                        "missing_temp",
                        f"{where} at {_iso(ts_us)}: no temperature record "
                        f"(name temp or temperature){hint}",
                    )
                )
            continue
        try:
            _window(ts_us, cx.lo_us, cx.hi_us, "time", cx.now_us, lim)
            dt = _dt_from_us(ts_us)
        except _Reject as e:
            rejected.append((e.reason, f"{where}: {e.detail}"))
            continue
        except (OverflowError, ValueError, OSError):  # pragma: no cover - window bounds it
            rejected.append(("bad_ts", f"{where}: time {ts_us} µs is out of range"))
            continue
        readings.append(_new_reading(device_id, dt, g.temp, g.rh, g.battery, g.door, None))


def _senml_seconds_base(v: Any, i: int) -> int:
    try:
        return _senml_seconds(v, "bt")
    except _Reject as e:
        raise _Reject(e.reason, f"record {i}: {e.detail}") from None


def _senml_unit(unit: str | None, allowed: tuple[str, ...], what: str) -> None:
    if unit is not None and unit not in allowed:
        raise _Reject(
            "bad_unit",
            f"unit {_show(unit)} is not {' or '.join(allowed)}, expected for {what}",
        )


def _senml_v(rec: dict, bv: float) -> Any:
    if "v" not in rec:
        raise _Reject("bad_type", "no numeric value v")
    v = rec["v"]
    t = type(v)
    if (t is int or t is float) and bv:
        return v + bv
    return v


def _senml_temp(rec: dict, bv: float, unit: str | None, lim: PayloadLimits) -> float:
    v = _senml_v(rec, bv)
    if unit is None or unit == "Cel":
        return _temp(v, "v", lim)
    if unit == "K":
        t = type(v)
        if t is not int and t is not float:
            raise _Reject("bad_type", f"v is {_kind(v)} ({_show(v)}), expected a number")
        c = round(v - _KELVIN_OFFSET, 9)
        if lim.min_temp_c <= c <= lim.max_temp_c:
            return c
        if c != c or c in (math.inf, -math.inf):
            raise _Reject("bad_value", f"v is {v!r} K, not a finite number")
        raise _Reject(
            "temp_out_of_range",
            f"v is {v!r} K = {c!r} °C, outside the sensor range "
            f"{lim.min_temp_c:g}..{lim.max_temp_c:g} °C",
        )
    raise _Reject("bad_unit", f"unit {_show(unit)} is not Cel or K, expected for a temperature")


# --------------------------------------------------------------------------- entry point

# The _Ctx of the last (limits, now) seen: an ingester passing one ``now`` per batch
# computes the window once. Replacing the reference is atomic, so threads are safe.
_last_ctx: _Ctx | None = None


def parse_message(
    topic: str,
    payload: bytes | bytearray,
    limits: PayloadLimits,
    now: datetime,
    *,
    prefix: str = "origincast",
) -> ParseResult:
    """Parse and validate one MQTT telemetry message.

    Returns the accepted Readings and the Rejections (several of each for a batch).
    ``now`` (timezone-aware) is the server clock for the time window and the
    Rejections' ``received_at``, and the reference of SenML relative times.
    ``prefix`` is the topic prefix (``IngestSettings.topic_prefix``). Passing the same
    ``now`` object for a whole poll batch lets the time window be computed once.
    Raises only for a naive ``now`` (a caller bug); never because of the message.
    """
    # _last_ctx is replaced, never mutated: a thread reads it once into a local, so two
    # threads parsing with different ``now`` only rebuild it more often.
    global _last_ctx
    cx = _last_ctx
    if cx is None or cx.now is not now or cx.lim is not limits:
        tz = now.tzinfo
        if tz is not _UTC and (tz is None or now.utcoffset() is None):
            raise ValueError("parse_message: now must be a timezone-aware datetime")
        now_us = (now - _EPOCH) // _ONE_US
        if cx is not None and cx.lim is limits:
            age_us, future_us = cx.age_us, cx.future_us
        else:
            age_us = round(limits.max_age_days * 86_400e6)
            future_us = round(limits.max_future_s * 1e6)
        cx = _last_ctx = _Ctx(now, now_us, age_us, future_us, limits)
    try:
        device_id = _cached_device_id(topic, prefix)
        if device_id is None:
            return _one(topic, payload, now, "bad_topic", _bad_topic_detail(topic, prefix))
        size = len(payload)
        if size > limits.max_payload_bytes:
            return _one(
                topic,
                payload,
                now,
                "oversized",
                f"the payload is {size:,} bytes, over the limit of "
                f"{limits.max_payload_bytes:,} bytes; it was not parsed",
            )
        try:
            data = orjson.loads(payload)
        except orjson.JSONDecodeError as e:
            try:
                data = _loads_fallback(payload, e)
            except _Reject as r:
                return _one(topic, payload, now, r.reason, r.detail)
        if type(data) is dict:
            try:
                return ParseResult([_object(data, device_id, cx)], [])
            except _Reject as r:
                if r.reason == "missing_ts" and "ts" not in data and not _SENML_KEYS.isdisjoint(data):
                    r = _Reject(
                        "unknown_format",
                        "this looks like a SenML record; a SenML pack must be a JSON array",
                    )
                return _one(topic, payload, now, r.reason, r.detail)
        if type(data) is list:
            return _array(topic, payload, now, data, device_id, cx)
        return _one(
            topic,
            payload,
            now,
            "unknown_format",
            f"the payload is {_kind(data)}; expected a reading object, an array of "
            "readings or a SenML pack",
        )
    except RecursionError:
        return _one(topic, payload, now, "malformed_json", "the JSON is nested too deeply")
    except Exception as e:  # a bug here must not take ingest down: reject, loudly
        return _one(
            topic, payload, now, "internal_error", f"parser error {type(e).__name__}: {e}"[:300]
        )


def _one(topic: str, payload: Any, now: datetime, reason: str, detail: str) -> ParseResult:
    return ParseResult([], [Rejection(topic, _head(payload), reason, detail, now)])


def _bad_topic_detail(topic: Any, prefix: str) -> str:
    expected = f"{prefix}/<device_id>/telemetry"
    if type(topic) is not str:
        return f"the topic is {_kind(topic)}, expected {expected}"
    parts = topic.split("/", 3)
    if len(parts) == 3 and parts[0] == prefix and parts[2] == "telemetry":
        return (
            f"device id {_show(parts[1])} in the topic must be 1..64 characters of "
            "A-Z a-z 0-9 _ . : -"
        )
    return f"the topic {_show(topic)} is not {expected}"


def _loads_fallback(payload: Any, err: Exception) -> Any:
    """orjson refused the payload: tolerate a BOM, else say precisely why."""
    raw = payload.encode("utf-8", "surrogatepass") if isinstance(payload, str) else bytes(payload)
    if raw.startswith(_BOM):
        raw = raw[3:]
        try:
            return orjson.loads(raw)
        except orjson.JSONDecodeError as e:
            err = e
    if not raw.strip():
        raise _Reject("empty", "the payload is empty")
    try:
        raw.decode("utf-8")
    except UnicodeDecodeError as u:
        raise _Reject(
            "not_utf8",
            f"the payload is not UTF-8 text (byte 0x{raw[u.start]:02x} at offset {u.start}); "
            "send JSON (binary encodings such as CBOR SenML are not accepted)",
        ) from None
    msg = str(err)
    if "depth" in msg or "recursion" in msg:
        raise _Reject("malformed_json", f"the JSON is nested too deeply ({msg})")
    raise _Reject("malformed_json", f"the payload is not valid JSON: {msg}"[:300])


def _array(
    topic: str, payload: Any, now: datetime, data: list, device_id: str, cx: _Ctx
) -> ParseResult:
    if not data:
        return _one(topic, payload, now, "empty", "the payload is an empty array")
    first = data[0]
    if type(first) is not dict:
        first = next((e for e in data if type(e) is dict), None)
    readings: list[Reading] = []
    rejected: list[tuple[str, str]] = []
    # SenML records carry no "ts"; plain and ThingsBoard entries always do.
    if first is not None and "ts" not in first and not _SENML_KEYS.isdisjoint(first):
        try:
            _senml(data, device_id, cx, readings, rejected)
        except _Reject as x:
            return _one(topic, payload, now, x.reason, x.detail)
        # SenML merges equal times, so readings are unique by construction.
    else:
        limit = cx.lim.max_readings_per_message
        if len(data) > limit:
            return _one(
                topic,
                payload,
                now,
                "too_many_readings",
                f"the array has {len(data):,} entries, over the limit of {limit:,} per message",
            )
        seen: set[datetime] = set()
        for i, e in enumerate(data):
            try:
                if type(e) is not dict:
                    raise _Reject("bad_type", f"is {_kind(e)}, expected an object")
                r = _object(e, device_id, cx)
            except _Reject as x:
                rejected.append((x.reason, f"entry {i}: {x.detail}"))
                continue
            ts = r.ts
            if ts not in seen:
                seen.add(ts)
                readings.append(r)
    if not rejected:
        return ParseResult(readings, [])
    head = _head(payload)
    return ParseResult(
        readings, [Rejection(topic, head, reason, detail, now) for reason, detail in rejected]
    )
