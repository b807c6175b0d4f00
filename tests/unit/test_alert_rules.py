"""Alert rules and profiles: validation messages, built-in profiles, JSON round trip."""

from __future__ import annotations

import dataclasses
import json

import pytest

from telemetry.alerts.rules import (
    BatteryLowRule,
    BudgetRule,
    Direction,
    DoorOpenRule,
    IgnorePeriod,
    LimitRule,
    Metric,
    OfflineRule,
    Profile,
    RuleError,
    Severity,
    builtin_profiles,
    chilled_profile,
    frozen_profile,
    pharma_profile,
    rule_from_dict,
    rule_to_dict,
)

ABOVE, BELOW = Direction.ABOVE, Direction.BELOW


def test_builtin_classes_match_the_cold_chain_classes():
    p = builtin_profiles()
    assert list(p) == ["frozen", "chilled", "pharma"]
    assert p["frozen"].rule("upper").threshold == -18.0
    assert p["frozen"].rule("upper_critical").threshold == -15.0  # −18 + the 3 °C transport deviation
    chilled = p["chilled"]
    assert (chilled.rule("lower").threshold, chilled.rule("upper").threshold) == (0.0, 4.0)
    pharma = p["pharma"]
    assert (pharma.rule("lower").threshold, pharma.rule("upper").threshold) == (2.0, 8.0)
    heat = pharma.rule("heat_budget")
    assert isinstance(heat, BudgetRule)
    assert (heat.threshold, heat.budget_s, heat.inclusive, heat.window_s) == (30.0, 36000.0, True, None)
    freeze = pharma.rule("freeze_budget")
    assert isinstance(freeze, BudgetRule)
    assert (freeze.direction, freeze.threshold, freeze.budget_s) == (BELOW, -0.5, 3600.0)
    for prof in p.values():
        assert prof.offline == OfflineRule()
        assert prof.offline.timeout_s == 600.0  # ThingsBoard's default inactivity timeout
        assert prof.ignore_s == 600.0  # Controlant's 10-minute ignore period


def test_builtin_profiles_are_fresh_and_immutable():
    a, b = builtin_profiles(), builtin_profiles()
    assert a == b and a is not b and a["chilled"] is not b["chilled"]
    a["custom"] = Profile("custom", "Custom", ())
    assert "custom" not in builtin_profiles()
    with pytest.raises(dataclasses.FrozenInstanceError):
        chilled_profile().rules[1].threshold = 9.0  # type: ignore[misc]
    with pytest.raises(dataclasses.FrozenInstanceError):
        frozen_profile().name = "x"  # type: ignore[misc]


def test_profile_stores_rules_as_a_tuple():
    rules = [LimitRule("hi", ABOVE, 25.0)]
    p = Profile("ambient", "Ambient", rules)  # type: ignore[arg-type]
    rules.append(LimitRule("other", ABOVE, 30.0))
    assert p.rules == (LimitRule("hi", ABOVE, 25.0),)


def test_limit_clear_point_is_the_limit_moved_inwards_by_the_hysteresis():
    assert LimitRule("u", ABOVE, 4.0, clear_hysteresis=0.5).clear_point == 3.5
    assert LimitRule("l", BELOW, 0.0, clear_hysteresis=0.5).clear_point == 0.5


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda: LimitRule("upper", ABOVE, 4.0, delay_s=-5), "rule 'upper': delay_s must be ≥ 0 s, got -5"),
        (lambda: LimitRule("upper", ABOVE, 4.0, clear_for_s=-1), "clear_for_s must be ≥ 0 s, got -1"),
        (lambda: LimitRule("upper", ABOVE, 4.0, clear_hysteresis=-0.5), "clear_hysteresis must be ≥ 0"),
        (lambda: LimitRule("upper", ABOVE, float("nan")), "rule 'upper': threshold must be finite"),
        (lambda: LimitRule("upper", ABOVE, True), "rule 'upper': threshold must be a number, got True"),  # type: ignore[arg-type]
        (lambda: LimitRule("upper", "up", 4.0), "direction must be one of above, below, got 'up'"),  # type: ignore[arg-type]
        (lambda: LimitRule("upper", ABOVE, 4.0, severity="loud"), "severity must be one of critical"),  # type: ignore[arg-type]
        (lambda: LimitRule("", ABOVE, 4.0), "rule id must be 1-64 characters"),
        (lambda: LimitRule("has space", ABOVE, 4.0), "rule id must be"),
        (lambda: BudgetRule("b", ABOVE, 30.0, budget_s=0), "rule 'b': budget_s must be > 0 s, got 0"),
        (
            lambda: BudgetRule("b", ABOVE, 30.0, budget_s=7200, window_s=3600),
            "window_s (3600 s) is shorter than budget_s (7200 s), so the budget could never be used up",
        ),
        (lambda: BudgetRule("b", ABOVE, 30.0, budget_s=60, inclusive=1), "inclusive must be true or false"),  # type: ignore[arg-type]
        (lambda: OfflineRule(timeout_s=0), "rule 'offline': timeout_s must be > 0 s, got 0"),
        (lambda: OfflineRule(will_grace_s=-1), "will_grace_s must be ≥ 0 s"),
        (lambda: BatteryLowRule(below_v=0), "rule 'battery': below_v must be > 0 V, got 0"),
        (lambda: BatteryLowRule(for_s=-60), "for_s must be ≥ 0 s, got -60"),
        (lambda: DoorOpenRule(open_for_s=-1), "rule 'door': open_for_s must be ≥ 0 s, got -1"),
        (lambda: IgnorePeriod(duration_s=-600), "rule 'ignore': duration_s must be ≥ 0 s, got -600"),
    ],
)
def test_bad_rules_are_rejected_with_a_clear_message(make, message):
    with pytest.raises(RuleError) as e:
        make()
    assert message in str(e.value)


