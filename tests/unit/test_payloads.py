"""The MQTT payload contract: telemetry.payloads.parse_message and device_id_from_topic."""

from __future__ import annotations

import json
import math
import re
from dataclasses import replace
from datetime import UTC, datetime, timedelta, timezone

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import telemetry.payloads as payloads
from telemetry.payloads import REASONS, ParseResult, device_id_from_topic, parse_message
from telemetry.readings import Reading, Rejection
from telemetry.settings import PayloadLimits

NOW = datetime(2026, 11, 24, 8, 0, tzinfo=UTC)
NOW_MS = 1_795_507_200_000  # NOW in epoch milliseconds
NOW_S = NOW_MS // 1000
LIM = PayloadLimits()
DEV = "fridge-7"
TOPIC = f"origincast/{DEV}/telemetry"
# Limits wide enough for the RFC 8428 examples (2010-2011) to be inside the window.
OLD_OK = replace(LIM, max_age_days=20 * 365.0)


def parse(payload, limits: PayloadLimits = LIM, topic: str = TOPIC, now: datetime = NOW):
    if isinstance(payload, (dict, list)):
        payload = orjson.dumps(payload)
    return parse_message(topic, payload, limits, now)


def reading(ts: datetime, temp_c: float, **kw) -> Reading:
    return Reading(DEV, ts, temp_c, **kw)


def rejected(result: ParseResult) -> list[tuple[str, str]]:
    return [(r.reason, r.detail) for r in result.rejections]


def only_rejection(payload, limits: PayloadLimits = LIM, **kw) -> tuple[str, str]:
    result = parse(payload, limits, **kw)
    assert result.readings == []
    assert len(result.rejections) == 1, result.rejections
    r = result.rejections[0]
    return r.reason, r.detail


def test_now_ms_constant():
    assert datetime.fromtimestamp(NOW_MS / 1000, UTC) == NOW


# ------------------------------------------------------------------------------ topic


@pytest.mark.parametrize(
    ("topic", "expected"),
    [
        ("origincast/fridge-7/telemetry", "fridge-7"),
        ("origincast/a/telemetry", "a"),
        ("origincast/urn:dev:mac:0024.be_ff-01/telemetry", "urn:dev:mac:0024.be_ff-01"),
        ("origincast/" + "x" * 64 + "/telemetry", "x" * 64),
        ("origincast/" + "x" * 65 + "/telemetry", None),
        ("origincast//telemetry", None),
        ("origincast/fridge 7/telemetry", None),
        ("origincast/fridge+7/telemetry", None),
        ("origincast/#/telemetry", None),
        ("origincast/kühl/telemetry", None),
        ("origincast/fridge-7/status", None),
        ("origincast/fridge-7/telemetry/extra", None),
        ("origincast/fridge-7", None),
        ("other/fridge-7/telemetry", None),
        ("/origincast/fridge-7/telemetry", None),
        ("origincast/fridge-7/telemetry/", None),
        ("", None),
    ],
)
def test_device_id_from_topic(topic, expected):
    assert device_id_from_topic(topic) == expected


def test_device_id_from_topic_custom_prefix():
    assert device_id_from_topic("acme/d1/telemetry", prefix="acme") == "d1"
    assert device_id_from_topic("origincast/d1/telemetry", prefix="acme") is None


def test_device_id_from_topic_rejects_non_strings_and_huge_topics():
    assert device_id_from_topic(None) is None  # type: ignore[arg-type]
    assert device_id_from_topic(b"origincast/d/telemetry") is None  # type: ignore[arg-type]
    assert device_id_from_topic("origincast/" + "a/" * 100_000 + "telemetry") is None


def test_bad_topic_rejection_details():
    assert only_rejection({"ts": NOW_MS, "temp_c": 1}, topic="origincast/fr idge/telemetry") == (
        "bad_topic",
        "device id 'fr idge' in the topic must be 1..64 characters of A-Z a-z 0-9 _ . : -",
    )
    assert only_rejection({"ts": NOW_MS, "temp_c": 1}, topic="origincast/d/status") == (
        "bad_topic",
        "the topic 'origincast/d/status' is not origincast/<device_id>/telemetry",
    )


def test_topic_prefix_argument():
    result = parse_message("acme/d1/telemetry", b'{"ts":1795507200000,"temp_c":1}', LIM, NOW, prefix="acme")
    assert result.readings == [Reading("d1", NOW, 1.0)]
    assert parse(b'{"ts":1795507200000,"temp_c":1}', topic="acme/d1/telemetry").rejections[0].reason == (
        "bad_topic"
    )


def test_device_id_comes_from_topic_never_payload():
    result = parse({"ts": NOW_MS, "temp_c": 1.5, "device_id": "someone-else", "dev": "x"})
    assert result.readings == [reading(NOW, 1.5)]


# ------------------------------------------------------------------------------ format 1


def test_single_reading_all_fields():
    result = parse(
        b'{"ts": 1795507200000, "temp_c": 3.4, "rh": 81.0, "battery_v": 3.01,'
        b' "door_open": false, "seq": 1234}'
    )
    assert result == ParseResult(
        [reading(NOW, 3.4, rh=81.0, battery_v=3.01, door_open=False, seq=1234)], []
    )
    r = result.readings[0]
    assert r.ts.tzinfo is UTC
    assert type(r.temp_c) is float and type(r.rh) is float


def test_single_reading_minimal_and_ints_become_floats():
    (r,) = parse({"ts": NOW_MS, "temp_c": -18, "rh": 50, "battery_v": 3}).readings
    assert r == reading(NOW, -18.0, rh=50.0, battery_v=3.0)
    assert type(r.temp_c) is float and type(r.rh) is float and type(r.battery_v) is float


def test_optional_null_means_absent_and_unknown_keys_ignored():
    result = parse(
        {"ts": NOW_MS, "temp_c": 2.5, "rh": None, "battery_v": None, "door_open": None,
         "seq": None, "firmware": "1.2.3", "extra": {"nested": [1, 2]}}
    )
    assert result.readings == [reading(NOW, 2.5)]


@pytest.mark.parametrize(
    ("ts", "expected"),
    [
        ("2026-11-24T08:00:00Z", NOW),
        ("2026-11-24T08:00:00z", NOW),
        ("2026-11-24t08:00:00Z", NOW),
        ("2026-11-24 08:00:00Z", NOW),
        ("2026-11-24T09:30:00+01:30", NOW),
        ("2026-11-24T03:00:00-05:00", NOW),
        ("2026-11-24T08:00:00-00:00", NOW),
        ("2026-11-24T08:00:00+00:00", NOW),
        ("2026-11-24T07:59:59.5Z", NOW - timedelta(milliseconds=500)),
        ("2026-11-24T07:59:59.123456Z", NOW - timedelta(microseconds=876_544)),
        # more than 6 fraction digits: truncated to the microsecond
        ("2026-11-24T07:59:59.1234569Z", NOW - timedelta(microseconds=876_544)),
        (NOW_MS, NOW),
        (NOW_MS - 1, NOW - timedelta(milliseconds=1)),
        (float(NOW_MS) - 0.5, NOW - timedelta(microseconds=500)),
        (NOW_MS - 0.001, NOW - timedelta(microseconds=1)),
    ],
)
def test_ts_forms(ts, expected):
    (r,) = parse({"ts": ts, "temp_c": 1.0}).readings
    assert r.ts == expected
    assert r.ts.tzinfo is UTC
    assert r.ts.utcoffset() == timedelta(0)


