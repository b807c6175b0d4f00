"""Alert rules and profiles: what counts as an excursion, typed and validated.

A *profile* (frozen, chilled, pharma, or a custom one) is a named tuple of rules that a
device is assigned to. Every rule is a frozen dataclass that validates itself on
construction, so an invalid rule can't reach the engine: the API and the store
build rules through the same constructors (or ``rule_from_dict``) and get a
``RuleError`` that names the rule and the field.

Numbers use the units of the reading: °C for temperatures, % for relative humidity,
volts for batteries, seconds for every duration.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from enum import StrEnum
from types import MappingProxyType
from typing import Any, ClassVar

from telemetry.readings import PLAIN_ID


class RuleError(ValueError):
    """A rule or profile that can't be used as given; the message says which and why."""


class Severity(StrEnum):
    # ThingsBoard's scale, minus INDETERMINATE (a rule here always knows what it found).
    CRITICAL = "critical"
    MAJOR = "major"
    MINOR = "minor"
    WARNING = "warning"


class Direction(StrEnum):
    ABOVE = "above"
    BELOW = "below"


class Metric(StrEnum):
    """Reading fields that limit and budget rules can watch (battery and door have their own rules)."""

    TEMP_C = "temp_c"
    RH = "rh"


_ID_RE = PLAIN_ID  # rule ids appear in alert keys, MQTT payloads and URLs


def _where(rule_id: object) -> str:
    return f"rule {rule_id!r}"


def _check_id(rule_id: object) -> None:
    if not isinstance(rule_id, str) or not _ID_RE.match(rule_id):
        raise RuleError(
            f"rule id must be 1-64 characters of letters, digits, '_', '.' or '-' "
            f"starting with a letter or digit, got {rule_id!r}"
        )


def _number(rule_id: str, name: str, value: object) -> float:
    # bool is an int in Python; a JSON `true` where a number belongs is a client bug.
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise RuleError(f"{_where(rule_id)}: {name} must be a number, got {value!r}")
    if not math.isfinite(value):
        raise RuleError(f"{_where(rule_id)}: {name} must be finite, got {value!r}")
    return float(value)


def _at_least(rule_id: str, name: str, value: object, low: float, unit: str = "s") -> None:
    v = _number(rule_id, name, value)
    if v < low:
        raise RuleError(f"{_where(rule_id)}: {name} must be ≥ {low:g} {unit}, got {v:g}")


def _positive(rule_id: str, name: str, value: object, unit: str = "s") -> None:
    v = _number(rule_id, name, value)
    if v <= 0:
        raise RuleError(f"{_where(rule_id)}: {name} must be > 0 {unit}, got {v:g}")


def _enum(rule_id: str, name: str, value: object, enum: type[StrEnum]) -> None:
    if not isinstance(value, enum):
        choices = ", ".join(e.value for e in enum)
        raise RuleError(f"{_where(rule_id)}: {name} must be one of {choices}, got {value!r}")


@dataclass(frozen=True, slots=True)
class LimitRule:
    """Upper or lower limit: the value is beyond ``threshold`` for ``delay_s`` → alert.

    Raising: strictly beyond (``> threshold`` above, ``< threshold`` below), because the
    limits of the temperature classes include their bound (chilled is 0-4 °C, inclusive).
    Clearing: back inside by ``clear_hysteresis`` (e.g. ≤ 3.5 °C for a 4 °C limit) for
    ``clear_for_s``, so a value that hovers at the limit doesn't raise and clear in a loop.
    """

    kind: ClassVar[str] = "limit"
    id: str
    direction: Direction
    threshold: float
    delay_s: float = 600.0
    clear_hysteresis: float = 0.5
    clear_for_s: float = 0.0
    severity: Severity = Severity.MAJOR
    metric: Metric = Metric.TEMP_C

    def __post_init__(self) -> None:
        _check_id(self.id)
        _enum(self.id, "direction", self.direction, Direction)
        _number(self.id, "threshold", self.threshold)
        _at_least(self.id, "delay_s", self.delay_s, 0)
        _at_least(self.id, "clear_hysteresis", self.clear_hysteresis, 0, "")
        _at_least(self.id, "clear_for_s", self.clear_for_s, 0)
        _enum(self.id, "severity", self.severity, Severity)
        _enum(self.id, "metric", self.metric, Metric)

    @property
    def clear_point(self) -> float:
        """The value the reading has to be back at (or beyond, inwards) to clear."""
        if self.direction is Direction.ABOVE:
            return self.threshold - self.clear_hysteresis
        return self.threshold + self.clear_hysteresis


