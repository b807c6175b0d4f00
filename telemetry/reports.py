"""The shipment report: pure functions over readings and alerts (no I/O, no clock).

Definitions (also in the report itself, under ``method``, so a reader — and the public
page that recomputes the figures in the browser — can check them):

*Window.* Each segment is judged over [start, end): its end, or for a segment still
open the report's end (the shipment's close, or the moment of the report). Readings
with start ≤ ts < end belong to it; one at a hand-over instant belongs to the next.

*Gap threshold G* (per segment, since devices log at different rates):
``gap_threshold_s`` if given, else ``max(gap_factor × median interval between the
segment's consecutive readings, min_gap_s)`` — by default max(3 × median, 300 s). The
floor keeps a dense sensor's network hiccup of a minute from being called a gap; EN
12830 recorders log every 5 min at the most frequent, so a 5-minute hole is still
ordinary logging.

*Weights (coverage).* A reading stands for the time after it until the next reading of
the segment (or the window's end), but for at most G: weight wᵢ = min(tᵢ₊₁ − tᵢ, G).
The first reading also stands for the lead-in from the window's start to it when that
is at most G (a logger's first reading comes up to one interval after the goods
arrive). *Covered time* is Σ wᵢ.

*Gaps.* Every stretch of the window that no reading stands for: after a reading whose
next one is more than G later, [tᵢ + G, tᵢ₊₁) (or to the window's end); a lead-in longer
than G, [start, t₁) whole; a segment without readings, its whole window. Covered time +
gap time = window length, exactly (times are kept in microseconds). Gap time is never
in range and never out of range: those are over covered time only.

*Figures.* min and max of the readings; mean = Σ wᵢTᵢ / Σ wᵢ (time-weighted); mean
kinetic temperature MKT = (ΔH/R) / −ln(Σ wᵢ·e^(−ΔH/(R·Tᵢ)) / Σ wᵢ) in kelvin (Tᵢ = °C +
273.15), ΔH/R = 10,000 K, with the same weights. Because e^(−ΔH/RT) is convex and
increasing, MKT ≥ mean always. *Time beyond a limit*: Σ wᵢ over readings beyond it —
strictly above/below a limit rule's threshold (the temperature classes include their
bound), at or beyond a budget rule's when it is inclusive (WHO's "≥ 30 °C"). *In
range*: covered time whose reading is beyond no limit rule. The whole shipment pools
every segment's weighted readings and gaps.

*Excursions* are the stored alerts of each segment's device whose span overlaps the
segment's window: limit rules give single excursions, budget rules cumulative ones; the
other kinds (offline, door, battery) are listed as device alerts. Each comes with its
audit trail (who acknowledged or resolved it, and their comments).

Values stay full floats here; rounding happens only where a person reads them (CSV,
PDF, pages).
"""

from __future__ import annotations

import math
import operator
import statistics
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from functools import partial
from itertools import compress, pairwise
from typing import Any, Protocol

from telemetry.alerts.rules import BudgetRule, Direction, LimitRule, Metric, Profile
from telemetry.shipments import SegmentData, Shipment, iso, report_end
from telemetry.storage.alerts import AlertRecord

ACTIVATION_K = 10_000.0  # ΔH/R: 83.144 kJ/mol ÷ 8.3144 J/(mol·K) (USP <1079>)
KELVIN = 273.15
EXCURSION_KINDS = {"limit": "single", "budget": "cumulative"}


class ReportError(ValueError):
    """Parameters a report cannot be computed with; the message names the parameter."""


class TimedValue(Protocol):
    @property
    def ts(self) -> datetime: ...

    @property
    def temp_c(self) -> float: ...