@pytest.mark.parametrize(
    ("ts", "detail"),
    [
        (NOW_S, "ts 1795507200 looks like epoch seconds; epoch milliseconds are expected "
                "(e.g. 1795507200000)"),
        (NOW_S + 0.25, "ts 1795507200.25 looks like epoch seconds; epoch milliseconds are "
                       "expected (e.g. 1795507200000)"),
        (0, "ts 0 is not plausible epoch milliseconds (before 1973-03-03); epoch milliseconds "
            "are expected (e.g. 1764000000000)"),
        (-5, "ts -5 is negative; epoch milliseconds expected"),
        ("2026-11-24T08:00:00", "ts '2026-11-24T08:00:00' has no UTC offset; add Z or ±hh:mm "
                                "(e.g. 2026-11-24T08:00:00Z)"),
        ("2026-11-24T08:00:00.250", "ts '2026-11-24T08:00:00.250' has no UTC offset; add Z or "
                                    "±hh:mm (e.g. 2026-11-24T08:00:00Z)"),
        ("yesterday", "ts 'yesterday' is neither an RFC 3339 date-time "
                      "(e.g. 2026-11-24T08:00:00Z) nor epoch milliseconds"),
        ("1795507200000", "ts '1795507200000' is neither an RFC 3339 date-time "
                          "(e.g. 2026-11-24T08:00:00Z) nor epoch milliseconds"),
        ("2026-11-24", "ts '2026-11-24' is neither an RFC 3339 date-time "
                       "(e.g. 2026-11-24T08:00:00Z) nor epoch milliseconds"),
        ("2026-11-24T08:00Z", "ts '2026-11-24T08:00Z' is neither an RFC 3339 date-time "
                              "(e.g. 2026-11-24T08:00:00Z) nor epoch milliseconds"),
        ("2026-11-24T08:00:00+0100", "ts '2026-11-24T08:00:00+0100' is neither an RFC 3339 "
                                     "date-time (e.g. 2026-11-24T08:00:00Z) nor epoch milliseconds"),
        ("2026-W48-2T08:00:00Z", "ts '2026-W48-2T08:00:00Z' is neither an RFC 3339 date-time "
                                 "(e.g. 2026-11-24T08:00:00Z) nor epoch milliseconds"),
        ("2026-11-24T08:00:00,5Z", "ts '2026-11-24T08:00:00,5Z' is neither an RFC 3339 "
                                   "date-time (e.g. 2026-11-24T08:00:00Z) nor epoch milliseconds"),
        ("2026-11-24T08:00:00.Z", "ts '2026-11-24T08:00:00.Z' is neither an RFC 3339 date-time "
                                  "(e.g. 2026-11-24T08:00:00Z) nor epoch milliseconds"),
        ("２026-11-24T08:00:00Z", "ts '２026-11-24T08:00:00Z' is neither an RFC 3339 date-time "
                                 "(e.g. 2026-11-24T08:00:00Z) nor epoch milliseconds"),
        ("2026-11-24T24:00:00Z", "ts '2026-11-24T24:00:00Z' is not a valid date-time: "
                                 "hour must be in 0..23"),
        ("2016-12-31T23:59:60Z", "ts '2016-12-31T23:59:60Z' is not a valid date-time: "
                                 "second must be in 0..59"),
        ("2026-02-30T08:00:00Z", "ts '2026-02-30T08:00:00Z' is not a valid date-time: "
                                 "day is out of range for month"),
    ],
)
def test_bad_ts(ts, detail):
    assert only_rejection({"ts": ts, "temp_c": 1.0}) == ("bad_ts", detail)


def test_bad_ts_long_string_is_shortened_in_detail():
    reason, detail = only_rejection({"ts": "9" * 5000, "temp_c": 1.0})
    assert reason == "bad_ts"
    assert detail.startswith("ts '" + "9" * 40 + "'…")
    assert len(detail) < 200


@pytest.mark.parametrize(
    ("obj", "reason", "detail"),
    [
        ({"temp_c": 1.0}, "missing_ts", "ts is missing"),
        ({"ts": None, "temp_c": 1.0}, "missing_ts", "ts is null"),
        ({"ts": NOW_MS}, "missing_temp", "temp_c is missing"),
        ({"ts": NOW_MS, "temp_c": None}, "missing_temp", "temp_c is null"),
        ({"ts": NOW_MS, "temperature": 3.0}, "missing_temp", "temp_c is missing"),
        ({"ts": NOW_MS, "temp_c": "3.4"}, "bad_type", "temp_c is a string ('3.4'), expected a number"),
        ({"ts": NOW_MS, "temp_c": True}, "bad_type", "temp_c is a boolean (true), expected a number"),
        ({"ts": NOW_MS, "temp_c": [3.4]}, "bad_type", "temp_c is an array (an array), expected a number"),
        ({"ts": True, "temp_c": 3.4}, "bad_type",
         "ts is a boolean, expected an RFC 3339 string or epoch milliseconds"),
        ({"ts": {"ms": NOW_MS}, "temp_c": 3.4}, "bad_type",
         "ts is an object, expected an RFC 3339 string or epoch milliseconds"),
        ({"ts": NOW_MS, "temp_c": 3.4, "rh": "81%"}, "bad_type",
         "rh is a string ('81%'), expected a number"),
        ({"ts": NOW_MS, "temp_c": 3.4, "battery_v": False}, "bad_type",
         "battery_v is a boolean (false), expected a number"),
        ({"ts": NOW_MS, "temp_c": 3.4, "door_open": 1}, "bad_type",
         "door_open is an integer (1), expected true or false"),
        ({"ts": NOW_MS, "temp_c": 3.4, "door_open": "false"}, "bad_type",
         "door_open is a string ('false'), expected true or false"),
        ({"ts": NOW_MS, "temp_c": 3.4, "seq": 12.0}, "bad_type",
         "seq is a number (12.0), expected an integer"),
        ({"ts": NOW_MS, "temp_c": 3.4, "seq": True}, "bad_type",
         "seq is a boolean (true), expected an integer"),
        ({"ts": NOW_MS, "temp_c": 3.4, "seq": -1}, "bad_value",
         "seq is -1, expected an integer in 0..2**53-1"),
        ({"ts": NOW_MS, "temp_c": 3.4, "seq": 2**53}, "bad_value",
         "seq is 9007199254740992, expected an integer in 0..2**53-1"),
        ({"ts": NOW_MS, "temp_c": 3.4, "rh": 100.5}, "bad_value", "rh is 100.5 %, outside 0..100 %"),
        ({"ts": NOW_MS, "temp_c": 3.4, "rh": -1}, "bad_value", "rh is -1.0 %, outside 0..100 %"),
        ({"ts": NOW_MS, "temp_c": 3.4, "battery_v": -0.1}, "bad_value",
         "battery_v is -0.1 V, outside 0..100 V"),
        ({"ts": NOW_MS, "temp_c": 412.0}, "temp_out_of_range",
         "temp_c is 412.0 °C, outside the sensor range -100..150 °C"),
        ({"ts": NOW_MS, "temp_c": -273}, "temp_out_of_range",
         "temp_c is -273.0 °C, outside the sensor range -100..150 °C"),
        ({"ts": NOW_MS, "temp_c": 18446744073709551615}, "temp_out_of_range",
         "temp_c is 1.8446744073709552e+19 °C, outside the sensor range -100..150 °C"),
        ({"ts": NOW_MS + 3_600_000, "temp_c": 3.4}, "ts_in_future",
         "ts 2026-11-24T09:00:00Z is 3600.000 s ahead of the server clock "
         "(2026-11-24T08:00:00Z); at most 300 s is allowed"),
        ({"ts": "2026-11-24T10:00:00+01:00", "temp_c": 3.4}, "ts_in_future",
         "ts 2026-11-24T09:00:00Z is 3600.000 s ahead of the server clock "
         "(2026-11-24T08:00:00Z); at most 300 s is allowed"),
        ({"ts": 126_230_400_000, "temp_c": 3.4}, "ts_too_old",
         "ts 1974-01-01T00:00:00Z is 19320.3 days before the server clock "
         "(2026-11-24T08:00:00Z); at most 3650 days is allowed"),
        ({"ts": 18446744073709551615, "temp_c": 3.4}, "ts_in_future",
         "ts 1.84467e+16 s since 1970 is 1.84467e+16 s ahead of the server clock "
         "(2026-11-24T08:00:00Z); at most 300 s is allowed"),
        ({"ts": 1e299, "temp_c": 3.4}, "ts_in_future",
         "ts 1e+296 s since 1970 is 1e+296 s ahead of the server clock "
         "(2026-11-24T08:00:00Z); at most 300 s is allowed"),
        ({"ts": 1.7e308, "temp_c": 3.4}, "bad_ts",
         "ts 1.7e+308 is not plausible epoch milliseconds (before 1973-03-03); "
         "epoch milliseconds are expected (e.g. 1764000000000)"),
        ({"ts": "0001-01-01T00:30:00+01:00", "temp_c": 3.4}, "bad_ts",
         "ts '0001-01-01T00:30:00+01:00' is outside years 1..9999 in UTC"),
    ],
)
def test_single_object_rejections(obj, reason, detail):
    assert only_rejection(obj) == (reason, detail)


def test_temperature_range_bounds_are_inclusive():
    assert parse({"ts": NOW_MS, "temp_c": -100}).readings == [reading(NOW, -100.0)]
    assert parse({"ts": NOW_MS, "temp_c": 150.0}).readings == [reading(NOW, 150.0)]
    assert only_rejection({"ts": NOW_MS, "temp_c": 150.01})[0] == "temp_out_of_range"
    assert only_rejection({"ts": NOW_MS, "temp_c": -100.01})[0] == "temp_out_of_range"
    narrow = replace(LIM, min_temp_c=-30.0, max_temp_c=30.5)
    assert only_rejection({"ts": NOW_MS, "temp_c": 31}, narrow) == (
        "temp_out_of_range",
        "temp_c is 31.0 °C, outside the sensor range -30..30.5 °C",
    )


