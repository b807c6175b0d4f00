"""Per-(device, rule) state machines on event time. Pure: no alerts, no I/O, no clock.

The engine drives one machine per rule per device with two calls:

- ``advance(t)``: time has passed up to ``t`` while the last value held. This is where
  delays expire: a reading is taken to hold until the next one (sample-and-hold, how
  EN 12830 recorder data are read), so with readings above the limit at 10:00 and
  10:07, a 10-minute delay expires at 10:10 as soon as the engine learns that time got
  there: from the next reading (whatever its value) or from tick().
- ``feed(ts, value)``: a new value at ``ts`` (always after ``advance(ts)``).

Both return a bit set of what happened (RAISED, PEAK, CLEARED), and the machine keeps the
moments of the last transition in ``start``/``raised_at``/``cleared_at`` for the caller
to read: no tuple or event object is allocated for the common "nothing happened".

The late-data replay (engine._late_pass) runs fresh machines of the same classes over
a reconstructed timeline, so live and late judgement can't drift apart.
"""

from __future__ import annotations

import operator
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from types import MappingProxyType
from typing import Any

from telemetry.alerts.rules import BatteryLowRule, BudgetRule, Direction, DoorOpenRule, LimitRule
from telemetry.readings import Reading

RAISED = 1
PEAK = 2
CLEARED = 4

_FIELD = MappingProxyType({name: i for i, name in enumerate(Reading._fields)})
_ZERO = timedelta(0)
_ONE_US = timedelta(microseconds=1)

Compare = Callable[[Any, Any], bool]
DurationRule = LimitRule | BatteryLowRule | DoorOpenRule


def _iso(t: datetime | None) -> str | None:
    return None if t is None else t.isoformat()


def _dt(s: str | None) -> datetime | None:
    return None if s is None else datetime.fromisoformat(s)


