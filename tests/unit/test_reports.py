"""Report maths (telemetry.reports) against hand-computed values, plus properties."""

from __future__ import annotations

import math
from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from telemetry.alerts.rules import Direction, chilled_profile, frozen_profile, pharma_profile
from telemetry.readings import Reading
from telemetry.reports import (
    ReportError,
    ReportParams,
    build_report,
    gap_threshold,
    limits_of,
    mean_kinetic_temperature,
    summarize,
    weigh,
)
from telemetry.shipments import (
    Segment,
    SegmentData,
    Shipment,
    ShipmentError,
    ShipmentStateError,
    add_segment,
    close,
    new_shipment_id,
    patch,
)
from telemetry.storage.alerts import AlertRecord, AuditRecord

T0 = datetime(2026, 11, 20, 8, 0, tzinfo=UTC)


def at(s: float) -> datetime:
    return T0 + timedelta(seconds=s)


def readings(points: list[tuple[float, float]], device: str = "truck-7") -> list[Reading]:
    return [Reading(device, at(s), t) for s, t in points]


# -- mean kinetic temperature -------------------------------------------------------------


def test_mkt_of_a_constant_temperature_is_that_temperature() -> None:
    for t in (-25.0, -18.0, 0.0, 5.0, 25.0, 40.0):
        assert mean_kinetic_temperature([t] * 5, [60, 120, 1, 3600, 7]) == pytest.approx(t, abs=1e-9)


def test_mkt_two_temperatures_by_hand() -> None:
    # Half the time at 0 °C, half at 10 °C. In kelvin 273.15 and 283.15:
    #   a = −10000/273.15 = −36.609921, b = −10000/283.15 = −35.316970
    #   mean of e^a, e^b = e^b·(1 + e^(a−b))/2, a−b = −1.292951, e^(a−b) = 0.274465
    #   ln(mean) = b + ln(0.637233) = −35.316970 − 0.450686 = −35.767656
    #   MKT = 10000 / 35.767656 = 279.5827 K = 6.4327 °C (the arithmetic mean is 5 °C)
    assert mean_kinetic_temperature([0.0, 10.0], [3600, 3600]) == pytest.approx(6.4327, abs=0.0005)
    # Weights, not counts, matter: the same with ten readings at 10 °C over the same hour.
    assert mean_kinetic_temperature([0.0] + [10.0] * 10, [3600] + [360] * 10) == pytest.approx(
        6.4327, abs=0.0005
    )


def test_mkt_without_weight_is_none_and_deep_frozen_keeps_precision() -> None:
    assert mean_kinetic_temperature([], []) is None
    assert mean_kinetic_temperature([5.0], [0]) is None
    # e^(−10000/193.15) ≈ 3e−23: a naive sum would still work, but the log-sum-exp must too.
    assert mean_kinetic_temperature([-80.0, -80.0], [1, 1]) == pytest.approx(-80.0, abs=1e-9)


# -- weights and gaps ------------------------------------------------------------------------


def test_irregular_sampling_weights_each_reading_by_its_interval() -> None:
    # 2 °C at 0 s, 8 °C at 60 s, 4 °C at 240 s; window [0, 300), G fixed at 600 s.
    # Weights: 60, 180, 60 s. Time-weighted mean = (2·60 + 8·180 + 4·60)/300 = 6.0 °C
    # (the plain mean of the three readings is 4.67 °C).
    pts = readings([(0, 2.0), (60, 8.0), (240, 4.0)])
    w, gaps = weigh(pts, at(0), at(300), timedelta(seconds=600))
    assert [x.weight_s for x in w] == [60.0, 180.0, 60.0]
    assert gaps == []
    limits = limits_of(pharma_profile())  # 2-8 °C
    s = summarize(w, gaps, timedelta(seconds=300), limits)
    assert s.mean_c == pytest.approx(6.0, abs=1e-12)
    # MKT: 10000/−ln((60·e^(−10000/275.15) + 180·e^(−10000/281.15) + 60·e^(−10000/277.15))/300)
    #      − 273.15 = 6.3613 °C
    assert s.mkt_c == pytest.approx(6.3613, abs=0.0005)
    assert (s.min_c, s.max_c, s.reading_count) == (2.0, 8.0, 3)
    # 2 and 8 are the bounds themselves: inside the 2-8 °C class, so all in range.
    assert s.in_range.total_seconds() == 300 and s.out_of_range == timedelta(0)