def test_time_window_bounds_are_inclusive():
    future_ok = NOW_MS + 300_000
    assert parse({"ts": future_ok, "temp_c": 1}).readings[0].ts == NOW + timedelta(seconds=300)
    assert only_rejection({"ts": future_ok + 1, "temp_c": 1})[0] == "ts_in_future"
    oldest = NOW - timedelta(days=3650)
    assert parse({"ts": oldest.isoformat(), "temp_c": 1}).readings[0].ts == oldest
    too_old = (oldest - timedelta(microseconds=1)).isoformat()
    assert only_rejection({"ts": too_old, "temp_c": 1})[0] == "ts_too_old"
    zero = replace(LIM, max_future_s=0.0)
    assert parse({"ts": NOW_MS, "temp_c": 1}, zero).readings
    assert only_rejection({"ts": NOW_MS + 1, "temp_c": 1}, zero) == (
        "ts_in_future",
        "ts 2026-11-24T08:00:00.001000Z is 0.001 s ahead of the server clock "
        "(2026-11-24T08:00:00Z); at most 0 s is allowed",
    )


def test_nan_and_infinity_are_not_json_numbers():
    for raw in (b'{"ts":1795507200000,"temp_c":NaN}', b'{"ts":1795507200000,"temp_c":Infinity}',
                b'{"ts":1795507200000,"temp_c":-Infinity}', b'{"ts":1795507200000,"temp_c":1e400}'):
        reason, detail = only_rejection(raw)
        assert reason == "malformed_json"
        assert detail.startswith("the payload is not valid JSON: ")


def test_non_finite_number_is_bad_value():
    # The only way to build a non-finite number from finite JSON: SenML bv + v overflows.
    result = parse([{"bv": 1.7e308, "n": "temp", "v": 1.7e308}])
    assert rejected(result) == [("bad_value", "record 0 ('temp'): v is inf, not a finite number")]


# ------------------------------------------------------------------------------ whole message


def test_oversized_is_not_parsed():
    small = replace(LIM, max_payload_bytes=64)
    payload = b"\xff" * 65  # would be not_utf8 if it were parsed
    assert only_rejection(payload, small) == (
        "oversized",
        "the payload is 65 bytes, over the limit of 64 bytes; it was not parsed",
    )
    assert parse(b'{"ts":1795507200000,"temp_c":1}' + b" " * 33, small).readings  # 64 bytes: ok
    big = LIM.max_payload_bytes + 1
    assert only_rejection(b"[" + b" " * (big - 1)) == (
        "oversized",
        f"the payload is {big:,} bytes, over the limit of {LIM.max_payload_bytes:,} bytes; "
        "it was not parsed",
    )


@pytest.mark.parametrize(
    ("payload", "reason", "detail"),
    [
        (b"", "empty", "the payload is empty"),
        (b"  \n\t", "empty", "the payload is empty"),
        (b"[]", "empty", "the payload is an empty array"),
        (b"{}", "empty", "the object has no fields"),
        (b'{"ts":1795507200000,"temp_c":3.4,"x":"\xe9t\xe9"}', "not_utf8",
         "the payload is not UTF-8 text (byte 0xe9 at offset 38); send JSON (binary encodings "
         "such as CBOR SenML are not accepted)"),
        (b"3.4", "unknown_format",
         "the payload is a number; expected a reading object, an array of readings or a SenML pack"),
        (b'"hello"', "unknown_format",
         "the payload is a string; expected a reading object, an array of readings or a SenML pack"),
        (b"null", "unknown_format",
         "the payload is null; expected a reading object, an array of readings or a SenML pack"),
        (b"true", "unknown_format",
         "the payload is a boolean; expected a reading object, an array of readings or a SenML "
         "pack"),
        (b'{"bn":"urn:dev:x:","n":"temp","v":3.4}', "unknown_format",
         "this looks like a SenML record; a SenML pack must be a JSON array"),
    ],
)
def test_message_level_rejections(payload, reason, detail):
    assert only_rejection(payload) == (reason, detail)


@pytest.mark.parametrize(
    ("payload", "where"),
    [
        (b'{"ts":1795507200000,"temp_c":3.4', "line 1 column 33 (char 32)"),
        (b"ts=1795507200000 temp=3.4", "line 1 column 1 (char 0)"),
        (b'{"ts":1795507200000,"temp_c":3.4}{}', "line 1 column 34 (char 33)"),
        (b'{"ts":1795507200000,\n"temp_c":3.4,}', "line 2 column 13 (char 33)"),
        (b'{"ts":1795507200000,"temp_c":"\\ud800"}', "line 1 column 31 (char 30)"),
        (b'{"ts":1795507200000,"temp_c":3.4,"rh":NaN}', "line 1 column 39 (char 38)"),
    ],
)
def test_malformed_json_detail_says_what_and_where(payload, where):
    # The middle of the sentence is orjson's own message (e.g. "unexpected end of data").
    reason, detail = only_rejection(payload)
    assert reason == "malformed_json"
    assert detail.startswith("the payload is not valid JSON: ")
    assert detail.endswith(where)
    assert len(detail) > len("the payload is not valid JSON: ") + len(where) + 5


@pytest.mark.parametrize("opener", [b"[", b'{"a":', b'[{"a":'])
def test_deeply_nested_json_is_rejected_not_raised(opener):
    payload = opener * 100_000
    small_enough = replace(LIM, max_payload_bytes=len(payload))
    reason, detail = only_rejection(payload, small_enough)
    assert reason == "malformed_json"
    assert "nested too deeply" in detail


def test_deep_but_complete_nesting_inside_an_entry():
    nested: object = 1.0
    for _ in range(500):
        nested = [nested]
    result = parse(json.dumps({"ts": NOW_MS, "temp_c": nested}).encode())
    assert rejected(result) == [("bad_type", "temp_c is an array (an array), expected a number")]


def test_bom_is_tolerated():
    assert parse(b'\xef\xbb\xbf{"ts":1795507200000,"temp_c":1}').readings == [reading(NOW, 1.0)]
    assert only_rejection(b"\xef\xbb\xbf")[0] == "empty"


def test_payload_may_be_bytearray_or_memoryview():
    raw = b'{"ts":1795507200000,"temp_c":1}'
    assert parse(bytearray(raw)).readings == [reading(NOW, 1.0)]
    assert parse(memoryview(raw)).readings == [reading(NOW, 1.0)]


def test_rejection_carries_topic_head_and_received_at():
    payload = b'{"ts":1795507200000,"temp_c":999,"pad":"' + b"x" * 300 + b'\xff"}'
    (r,) = parse(payload).rejections
    assert r == Rejection(TOPIC, payload[:200].decode(), "not_utf8",
                          "the payload is not UTF-8 text (byte 0xff at offset 340); send JSON "
                          "(binary encodings such as CBOR SenML are not accepted)", NOW)
    assert len(r.payload_head) == 200
    assert r.received_at is NOW and r.topic == TOPIC
    # a cut multi-byte character at byte 200 is replaced, not an error
    payload = b"\xc3\xa9" * 150
    (r,) = parse(payload).rejections
    assert r.reason == "malformed_json"
    assert r.payload_head == "é" * 100
    (r,) = parse(b"\x80" + b"x" * 10).rejections
    assert (r.reason, r.payload_head) == ("not_utf8", "\ufffd" + "x" * 10)


def test_naive_now_is_a_caller_error():
    with pytest.raises(ValueError, match="timezone-aware"):
        parse_message(TOPIC, b"{}", LIM, datetime(2026, 11, 24, 8, 0))


def test_now_with_other_offset_is_fine():
    other = NOW.astimezone(timezone(timedelta(hours=-7)))
    (r,) = parse({"ts": NOW_MS, "temp_c": 1}, now=other).readings
    assert r.ts == NOW and r.ts.tzinfo is UTC


def test_internal_errors_are_rejections_not_exceptions(monkeypatch):
    def boom(*a, **k):
        raise KeyError("bug")

    monkeypatch.setattr(payloads, "_object", boom)
    assert only_rejection({"ts": NOW_MS, "temp_c": 1}) == (
        "internal_error",
        "parser error KeyError: 'bug'",
    )
    monkeypatch.setattr(payloads, "_array", lambda *a: (_ for _ in ()).throw(RecursionError()))
    assert only_rejection([{"ts": NOW_MS, "temp_c": 1}]) == (
        "malformed_json",
        "the JSON is nested too deeply",
    )


def test_fast_reading_constructor_builds_real_readings():
    now = datetime(2026, 1, 2, tzinfo=UTC)
    fast = payloads._new_reading("d", now, 1.5, 2.0, 3.0, True, 7)
    slow = Reading("d", now, 1.5, 2.0, 3.0, True, 7)
    assert type(fast) is Reading
    assert fast == slow and hash(fast) == hash(slow) and repr(fast) == repr(slow)
    with pytest.raises(AttributeError):
        fast.temp_c = 3.0  # type: ignore[misc]


# ------------------------------------------------------------------------------ format 2