@dataclass(slots=True)
class DurationMachine:
    """A condition that must hold for ``delay`` to raise, and whose clear condition must
    hold for ``clear_for`` to resolve: limits, battery low, door open."""

    rule: DurationRule
    idx: int  # position of the watched field in Reading (a tuple: indexing is cheapest)
    trips: Compare
    trip: float
    clears: Compare
    clear: float
    worse: Compare | None  # None: the value has no meaningful peak (a door is open or not)
    delay: timedelta
    clear_for: timedelta
    busy: bool = False  # anything pending or open: the hot loop must call in
    pending_since: datetime | None = None  # condition true since, not yet raised
    clear_since: datetime | None = None  # clear condition true since, alert still open
    active: bool = False  # an alert is open for this machine
    rearm: bool = False  # resolved by hand mid-excursion: wait for it to end first
    peak: float | None = None
    peak_at: datetime | None = None
    start: datetime | None = None
    raised_at: datetime | None = None
    cleared_at: datetime | None = None
    alert_id: int | None = None  # the engine's handle; the machine never looks at it

    @classmethod
    def for_rule(cls, rule: DurationRule) -> DurationMachine:
        if isinstance(rule, LimitRule):
            above = rule.direction is Direction.ABOVE
            return cls(
                rule,
                _FIELD[rule.metric.value],
                operator.gt if above else operator.lt,
                rule.threshold,
                operator.le if above else operator.ge,
                rule.clear_point,
                operator.gt if above else operator.lt,
                timedelta(seconds=rule.delay_s),
                timedelta(seconds=rule.clear_for_s),
            )
        if isinstance(rule, BatteryLowRule):
            return cls(
                rule,
                _FIELD["battery_v"],
                operator.lt,
                rule.below_v,
                operator.ge,
                rule.below_v + rule.clear_hysteresis_v,
                operator.lt,
                timedelta(seconds=rule.for_s),
                _ZERO,
            )
        # Door: bools compare as 0/1, so "open" is > 0.5 and "closed" < 0.5.
        return cls(
            rule,
            _FIELD["door_open"],
            operator.gt,
            0.5,
            operator.lt,
            0.5,
            None,
            timedelta(seconds=rule.open_for_s),
            _ZERO,
        )

    def _sync(self) -> None:
        self.busy = self.pending_since is not None or self.active or self.rearm

    def advance(self, t: datetime) -> int:
        if self.active:
            cs = self.clear_since
            if cs is not None and t - cs >= self.clear_for:
                self._clear(cs + self.clear_for)
                return CLEARED
        elif self.pending_since is not None and not self.rearm and t - self.pending_since >= self.delay:
            self._raise(self.pending_since + self.delay)
            return RAISED
        return 0

    def feed(self, ts: datetime, v: Any) -> int:
        out = 0
        if self.active:
            worse = self.worse
            if worse is not None and self.trips(v, self.trip) and (self.peak is None or worse(v, self.peak)):
                self.peak = v
                self.peak_at = ts
                out = PEAK
            if self.clears(v, self.clear):
                if self.clear_since is None:
                    self.clear_since = ts
                if ts - self.clear_since >= self.clear_for:
                    self._clear(self.clear_since + self.clear_for)
                    out |= CLEARED
            else:
                self.clear_since = None
        elif self.trips(v, self.trip):
            if self.rearm:
                pass  # the same excursion a person already resolved: one excursion, one alert
            elif self.pending_since is None:
                self.pending_since = ts
                self.peak = v if self.worse is not None else None
                self.peak_at = ts
                if self.delay <= _ZERO:
                    self._raise(ts)
                    out = RAISED
            elif self.worse is not None and (self.peak is None or self.worse(v, self.peak)):
                self.peak = v
                self.peak_at = ts
        else:
            self.pending_since = None
            self.rearm = False
        self._sync()
        return out

    def _raise(self, at: datetime) -> None:
        self.start = self.pending_since
        self.raised_at = at
        self.pending_since = None
        self.clear_since = None
        self.active = True
        self.busy = True

    def _clear(self, at: datetime) -> None:
        # alert_id stays: the caller reads it to resolve the alert, then forgets it.
        self.cleared_at = at
        self.active = False
        self.clear_since = None
        self.peak = None
        self.peak_at = None
        self._sync()

    def resolved_by_hand(self) -> None:
        """A person closed the alert; the condition may still hold. Don't raise again
        until it has stopped (else the next reading would reopen it at once)."""
        self.active = False
        self.alert_id = None
        self.clear_since = None
        self.rearm = True
        self._sync()

    def adopt_alert(self, alert_id: int, peak: float | None, peak_at: datetime | None) -> None:
        """Take over an alert raised elsewhere (late-data replay, a previous assignment)."""
        self.active = True
        self.alert_id = alert_id
        self.pending_since = None
        self.rearm = False
        self.peak = peak
        self.peak_at = peak_at
        self._sync()

    def to_state(self) -> dict[str, Any]:
        return {
            "pending_since": _iso(self.pending_since),
            "clear_since": _iso(self.clear_since),
            "active": self.active,
            "rearm": self.rearm,
            "peak": self.peak,
            "peak_at": _iso(self.peak_at),
            "alert_id": self.alert_id,
        }

    def load_state(self, s: dict[str, Any]) -> None:
        self.pending_since = _dt(s["pending_since"])
        self.clear_since = _dt(s["clear_since"])
        self.active = s["active"]
        self.rearm = s["rearm"]
        self.peak = s["peak"]
        self.peak_at = _dt(s["peak_at"])
        self.alert_id = s["alert_id"]
        self._sync()