def test_lower_limit_must_be_below_upper_limit():
    with pytest.raises(RuleError, match=r"lower limit 'lo' \(8\) must be below upper limit 'hi' \(4\)"):
        Profile("p", "P", (LimitRule("hi", ABOVE, 4.0), LimitRule("lo", BELOW, 8.0)))
    with pytest.raises(RuleError, match="must be below"):
        Profile("p", "P", (LimitRule("hi", ABOVE, 4.0), LimitRule("lo", BELOW, 4.0)))
    # Different metrics don't constrain each other.
    Profile("p", "P", (LimitRule("hi", ABOVE, 4.0), LimitRule("rh_lo", BELOW, 60.0, metric=Metric.RH)))


def test_hysteresis_that_reaches_the_other_limit_is_rejected():
    with pytest.raises(RuleError, match=r"hysteresis of 'hi' and 'lo' is too wide: 'hi' clears at ≤ 1"):
        Profile(
            "p",
            "P",
            (LimitRule("hi", ABOVE, 4.0, clear_hysteresis=3.0), LimitRule("lo", BELOW, 2.0)),
        )


def test_profile_level_checks():
    with pytest.raises(RuleError, match="two rules have the id 'x'"):
        Profile("p", "P", (LimitRule("x", ABOVE, 4.0), DoorOpenRule(id="x")))
    with pytest.raises(RuleError, match="at most one offline rule"):
        Profile("p", "P", (OfflineRule(), OfflineRule(id="offline2")))
    with pytest.raises(RuleError, match="at most one ignore_period rule"):
        Profile("p", "P", (IgnorePeriod(), IgnorePeriod(id="ignore2")))
    with pytest.raises(RuleError, match="is not a rule"):
        Profile("p", "P", ("upper",))  # type: ignore[arg-type]
    with pytest.raises(RuleError, match="name must be a non-empty string"):
        Profile("p", " ", ())
    with pytest.raises(RuleError, match="profile id must be a plain identifier"):
        Profile("a/b", "P", ())


def test_profiles_round_trip_through_json():
    for prof in builtin_profiles().values():
        data = json.loads(json.dumps(prof.to_dict()))
        assert Profile.from_dict(data) == prof
    assert rule_to_dict(LimitRule("upper", ABOVE, 4.0, delay_s=600)) == {
        "kind": "limit",
        "id": "upper",
        "direction": "above",
        "threshold": 4.0,
        "delay_s": 600,
        "clear_hysteresis": 0.5,
        "clear_for_s": 0.0,
        "severity": "major",
        "metric": "temp_c",
    }


def test_custom_profile_from_the_api_shape():
    custom = Profile.from_dict(
        {
            "id": "flowers",
            "name": "Cut flowers",
            "rules": [
                {"kind": "limit", "id": "upper", "direction": "above", "threshold": 8, "delay_s": 1800},
                {
                    "kind": "limit",
                    "id": "lower",
                    "direction": "below",
                    "threshold": 1,
                    "severity": "critical",
                },
                {"kind": "door_open", "open_for_s": 300},
            ],
        }
    )
    assert custom.rule("lower").severity is Severity.CRITICAL  # type: ignore[union-attr]
    assert custom.rule("door") == DoorOpenRule(open_for_s=300)
    assert custom.ignore_s == 0.0 and custom.offline is None


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"kind": "magic", "id": "x"}, "unknown rule kind 'magic'; expected one of limit, budget"),
        ({"id": "x"}, "unknown rule kind None"),
        (["limit"], "a rule must be an object, got list"),
        ({"kind": "limit", "id": "u", "direction": "above"}, "rule 'u' (limit): "),
        ({"kind": "limit", "id": "u", "direction": "sideways", "threshold": 1}, "direction must be one of"),
        ({"kind": "door_open", "id": "d", "threshold": 1}, "unknown field(s) threshold for kind 'door_open'"),
        ({"kind": "limit", "id": "u", "direction": "above", "threshold": "4"}, "threshold must be a number"),
    ],
)
def test_rule_from_dict_errors(data, message):
    with pytest.raises(RuleError) as e:
        rule_from_dict(data)
    assert message in str(e.value)


def test_profile_from_dict_errors():
    with pytest.raises(RuleError, match="unknown field"):
        Profile.from_dict({"id": "p", "name": "P", "rules": [], "colour": "red"})
    with pytest.raises(RuleError, match="rules must be a list"):
        Profile.from_dict({"id": "p", "name": "P", "rules": {}})


def test_pharma_budgets_use_who_figures():
    heat = pharma_profile().rule("heat_budget")
    assert rule_to_dict(heat)["budget_s"] == 10 * 3600