def test_array_of_readings():
    payload = [{"ts": NOW_MS - 60_000 * i, "temp_c": 4.0 + i, "seq": i} for i in range(3)]
    result = parse(payload)
    assert result.rejections == []
    assert result.readings == [
        reading(NOW - timedelta(minutes=i), 4.0 + i, seq=i) for i in range(3)
    ]


def test_array_with_bad_entries_keeps_the_good_ones():
    payload = [
        {"ts": NOW_MS - 120_000, "temp_c": 4.0},
        {"ts": NOW_MS - 60_000, "temp_c": 412},
        "not an object",
        {"ts": NOW_S, "temp_c": 4.2},
        {"ts": NOW_MS, "temp_c": 4.1},
        [1, 2],
        None,
        {"temp_c": 1},
    ]
    result = parse(payload)
    assert result.readings == [
        reading(NOW - timedelta(minutes=2), 4.0),
        reading(NOW, 4.1),
    ]
    assert rejected(result) == [
        ("temp_out_of_range", "entry 1: temp_c is 412.0 °C, outside the sensor range -100..150 °C"),
        ("bad_type", "entry 2: is a string, expected an object"),
        ("bad_ts", "entry 3: ts 1795507200 looks like epoch seconds; epoch milliseconds are "
                   "expected (e.g. 1795507200000)"),
        ("bad_type", "entry 5: is an array, expected an object"),
        ("bad_type", "entry 6: is null, expected an object"),
        ("missing_ts", "entry 7: ts is missing"),
    ]
    head = orjson.dumps(payload)[:200].decode()
    assert all(r.payload_head == head and r.received_at is NOW for r in result.rejections)


def test_duplicate_ts_in_one_message_keeps_the_first_silently():
    payload = [
        {"ts": NOW_MS, "temp_c": 1.0},
        {"ts": "2026-11-24T08:00:00Z", "temp_c": 2.0},  # same instant, other spelling
        {"ts": "2026-11-24T09:00:00+01:00", "temp_c": 3.0},
        {"ts": NOW_MS - 1000, "temp_c": 4.0},
    ]
    result = parse(payload)
    assert result.readings == [reading(NOW, 1.0), reading(NOW - timedelta(seconds=1), 4.0)]
    assert result.rejections == []


def test_rejected_entry_does_not_shadow_a_later_good_duplicate():
    result = parse([{"ts": NOW_MS, "temp_c": 999}, {"ts": NOW_MS, "temp_c": 5.0}])
    assert result.readings == [reading(NOW, 5.0)]
    assert [r.reason for r in result.rejections] == ["temp_out_of_range"]


def test_too_many_readings_rejects_the_whole_message():
    limits = replace(LIM, max_readings_per_message=3)
    ok = [{"ts": NOW_MS - i, "temp_c": 1} for i in range(3)]
    assert len(parse(ok, limits).readings) == 3
    assert only_rejection([*ok, {"ts": NOW_MS - 9, "temp_c": 1}], limits) == (
        "too_many_readings",
        "the array has 4 entries, over the limit of 3 per message",
    )


def test_array_may_mix_plain_and_thingsboard_entries():
    payload = [
        {"ts": NOW_MS, "temp_c": 1.0},
        {"ts": NOW_MS - 1000, "values": {"temperature": 2.0, "humidity": 40}},
    ]
    assert parse(payload).readings == [
        reading(NOW, 1.0),
        reading(NOW - timedelta(seconds=1), 2.0, rh=40.0),
    ]


# ------------------------------------------------------------------------------ format 3


def test_thingsboard_single():
    result = parse(
        {"ts": NOW_MS, "values": {"temperature": -19.5, "humidity": 60, "battery": 3.6,
                                  "door_open": True, "seq": 9, "rssi": -70}}
    )
    assert result == ParseResult(
        [reading(NOW, -19.5, rh=60.0, battery_v=3.6, door_open=True, seq=9)], []
    )


@pytest.mark.parametrize(
    "values",
    [
        {"temp_c": 3.5, "rh": 10, "battery_v": 3.0, "door": False},
        {"temp": 3.5, "humidity": 10, "battery": 3.0, "door_open": False},
        # first name present wins: temperature > temp_c > temp
        {"temperature": 3.5, "temp_c": 99, "temp": 98, "humidity": 10, "rh": 11,
         "battery": 3.0, "battery_v": 4.0, "door_open": False, "door": True},
    ],
)
def test_thingsboard_value_names(values):
    (r,) = parse({"ts": NOW_MS, "values": values}).readings
    assert r == reading(NOW, 3.5, rh=10.0, battery_v=3.0, door_open=False)


def test_thingsboard_array_and_string_ts():
    payload = [
        {"ts": NOW_MS - 2000, "values": {"temperature": 1}},
        {"ts": "2026-11-24T07:59:59Z", "values": {"temperature": 2}},
        {"ts": NOW_MS, "values": {"temperature": 3}},
    ]
    assert parse(payload).readings == [
        reading(NOW - timedelta(seconds=2), 1.0),
        reading(NOW - timedelta(seconds=1), 2.0),
        reading(NOW, 3.0),
    ]


@pytest.mark.parametrize(
    ("obj", "reason", "detail"),
    [
        ({"values": {"temperature": 1}}, "missing_ts", "ts is missing"),
        ({"ts": NOW_MS, "values": {}}, "missing_temp",
         "values has no temperature (temperature, temp_c or temp)"),
        ({"ts": NOW_MS, "values": {"humidity": 40}}, "missing_temp",
         "values has no temperature (temperature, temp_c or temp)"),
        ({"ts": NOW_MS, "values": [3.4]}, "bad_type", "values is an array, expected an object"),
        ({"ts": NOW_MS, "values": {"temperature": "3.4"}}, "bad_type",
         "values.temperature is a string ('3.4'), expected a number"),
        ({"ts": NOW_MS, "values": {"temp": 200}}, "temp_out_of_range",
         "values.temp is 200.0 °C, outside the sensor range -100..150 °C"),
        ({"ts": NOW_MS, "values": {"temperature": 1, "humidity": 120}}, "bad_value",
         "values.humidity is 120.0 %, outside 0..100 %"),
        ({"ts": NOW_MS, "values": {"temperature": 1, "battery": "low"}}, "bad_type",
         "values.battery is a string ('low'), expected a number"),
        ({"ts": NOW_MS, "values": {"temperature": 1, "door": 0}}, "bad_type",
         "values.door is an integer (0), expected true or false"),
        ({"ts": NOW_MS, "values": {"temperature": 1, "seq": -3}}, "bad_value",
         "values.seq is -3, expected an integer in 0..2**53-1"),
        ({"ts": NOW_S, "values": {"temperature": 1}}, "bad_ts",
         "ts 1795507200 looks like epoch seconds; epoch milliseconds are expected "
         "(e.g. 1795507200000)"),
        ({"ts": NOW_MS + 301_000, "values": {"temperature": 1}}, "ts_in_future",
         "ts 2026-11-24T08:05:01Z is 301.000 s ahead of the server clock "
         "(2026-11-24T08:00:00Z); at most 300 s is allowed"),
    ],
)
def test_thingsboard_rejections(obj, reason, detail):
    assert only_rejection(obj) == (reason, detail)


def test_plain_reading_with_an_unrelated_values_key_stays_plain():
    result = parse({"ts": NOW_MS, "temp_c": 1.0, "values": [1, 2, 3]})
    assert result.readings == [reading(NOW, 1.0)]


# ------------------------------------------------------------------------------ format 4: SenML
# RFC 8428 §5.1 examples, verbatim. (§6 gives the same data in CBOR: not accepted, see below.)