@dataclass(slots=True)
class BudgetMachine:
    """Total time at/beyond a threshold within a window (or since start), against a budget.

    Exposure is kept as closed spans plus the open one. ``closed`` is the sum of the
    spans, so the windowed total costs O(spans crossing the window's left edge), not
    O(all spans); spans that left the window are dropped on the next reading.
    """

    rule: BudgetRule
    idx: int
    trips: Compare
    trip: float
    worse: Compare
    budget: timedelta
    window: timedelta | None
    busy: bool = False
    spans: deque[tuple[datetime, datetime]] = field(default_factory=deque)
    closed: timedelta = _ZERO
    open_since: datetime | None = None
    last_t: datetime | None = None  # the state is computed up to here
    active: bool = False
    armed: bool = True  # may raise: false from the raise until the total is back under budget
    peak: float | None = None
    peak_at: datetime | None = None
    start: datetime | None = None
    raised_at: datetime | None = None
    cleared_at: datetime | None = None
    alert_id: int | None = None

    @classmethod
    def for_rule(cls, rule: BudgetRule) -> BudgetMachine:
        above = rule.direction is Direction.ABOVE
        if above:
            trips = operator.ge if rule.inclusive else operator.gt
        else:
            trips = operator.le if rule.inclusive else operator.lt
        return cls(
            rule,
            _FIELD[rule.metric.value],
            trips,
            rule.threshold,
            operator.gt if above else operator.lt,
            timedelta(seconds=rule.budget_s),
            None if rule.window_s is None else timedelta(seconds=rule.window_s),
        )

    def _sync(self) -> None:
        self.busy = self.open_since is not None or (
            self.window is not None and (self.active or not self.armed)
        )

    def total(self, t: datetime) -> timedelta:
        """Exposure within the window ending at ``t`` (all of it when unbounded)."""
        s = self.closed
        spans = self.spans
        if spans and spans[-1][1] > t:
            # Only when looking back into recorded exposure (the late-data search); live,
            # t is never before the newest span's end.
            for a, b in reversed(spans):
                if b <= t:
                    break
                s -= b - (a if a > t else t)
        lo = None if self.window is None else t - self.window
        if lo is not None:
            for a, b in self.spans:
                if a >= lo:
                    break
                s -= (b if b < lo else lo) - a
        o = self.open_since
        if o is not None and t > o:
            s += t - (o if lo is None or o > lo else lo)
        return s

    def exposure_start(self, t: datetime) -> datetime:
        """Where the exposure counted at ``t`` begins (the alert's ``start``)."""
        lo = None if self.window is None else t - self.window
        for a, b in self.spans:
            if a >= t:
                break
            if lo is None or b > lo:
                return a if lo is None or a > lo else lo
        assert self.open_since is not None
        o = self.open_since
        return o if lo is None or o > lo else lo

    def advance(self, t: datetime) -> int:
        last = self.last_t
        if last is None or t <= last:
            return 0
        if self.open_since is not None:
            if self.armed and not self.active and self.total(t) >= self.budget:
                # Exposure grows at slope ≤ 1: the earliest possible crossing is exact
                # unless exposure also left the window meanwhile; then bisect.
                c = last + (self.budget - self.total(last))
                if c > t or self.total(c) < self.budget:
                    c = _bisect(max(c, last), t, lambda x: self.total(x) >= self.budget)
                self.start = self.exposure_start(c)
                self.raised_at = c
                self.active = True
                self.armed = False
                self.last_t = c
                self._sync()
                return RAISED
        elif self.window is not None and (self.active or not self.armed):
            if self.total(t) < self.budget:
                self.armed = True
                if self.active:
                    c = self._fell_under(last, t)
                    self.last_t = c
                    self._clear(c)
                    return CLEARED
                self._sync()  # re-armed after a manual resolve: no event, no time moved
        return 0

    def feed(self, ts: datetime, v: Any) -> int:
        out = 0
        tripping = self.trips(v, self.trip)
        if self.open_since is not None:
            if not tripping:
                self._close(ts)
        elif tripping:
            self.open_since = ts
            if not self.active:
                self.peak = None
        if tripping and (self.peak is None or self.worse(v, self.peak)):
            self.peak = v
            self.peak_at = ts
            if self.active:
                out = PEAK
        if self.window is not None:
            lo = ts - self.window
            spans = self.spans
            while spans and spans[0][1] <= lo:
                a, b = spans.popleft()
                self.closed -= b - a
        self.last_t = ts
        self._sync()
        return out

    def _close(self, ts: datetime) -> None:
        o = self.open_since
        assert o is not None
        if ts > o:
            if self.spans and self.spans[-1][1] == o:  # touching: one span, not two
                a, _ = self.spans.pop()
                self.spans.append((a, ts))
            else:
                self.spans.append((o, ts))
            self.closed += ts - o
        self.open_since = None

    def _clear(self, at: datetime) -> None:
        self.cleared_at = at
        self.active = False
        self._sync()

    def clear_at(self, at: datetime) -> None:
        """Resolved by the late-data replay at ``at`` (the total fell under budget then)."""
        self.armed = True
        self.last_t = at if self.last_t is None or at > self.last_t else self.last_t
        self._clear(at)
        self.alert_id = None

    def resolved_by_hand(self) -> None:
        # Stay disarmed: the budget is still used up; a windowed budget re-arms once the
        # total is back under it, an unbounded one never (the exposure can't be undone).
        self.active = False
        self.alert_id = None
        self._sync()

    def adopt_alert(self, alert_id: int, peak: float | None, peak_at: datetime | None) -> None:
        self.active = True
        self.armed = False
        self.alert_id = alert_id
        self.peak = peak
        self.peak_at = peak_at
        self._sync()

    def splice(
        self, lo: datetime, hi: datetime, spans: list[tuple[datetime, datetime]], open_since: datetime | None
    ) -> None:
        """Replace what the machine believed about [lo, hi] with a replay's findings.

        The replay saw every reading of [lo, hi] (late ones included), so inside that span
        its exposure is the truth, and so is its open exposure at ``hi`` (``open_since``).
        What the machine knew before ``lo`` stays, including an exposure open since then,
        which ends at ``lo`` unless the replay's first reading continues it.
        """
        kept: list[tuple[datetime, datetime]] = []
        for a, b in self.spans:
            if b <= lo or a >= hi:
                kept.append((a, b))
            else:
                if a < lo:
                    kept.append((a, lo))
                if b > hi:
                    kept.append((hi, b))
        if self.open_since is not None and self.open_since < lo:
            kept.append((self.open_since, lo))
        merged: list[tuple[datetime, datetime]] = []
        for a, b in sorted(kept + spans):
            if merged and a <= merged[-1][1]:
                pa, pb = merged[-1]
                merged[-1] = (pa, b if b > pb else pb)
            elif b > a:
                merged.append((a, b))
        if open_since is not None and merged and merged[-1][1] >= open_since:
            open_since = min(open_since, merged.pop()[0])  # one continuous exposure
        self.open_since = open_since
        self.spans = deque(merged)
        self.closed = sum((b - a for a, b in merged), _ZERO)
        self._sync()

    def first_below(self, since: datetime, until: datetime) -> datetime | None:
        """The earliest moment in (since, until] at which a windowed total fell under budget.
        Totals only fall between exposures, so only the gaps are searched."""
        if self.window is None:
            return None
        pieces = [*self.spans, *([(self.open_since, until)] if self.open_since is not None else [])]
        gaps: list[tuple[datetime, datetime]] = []
        prev_end = since
        for a, b in pieces:
            if b <= since:
                continue
            if a > prev_end:
                gaps.append((prev_end, min(a, until)))
            prev_end = max(prev_end, b)
        if prev_end < until:
            gaps.append((prev_end, until))
        for a, b in gaps:
            if a < b and self.total(b) < self.budget:
                return self._fell_under(a, b)
        return None

    def _fell_under(self, lo: datetime, hi: datetime) -> datetime:
        """The moment in (lo, hi] the total dropped under the budget, exactly: "under" is an
        open condition, so bisection lands a microsecond after it; just before, the
        total was falling at slope 1 (exposure leaving the window), which gives the moment."""
        c = _bisect(lo, hi, lambda x: self.total(x) < self.budget)
        return c - (self.budget - self.total(c))

    def first_crossing(self, since: datetime, until: datetime) -> datetime | None:
        """The earliest moment in [since, until] at which the total reached the budget."""
        pieces = [*self.spans, *([(self.open_since, until)] if self.open_since is not None else [])]
        for a, b in pieces:
            if b < since:
                continue
            end = b if b < until else until
            if self.total(end) >= self.budget:
                begin = a if a > since else since
                if self.total(begin) >= self.budget:
                    return begin
                return _bisect(begin, end, lambda x: self.total(x) >= self.budget)
        return None

    def to_state(self) -> dict[str, Any]:
        return {
            "spans": [[a.isoformat(), b.isoformat()] for a, b in self.spans],
            "open_since": _iso(self.open_since),
            "last_t": _iso(self.last_t),
            "active": self.active,
            "armed": self.armed,
            "peak": self.peak,
            "peak_at": _iso(self.peak_at),
            "alert_id": self.alert_id,
        }

    def load_state(self, s: dict[str, Any]) -> None:
        self.spans = deque((datetime.fromisoformat(a), datetime.fromisoformat(b)) for a, b in s["spans"])
        self.closed = sum((b - a for a, b in self.spans), _ZERO)
        self.open_since = _dt(s["open_since"])
        self.last_t = _dt(s["last_t"])
        self.active = s["active"]
        self.armed = s["armed"]
        self.peak = s["peak"]
        self.peak_at = _dt(s["peak_at"])
        self.alert_id = s["alert_id"]
        self._sync()


Machine = DurationMachine | BudgetMachine


def _bisect(lo: datetime, hi: datetime, pred: Callable[[datetime], bool]) -> datetime:
    """Smallest t in (lo, hi] (to the microsecond) with pred(t), for pred monotone and
    pred(hi) true. Only used at the rare moments a budget is crossed."""
    while hi - lo > _ONE_US:
        mid = lo + (hi - lo) / 2
        if pred(mid):
            hi = mid
        else:
            lo = mid
    return hi