@dataclass(frozen=True, slots=True)
class BudgetRule:
    """Cumulative exposure: total time at/beyond ``threshold`` reaches ``budget_s`` → alert.

    WHO-style indicators judge the sum of many short excursions, not one long one (e.g.
    ≥ 30 °C for 10 h in total; ≤ −0.5 °C for 60 min). ``inclusive`` follows that "≥"
    wording. ``window_s`` makes it a sliding window (the total over the last window_s);
    None counts from the device's start or assignment, i.e. over the whole shipment.
    A windowed budget clears itself when the total falls back below the budget; an
    unbounded one never does (exposure can't be undone) and needs a person to resolve it.
    """

    kind: ClassVar[str] = "budget"
    id: str
    direction: Direction
    threshold: float
    budget_s: float
    window_s: float | None = None
    inclusive: bool = True
    severity: Severity = Severity.MAJOR
    metric: Metric = Metric.TEMP_C

    def __post_init__(self) -> None:
        _check_id(self.id)
        _enum(self.id, "direction", self.direction, Direction)
        _number(self.id, "threshold", self.threshold)
        _positive(self.id, "budget_s", self.budget_s)
        if self.window_s is not None:
            _positive(self.id, "window_s", self.window_s)
            if self.window_s < self.budget_s:
                raise RuleError(
                    f"{_where(self.id)}: window_s ({self.window_s:g} s) is shorter than budget_s "
                    f"({self.budget_s:g} s), so the budget could never be used up"
                )
        if not isinstance(self.inclusive, bool):
            raise RuleError(f"{_where(self.id)}: inclusive must be true or false, got {self.inclusive!r}")
        _enum(self.id, "severity", self.severity, Severity)
        _enum(self.id, "metric", self.metric, Metric)


@dataclass(frozen=True, slots=True)
class OfflineRule:
    """No reading received for ``timeout_s`` (ThingsBoard's default inactivity timeout is
    600 s), or the broker published the device's last will ``offline``: after
    ``will_grace_s`` without an ``online``, raise. A flapping connection reconnects within
    seconds, so a small grace stops every reconnect from paging someone."""

    kind: ClassVar[str] = "offline"
    id: str = "offline"
    timeout_s: float = 600.0
    will_grace_s: float = 0.0
    severity: Severity = Severity.MAJOR

    def __post_init__(self) -> None:
        _check_id(self.id)
        _positive(self.id, "timeout_s", self.timeout_s)
        _at_least(self.id, "will_grace_s", self.will_grace_s, 0)
        _enum(self.id, "severity", self.severity, Severity)


@dataclass(frozen=True, slots=True)
class BatteryLowRule:
    """battery_v below ``below_v`` for ``for_s``; clears at ≥ below_v + clear_hysteresis_v
    (a battery's voltage sags under load and recovers when idle)."""

    kind: ClassVar[str] = "battery_low"
    id: str = "battery"
    below_v: float = 2.9
    for_s: float = 900.0
    clear_hysteresis_v: float = 0.1
    severity: Severity = Severity.MINOR

    def __post_init__(self) -> None:
        _check_id(self.id)
        _positive(self.id, "below_v", self.below_v, "V")
        _at_least(self.id, "for_s", self.for_s, 0)
        _at_least(self.id, "clear_hysteresis_v", self.clear_hysteresis_v, 0, "V")
        _enum(self.id, "severity", self.severity, Severity)


@dataclass(frozen=True, slots=True)
class DoorOpenRule:
    """door_open true for longer than ``open_for_s``; clears when the door closes."""

    kind: ClassVar[str] = "door_open"
    id: str = "door"
    open_for_s: float = 900.0
    severity: Severity = Severity.WARNING

    def __post_init__(self) -> None:
        _check_id(self.id)
        _at_least(self.id, "open_for_s", self.open_for_s, 0)
        _enum(self.id, "severity", self.severity, Severity)


@dataclass(frozen=True, slots=True)
class IgnorePeriod:
    """No alerts from readings in the first ``duration_s`` after a device's first reading
    or its (re)assignment: cargo and sensor settle after loading (Controlant uses
    10 minutes at shipment start). Offline detection is not suspended."""

    kind: ClassVar[str] = "ignore_period"
    id: str = "ignore"
    duration_s: float = 600.0

    def __post_init__(self) -> None:
        _check_id(self.id)
        _at_least(self.id, "duration_s", self.duration_s, 0)