RFC_SINGLE_DATAPOINT = [{"n": "urn:dev:ow:10e2073a01080063", "u": "Cel", "v": 23.1}]
RFC_MULTIPLE_DATAPOINTS = [
    {"bn": "urn:dev:ow:10e2073a01080063:", "n": "voltage", "u": "V", "v": 120.1},
    {"n": "current", "u": "A", "v": 1.2},
]
RFC_MULTIPLE_DATAPOINTS_TIMED = [
    {"bn": "urn:dev:ow:10e2073a0108006:", "bt": 1.276020076001e09, "bu": "A", "bver": 5,
     "n": "voltage", "u": "V", "v": 120.1},
    {"n": "current", "t": -5, "v": 1.2},
    {"n": "current", "t": -4, "v": 1.3},
    {"n": "current", "t": -3, "v": 1.4},
    {"n": "current", "t": -2, "v": 1.5},
    {"n": "current", "t": -1, "v": 1.6},
    {"n": "current", "v": 1.7},
]
RFC_MULTIPLE_MEASUREMENTS = [
    {"bn": "urn:dev:ow:10e2073a01080063", "bt": 1.320067464e09, "bu": "%RH", "v": 20},
    {"u": "lon", "v": 24.30621},
    {"u": "lat", "v": 60.07965},
    {"t": 60, "v": 20.3},
    {"u": "lon", "t": 60, "v": 24.30622},
    {"u": "lat", "t": 60, "v": 60.07965},
    {"t": 120, "v": 20.7},
    {"u": "lon", "t": 120, "v": 24.30623},
    {"u": "lat", "t": 120, "v": 60.07966},
    {"u": "%EL", "t": 150, "v": 98},
    {"t": 180, "v": 21.2},
    {"u": "lon", "t": 180, "v": 24.30628},
    {"u": "lat", "t": 180, "v": 60.07967},
]
RFC_RESOLVED = [
    {"n": "urn:dev:ow:10e2073a01080063", "u": u, "t": t, "v": v}
    for u, t, v in [
        ("%RH", 1.320067464e09, 20), ("lon", 1.320067464e09, 24.30621),
        ("lat", 1.320067464e09, 60.07965), ("%RH", 1.320067524e09, 20.3),
        ("lon", 1.320067524e09, 24.30622), ("lat", 1.320067524e09, 60.07965),
        ("%RH", 1.320067584e09, 20.7), ("lon", 1.320067584e09, 24.30623),
        ("lat", 1.320067584e09, 60.07966), ("%EL", 1.320067614e09, 98),
        ("%RH", 1.320067644e09, 21.2), ("lon", 1.320067644e09, 24.30628),
        ("lat", 1.320067644e09, 60.07967),
    ]
]
RFC_MULTIPLE_DATA_TYPES = [
    {"bn": "urn:dev:ow:10e2073a01080063:", "n": "temp", "u": "Cel", "v": 23.1},
    {"n": "label", "vs": "Machine Room"},
    {"n": "open", "vb": False},
    {"n": "nfc-reader", "vd": "aGkgCg"},
]
RFC_COLLECTION = [
    {"bn": "2001:db8::2/", "bt": 1.320078429e09, "n": "temperature", "u": "Cel", "v": 25.2},
    {"n": "humidity", "u": "%RH", "v": 30},
    {"bn": "2001:db8::1/", "n": "temperature", "u": "Cel", "v": 12.3},
    {"n": "humidity", "u": "%RH", "v": 67},
]
RFC_ACTUATOR = [
    {"bn": "urn:dev:ow:10e2073a01080063:"},
    {"n": "temp", "u": "Cel", "v": 23.1},
    {"n": "heat", "u": "/", "v": 1},
    {"n": "fan", "u": "/", "v": 0},
]


def test_rfc8428_single_datapoint_has_no_temperature_name():
    # The name is the sensor's URN, not temp/temperature: rejected, with a hint.
    assert rejected(parse(RFC_SINGLE_DATAPOINT)) == [
        ("missing_temp",
         "record 0 at 2026-11-24T08:00:00Z: no temperature record (name temp or temperature); "
         "record 0 ('urn:dev:ow:10e2073a01080063', Cel) is not named temp or temperature")
    ]


def test_rfc8428_multiple_datapoints_without_temperature():
    result = parse(RFC_MULTIPLE_DATAPOINTS)
    assert result.readings == []
    assert rejected(result) == [
        ("missing_temp", "records 0, 1 at 2026-11-24T08:00:00Z: no temperature record "
                         "(name temp or temperature)")
    ]


def test_rfc8428_multiple_datapoints_timed_resolves_relative_times():
    # bt = Tue Jun 8 18:01:16.001 UTC 2010; "current" at t=-5..-1 and at bt (record 6,
    # which merges with record 0's time). bver 5 is accepted. No temperature anywhere.
    result = parse(RFC_MULTIPLE_DATAPOINTS_TIMED, OLD_OK)
    assert result.readings == []
    missing = ": no temperature record (name temp or temperature)"
    assert rejected(result) == [
        ("missing_temp", "records 0, 6 at 2010-06-08T18:01:16.001000Z" + missing),
        ("missing_temp", "record 1 at 2010-06-08T18:01:11.001000Z" + missing),
        ("missing_temp", "record 2 at 2010-06-08T18:01:12.001000Z" + missing),
        ("missing_temp", "record 3 at 2010-06-08T18:01:13.001000Z" + missing),
        ("missing_temp", "record 4 at 2010-06-08T18:01:14.001000Z" + missing),
        ("missing_temp", "record 5 at 2010-06-08T18:01:15.001000Z" + missing),
    ]


def test_rfc8428_multiple_measurements_and_resolved_form_agree():
    a = parse(RFC_MULTIPLE_MEASUREMENTS, OLD_OK)
    b = parse(RFC_RESOLVED, OLD_OK)
    assert a.readings == b.readings == []
    times = ["2011-10-31T13:24:24Z", "2011-10-31T13:25:24Z", "2011-10-31T13:26:24Z",
             "2011-10-31T13:26:54Z", "2011-10-31T13:27:24Z"]

    def at(result):
        return [re.search(r" at (\S+):", d).group(1) for _, d in rejected(result)]

    assert at(a) == at(b) == times
    assert {r for r, _ in rejected(a)} == {"missing_temp"}


def test_rfc8428_multiple_data_types():
    result = parse(RFC_MULTIPLE_DATA_TYPES)
    # "open" is not one of our door names; vs and vd records are ignored.
    assert result == ParseResult([reading(NOW, 23.1)], [])


def test_rfc8428_collection_of_resources_merges_by_time_first_wins():
    result = parse(RFC_COLLECTION, OLD_OK)
    ts = datetime(2011, 10, 31, 16, 27, 9, tzinfo=UTC)
    assert result == ParseResult([reading(ts, 25.2, rh=30.0)], [])
    # With the default 10-year window the same pack is too old.
    assert rejected(parse(RFC_COLLECTION)) == [
        ("ts_too_old", "records 0, 1, 2, 3: time 2011-10-31T16:27:09Z is 5502.6 days before "
                       "the server clock (2026-11-24T08:00:00Z); at most 3650 days is allowed")
    ]


def test_rfc8428_setting_an_actuator():
    assert parse(RFC_ACTUATOR) == ParseResult([reading(NOW, 23.1)], [])


def test_rfc8428_section6_cbor_pack_is_not_accepted():
    # RFC 8428 §6: labels n=0, u=1, v=2; the single-datapoint example in CBOR.
    name = b"urn:dev:ow:10e2073a01080063"
    cbor = (b"\x81\xa3\x00\x78" + bytes([len(name)]) + name + b"\x01\x63Cel\x02\xfb"
            + bytes.fromhex("4037199999999999a"[:16]))
    assert only_rejection(cbor) == (
        "not_utf8",
        "the payload is not UTF-8 text (byte 0x81 at offset 0); send JSON (binary encodings "
        "such as CBOR SenML are not accepted)",
    )


def test_senml_full_reading_with_base_fields():
    pack = [
        {"bn": "urn:dev:mac:0024befffe804ff1:", "bt": NOW_S, "n": "temp", "u": "Cel", "v": 4.5},
        {"n": "humidity", "u": "%RH", "v": 81},
        {"n": "battery", "u": "V", "v": 3.01},
        {"n": "door_open", "vb": True},
        {"n": "temp", "t": -60, "v": 4.4},
        {"n": "rh", "t": -60, "v": 80.5},
        {"n": "door", "t": -60, "vb": False},
        {"n": "battery_v", "t": -60, "v": 3.02},
    ]
    result = parse(pack)
    assert result == ParseResult(
        [
            reading(NOW, 4.5, rh=81.0, battery_v=3.01, door_open=True),
            reading(NOW - timedelta(minutes=1), 4.4, rh=80.5, battery_v=3.02, door_open=False),
        ],
        [],
    )


def test_senml_kelvin_base_value_and_fractional_times():
    pack = [
        # 270 + 6.25 = 276.25 K = 3.1 °C at now - 0.25 s
        {"bt": NOW_S - 0.25, "bu": "K", "bv": 270.0, "n": "temperature", "v": 6.25},
        # u overrides bu, bv still applies: 270 + 5 = 275 °C, out of range
        {"n": "temperature", "t": 0.125, "v": 5.0, "u": "Cel"},
    ]
    result = parse(pack)
    assert result.readings == [reading(NOW - timedelta(milliseconds=250), 3.1)]
    assert rejected(result) == [
        ("temp_out_of_range",
         "record 1 ('temperature'): v is 275.0 °C, outside the sensor range -100..150 °C")
    ]


def test_senml_base_unit_applies_to_later_records():
    pack = [
        {"bu": "Cel", "n": "temp", "v": 4.5},
        {"n": "rh", "v": 80},  # unit Cel, from bu
        {"bu": "%RH", "n": "rh", "t": -1, "v": 81},
        {"n": "temp", "t": -1, "v": 4.4},  # unit %RH, from bu
    ]
    result = parse(pack)
    assert result.readings == [reading(NOW, 4.5)]
    assert rejected(result) == [
        ("bad_unit", "record 1 ('rh'): unit 'Cel' is not %RH, expected for a humidity"),
        ("bad_unit", "record 3 ('temp'): unit '%RH' is not Cel or K, expected for a "
                     "temperature"),
    ]