@dataclass(frozen=True, slots=True)
class ReportParams:
    gap_factor: float = 3.0
    min_gap_s: float = 300.0
    gap_threshold_s: float | None = None  # a fixed G for every segment, overriding the two above
    activation_k: float = ACTIVATION_K

    def __post_init__(self) -> None:
        for name in ("gap_factor", "min_gap_s", "activation_k"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or v <= 0:
                raise ReportError(f"{name} must be a positive number, got {v!r}")
        g = self.gap_threshold_s
        if g is not None and (
            isinstance(g, bool) or not isinstance(g, (int, float)) or not math.isfinite(g) or g < 1
        ):
            raise ReportError(f"gap_threshold_s must be a number of seconds ≥ 1, got {g!r}")

    def to_dict(self) -> dict[str, Any]:
        return {
            "gap_factor": self.gap_factor,
            "min_gap_s": self.min_gap_s,
            "gap_threshold_s": self.gap_threshold_s,
            "activation_k": self.activation_k,
        }


_ONE_US = timedelta(microseconds=1)

@dataclass(frozen=True, slots=True)
class Limit:
    """A temperature threshold of the profile that time is measured beyond."""

    id: str
    kind: str  # "limit" or "budget"
    direction: Direction
    threshold: float
    inclusive: bool  # True: at the threshold counts as beyond
    severity: str
    budget_s: float | None = None

    def beyond(self, temp_c: float) -> bool:
        return self.test()(temp_c)

    def test(self) -> Callable[[float], bool]:
        """``beyond`` as one C-level comparison: a month of readings is tested against
        every limit of the profile, and a Python call per reading was most of a report."""
        if self.direction is Direction.ABOVE:
            return partial(operator.le if self.inclusive else operator.lt, self.threshold)
        return partial(operator.ge if self.inclusive else operator.gt, self.threshold)

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "kind": self.kind,
            "direction": self.direction.value,
            "threshold": self.threshold,
            "inclusive": self.inclusive,
            "severity": self.severity,
            "budget_s": self.budget_s,
        }


def limits_of(profile: Profile | None) -> tuple[Limit, ...]:
    """The profile's temperature limit and budget rules, upper ones first."""
    if profile is None:
        return ()
    out: list[Limit] = []
    for r in profile.rules:
        if isinstance(r, LimitRule) and r.metric is Metric.TEMP_C:
            out.append(Limit(r.id, "limit", r.direction, r.threshold, False, r.severity.value))
        elif isinstance(r, BudgetRule) and r.metric is Metric.TEMP_C:
            out.append(
                Limit(r.id, "budget", r.direction, r.threshold, r.inclusive, r.severity.value, r.budget_s)
            )
    return tuple(sorted(out, key=lambda x: (x.direction is not Direction.ABOVE, x.kind, -x.threshold)))


@dataclass(frozen=True, slots=True)
class Weighted:
    ts: datetime
    temp_c: float
    weight: timedelta  # the time this reading stands for

    @property
    def weight_s(self) -> float:
        return self.weight.total_seconds()


@dataclass(frozen=True, slots=True)
class Gap:
    start: datetime
    end: datetime
    last_reading_at: datetime | None  # the reading before the gap (None: the window starts it)
    next_reading_at: datetime | None  # the reading after it (None: the window ends it)

    @property
    def duration(self) -> timedelta:
        return self.end - self.start

    def to_dict(self) -> dict[str, Any]:
        return {
            "start": iso(self.start),
            "end": iso(self.end),
            "duration_s": self.duration.total_seconds(),
            "last_reading_at": None if self.last_reading_at is None else iso(self.last_reading_at),
            "next_reading_at": None if self.next_reading_at is None else iso(self.next_reading_at),
        }


def _seconds(td: timedelta) -> float:
    return td.total_seconds()


def gap_threshold(times: Sequence[datetime], params: ReportParams) -> timedelta:
    """G for one segment's readings (sorted times); whole microseconds."""
    if params.gap_threshold_s is not None:
        return timedelta(seconds=params.gap_threshold_s)
    intervals = [(b - a).total_seconds() for a, b in pairwise(times)]
    floor = timedelta(seconds=params.min_gap_s)
    if not intervals:
        return floor
    return max(timedelta(seconds=params.gap_factor * statistics.median(intervals)), floor)