Rule = LimitRule | BudgetRule | OfflineRule | BatteryLowRule | DoorOpenRule | IgnorePeriod
RULE_TYPES: tuple[type[Rule], ...] = (
    LimitRule,
    BudgetRule,
    OfflineRule,
    BatteryLowRule,
    DoorOpenRule,
    IgnorePeriod,
)
_BY_KIND: Mapping[str, type[Rule]] = MappingProxyType({t.kind: t for t in RULE_TYPES})


@dataclass(frozen=True, slots=True)
class Profile:
    """A named set of rules assigned to devices. Validated as a whole on construction."""

    id: str
    name: str
    rules: tuple[Rule, ...] = field(default_factory=tuple)

    def __post_init__(self) -> None:
        if not isinstance(self.id, str) or not _ID_RE.match(self.id):
            raise RuleError(f"profile id must be a plain identifier, got {self.id!r}")
        if not isinstance(self.name, str) or not self.name.strip():
            raise RuleError(f"profile {self.id!r}: name must be a non-empty string")
        # Accept any iterable from callers, store a tuple: the profile stays hashable and immutable.
        object.__setattr__(self, "rules", tuple(self.rules))
        _validate_profile(self.id, self.rules)

    @property
    def offline(self) -> OfflineRule | None:
        return next((r for r in self.rules if isinstance(r, OfflineRule)), None)

    @property
    def ignore_s(self) -> float:
        rule = next((r for r in self.rules if isinstance(r, IgnorePeriod)), None)
        return rule.duration_s if rule else 0.0

    def rule(self, rule_id: str) -> Rule:
        for r in self.rules:
            if r.id == rule_id:
                return r
        raise KeyError(rule_id)

    def to_dict(self) -> dict[str, Any]:
        return {"id": self.id, "name": self.name, "rules": [rule_to_dict(r) for r in self.rules]}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Profile:
        if not isinstance(data, Mapping):
            raise RuleError(f"a profile must be an object, got {type(data).__name__}")
        unknown = set(data) - {"id", "name", "rules"}
        if unknown:
            raise RuleError(f"profile: unknown field(s) {', '.join(sorted(unknown))}")
        rules = data.get("rules", [])
        if not isinstance(rules, list):
            raise RuleError("profile: rules must be a list")
        return cls(id=data.get("id"), name=data.get("name"), rules=tuple(rule_from_dict(r) for r in rules))  # type: ignore[arg-type]


def _validate_profile(profile_id: str, rules: tuple[Rule, ...]) -> None:
    where = f"profile {profile_id!r}"
    seen: set[str] = set()
    for r in rules:
        if not isinstance(r, RULE_TYPES):
            raise RuleError(f"{where}: {r!r} is not a rule")
        if r.id in seen:
            raise RuleError(f"{where}: two rules have the id {r.id!r}; ids must be unique in a profile")
        seen.add(r.id)
    for single in (OfflineRule, IgnorePeriod):
        if sum(isinstance(r, single) for r in rules) > 1:
            raise RuleError(f"{where}: at most one {single.kind} rule")
    limits = [r for r in rules if isinstance(r, LimitRule)]
    for up in (r for r in limits if r.direction is Direction.ABOVE):
        for low in (r for r in limits if r.direction is Direction.BELOW and r.metric is up.metric):
            if low.threshold >= up.threshold:
                raise RuleError(
                    f"{where}: lower limit {low.id!r} ({low.threshold:g}) must be below "
                    f"upper limit {up.id!r} ({up.threshold:g})"
                )
            # Otherwise one alert could only clear by tripping the other one.
            if up.clear_point <= low.threshold or low.clear_point >= up.threshold:
                raise RuleError(
                    f"{where}: the hysteresis of {up.id!r} and {low.id!r} is too wide: "
                    f"{up.id!r} clears at ≤ {up.clear_point:g} and {low.id!r} at ≥ {low.clear_point:g}, "
                    f"which must stay inside {low.threshold:g}..{up.threshold:g}"
                )


# -- (de)serialisation: the API and the store exchange rules as JSON objects -------------

_ENUM_FIELDS: Mapping[str, type[StrEnum]] = MappingProxyType(
    {"direction": Direction, "severity": Severity, "metric": Metric}
)