def test_senml_kelvin_conversion():
    (r,) = parse([{"n": "temp", "u": "K", "v": 296.25}]).readings
    assert r.temp_c == 23.1
    assert rejected(parse([{"n": "temp", "u": "K", "v": 0}])) == [
        ("temp_out_of_range",
         "record 0 ('temp'): v is 0 K = -273.15 °C, outside the sensor range -100..150 °C")
    ]


def test_senml_relative_and_absolute_times():
    rel = 2**28 - 1  # largest relative time: now + 8.5 years, in the future
    result = parse([{"n": "temp", "t": -90, "v": 1}, {"n": "temp", "t": rel, "v": 2}])
    assert result.readings == [reading(NOW - timedelta(seconds=90), 1.0)]
    assert [r.reason for r in result.rejections] == ["ts_in_future"]
    # 2**28 itself is absolute: 1978-07-04, too old for the default window
    result = parse([{"n": "temp", "t": 2**28, "v": 1}])
    assert rejected(result) == [
        ("ts_too_old", "record 0: time 1978-07-04T21:24:16Z is 17674.4 days before the "
                       "server clock (2026-11-24T08:00:00Z); at most 3650 days is allowed")
    ]
    # bt relative too (no bt = 0 = now)
    assert parse([{"bt": -30, "n": "temp", "v": 1}]).readings == [
        reading(NOW - timedelta(seconds=30), 1.0)
    ]


def test_senml_name_from_base_name_alone_and_last_segment():
    assert parse([{"bn": "urn:dev:ow:10e2073a01080063:temp", "v": 3}]).readings == [
        reading(NOW, 3.0)
    ]
    assert parse([{"bn": "sensor1.", "n": "temperature", "v": 3}]).readings == [
        reading(NOW, 3.0)
    ]
    assert parse([{"bn": "sensor1/", "n": "x/temp", "v": 3}]).readings == [reading(NOW, 3.0)]


def test_plain_array_with_senml_like_extra_keys_stays_plain():
    payload = [{"ts": NOW_MS, "temp_c": 1.0, "n": "probe-1", "v": 2}, {"n": "temp", "v": 3}]
    result = parse(payload)
    assert result.readings == [reading(NOW, 1.0)]
    assert rejected(result) == [("missing_ts", "entry 1: ts is missing")]


def test_senml_detected_even_if_first_entry_is_not_an_object():
    result = parse([7, {"n": "temp", "v": 3.5}])
    assert result.readings == [reading(NOW, 3.5)]
    assert rejected(result) == [("bad_type", "record 0 is an integer, expected an object")]


def test_senml_same_time_first_record_wins_but_bad_first_does_not_block():
    result = parse([{"n": "temp", "v": 1}, {"n": "temp", "v": 2}])
    assert result == ParseResult([reading(NOW, 1.0)], [])
    result = parse([{"n": "temp", "v": "hot"}, {"n": "temp", "v": 2}])
    assert result.readings == [reading(NOW, 2.0)]
    assert rejected(result) == [
        ("bad_type", "record 0 ('temp'): v is a string ('hot'), expected a number")
    ]


@pytest.mark.parametrize(
    ("pack", "expected"),
    [
        ([{"n": "temp", "u": "degF", "v": 40}],
         [("bad_unit", "record 0 ('temp'): unit 'degF' is not Cel or K, expected for a "
                       "temperature")]),
        ([{"n": "temp", "v": 4}, {"n": "rh", "u": "%", "v": 40}],
         [("bad_unit", "record 1 ('rh'): unit '%' is not %RH, expected for a humidity")]),
        ([{"n": "temp", "v": 4}, {"n": "battery", "u": "mV", "v": 3000}],
         [("bad_unit", "record 1 ('battery'): unit 'mV' is not V, expected for a battery "
                       "voltage")]),
        ([{"n": "temp", "v": 4}, {"n": "door", "v": 1}],
         [("bad_type", "record 1 ('door'): a door record needs a boolean value vb")]),
        ([{"n": "temp", "v": 4}, {"n": "door", "vb": "open"}],
         [("bad_type", "record 1 ('door'): vb is a string ('open'), expected true or false")]),
        ([{"n": "temp", "v": 4}, {"n": "rh", "v": 101}],
         [("bad_value", "record 1 ('rh'): v is 101.0 %, outside 0..100 %")]),
        ([{"n": "temp", "v": 4}, {"n": "rh", "vs": "wet"}],
         [("bad_type", "record 1 ('rh'): no numeric value v")]),
        ([{"n": "temp", "v": True}],
         [("bad_type", "record 0 ('temp'): v is a boolean (true), expected a number")]),
        ([{"n": "temp", "v": 4}, {"n": 5, "v": 1}],
         [("bad_type", "record 1 (5): n is an integer, expected a string")]),
        ([{"n": "temp", "v": 4}, {"n": "temp", "u": 1, "v": 1, "t": -1}],
         [("bad_type", "record 1 ('temp'): u is an integer, expected a string")]),
        ([{"n": "temp", "v": 4}, {"n": "temp", "t": "-1", "v": 1}],
         [("bad_type", "record 1 ('temp'): t is a string ('-1'), expected a number of "
                       "seconds")]),
        ([{"n": "temp", "v": 4}, {"n": "temp", "t": 1e13, "v": 1}],
         [("bad_ts", "record 1 ('temp'): t is 10000000000000.0 s, out of range")]),
        ([{"n": "temp", "v": 4}, {"n": "x"}],
         [("bad_value", "record 1 has no value (v, vb, vs, vd or s) and no base field")]),
        ([{"n": "humidity", "v": 40}],
         [("missing_temp", "record 0 at 2026-11-24T08:00:00Z: no temperature record "
                           "(name temp or temperature)")]),
        ([{"n": "temp", "v": 4, "t": 400}],
         [("ts_in_future", "record 0: time 2026-11-24T08:06:40Z is 400.000 s ahead of the "
                           "server clock (2026-11-24T08:00:00Z); at most 300 s is allowed")]),
    ],
)
def test_senml_record_rejections(pack, expected):
    result = parse(pack)
    assert rejected(result) == expected
    good_temp_first = pack[0].get("v") == 4 and "t" not in pack[0]
    assert result.readings == ([reading(NOW, 4.0)] if good_temp_first else [])


@pytest.mark.parametrize(
    ("pack", "reason", "detail"),
    [
        ([{"bver": 11, "n": "temp", "v": 1}], "unknown_format",
         "record 0: SenML version 11 is newer than 10, the newest this reader understands"),
        ([{"bver": "10", "n": "temp", "v": 1}], "bad_type",
         "record 0: bver is '10', expected a positive integer"),
        ([{"n": "temp", "v": 1}, {"n": "temp", "v": 2, "t": -1, "crit_": 1}], "unknown_format",
         "record 1 has the must-understand field 'crit_' (RFC 8428 §4.4), which this reader "
         "does not know; pack not used"),
        ([{"bn": 5, "n": "temp", "v": 1}], "bad_type", "record 0: bn is an integer, expected a string"),
        ([{"bt": "now", "n": "temp", "v": 1}], "bad_type",
         "record 0: bt is a string ('now'), expected a number of seconds"),
        ([{"bt": True, "n": "temp", "v": 1}], "bad_type",
         "record 0: bt is a boolean (true), expected a number of seconds"),
        ([{"bt": 1e300, "n": "temp", "v": 1}], "bad_ts", "record 0: bt is 1e+300 s, out of range"),
        ([{"bu": ["Cel"], "n": "temp", "v": 1}], "bad_type",
         "record 0: bu is an array, expected a string"),
        ([{"bv": "1", "n": "temp", "v": 1}], "bad_type", "record 0: bv is a string, expected a number"),
        ([{"bn": "urn:dev:x:"}], "empty", "the SenML pack has no record with a value"),
    ],
)
def test_senml_pack_rejections(pack, reason, detail):
    assert only_rejection(pack) == (reason, detail)


def test_senml_too_many_times():
    limits = replace(LIM, max_readings_per_message=2)
    merged = [{"n": "temp", "v": 1}, {"n": "rh", "v": 2}, {"n": "temp", "t": -1, "v": 1}]
    assert len(parse(merged, limits).readings) == 2  # 3 records, 2 times: fine
    assert only_rejection([*merged, {"n": "temp", "t": -2, "v": 1}], limits) == (
        "too_many_readings",
        "the SenML pack has 3 distinct times, over the limit of 2",
    )


# ------------------------------------------------------------------------------ reason coverage

ALL_REASONS_SEEN = {
    "bad_topic", "oversized", "not_utf8", "malformed_json", "empty", "unknown_format",
    "too_many_readings", "missing_ts", "missing_temp", "bad_type", "bad_ts", "bad_value",
    "bad_unit", "temp_out_of_range", "ts_in_future", "ts_too_old", "internal_error",
}