def weigh(
    points: Sequence[TimedValue], start: datetime, end: datetime, threshold: timedelta
) -> tuple[list[Weighted], list[Gap]]:
    """Weights and gaps of one window's readings (see the module's definitions)."""
    if end < start:
        raise ReportError("the window ends before it starts")
    pts = sorted((p for p in points if start <= p.ts < end), key=lambda p: p.ts)
    if not pts:
        return [], ([Gap(start, end, None, None)] if end > start else [])
    weighted: list[Weighted] = []
    gaps: list[Gap] = []
    lead = pts[0].ts - start
    if lead > threshold:
        gaps.append(Gap(start, pts[0].ts, None, pts[0].ts))
    for i, p in enumerate(pts):
        nxt = pts[i + 1].ts if i + 1 < len(pts) else end
        step = nxt - p.ts
        w = min(step, threshold)
        if step > threshold:
            gaps.append(Gap(p.ts + threshold, nxt, p.ts, pts[i + 1].ts if i + 1 < len(pts) else None))
        if i == 0 and lead <= threshold:
            w += lead
        weighted.append(Weighted(p.ts, float(p.temp_c), w))
    return weighted, gaps


def mean_kinetic_temperature(
    temps_c: Sequence[float], weights_s: Sequence[float], activation_k: float = ACTIVATION_K
) -> float | None:
    """MKT in °C of temperatures held for the given durations; None without weight.

    Computed as a log-sum-exp so that deep-frozen temperatures (e^(−10000/193 K) ≈ 10⁻²³)
    lose no precision."""
    pairs = [(t, w) for t, w in zip(temps_c, weights_s, strict=True) if w > 0]
    if not pairs:
        return None
    xs = [-activation_k / (t + KELVIN) for t, _ in pairs]
    m = max(xs)
    total_w = math.fsum(w for _, w in pairs)
    s = math.fsum(w * math.exp(x - m) for (_, w), x in zip(pairs, xs, strict=True))
    log_mean = m + math.log(s) - math.log(total_w)
    return -activation_k / log_mean - KELVIN


@dataclass(frozen=True, slots=True)
class LimitTime:
    limit: Limit
    beyond: timedelta

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {"limit_id": self.limit.id, "beyond_s": self.beyond.total_seconds()}
        if self.limit.budget_s is not None:
            d["budget_used"] = self.beyond.total_seconds() / self.limit.budget_s
        return d


@dataclass(frozen=True, slots=True)
class Summary:
    reading_count: int
    first_reading_at: datetime | None
    last_reading_at: datetime | None
    min_c: float | None
    max_c: float | None
    mean_c: float | None
    mkt_c: float | None
    window: timedelta
    covered: timedelta
    gap: timedelta
    in_range: timedelta
    beyond: tuple[LimitTime, ...]

    @property
    def out_of_range(self) -> timedelta:
        """Covered time beyond at least one limit rule (budget thresholds excluded)."""
        return self.covered - self.in_range

    def to_dict(self) -> dict[str, Any]:
        return {
            "reading_count": self.reading_count,
            "first_reading_at": None if self.first_reading_at is None else iso(self.first_reading_at),
            "last_reading_at": None if self.last_reading_at is None else iso(self.last_reading_at),
            "min_c": self.min_c,
            "max_c": self.max_c,
            "mean_c": self.mean_c,
            "mkt_c": self.mkt_c,
            "window_s": _seconds(self.window),
            "covered_s": _seconds(self.covered),
            "gap_s": _seconds(self.gap),
            "in_range_s": _seconds(self.in_range),
            "out_of_range_s": _seconds(self.out_of_range),
            "beyond": [b.to_dict() for b in self.beyond],
        }


