"""A shipment report as CSV: a summary block, then the gaps, the excursions, and every
reading with its segment and weight — one file a spreadsheet or an auditor's script
reads. Blocks are separated by an empty line and start with a one-cell title row.

Figures are rounded here, for people: temperatures to 0.01 °C, durations to whole
seconds (a reading's own value keeps the precision it was stored with). Column names
are English identifiers, like the JSON's, so scripts do not depend on the language.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Sequence

from telemetry.reports import ShipmentReport, Summary, iter_weighted
from telemetry.shipments import iso


def _c(v: float | None) -> str:
    return "" if v is None else f"{v:.2f}"


def _s(seconds: float) -> str:
    return f"{seconds:.0f}"


def _t(text: str | None) -> str:
    """Free text people typed (product, comments): a leading = + - @ would make a
    spreadsheet run it as a formula (CSV injection), so such text gets a leading '."""
    if not text:
        return ""
    return "'" + text if text[0] in "=+-@\t\r" else text


def _reading(v: float) -> str:
    # 7 significant digits: what a float4 column holds, without its binary noise (3.4, not 3.4000000953).
    return f"{v:.7g}"


def report_csv(report: ShipmentReport) -> str:
    out = io.StringIO()
    w = csv.writer(out, lineterminator="\r\n")
    s = report.shipment
    w.writerow(["shipment"])
    w.writerow(
        ["id", "product", "batch", "origin_site", "profile_id", "state", "opened_at", "closed_at", "as_of"]
    )
    w.writerow(
        [
            s.id,
            _t(s.product),
            _t(s.batch),
            s.origin_site,
            s.profile_id,
            s.state.value,
            iso(s.opened_at),
            "" if s.closed_at is None else iso(s.closed_at),
            iso(report.as_of),
        ]
    )
    w.writerow([])

    limit_cols = [f"beyond_{lim.id}_s" for lim in report.limits]
    w.writerow(["summary"])
    w.writerow(
        [
            "scope",
            "device_id",
            "start",
            "end",
            "gap_threshold_s",
            "readings",
            "min_c",
            "max_c",
            "mean_c",
            "mkt_c",
            "window_s",
            "covered_s",
            "gap_s",
            "in_range_s",
            "out_of_range_s",
            *limit_cols,
        ]
    )

    def row(scope: str, device: str, start: str, end: str, g: str, x: Summary) -> list[str]:
        return [
            scope,
            device,
            start,
            end,
            g,
            str(x.reading_count),
            _c(x.min_c),
            _c(x.max_c),
            _c(x.mean_c),
            _c(x.mkt_c),
            _s(x.window.total_seconds()),
            _s(x.covered.total_seconds()),
            _s(x.gap.total_seconds()),
            _s(x.in_range.total_seconds()),
            _s(x.out_of_range.total_seconds()),
            *(_s(b.beyond.total_seconds()) for b in x.beyond),
        ]

    for seg in report.segments:
        w.writerow(
            row(
                f"segment {seg.index}",
                seg.device_id,
                iso(seg.start),
                iso(seg.end),
                _s(seg.gap_threshold.total_seconds()),
                seg.summary,
            )
        )
    w.writerow(
        row(
            "total",
            "",
            iso(s.opened_at),
            iso(report.as_of),
            "",
            report.total,
        )
    )
    w.writerow([])

    w.writerow(["limits"])
    w.writerow(["limit_id", "kind", "direction", "threshold_c", "inclusive", "severity", "budget_s"])
    for lim in report.limits:
        w.writerow(
            [
                lim.id,
                lim.kind,
                lim.direction.value,
                f"{lim.threshold:g}",
                str(lim.inclusive).lower(),
                lim.severity,
                "" if lim.budget_s is None else _s(lim.budget_s),
            ]
        )
    w.writerow([])

    w.writerow(["gaps"])
    w.writerow(["segment", "start", "end", "duration_s", "last_reading_at", "next_reading_at"])
    for seg in report.segments:
        for g in seg.gaps:
            w.writerow(
                [
                    str(seg.index),
                    iso(g.start),
                    iso(g.end),
                    _s(g.duration.total_seconds()),
                    "" if g.last_reading_at is None else iso(g.last_reading_at),
                    "" if g.next_reading_at is None else iso(g.next_reading_at),
                ]
            )
    w.writerow([])

    w.writerow(["excursions"])
    w.writerow(
        [
            "alert_id",
            "category",
            "segments",
            "device_id",
            "rule_id",
            "severity",
            "status",
            "threshold_c",
            "start",
            "cleared_at",
            "peak_c",
            "acknowledged_by",
            "acknowledged_at",
            "ack_comment",
            "resolved_by",
            "resolved_at",
            "resolution_comment",
        ]
    )
    for e in report.excursions:
        a = e.alert

        def t(x: object) -> str:
            return "" if x is None else iso(x)  # type: ignore[arg-type]

        w.writerow(
            [
                str(a.alert_id),
                e.category,
                " ".join(map(str, e.segments)),
                a.device_id,
                a.rule_id,
                a.severity,
                a.state,
                "" if a.threshold is None else f"{a.threshold:g}",
                iso(a.start),
                t(a.cleared_at),
                _c(a.peak),
                _t(a.acknowledged_by),
                t(a.acknowledged_at),
                _t(a.ack_comment),
                _t(a.resolved_by),
                t(a.resolved_at),
                _t(a.resolution_comment),
            ]
        )
    w.writerow([])

    w.writerow(["readings"])
    w.writerow(
        ["segment", "device_id", "ts", "temp_c", "weight_s", *(f"beyond_{lim.id}" for lim in report.limits)]
    )
    for seg, r in iter_weighted(report):
        flags: Sequence[str] = ["1" if lim.beyond(r.temp_c) else "0" for lim in report.limits]
        w.writerow([str(seg.index), seg.device_id, iso(r.ts), _reading(r.temp_c), f"{r.weight_s:g}", *flags])
    return out.getvalue()