def test_reasons_constant_is_the_documented_set():
    assert set(REASONS) == ALL_REASONS_SEEN
    assert all(isinstance(v, str) and v for v in REASONS.values())
    with pytest.raises(TypeError):
        REASONS["new"] = "x"  # type: ignore[index]


# ------------------------------------------------------------------------------ generators
# Valid readings, and their encodings in every accepted format (shared by the round-trip
# tests and by the "near-valid" fuzzing below).


@st.composite
def valid_readings(draw, *, ms_only: bool, with_seq: bool = True, max_size: int = 20):
    """Random valid Readings (unique ts inside the default window)."""
    lo_us = -round(LIM.max_age_days * 86_400e6) + 1000
    hi_us = round(LIM.max_future_s * 1e6) - 1000
    if ms_only:
        offsets = st.integers(lo_us // 1000 + 1, hi_us // 1000).map(lambda m: m * 1000)
    else:
        offsets = st.integers(lo_us, hi_us) | st.integers(-1000, 1000).map(lambda m: m * 1000)
    offs = draw(st.lists(offsets, min_size=1, max_size=max_size, unique=True))
    return [
        Reading(
            DEV,
            NOW + timedelta(microseconds=off),
            draw(st.floats(LIM.min_temp_c, LIM.max_temp_c)),
            draw(st.none() | st.floats(0.0, 100.0)),
            draw(st.none() | st.floats(0.0, 100.0)),
            draw(st.none() | st.booleans()),
            draw(st.none() | st.integers(0, 2**53 - 1)) if with_seq else None,
        )
        for off in offs
    ]


def ms(ts: datetime) -> int:
    return (ts - datetime(1970, 1, 1, tzinfo=UTC)) // timedelta(milliseconds=1)


def us(ts: datetime) -> int:
    return (ts - datetime(1970, 1, 1, tzinfo=UTC)) // timedelta(microseconds=1)


def rfc3339(ts: datetime, offset_min: int, digits: int, z: bool) -> str:
    local = ts.astimezone(timezone(timedelta(minutes=offset_min)))
    s = local.strftime("%Y-%m-%dT%H:%M:%S")
    if digits:
        s += "." + f"{local.microsecond:06d}000"[:digits]
    if z and offset_min == 0:
        return s + "Z"
    sign = "+" if offset_min >= 0 else "-"
    return s + f"{sign}{abs(offset_min) // 60:02d}:{abs(offset_min) % 60:02d}"


def draw_ts(draw, ts: datetime, *, ms_only: bool = False):
    """ts as a device may send it: epoch ms (int or float) or RFC 3339 with any offset."""
    style = draw(st.sampled_from(["ms", "ms_float", "rfc3339"]))
    if style == "ms" and ts.microsecond % 1000 == 0:
        return ms(ts)
    if style == "ms_float" or ms_only:
        return us(ts) / 1000
    offset = draw(st.just(0) | st.integers(-23 * 60 - 59, 23 * 60 + 59))
    exact = [6, 7, 9] if ts.microsecond % 1000 else [3, 6, 9]
    digits = draw(st.sampled_from([0, *exact] if ts.microsecond == 0 else exact))
    return rfc3339(ts, offset, digits, draw(st.booleans()))


def encode_plain(draw, r: Reading) -> dict:
    obj = {"ts": draw_ts(draw, r.ts), "temp_c": r.temp_c}
    for k in ("rh", "battery_v", "door_open", "seq"):
        if getattr(r, k) is not None:
            obj[k] = getattr(r, k)
        elif draw(st.integers(0, 4)) == 0:
            obj[k] = None
    return obj


def encode_tb(draw, r: Reading) -> dict:
    names = [("temp_c", ["temperature", "temp_c", "temp"]), ("rh", ["humidity", "rh"]),
             ("battery_v", ["battery", "battery_v"]), ("door_open", ["door_open", "door"]),
             ("seq", ["seq"])]
    values = {}
    for field, aliases in names:
        if getattr(r, field) is not None:
            values[draw(st.sampled_from(aliases))] = getattr(r, field)
    return {"ts": draw_ts(draw, r.ts), "values": dict(draw(st.permutations(list(values.items()))))}


def encode_senml(draw, rs: list[Reading]) -> list[dict]:
    """A SenML pack of readings (no seq in SenML), with base fields in several styles."""
    mode = draw(st.sampled_from(["bt_float", "bt_int", "relative", "absolute_t"]))
    first_us, now_us = us(rs[0].ts), us(NOW)
    bt = None
    if mode == "bt_float":
        base_us, bt = first_us, first_us / 1e6
    elif mode == "bt_int":
        base_us = first_us - first_us % 1_000_000
        bt = base_us // 1_000_000
    else:  # times relative to now (< 2**28) or absolute in each record
        base_us = now_us if mode == "relative" else 0
    pack: list[dict] = [{"bn": f"urn:dev:ow:{DEV}:", "bver": draw(st.sampled_from([5, 10]))}]
    if bt is not None:
        pack[0]["bt"] = bt
    if draw(st.booleans()):
        pack[0]["bu"] = "Cel"
    for r in rs:
        t = (us(r.ts) - base_us) / 1e6
        recs = [{"n": draw(st.sampled_from(["temp", "temperature"])), "v": r.temp_c}]
        if r.rh is not None:
            recs.append({"n": draw(st.sampled_from(["rh", "humidity"])), "u": "%RH", "v": r.rh})
        if r.battery_v is not None:
            recs.append({"n": draw(st.sampled_from(["battery", "battery_v"])), "u": "V",
                         "v": r.battery_v})
        if r.door_open is not None:
            recs.append({"n": draw(st.sampled_from(["door", "door_open"])), "vb": r.door_open})
        if draw(st.booleans()):
            recs.append({"n": "label", "vs": "truck 7"})  # ignored name
        for rec in draw(st.permutations(recs)):
            if t or draw(st.booleans()):
                rec["t"] = t
            pack.append(rec)
    return pack


# ------------------------------------------------------------------------------ round trip


@settings(max_examples=200, deadline=None)
@given(rs=valid_readings(ms_only=False), data=st.data(), as_array=st.booleans())
def test_roundtrip_plain(rs, data, as_array):
    objs = [encode_plain(data.draw, r) for r in rs]
    payload = orjson.dumps(objs if as_array else objs[0])
    assert parse_message(TOPIC, payload, LIM, NOW) == ParseResult(rs if as_array else rs[:1], [])


@settings(max_examples=200, deadline=None)
@given(rs=valid_readings(ms_only=False), data=st.data(), as_array=st.booleans())
def test_roundtrip_thingsboard(rs, data, as_array):
    objs = [encode_tb(data.draw, r) for r in rs]
    payload = orjson.dumps(objs if as_array else objs[0])
    assert parse_message(TOPIC, payload, LIM, NOW) == ParseResult(rs if as_array else rs[:1], [])


@settings(max_examples=100, deadline=None)
@given(rs=valid_readings(ms_only=False), data=st.data())
def test_roundtrip_mixed_plain_and_thingsboard_array(rs, data):
    objs = [data.draw(st.sampled_from([encode_plain, encode_tb]))(data.draw, r) for r in rs]
    assert parse_message(TOPIC, orjson.dumps(objs), LIM, NOW) == ParseResult(rs, [])


@settings(max_examples=200, deadline=None)
@given(rs=valid_readings(ms_only=False, with_seq=False), data=st.data())
def test_roundtrip_senml(rs, data):
    pack = encode_senml(data.draw, rs)
    assert parse_message(TOPIC, orjson.dumps(pack), LIM, NOW) == ParseResult(rs, [])


# ------------------------------------------------------------------------------ properties

VOCAB = [
    "ts", "temp_c", "rh", "battery_v", "door_open", "seq", "values", "temperature", "temp",
    "humidity", "battery", "door", "bn", "bt", "bu", "bv", "bver", "n", "u", "v", "vb", "vs",
    "vd", "s", "t", "ut", "x_", "Cel", "K", "%RH", "V",
]
PLAUSIBLE = st.sampled_from(
    [NOW_MS, NOW_MS + 299_000, NOW_MS + 301_000, NOW_S, 0, -1, 2**28, 2**63, 2**64 - 1, 1e11,
     "2026-11-24T08:00:00Z", "2026-11-24T08:00:00", "2026-11-24T07:00:00-01:00", 3.4, -18.0,
     150.0, 150.0001, -100.0, 412, 81.0, 3.01, 1e308, -1e308, 5e-324, 2**53 + 1, 296.15,
     "Cel", "K", "%RH", "V", "degF", "%", "temp", True, False, None, [], {}]
)
JSON_SCALARS = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=False, allow_infinity=False),
    st.text(max_size=30),
    st.sampled_from(VOCAB),
    PLAUSIBLE,
)
JSON_VALUES = st.recursive(
    JSON_SCALARS,
    lambda children: st.one_of(
        st.lists(children, max_size=6),
        st.dictionaries(st.one_of(st.sampled_from(VOCAB), st.text(max_size=8)), children,
                        max_size=8),
    ),
    max_leaves=40,
)
# Objects shaped like the accepted formats, with arbitrary values.
SHAPED = st.one_of(
    st.dictionaries(st.sampled_from(VOCAB), JSON_SCALARS, max_size=9),
    st.lists(st.dictionaries(st.sampled_from(VOCAB), JSON_SCALARS, max_size=7), max_size=10),
    st.fixed_dictionaries({"ts": PLAUSIBLE, "values": st.dictionaries(st.sampled_from(VOCAB),
                                                                      JSON_SCALARS)}),
)