def summarize(
    weighted: Sequence[Weighted],
    gaps: Sequence[Gap],
    window: timedelta,
    limits: Sequence[Limit],
    activation_k: float = ACTIVATION_K,
) -> Summary:
    temps = [w.temp_c for w in weighted]
    secs = [w.weight_s for w in weighted]
    covered = sum((w.weight for w in weighted), timedelta())
    total_s = math.fsum(secs)
    mean = math.fsum(t * s for t, s in zip(temps, secs, strict=True)) / total_s if total_s > 0 else None
    # Whole microseconds, summed as ints: the same sums as timedelta's, without an object
    # per addition.
    weight_us = [w.weight // _ONE_US for w in weighted]
    flags = [list(map(lim.test(), temps)) for lim in limits]
    range_flags = [f for lim, f in zip(limits, flags, strict=True) if lim.kind == "limit"]
    out_flags = list(map(any, zip(*range_flags, strict=True))) if range_flags else [False] * len(temps)
    in_range = timedelta(microseconds=sum(compress(weight_us, map(operator.not_, out_flags))))
    beyond = tuple(
        LimitTime(lim, timedelta(microseconds=sum(compress(weight_us, f))))
        for lim, f in zip(limits, flags, strict=True)
    )
    return Summary(
        reading_count=len(weighted),
        first_reading_at=min((w.ts for w in weighted), default=None),
        last_reading_at=max((w.ts for w in weighted), default=None),
        min_c=min(temps, default=None),
        max_c=max(temps, default=None),
        mean_c=mean,
        mkt_c=mean_kinetic_temperature(temps, secs, activation_k),
        window=window,
        covered=covered,
        gap=sum((g.duration for g in gaps), timedelta()),
        in_range=in_range,
        beyond=beyond,
    )


@dataclass(frozen=True, slots=True)
class SegmentReport:
    index: int  # 1-based, as a person counts the route
    device_id: str
    label: str | None
    start: datetime
    end: datetime
    open: bool  # the segment itself is still open (its end is the report's end)
    gap_threshold: timedelta
    weighted: tuple[Weighted, ...]
    gaps: tuple[Gap, ...]
    summary: Summary

    def to_dict(self) -> dict[str, Any]:
        return {
            "index": self.index,
            "device_id": self.device_id,
            "label": self.label,
            "start": iso(self.start),
            "end": iso(self.end),
            "open": self.open,
            "gap_threshold_s": self.gap_threshold.total_seconds(),
            "summary": self.summary.to_dict(),
            "gaps": [g.to_dict() for g in self.gaps],
        }


@dataclass(frozen=True, slots=True)
class Excursion:
    category: str  # "single", "cumulative" (excursions) or "device" (offline, door, battery)
    segments: tuple[int, ...]
    alert: AlertRecord

    def to_dict(self) -> dict[str, Any]:
        return {
            "category": self.category,
            "segments": list(self.segments),
            **self.alert.to_dict(with_audit=True),
        }


@dataclass(frozen=True, slots=True)
class ShipmentReport:
    shipment: Shipment
    as_of: datetime  # where the figures end: the close, or (still open) the moment of the report
    generated_at: datetime
    profile_id: str
    profile_name: str | None
    limits: tuple[Limit, ...]
    params: ReportParams
    segments: tuple[SegmentReport, ...]
    total: Summary
    gaps: tuple[Gap, ...]
    excursions: tuple[Excursion, ...] = field(default_factory=tuple)

    @property
    def device_alerts(self) -> tuple[Excursion, ...]:
        return tuple(e for e in self.excursions if e.category == "device")

    @property
    def temperature_excursions(self) -> tuple[Excursion, ...]:
        return tuple(e for e in self.excursions if e.category != "device")

    def to_dict(self) -> dict[str, Any]:
        return {
            "shipment": self.shipment.to_dict(),
            "as_of": iso(self.as_of),
            "generated_at": iso(self.generated_at),
            "profile": {"id": self.profile_id, "name": self.profile_name},
            "limits": [lim.to_dict() for lim in self.limits],
            "method": {
                **self.params.to_dict(),
                "kelvin_offset": KELVIN,
                "window": "segment [start, end); an open segment ends at the report's end",
                "weight": "min(time to the next reading or the window's end, G); the first reading"
                " also covers a lead-in of at most G",
                "gap_threshold": "gap_threshold_s if set, else max(gap_factor × median interval, min_gap_s)",
                "beyond": "limit rules: strictly beyond the threshold; budget rules: inclusive as set",
                "mkt": "activation_k / -ln(Σ w·exp(-activation_k/T) / Σ w) - kelvin_offset",
            },
            "segments": [s.to_dict() for s in self.segments],
            "total": self.total.to_dict(),
            "gaps": [g.to_dict() for g in self.gaps],
            "excursions": [e.to_dict() for e in self.temperature_excursions],
            "device_alerts": [e.to_dict() for e in self.device_alerts],
        }


def build_report(
    shipment: Shipment,
    data: Sequence[SegmentData],
    profile: Profile | None,
    as_of: datetime,
    params: ReportParams | None = None,
) -> ShipmentReport:
    """The whole report from each segment's window, readings and alerts (from
    ``telemetry.shipments.gather`` with the same ``as_of``: the moment of the report)."""
    params = params or ReportParams()
    limits = limits_of(profile)
    segments: list[SegmentReport] = []
    all_weighted: list[Weighted] = []
    all_gaps: list[Gap] = []
    window = timedelta()
    by_alert: dict[int, tuple[AlertRecord, list[int]]] = {}
    for i, d in enumerate(data, start=1):
        times = sorted(r.ts for r in d.readings if d.start <= r.ts < d.end)
        g = gap_threshold(times, params)
        weighted, gaps = weigh(d.readings, d.start, d.end, g)
        seg_window = d.end - d.start
        segments.append(
            SegmentReport(
                index=i,
                device_id=d.segment.device_id,
                label=d.segment.label,
                start=d.start,
                end=d.end,
                open=d.segment.end is None,
                gap_threshold=g,
                weighted=tuple(weighted),
                gaps=tuple(gaps),
                summary=summarize(weighted, gaps, seg_window, limits, params.activation_k),
            )
        )
        all_weighted += weighted
        all_gaps += gaps
        window += seg_window
        for a in d.alerts:
            entry = by_alert.setdefault(a.alert_id, (a, []))
            entry[1].append(i)
    excursions = tuple(
        Excursion(EXCURSION_KINDS.get(a.kind, "device"), tuple(segs), a)
        for a, segs in sorted(by_alert.values(), key=lambda x: (x[0].start, x[0].alert_id))
    )
    return ShipmentReport(
        shipment=shipment,
        as_of=report_end(shipment, as_of),
        generated_at=as_of,
        profile_id=shipment.profile_id,
        profile_name=None if profile is None else profile.name,
        limits=limits,
        params=params,
        segments=tuple(segments),
        total=summarize(all_weighted, all_gaps, window, limits, params.activation_k),
        gaps=tuple(all_gaps),
        excursions=excursions,
    )


def iter_weighted(report: ShipmentReport) -> Iterable[tuple[SegmentReport, Weighted]]:
    """Every reading with its segment, in route order (the CSV's and the chart's rows)."""
    for s in report.segments:
        for w in s.weighted:
            yield s, w


__all__ = [
    "ACTIVATION_K",
    "KELVIN",
    "Excursion",
    "Gap",
    "Limit",
    "LimitTime",
    "ReportError",
    "ReportParams",
    "SegmentReport",
    "ShipmentReport",
    "Summary",
    "Weighted",
    "build_report",
    "gap_threshold",
    "iter_weighted",
    "limits_of",
    "mean_kinetic_temperature",
    "summarize",
    "weigh",
]
