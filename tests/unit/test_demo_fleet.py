"""The demo's promise, on synthetic time: truck-7's door openings raise nothing, truck-9's
failed compressor raises one alert within minutes (ARCHITECTURE's demo; issue 4 item 7)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from devices.simulator import demo_fleet
from telemetry.alerts import AlertEngine
from telemetry.alerts.rules import builtin_profiles
from telemetry.readings import Reading
from web.cli import DEMO_ASSIGNMENTS, demo_reefer_profile


def test_door_openings_raise_nothing_and_the_compressor_failure_raises_one_alert():
    profiles = {**builtin_profiles(), "reefer-demo": demo_reefer_profile()}
    engine = AlertEngine(profiles)
    t0 = datetime(2026, 11, 25, 8, 0, tzinfo=UTC)
    for device_id, _site, profile, _name in DEMO_ASSIGNMENTS:
        engine.assign(device_id, profile, t0)
    sensors = demo_fleet()
    step = 2.0
    events = []
    truck7_max = -99.0
    for i in range(1, int(30 * 60 / step)):  # 30 minutes, a reading every 2 s
        now = t0 + timedelta(seconds=i * step)
        batch = []
        for s in sensors:
            r = s.reading(now.timestamp(), i * step, step)
            batch.append(Reading(s.device_id, now, float(r["temp_c"]), door_open=bool(r["door_open"])))
            if s.device_id == "truck-7":
                truck7_max = max(truck7_max, float(r["temp_c"]))
        events += engine.process(batch, now)
        events += engine.tick(now)
    assert truck7_max > 4.0, "the door openings must warm truck-7 past its limit, briefly"
    raised = [e.alert for e in events if e.kind.value == "raised"]
    by_device = {a.device_id for a in raised}
    assert "truck-7" not in by_device, [a.rule_id for a in raised if a.device_id == "truck-7"]
    truck9 = [a for a in raised if a.device_id == "truck-9"]
    assert [a.rule_id for a in truck9] == ["upper"]
    assert truck9[0].raised_at - t0 <= timedelta(minutes=10)
    assert by_device == {"truck-9"}, by_device  # the rest of the fleet stays quiet
