"""Leaf records: RFC 8785 bytes, typed builders, and a verifier's strict parse."""

from __future__ import annotations

import ast
import hashlib
import struct
from pathlib import Path

import pytest
import rfc8785
from hypothesis import given, settings
from hypothesis import strategies as st

import telemetry.evidence
from telemetry.evidence.canonical import (
    AlertEvent,
    Correction,
    LeafRef,
    MediaManifest,
    ReadingsBatch,
    RecordError,
    ShipmentClosed,
    ShipmentOpened,
    TestReport,
    canonical,
    canonical_json,
    float32,
    parse_record,
    reading_record,
    readings_batch,
    readings_batch_from_rows,
    readings_digest,
)

T0 = 1_764_000_000_000_000


def test_rfc8785_canonical_form() -> None:
    # RFC 8785 3.2.3: keys sorted by UTF-16 code units, no whitespace, ES6 numbers
    assert canonical_json({"b": 1, "a": [1.0, 2.5e-7, "\u20ac"], "\u00e9": None}) == (
        '{"a":[1,2.5e-7,"\u20ac"],"b":1,"\u00e9":null}'.encode()
    )
    with pytest.raises(RecordError):
        canonical_json({"x": float("nan")})


def test_readings_hash_the_same_after_a_float4_round_trip() -> None:
    a = reading_record(T0, 3.4, rh=81.0, battery_v=3.01, door_open=False, seq=7)
    # what PostgreSQL's real column hands back (shortest float4 text, parsed as float64)
    b = reading_record(
        T0, float("3.4"), rh=81.0, battery_v=float(f"{float32(3.01):.9g}"), door_open=False, seq=7
    )
    assert a == b
    assert a["temp_c"] == float32(3.4) != 3.4
    assert readings_digest([a]) == readings_digest([b])


def test_batch_builder_and_digest_ignore_arrival_order() -> None:
    rows = [reading_record(T0 + i * 60_000_000, 4.0 + i / 10, seq=100 + i) for i in range(5)]
    batch = readings_batch("truck-7", rows)
    assert (batch.count, batch.seq_first, batch.seq_last) == (5, 100, 104)
    assert (batch.ts_first_us, batch.ts_last_us) == (T0, T0 + 4 * 60_000_000)
    assert readings_batch("truck-7", list(reversed(rows))) == batch
    changed = [*rows[:2], reading_record(T0 + 2 * 60_000_000, 9.9, seq=102), *rows[3:]]
    assert readings_batch("truck-7", changed).readings_sha256 != batch.readings_sha256
    no_seq = readings_batch("room-1", [reading_record(T0, 1.0)])
    assert no_seq.seq_first is None and no_seq.seq_last is None


def _all_kinds() -> list:
    batch = readings_batch("truck-7", [reading_record(T0, 3.0, seq=1)])
    return [
        batch,
        batch.with_prev(LeafRef(3, bytes(range(32)))),
        AlertEvent(
            "a-17",
            "excursion_high",
            "acknowledged",
            T0,
            actor="li.wei",
            comment="门开了 door open",
            device_id="truck-7",
        ),
        MediaManifest("ab" * 32, 1234, "image/jpeg", "farm.jpg", T0, stream="farm-cam", product_batch="L-42"),
        TestReport(
            "cd" * 32, 99, "application/pdf", "检测报告.pdf", T0, product_batch="L-42", shipment_id="S-1"
        ),
        ShipmentOpened(
            "S-1", T0, product="salmon", product_batch="L-42", origin_site="farm-7", profile={"max_c": -18.0}
        ),
        ShipmentClosed("S-1", T0 + 1, summary={"mkt_c": -19.52}),
        Correction(5, "wrong device mapped", T0, actor="ops", replacement={"device_id": "truck-9"}),
    ]


@pytest.mark.parametrize("record", _all_kinds(), ids=lambda r: r.kind)
def test_every_kind_round_trips_through_its_canonical_bytes(record) -> None:
    data = canonical(record)
    assert data.startswith(b"{") and b'"v":1' in data and f'"kind":"{record.kind}"'.encode() in data
    assert parse_record(data) == record


def test_parse_refuses_what_is_not_canonical_or_not_known() -> None:
    data = canonical(_all_kinds()[2])
    with pytest.raises(RecordError):
        parse_record(data.replace(b",", b", ", 1))  # same JSON, not canonical
    with pytest.raises(RecordError):
        parse_record(data.replace(b'"v":1', b'"v":2'))
    with pytest.raises(RecordError):
        parse_record(b'{"kind":"mystery","v":1}')
    with pytest.raises(RecordError):
        parse_record(data.replace(b'"actor"', b'"actress"'))
    with pytest.raises(RecordError):
        parse_record(b"not json")