def test_gaps_are_reported_and_never_counted_in_range() -> None:
    # Ten readings a minute apart at 3 °C (0 … 540 s), then nothing until 10 °C at 1800 s;
    # window [0, 2400). Intervals: nine of 60 s, 1260 s and (to the end) 600 s → median of the
    # reading intervals [60×9, 1260] is 60 s → G = max(3 × 60, 300) = 300 s.
    pts = readings([(i * 60, 3.0) for i in range(10)] + [(1800, 10.0)])
    g = gap_threshold([p.ts for p in pts], ReportParams())
    assert g == timedelta(seconds=300)
    w, gaps = weigh(pts, at(0), at(2400), g)
    # The reading at 540 s stands for 300 s (capped at G), the one at 1800 s for 300 s too.
    assert [x.weight_s for x in w] == [60.0] * 9 + [300.0, 300.0]
    assert [(x.start, x.end, x.last_reading_at, x.next_reading_at) for x in gaps] == [
        (at(840), at(1800), at(540), at(1800)),
        (at(2100), at(2400), at(1800), None),
    ]
    s = summarize(w, gaps, timedelta(seconds=2400), limits_of(chilled_profile()))  # 0-4 °C
    assert s.covered.total_seconds() == 1140 and s.gap.total_seconds() == 1260
    assert s.covered + s.gap == s.window
    assert s.in_range.total_seconds() == 840  # 3 °C readings only; the gaps are not in range
    beyond = {b.limit.id: b.beyond.total_seconds() for b in s.beyond}
    assert beyond == {"upper": 300.0, "lower": 0.0}
    # mean = (3·840 + 10·300)/1140 = 4.8421; MKT by the formula with weights 840 and 300: 5.4840
    assert s.mean_c == pytest.approx(4.842105, abs=1e-6)
    assert s.mkt_c == pytest.approx(5.4840, abs=0.0005)


def test_lead_in_covered_up_to_g_else_a_gap() -> None:
    g = timedelta(seconds=300)
    w, gaps = weigh(readings([(120, 5.0), (180, 5.0)]), at(0), at(240), g)
    assert [x.weight_s for x in w] == [180.0, 60.0] and gaps == []  # lead-in 120 s to the first
    w, gaps = weigh(readings([(400, 5.0)]), at(0), at(460), g)
    assert [x.weight_s for x in w] == [60.0]
    assert [(x.start, x.end) for x in gaps] == [(at(0), at(400))]


def test_a_segment_without_readings_is_one_gap() -> None:
    w, gaps = weigh([], at(0), at(3600), timedelta(seconds=300))
    assert w == [] and [(x.start, x.end) for x in gaps] == [(at(0), at(3600))]
    s = summarize(w, gaps, timedelta(seconds=3600), limits_of(chilled_profile()))
    assert (s.min_c, s.max_c, s.mean_c, s.mkt_c) == (None, None, None, None)
    assert s.gap.total_seconds() == 3600 and s.in_range == timedelta(0)


def test_readings_outside_the_window_are_ignored_and_window_end_is_exclusive() -> None:
    pts = readings([(-60, 30.0), (0, 5.0), (60, 5.0), (120, 30.0)])
    w, _ = weigh(pts, at(0), at(120), timedelta(seconds=300))
    assert [(x.ts, x.temp_c) for x in w] == [(at(0), 5.0), (at(60), 5.0)]


def test_gap_threshold_parameters() -> None:
    times = [at(i * 900) for i in range(5)]  # a 15-minute logger
    assert gap_threshold(times, ReportParams()) == timedelta(seconds=2700)
    assert gap_threshold(times, ReportParams(gap_factor=2)) == timedelta(seconds=1800)
    assert gap_threshold(times, ReportParams(gap_threshold_s=120)) == timedelta(seconds=120)
    assert gap_threshold(times[:1], ReportParams(min_gap_s=600)) == timedelta(seconds=600)
    with pytest.raises(ReportError, match="gap_factor"):
        ReportParams(gap_factor=0)
    with pytest.raises(ReportError, match="gap_threshold_s"):
        ReportParams(gap_threshold_s=float("nan"))