def rule_to_dict(rule: Rule) -> dict[str, Any]:
    out: dict[str, Any] = {"kind": rule.kind}
    for f in fields(rule):
        value = getattr(rule, f.name)
        out[f.name] = value.value if isinstance(value, StrEnum) else value
    return out


def rule_from_dict(data: Mapping[str, Any]) -> Rule:
    if not isinstance(data, Mapping):
        raise RuleError(f"a rule must be an object, got {type(data).__name__}")
    kind = data.get("kind")
    cls = _BY_KIND.get(kind) if isinstance(kind, str) else None
    if cls is None:
        raise RuleError(f"unknown rule kind {kind!r}; expected one of {', '.join(_BY_KIND)}")
    names = {f.name for f in fields(cls)}
    rule_id = data.get("id", "?")
    unknown = set(data) - names - {"kind"}
    if unknown:
        raise RuleError(f"{_where(rule_id)}: unknown field(s) {', '.join(sorted(unknown))} for kind {kind!r}")
    kwargs: dict[str, Any] = {}
    for name in names & set(data):
        value = data[name]
        enum = _ENUM_FIELDS.get(name)
        if enum is not None:
            try:
                value = enum(value)
            except ValueError:
                choices = ", ".join(e.value for e in enum)
                raise RuleError(
                    f"{_where(rule_id)}: {name} must be one of {choices}, got {value!r}"
                ) from None
        kwargs[name] = value
    try:
        return cls(**kwargs)
    except TypeError as e:  # a required field is missing
        raise RuleError(f"{_where(rule_id)} ({kind}): {e}") from None


# -- built-in profiles --------------------------------------------------------------------
# Functions, not module constants: each call builds fresh (immutable) objects, and there is
# no module state another part of the process could change under the engine.


def frozen_profile() -> Profile:
    """Frozen food, ≤ −18 °C (EU 89/108/EEC). Transport may deviate up to 3 °C briefly,
    so −18 °C gets a 30-minute delay and −15 °C (the deviation's end) only 5 minutes."""
    return Profile(
        "frozen",
        "Frozen (≤ −18 °C)",
        (
            IgnorePeriod(duration_s=600),
            LimitRule("upper", Direction.ABOVE, -18.0, delay_s=1800, clear_hysteresis=0.5, clear_for_s=300),
            LimitRule(
                "upper_critical",
                Direction.ABOVE,
                -15.0,
                delay_s=300,
                clear_hysteresis=0.5,
                clear_for_s=300,
                severity=Severity.CRITICAL,
            ),
            OfflineRule(),
            BatteryLowRule(),
            DoorOpenRule(open_for_s=600),
        ),
    )


def chilled_profile() -> Profile:
    """Chilled food, 0-4 °C: a door opening warms the air for minutes, hence the delays."""
    return Profile(
        "chilled",
        "Chilled (0-4 °C)",
        (
            IgnorePeriod(duration_s=600),
            LimitRule("upper", Direction.ABOVE, 4.0, delay_s=600, clear_hysteresis=0.5, clear_for_s=300),
            LimitRule("lower", Direction.BELOW, 0.0, delay_s=600, clear_hysteresis=0.5, clear_for_s=300),
            OfflineRule(),
            BatteryLowRule(),
            DoorOpenRule(open_for_s=900),
        ),
    )


def pharma_profile() -> Profile:
    """Refrigerated medicines, 2-8 °C (USP <1079>), with WHO-style cumulative budgets."""
    return Profile(
        "pharma",
        "Pharma refrigerated (2-8 °C)",
        (
            IgnorePeriod(duration_s=600),
            LimitRule("upper", Direction.ABOVE, 8.0, delay_s=600, clear_hysteresis=0.5, clear_for_s=300),
            LimitRule("lower", Direction.BELOW, 2.0, delay_s=600, clear_hysteresis=0.5, clear_for_s=300),
            BudgetRule("heat_budget", Direction.ABOVE, 30.0, budget_s=10 * 3600, severity=Severity.CRITICAL),
            BudgetRule("freeze_budget", Direction.BELOW, -0.5, budget_s=3600, severity=Severity.CRITICAL),
            OfflineRule(),
            BatteryLowRule(),
            DoorOpenRule(open_for_s=600),
        ),
    )


def builtin_profiles() -> dict[str, Profile]:
    """The shipped profiles by id (a new dict per call; custom profiles are added to it)."""
    return {p.id: p for p in (frozen_profile(), chilled_profile(), pharma_profile())}