# epoch ms around both edges of the default window
NEAR_WINDOW_MS = st.one_of(
    st.integers(NOW_MS + 290_000, NOW_MS + 310_000),
    st.integers(NOW_MS - 3650 * 86_400_000 - 10_000, NOW_MS - 3650 * 86_400_000 + 10_000),
)


def _dicts(value):
    if isinstance(value, dict):
        yield value
        for v in value.values():
            yield from _dicts(v)
    elif isinstance(value, list):
        for v in value:
            yield from _dicts(v)


@st.composite
def near_valid(draw):
    """A valid message in one of the formats, then up to 3 random corruptions."""
    fmt = draw(st.sampled_from(["plain", "plain_array", "tb", "tb_array", "senml", "mixed"]))
    rs = draw(valid_readings(ms_only=False, with_seq=fmt != "senml", max_size=8))
    if fmt == "plain":
        value = encode_plain(draw, rs[0])
    elif fmt == "tb":
        value = encode_tb(draw, rs[0])
    elif fmt == "senml":
        value = encode_senml(draw, rs)
    else:
        enc = {"plain_array": [encode_plain], "tb_array": [encode_tb]}.get(
            fmt, [encode_plain, encode_tb]
        )
        value = [draw(st.sampled_from(enc))(draw, r) for r in rs]
    for _ in range(draw(st.integers(0, 3))):
        d = draw(st.sampled_from(list(_dicts(value))))
        key = draw(st.sampled_from(sorted(d)) if d and draw(st.booleans()) else st.sampled_from(VOCAB))
        if key in d and draw(st.integers(0, 3)) == 0:
            del d[key]
        else:
            d[key] = draw(st.one_of(PLAUSIBLE, JSON_SCALARS, st.floats(-150, 250),
                                    st.integers(-3, 3), st.integers(-400, 400), NEAR_WINDOW_MS))
    if isinstance(value, list) and draw(st.booleans()):  # a duplicated entry or record
        value.insert(draw(st.integers(0, len(value))), json.loads(json.dumps(
            draw(st.sampled_from(value)))))
    return value


DEVICE_LIKE = st.one_of(JSON_VALUES, SHAPED, near_valid(), near_valid())
LIMITS = st.one_of(
    st.just(LIM),
    st.builds(
        PayloadLimits,
        max_payload_bytes=st.sampled_from([0, 64, 1 << 18]) | st.integers(0, 4096),
        max_readings_per_message=st.integers(1, 10),
        min_temp_c=st.floats(-200, 0),
        max_temp_c=st.floats(0, 200),
        max_future_s=st.floats(0, 1e6),
        max_age_days=st.floats(0, 20_000),
    ),
)
TOPICS = st.one_of(st.just(TOPIC), st.text(max_size=40),
                   st.from_regex(r"\Aorigincast/[A-Za-z0-9_.:\- +#/é]{0,70}/telemetry\Z"))


def check_invariants(result, topic, payload, limits, now):
    """Every output is a valid Reading within limits or a Rejection with a known reason."""
    assert isinstance(result, ParseResult)
    assert type(result.readings) is list and type(result.rejections) is list
    device_id = device_id_from_topic(topic)
    head = bytes(payload[:200]).decode("utf-8", errors="replace")
    seen = set()
    lo = now - timedelta(days=limits.max_age_days) - timedelta(microseconds=1)
    hi = now + timedelta(seconds=limits.max_future_s) + timedelta(microseconds=1)
    assert len(result.readings) <= limits.max_readings_per_message
    for r in result.readings:
        assert type(r) is Reading
        assert r.device_id == device_id is not None
        assert r.ts.tzinfo is UTC
        assert lo <= r.ts <= hi
        assert r.ts not in seen
        seen.add(r.ts)
        assert type(r.temp_c) is float and math.isfinite(r.temp_c)
        assert limits.min_temp_c <= r.temp_c <= limits.max_temp_c
        assert r.rh is None or (type(r.rh) is float and 0.0 <= r.rh <= 100.0)
        assert r.battery_v is None or (type(r.battery_v) is float and 0.0 <= r.battery_v <= 100)
        assert r.door_open is None or type(r.door_open) is bool
        assert r.seq is None or (type(r.seq) is int and 0 <= r.seq < 2**53)
    for j in result.rejections:
        assert type(j) is Rejection
        assert j.reason in REASONS and j.reason != "internal_error", j
        assert isinstance(j.detail, str) and j.detail and len(j.detail) < 1000
        assert j.topic == topic and j.payload_head == head and j.received_at is now
    if device_id is None:
        assert [j.reason for j in result.rejections] == ["bad_topic"]
    elif len(payload) > limits.max_payload_bytes:
        assert [j.reason for j in result.rejections] == ["oversized"] and not result.readings
    assert result.readings or result.rejections, "a message must yield something"


@settings(max_examples=400, deadline=None)
@given(payload=st.binary(max_size=600), topic=TOPICS, limits=LIMITS)
def test_property_arbitrary_bytes_never_raise(payload, topic, limits):
    result = parse_message(topic, payload, limits, NOW)
    check_invariants(result, topic, payload, limits, NOW)


@settings(max_examples=1500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(value=DEVICE_LIKE, limits=LIMITS)
def test_property_arbitrary_json_never_raises(value, limits):
    payload = json.dumps(value).encode()  # stdlib: also writes ints beyond 64 bits
    result = parse_message(TOPIC, payload, limits, NOW)
    check_invariants(result, TOPIC, payload, limits, NOW)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(value=DEVICE_LIKE, cut=st.integers(0, 400), junk=st.binary(max_size=3))
def test_property_truncated_and_corrupted_json_never_raises(value, cut, junk):
    payload = json.dumps(value).encode()
    payload = payload[:cut] + junk + payload[cut:]
    result = parse_message(TOPIC, payload, LIM, NOW)
    check_invariants(result, TOPIC, payload, LIM, NOW)


RFC3339_ASCII = re.compile(
    r"\A(\d{4})-(\d{2})-(\d{2})[Tt ](\d{2}):(\d{2}):(\d{2})(?:\.(\d+))?"
    r"(?:([Zz])|([+-])(\d{2}):(\d{2}))\Z",
    re.ASCII,
)
WIDE = replace(LIM, max_age_days=4_000_000.0, max_future_s=4e11)


@settings(max_examples=600, deadline=None)
@given(s=st.one_of(
    st.from_regex(r"\A\d{4}-\d{2}-\d{2}[Tt ]\d{2}:\d{2}:\d{2}(\.\d{1,9})?([Zz]|[+-]\d{2}:\d{2})?\Z"),
    st.from_regex(r"\A[0-9]{4}-[01][0-9]-[0-3][0-9][Tt ][0-2][0-9]:[0-5][0-9]:[0-5][0-9]"
                  r"(\.[0-9]{1,9})?([Zz]|[+-][01][0-9]:[0-5][0-9])\Z"),
    st.text(alphabet="0123456789-:TZz+. t", min_size=15, max_size=35),
))
def test_property_rfc3339_strings(s):
    """ts strings are accepted exactly when they are RFC 3339 with an offset."""
    result = parse_message(TOPIC, orjson.dumps({"ts": s, "temp_c": 1}), WIDE, NOW)
    m = RFC3339_ASCII.match(s)
    expected = None
    if m and (m[8] or m[9]):
        y, mo, d, h, mi, sec = (int(x) for x in m.groups()[:6])
        micro = int((m[7] or "0")[:6].ljust(6, "0"))
        off = 0 if m[8] else (1 if m[9] == "+" else -1) * (int(m[10]) * 60 + int(m[11]))
        try:
            local = datetime(y, mo, d, h, mi, sec, micro, tzinfo=timezone(timedelta(minutes=off)))
            expected = local.astimezone(UTC)
        except (ValueError, OverflowError):
            expected = None
    if expected is None:
        assert [j.reason for j in result.rejections] == ["bad_ts"], s
        assert result.readings == []
    else:
        assert result == ParseResult([Reading(DEV, expected, 1.0)], []), s