def test_limits_of_profiles() -> None:
    lim = {x.id: x for x in limits_of(pharma_profile())}
    assert set(lim) == {"upper", "lower", "heat_budget", "freeze_budget"}
    assert lim["heat_budget"].beyond(30.0) and not lim["upper"].beyond(8.0) and lim["upper"].beyond(8.01)
    assert lim["lower"].direction is Direction.BELOW and lim["lower"].beyond(1.99)
    assert [x.id for x in limits_of(frozen_profile())] == ["upper_critical", "upper"]
    assert limits_of(None) == ()


# -- the whole report ---------------------------------------------------------------------


def alert(alert_id: int, device: str, kind: str, start: float, cleared: float | None) -> AlertRecord:
    trail = (
        AuditRecord(alert_id, 0, at(start + 600), "system", "raised", "", {"value": 6.0}),
        AuditRecord(
            alert_id, 1, at(start + 900), "li.wei", "acknowledged", "司机已检查冷机 / driver checked", None
        ),
    )
    return AlertRecord(
        alert_id=alert_id,
        device_id=device,
        site_id="fleet",
        profile_id="chilled",
        rule_id="upper",
        kind=kind,
        severity="major",
        state="acknowledged",
        metric="temp_c",
        threshold=4.0,
        start=at(start),
        raised_at=at(start + 600),
        cleared_at=None if cleared is None else at(cleared),
        peak=6.0,
        peak_at=at(start + 60),
        found_late=False,
        acknowledged_by="li.wei",
        acknowledged_at=at(start + 900),
        ack_comment="司机已检查冷机 / driver checked",
        resolved_by=None,
        resolved_at=None,
        resolution_comment=None,
        updated_at=at(start + 900),
        audit=trail,
    )


def test_build_report_pools_segments_and_classifies_alerts() -> None:
    ship = Shipment(
        id="fish-2026-11",
        product="Frozen hairtail",
        batch="B-77",
        origin_site="zhoushan",
        profile_id="chilled",
        opened_at=at(0),
        segments=(Segment("coldroom-1", at(0), at(600)), Segment("truck-7", at(600), None)),
    )
    seg1 = readings([(0, 2.0), (300, 2.0)], "coldroom-1")
    seg2 = readings([(600, 6.0), (900, 3.0)], "truck-7")
    data = [
        SegmentData(ship.segments[0], at(0), at(600), tuple(seg1), ()),
        SegmentData(
            ship.segments[1],
            at(600),
            at(1200),
            tuple(seg2),
            (alert(7, "truck-7", "limit", 600, 900), alert(8, "truck-7", "offline", 1000, None)),
        ),
    ]
    rep = build_report(ship, data, chilled_profile(), at(1200), ReportParams(gap_threshold_s=600))
    assert [s.summary.reading_count for s in rep.segments] == [2, 2]
    # weights: 300, 300 (segment 1), 300, 300 (segment 2) → mean (2·600 + 6·300 + 3·300)/1200
    assert rep.total.mean_c == pytest.approx((2 * 600 + 6 * 300 + 3 * 300) / 1200)
    assert rep.total.window.total_seconds() == 1200 and rep.total.gap == timedelta(0)
    assert {b.limit.id: b.beyond.total_seconds() for b in rep.total.beyond} == {"upper": 300.0, "lower": 0.0}
    assert rep.segments[1].open and not rep.segments[0].open
    d = rep.to_dict()
    assert [e["id"] for e in d["excursions"]] == [7] and d["excursions"][0]["category"] == "single"
    assert [e["id"] for e in d["device_alerts"]] == [8]
    assert d["excursions"][0]["audit"][1]["comment"] == "司机已检查冷机 / driver checked"
    assert d["total"]["mkt_c"] == rep.total.mkt_c and d["method"]["activation_k"] == 10_000.0
    assert d["segments"][1]["gap_threshold_s"] == 600.0


# -- properties ------------------------------------------------------------------------------

samples = st.lists(
    st.tuples(st.integers(1, 7200), st.floats(-40, 45, allow_nan=False, allow_infinity=False)),
    min_size=1,
    max_size=60,
)


