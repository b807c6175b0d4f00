"""A shipment report as PDF (fpdf2), one document per language (Simplified Chinese or
English), for a customer, a merchant or an inspector.

Pages: the shipment's header, its route, the figures per segment and for the whole
shipment, a temperature chart (drawn with fpdf2's own lines: readings, limit lines
dashed, gaps shaded, segment hand-overs marked), the excursions with who acknowledged
or resolved them and their comments, the device alerts, the gaps, and how the figures
are computed. Labels come from the message catalogs (web/i18n, keys ``report.*``).

The font is Debian's WenQuanYi Micro Hei (package fonts-wqy-microhei), a TrueType
collection that fpdf2 (2.8.6+) embeds as a subset: it has the Latin and the Han glyphs,
so one font serves both languages. Without it the PDF cannot be made, and
``FontMissing`` says which package to install.

Figures are rounded here (°C to 0.01, durations to the second); all times are UTC.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from fpdf import FPDF
from fpdf.enums import XPos, YPos
from fpdf.fonts import FontFace

from telemetry.alerts.rules import Direction
from telemetry.reports import Excursion, Limit, SegmentReport, ShipmentReport, Summary, Weighted
from web.i18n import Catalogs, load_catalogs

FONT_PATH = Path("/usr/share/fonts/truetype/wqy/wqy-microhei.ttc")
FONT_PACKAGE = "fonts-wqy-microhei"
_FONT = "wqy"
# Chart size (mm) and how many points a line keeps at most (min and max per column).
_CHART_H = 70.0
_MAX_COLUMNS = 500
_SEGMENT_COLOURS = ((31, 119, 180), (214, 39, 40), (44, 160, 44), (148, 103, 189), (255, 127, 14))
_LIMIT_COLOUR = (200, 30, 30)
_GAP_FILL = (225, 225, 225)
_HEAD = FontFace(emphasis=None, fill_color=(235, 238, 242))


class FontMissing(RuntimeError):
    """The CJK font file is not installed."""


@dataclass(frozen=True, slots=True)
class _Text:
    catalogs: Catalogs
    lang: str

    def __call__(self, key: str, **values: object) -> str:
        text = self.catalogs.text(self.lang, key)
        for k, v in values.items():
            text = text.replace("{" + k + "}", str(v))
        return text


def _when(t: datetime | None) -> str:
    return "" if t is None else t.strftime("%Y-%m-%d %H:%M:%S")


def _c(v: float | None) -> str:
    return "–" if v is None else f"{v:.2f} °C"


def _dur(td: timedelta | float) -> str:
    s = round(td.total_seconds() if isinstance(td, timedelta) else td)
    return f"{s // 3600}:{s % 3600 // 60:02d}:{s % 60:02d}"


def _limit_name(t: _Text, lim: Limit) -> str:
    key = {
        (Direction.ABOVE, False): "report.limit_above",
        (Direction.ABOVE, True): "report.limit_above_or_at",
        (Direction.BELOW, False): "report.limit_below",
        (Direction.BELOW, True): "report.limit_below_or_at",
    }[(lim.direction, lim.inclusive)]
    name = t(key, t=f"{lim.threshold:g}", id=lim.id)
    if lim.budget_s is not None:
        name += " · " + t("report.budget_of", b=_dur(lim.budget_s))
    return name


class _Pdf(FPDF):
    def __init__(self, text: _Text, footer_id: str) -> None:
        super().__init__(orientation="P", unit="mm", format="A4")
        self._t = text
        self._footer_id = footer_id

    def multi_cell(self, *args: Any, **kwargs: Any) -> Any:
        # fpdf2 justifies by default, which spreads Chinese text (no spaces) apart.
        kwargs.setdefault("align", "L")
        return super().multi_cell(*args, **kwargs)

    def footer(self) -> None:
        self.set_y(-12)
        self.set_font(_FONT, size=7)
        self.set_text_color(110, 110, 110)
        self.cell(
            0,
            5,
            f"{self._footer_id} · {self._t('report.times_utc')} · {self._t('report.page', n=self.page_no())}",
            align="C",
        )
        self.set_text_color(0, 0, 0)


def render_pdf(
    report: ShipmentReport, lang: str, *, generated_at: datetime, catalogs: Catalogs | None = None
) -> bytes:
    """The report in ``lang`` ("zh-CN" or "en") as PDF bytes."""
    if not FONT_PATH.is_file():
        raise FontMissing(f"the PDF font {FONT_PATH} is missing: install the Debian package {FONT_PACKAGE}")
    t = _Text(catalogs or load_catalogs(), lang)
    s = report.shipment
    pdf = _Pdf(t, f"origincast · {s.id}")
    pdf.set_title(f"{t('report.title')} {s.id}")
    pdf.set_creator("origincast")
    pdf.set_lang("zh-CN" if lang == "zh-CN" else "en")
    pdf.set_creation_date(generated_at)
    pdf.set_auto_page_break(auto=True, margin=16)
    pdf.add_font(_FONT, "", str(FONT_PATH))
    pdf.add_page()
    width = pdf.epw

    def heading(text: str, size: float = 12) -> None:
        if pdf.get_y() > pdf.h - 40:  # a heading is never left alone at the foot of a page
            pdf.add_page()
        pdf.ln(3)
        pdf.set_font(_FONT, size=size)
        pdf.cell(0, 7, text, new_x=XPos.LMARGIN, new_y=YPos.NEXT)
        pdf.set_font(_FONT, size=8.5)

    def table(rows: Sequence[Sequence[str]], widths: Sequence[float], align: str = "LEFT") -> None:
        with pdf.table(
            col_widths=tuple(widths),
            headings_style=_HEAD,
            text_align=align,
            line_height=4.6,
            padding=0.8,
            width=width,
        ) as tb:
            for r in rows:
                row = tb.row()
                for cell in r:
                    row.cell(cell)

    # -- header --------------------------------------------------------------------------------
    pdf.set_font(_FONT, size=16)
    pdf.cell(0, 9, t("report.title"), new_x=XPos.LMARGIN, new_y=YPos.NEXT)
    pdf.set_font(_FONT, size=8.5)
    state = t("report.state_closed") if s.closed_at is not None else t("report.state_open")
    header = [
        (t("report.shipment"), s.id),
        (t("report.product"), s.product),
        (t("report.batch"), s.batch),
        (t("report.origin"), s.origin_site),
        (t("report.profile"), f"{report.profile_name or report.profile_id} ({report.profile_id})"),
        (t("report.state"), state),
        (t("report.opened"), _when(s.opened_at)),
        (t("report.closed"), _when(s.closed_at) or "–"),
        (t("report.as_of"), _when(report.as_of)),
    ]
    if s.streams:
        header.append((t("report.streams"), ", ".join(s.streams)))
    table(header, (45, width - 45))
    if report.limits:
        pdf.ln(1)
        pdf.multi_cell(
            0,
            4.5,
            t("report.limits") + ": " + "; ".join(_limit_name(t, x) for x in report.limits),
            new_x=XPos.LMARGIN,
            new_y=YPos.NEXT,
        )

    # -- route ---------------------------------------------------------------------------------
    heading(t("report.route"))
    rows = [
        [t("report.segment"), t("report.device"), t("report.from"), t("report.to"), t("report.gap_threshold")]
    ]
    for seg in report.segments:
        dev = seg.device_id + (f" · {seg.label}" if seg.label else "")
        to = _when(seg.end) + (f" ({t('report.in_transit')})" if seg.open else "")
        rows.append([str(seg.index), dev, _when(seg.start), to, _dur(seg.gap_threshold)])
    if not report.segments:
        rows.append([t("report.none"), "", "", "", ""])
    table(rows, (14, width - 14 - 38 - 50 - 22, 38, 50, 22))

    # -- figures -------------------------------------------------------------------------------
    heading(t("report.summary"))
    head = [
        t("report.scope"),
        t("report.readings"),
        t("report.min"),
        t("report.max"),
        t("report.mean"),
        t("report.mkt"),
        t("report.covered"),
        t("report.gap_time"),
        t("report.in_range"),
    ]

    def figures(name: str, x: Summary) -> list[str]:
        return [
            name,
            str(x.reading_count),
            _c(x.min_c),
            _c(x.max_c),
            _c(x.mean_c),
            _c(x.mkt_c),
            _dur(x.covered),
            _dur(x.gap),
            _dur(x.in_range),
        ]

    rows = [head] + [figures(f"{t('report.segment')} {seg.index}", seg.summary) for seg in report.segments]
    rows.append(figures(t("report.total"), report.total))
    table(rows, (width - 8 * 18.5, *(18.5,) * 8))
    if report.limits:
        pdf.ln(2)
        pdf.cell(0, 5, t("report.beyond"), new_x=XPos.LMARGIN, new_y=YPos.NEXT)
        rows = [
            [
                t("report.limit"),
                *(f"{t('report.segment')} {seg.index}" for seg in report.segments),
                t("report.total"),
            ]
        ]
        for i, lim in enumerate(report.limits):
            rows.append(
                [
                    _limit_name(t, lim),
                    *(_dur(seg.summary.beyond[i].beyond) for seg in report.segments),
                    _dur(report.total.beyond[i].beyond),
                ]
            )
        n = len(report.segments) + 1
        first = max(50.0, width - n * 20)
        table(rows, (first, *((width - first) / n,) * n))

    # -- chart ---------------------------------------------------------------------------------
    heading(t("report.chart"))
    if pdf.get_y() + _CHART_H + 16 > pdf.h - 16:
        pdf.add_page()
    _chart(pdf, report, pdf.l_margin, pdf.get_y() + 2, width, _CHART_H)
    pdf.set_font(_FONT, size=7.5)
    pdf.cell(0, 4, t("report.chart_legend"), new_x=XPos.LMARGIN, new_y=YPos.NEXT)
    pdf.set_font(_FONT, size=8.5)

    # -- excursions ----------------------------------------------------------------------------
    heading(t("report.excursions"))
    _alerts(pdf, t, report.temperature_excursions, width)
    heading(t("report.device_alerts"))
    _alerts(pdf, t, report.device_alerts, width)

    # -- gaps ----------------------------------------------------------------------------------
    heading(t("report.gaps"))
    if not report.gaps:
        pdf.cell(0, 5, t("report.none"), new_x=XPos.LMARGIN, new_y=YPos.NEXT)
    else:
        rows = [
            [
                t("report.segment"),
                t("report.from"),
                t("report.to"),
                t("report.duration"),
                t("report.last_reading"),
            ]
        ]
        for seg in report.segments:
            for g in seg.gaps:
                rows.append(
                    [
                        str(seg.index),
                        _when(g.start),
                        _when(g.end),
                        _dur(g.duration),
                        _when(g.last_reading_at) or "–",
                    ]
                )
        table(rows, (16, 42, 42, 24, width - 124))

    # -- method --------------------------------------------------------------------------------
    heading(t("report.method"), 10)
    pdf.set_font(_FONT, size=7.5)
    p = report.params
    pdf.multi_cell(
        0,
        4,
        t(
            "report.method_text",
            factor=f"{p.gap_factor:g}",
            floor=f"{p.min_gap_s:g}",
            activation=f"{p.activation_k:,.0f}",
        ),
        new_x=XPos.LMARGIN,
        new_y=YPos.NEXT,
    )
    pdf.ln(1)
    pdf.cell(
        0, 4, t("report.generated", at=_when(generated_at) + " UTC"), new_x=XPos.LMARGIN, new_y=YPos.NEXT
    )
    return bytes(pdf.output())


def _alerts(pdf: _Pdf, t: _Text, items: Sequence[Excursion], width: float) -> None:
    if not items:
        pdf.cell(0, 5, t("report.none"), new_x=XPos.LMARGIN, new_y=YPos.NEXT)
        return
    for e in items:
        a = e.alert
        kind = {"single": t("report.excursion_single"), "cumulative": t("report.excursion_cumulative")}.get(
            e.category, a.kind
        )
        cleared = _when(a.cleared_at) if a.cleared_at else t("report.still_open")
        peak = "" if a.peak is None else f" · {t('report.peak')} {_c(a.peak)}"
        threshold = "" if a.threshold is None else f" ({a.threshold:g} °C)"
        segs = ", ".join(str(i) for i in e.segments)
        line = (
            f"#{a.alert_id} · {kind} · {a.device_id} · {a.rule_id}{threshold} · {a.severity} · "
            f"{t('report.segment')} {segs}"
        )
        pdf.set_font(_FONT, size=8.5)
        pdf.multi_cell(0, 4.6, line, new_x=XPos.LMARGIN, new_y=YPos.NEXT)
        pdf.set_font(_FONT, size=8)
        pdf.multi_cell(
            0,
            4.3,
            f"{t('report.started')} {_when(a.start)} · {t('report.raised')} {_when(a.raised_at)}"
            f" · {t('report.cleared')} {cleared}{peak}",
            new_x=XPos.LMARGIN,
            new_y=YPos.NEXT,
        )
        # The audit trail's people: who acknowledged or resolved it, and what they wrote.
        for entry in a.audit:
            if entry.action not in ("acknowledged", "resolved", "commented"):
                continue
            key = "report.resolved_by" if entry.action == "resolved" else "report.acknowledged_by"
            text = t(key, who=entry.actor, at=_when(entry.at))
            if entry.comment:
                text += f" · {t('report.comment')}: {entry.comment}"
            pdf.set_x(pdf.l_margin + 4)
            pdf.multi_cell(width - 4, 4.3, text, new_x=XPos.LMARGIN, new_y=YPos.NEXT)
        if not any(x.action in ("acknowledged", "resolved") for x in a.audit):
            pdf.set_x(pdf.l_margin + 4)
            pdf.multi_cell(width - 4, 4.3, t("report.not_acknowledged"), new_x=XPos.LMARGIN, new_y=YPos.NEXT)
        pdf.ln(1.5)


def _columns(points: Sequence[Weighted], x_of: float, span_s: float, columns: int) -> list[Weighted]:
    """At most two points (the min and the max, in time order) per chart column, so a
    month of minute readings draws as its envelope, not 43,200 segments."""
    if len(points) <= 2 * columns:
        return list(points)
    out: list[Weighted] = []
    bucket: list[Weighted] = []
    current = None
    for p in points:
        col = int((p.ts.timestamp() - x_of) / span_s * columns)
        if col != current and bucket:
            lo, hi = min(bucket, key=lambda w: w.temp_c), max(bucket, key=lambda w: w.temp_c)
            out += sorted({id(lo): lo, id(hi): hi}.values(), key=lambda w: w.ts)
            bucket = []
        current = col
        bucket.append(p)
    if bucket:
        lo, hi = min(bucket, key=lambda w: w.temp_c), max(bucket, key=lambda w: w.temp_c)
        out += sorted({id(lo): lo, id(hi): hi}.values(), key=lambda w: w.ts)
    return out


def _runs(seg: SegmentReport) -> list[list[Weighted]]:
    """The segment's readings split where a gap lies between two of them (a line must
    not bridge a gap: that would draw data nobody measured)."""
    runs: list[list[Weighted]] = []
    for w in seg.weighted:
        if runs and w.ts - runs[-1][-1].ts <= seg.gap_threshold:
            runs[-1].append(w)
        else:
            runs.append([w])
    return runs


def _chart(pdf: _Pdf, report: ShipmentReport, x0: float, y0: float, w: float, h: float) -> None:
    left, bottom = 14.0, 7.0  # room for the axis labels
    px, py, pw, ph = x0 + left, y0, w - left, h - bottom
    start = report.shipment.opened_at.timestamp()
    end = max(report.as_of.timestamp(), start + 1)
    span = end - start
    temps = [p.temp_c for seg in report.segments for p in seg.weighted]
    limit_lines = [x.threshold for x in report.limits if x.kind == "limit"]
    values = temps + limit_lines or [0.0]
    lo, hi = min(values), max(values)
    pad = max((hi - lo) * 0.08, 0.5)
    lo, hi = lo - pad, hi + pad

    def X(ts: float) -> float:
        return px + (ts - start) / span * pw

    def Y(v: float) -> float:
        return py + (hi - v) / (hi - lo) * ph

    pdf.set_draw_color(120, 120, 120)
    pdf.set_line_width(0.2)
    pdf.rect(px, py, pw, ph)
    # Gaps first, so lines and limits draw over them.
    pdf.set_fill_color(*_GAP_FILL)
    for g in report.gaps:
        gx0, gx1 = X(g.start.timestamp()), X(g.end.timestamp())
        pdf.rect(gx0, py, max(gx1 - gx0, 0.3), ph, style="F")
    # Axis labels: five temperatures, five times.
    pdf.set_font(_FONT, size=6.5)
    pdf.set_text_color(80, 80, 80)
    for i in range(5):
        v = lo + (hi - lo) * i / 4
        pdf.set_xy(x0, Y(v) - 2)
        pdf.cell(left - 1, 4, f"{v:.1f}", align="R")
        pdf.set_draw_color(235, 235, 235)
        pdf.line(px, Y(v), px + pw, Y(v))
    for i in range(5):
        ts = start + span * i / 4
        label = datetime.fromtimestamp(ts, report.shipment.opened_at.tzinfo).strftime("%m-%d %H:%M")
        # The first and last labels stay inside the chart's width.
        pdf.set_xy(min(max(X(ts) - 12, px), px + pw - 24), py + ph + 1)
        pdf.cell(24, 4, label, align="L" if i == 0 else "R" if i == 4 else "C")
    # Limits: dashed red lines, labelled at the right end.
    pdf.set_draw_color(*_LIMIT_COLOUR)
    pdf.set_line_width(0.3)
    pdf.set_dash_pattern(dash=1.2, gap=0.8)
    for v in limit_lines:
        pdf.line(px, Y(v), px + pw, Y(v))
    pdf.set_dash_pattern()
    pdf.set_text_color(*_LIMIT_COLOUR)
    for v in limit_lines:
        pdf.set_xy(px + pw - 14, Y(v) - 4)
        pdf.cell(14, 4, f"{v:g} °C", align="R")
    # Hand-overs between segments: thin vertical lines with the segment's number.
    pdf.set_text_color(80, 80, 80)
    pdf.set_draw_color(150, 150, 150)
    pdf.set_line_width(0.15)
    for seg in report.segments:
        sx = X(seg.start.timestamp())
        pdf.line(sx, py, sx, py + ph)
        pdf.set_xy(sx + 0.5, py + 0.5)
        pdf.cell(6, 3, str(seg.index))
    # Readings, one colour per segment.
    pdf.set_line_width(0.35)
    for seg in report.segments:
        pdf.set_draw_color(*_SEGMENT_COLOURS[(seg.index - 1) % len(_SEGMENT_COLOURS)])
        for run in _runs(seg):
            pts = _columns(run, start, span, _MAX_COLUMNS)
            if len(pts) == 1:
                cx, cy = X(pts[0].ts.timestamp()), Y(pts[0].temp_c)
                pdf.line(cx - 0.3, cy, cx + 0.3, cy)
                continue
            pdf.polyline([(X(p.ts.timestamp()), Y(p.temp_c)) for p in pts])
    pdf.set_text_color(0, 0, 0)
    pdf.set_draw_color(0, 0, 0)
    pdf.set_line_width(0.2)
    pdf.set_xy(x0, y0 + h + 1)