@pytest.mark.parametrize(
    "build",
    [
        lambda: ReadingsBatch("", 1, T0, T0, "ab" * 32),
        lambda: ReadingsBatch("d", 0, T0, T0, "ab" * 32),
        lambda: ReadingsBatch("d", 1, T0, T0 - 1, "ab" * 32),
        lambda: ReadingsBatch("d", 1, T0, T0, "AB" * 32),
        lambda: ReadingsBatch("d", 1, T0, T0, "ab" * 32, seq_first=3),
        lambda: ReadingsBatch("d", 1, T0, T0, "ab" * 32, seq_first=3, seq_last=2),
        lambda: AlertEvent("a", "k", "raised", T0, comment=""),
        lambda: MediaManifest("ab" * 32, -1, "image/png", "x.png", T0),
        lambda: Correction(-1, "why", T0),
        lambda: readings_batch("d", []),
    ],
)
def test_builders_refuse_bad_fields(build) -> None:
    with pytest.raises(RecordError):
        build()


def test_records_over_an_entrys_65535_bytes_are_refused() -> None:
    big = ShipmentClosed("S-1", T0, summary={"notes": "x" * 70_000})
    with pytest.raises(RecordError, match="exceeds"):
        canonical(big)
    assert TestReport.__test__ is False


def test_the_evidence_package_imports_nothing_else_of_ours() -> None:
    """Beside the import contract: the contract lists modules, this catches new ones."""
    ours = {"stream", "telemetry", "web", "devices", "scripts", "bench", "tests"}
    folder = Path(telemetry.evidence.__file__).parent
    for path in folder.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            names = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            for name in names:
                if name.split(".")[0] in ours:
                    assert name == "telemetry.evidence" or name.startswith("telemetry.evidence."), (
                        path,
                        name,
                    )


# -- the fast paths are RFC 8785 byte for byte ------------------------------------------


_text = st.text(min_size=1, max_size=30)


@settings(max_examples=200, deadline=None)
@given(
    st.lists(
        st.tuples(
            st.integers(-(2**52), 2**52),
            st.floats(-200, 200, allow_nan=False),
            st.none() | st.floats(0, 100, allow_nan=False),
            st.none() | st.floats(0, 5, allow_nan=False),
            st.none() | st.booleans(),
            st.none() | st.integers(0, 2**53 - 1),
        ),
        min_size=1,
        max_size=20,
        unique_by=lambda t: t[0],
    )
)
def test_readings_digest_is_the_documented_byte_layout(rows: list) -> None:
    """The digest's 29-byte records, written out field by field here as the spec in
    canonical.py (and verify.js) says; the dict path and the ingest path agree."""

    def record(ts, temp, rh, bv, door, seq) -> bytes:
        flags = (rh is not None) | (bv is not None) << 1 | (seq is not None) << 2
        flags |= 0 if door is None else (8 | (16 if door else 0))
        return (
            ts.to_bytes(8, "little", signed=True)
            + struct.pack("<f", temp)
            + struct.pack("<f", 0.0 if rh is None else rh)
            + struct.pack("<f", 0.0 if bv is None else bv)
            + (0 if seq is None else seq).to_bytes(8, "little", signed=True)
            + bytes([flags])
        )

    expected = hashlib.sha256(b"".join(record(*r) for r in sorted(rows, key=lambda r: r[0]))).hexdigest()
    records = [reading_record(*r) for r in rows]
    assert readings_digest(records) == expected
    fast = readings_batch_from_rows("d", rows)
    assert fast == readings_batch("d", records) and fast.readings_sha256 == expected


@settings(max_examples=200, deadline=None)
@given(_text, _text, _text, st.none() | _text, st.none() | _text, st.integers(0, 2**53 - 1))
def test_flat_records_equal_rfc8785(a: str, b: str, c: str, actor, comment, n: int) -> None:
    for record in [
        AlertEvent(a, b, c[:64], n, actor=actor, comment=comment),
        MediaManifest("ab" * 32, n, b, a, -n, stream=actor, product_batch=comment),
        ReadingsBatch(a, n or 1, -n, n, "cd" * 32, seq_first=0, seq_last=n, prev=LeafRef(n, bytes(32))),
    ]:
        try:
            slow = rfc8785.dumps(record.to_json())
        except (rfc8785.CanonicalizationError, UnicodeEncodeError):
            with pytest.raises(RecordError):
                canonical(record)
            continue
        assert canonical(record) == slow