@settings(max_examples=300, deadline=None)
@given(samples, st.integers(0, 3600), st.integers(1, 7200))
def test_mkt_is_at_least_the_time_weighted_mean_and_time_adds_up(
    steps: list[tuple[int, float]], lead: int, tail: int
) -> None:
    t, pts = lead, []
    for step, temp in steps:
        pts.append((t, temp))
        t += step
    window_end = pts[-1][0] + tail
    rs = readings(pts)
    g = gap_threshold([r.ts for r in rs], ReportParams())
    w, gaps = weigh(rs, at(0), at(window_end), g)
    s = summarize(w, gaps, at(window_end) - at(0), limits_of(chilled_profile()))
    assert s.mkt_c is not None and s.mean_c is not None
    # Jensen: e^(−ΔH/RT) is convex and increasing, so MKT ≥ the mean with the same weights.
    assert s.mkt_c >= s.mean_c - 1e-9 * max(1.0, abs(s.mean_c))
    assert s.min_c <= s.mean_c + 1e-9 and s.mean_c <= s.max_c + 1e-9  # type: ignore[operator]
    assert s.covered + s.gap == s.window
    assert all(x.weight <= g + (x.ts - at(0)) for x in w)
    assert all(gp.duration > timedelta(0) for gp in gaps)
    assert math.isclose(
        sum(b.beyond.total_seconds() for b in s.beyond if b.limit.id in ("upper", "lower"))
        + s.in_range.total_seconds(),
        s.covered.total_seconds(),
    )


# -- the shipment model --------------------------------------------------------------------


def base_shipment(**kw: object) -> Shipment:
    fields: dict[str, object] = {
        "id": "batch-77",
        "product": "Milk",
        "batch": "77",
        "origin_site": "farm-7",
        "profile_id": "chilled",
        "opened_at": at(0),
    }
    fields.update(kw)
    return Shipment(**fields)  # type: ignore[arg-type]


def test_shipment_route_rules() -> None:
    s = base_shipment()
    s = add_segment(s, Segment("coldroom-1", at(0)))
    s = add_segment(s, Segment("truck-7", at(3600), label="Truck 7"))
    assert s.segments[0].end == at(3600) and s.segments[1].end is None
    with pytest.raises(ShipmentError) as e:
        add_segment(s, Segment("truck-9", at(3600)))
    assert e.value.field == "segments.start"
    with pytest.raises(ShipmentError) as e:
        base_shipment(segments=(Segment("a", at(0), at(100)), Segment("b", at(50), at(200))))
    assert e.value.field == "segments.start" and "overlap" in str(e.value)
    with pytest.raises(ShipmentError) as e:
        base_shipment(segments=(Segment("a", at(0)), Segment("b", at(50), at(200))))
    assert e.value.field == "segments.end"
    with pytest.raises(ShipmentError) as e:
        Segment("a", at(10), at(10))
    assert e.value.field == "segments.end"
    with pytest.raises(ShipmentError) as e:
        base_shipment(segments=(Segment("a", at(-10), at(100)),))
    assert e.value.field == "segments.start"
    done = close(s, at(7200))
    assert done.state.value == "closed" and done.segments[-1].end == at(7200)
    with pytest.raises(ShipmentStateError):
        add_segment(done, Segment("truck-9", at(8000)))
    with pytest.raises(ShipmentStateError):
        patch(done, {"product": "Cheese"})


def test_shipment_field_validation_names_the_field() -> None:
    for kw, name in [
        ({"id": "Bad Id"}, "id"),
        ({"product": ""}, "product"),
        ({"batch": "x" * 201}, "batch"),
        ({"origin_site": "a/b"}, "origin_site"),
        ({"opened_at": datetime(2026, 1, 1)}, "opened_at"),
        ({"streams": ("farm-cam", "farm-cam")}, "streams"),
        ({"streams": ("Farm Cam",)}, "streams"),
    ]:
        with pytest.raises(ShipmentError) as e:
            base_shipment(**kw)
        assert e.value.field == name, kw
    with pytest.raises(ShipmentError) as e:
        patch(base_shipment(), {"state": "closed"})
    assert e.value.field == "state"
    p = patch(base_shipment(), {"product": "Yoghurt", "streams": ["farm-cam"]})
    assert p.product == "Yoghurt" and p.streams == ("farm-cam",)
    ids = {new_shipment_id() for _ in range(200)}
    assert len(ids) == 200 and all(len(i) == 10 and i.isalnum() and i == i.lower() for i in ids)
