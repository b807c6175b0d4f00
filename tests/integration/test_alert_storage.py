"""The alerting part of the storage contract, on SQLite, PostgreSQL and TimescaleDB."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import replace
from datetime import UTC, datetime, timedelta

import pytest

from telemetry.alerts import Alert, AuditEntry, Severity
from telemetry.alerts.lifecycle import SYSTEM, Action, acknowledged, resolved_by_hand, with_peak
from telemetry.readings import Reading
from telemetry.settings import StorageSettings
from telemetry.storage import open_store
from telemetry.storage.alerts import ACTIVE, AlertFilter, Device, WebhookDelivery

T0 = datetime(2026, 11, 1, 8, 0, tzinfo=UTC)


@pytest.fixture
def store(db_url: str) -> Iterator:
    s = open_store(StorageSettings(url=db_url))
    s.open()
    s.migrate()
    yield s
    s.close()


def alert(i: int, device: str = "truck-9", at: datetime = T0) -> Alert:
    return Alert(
        id=i,
        device_id=device,
        profile_id="chilled",
        rule_id="upper",
        rule_kind="limit",
        severity=Severity.MAJOR,
        start=at,
        raised_at=at + timedelta(minutes=10),
        metric="temp_c",
        threshold=4.0,
        peak=6.5,
        peak_at=at + timedelta(minutes=9),
        audit=(AuditEntry(at + timedelta(minutes=10), Action.RAISED, SYSTEM, "", 6.5),),
    )


def test_alert_upsert_and_audit_trail(store) -> None:
    a = alert(1)
    store.record_alert(a, "fleet", T0)
    store.record_alert(a, "fleet", T0)  # the same version again (a replay): no duplicate audit
    a2 = with_peak(a, 7.25, T0 + timedelta(minutes=12), T0 + timedelta(minutes=12))
    store.record_alert(a2, "fleet", T0 + timedelta(minutes=12))
    a3 = acknowledged(a2, "admin-token", "driver called", T0 + timedelta(minutes=15))
    store.record_alert(a3, "fleet", T0 + timedelta(minutes=15))
    got = store.get_alert(1)
    assert got is not None
    assert (got.state, got.peak, got.acknowledged_by, got.ack_comment) == (
        "acknowledged",
        7.25,
        "admin-token",
        "driver called",
    )
    assert got.site_id == "fleet" and got.start == T0 and got.peak_at == T0 + timedelta(minutes=12)
    assert [(e.seq, e.action, e.actor) for e in got.audit] == [
        (0, "raised", "system"),
        (1, "peak", "system"),
        (2, "acknowledged", "admin-token"),
    ]
    assert got.audit[1].detail == {"value": 7.25}
    # An older version written after a newer one (a replay after a crash) keeps the person's record.
    store.record_alert(a2, "fleet", T0 + timedelta(minutes=16))
    again = store.get_alert(1)
    assert again is not None and again.acknowledged_by == "admin-token"
    a4 = resolved_by_hand(a3, "admin-token", "cargo moved to truck 3", T0 + timedelta(minutes=20))
    store.record_alert(a4, "fleet", T0 + timedelta(minutes=20))
    done = store.get_alert(1)
    assert done is not None and done.state == "resolved" and done.resolved_at == T0 + timedelta(minutes=20)
    assert done.to_dict(with_audit=True)["audit"][-1]["comment"] == "cargo moved to truck 3"
    assert store.get_alert(99) is None
    assert store.max_alert_id() == 1


def test_list_alerts_filters_newest_first(store) -> None:
    for i in range(1, 6):
        a = alert(i, device=f"d{i % 2}", at=T0 + timedelta(hours=i))
        if i == 5:
            a = replace(a, severity=Severity.CRITICAL)
        store.record_alert(a, "s1" if i < 4 else "s2", T0)
    store.record_alert(resolved_by_hand(alert(2, "d0", T0 + timedelta(hours=2)), "u", "fixed", T0), "s1", T0)
    ids = lambda f: [r.alert_id for r in store.list_alerts(f)]  # noqa: E731
    assert ids(AlertFilter()) == [5, 4, 3, 2, 1]
    assert ids(AlertFilter(limit=2)) == [5, 4]
    assert ids(AlertFilter(device_id="d0")) == [4, 2]
    assert ids(AlertFilter(site_id="s2")) == [5, 4]
    assert ids(AlertFilter(severity="critical")) == [5]
    assert ids(AlertFilter(state="resolved")) == [2]
    assert ids(AlertFilter(state=ACTIVE)) == [5, 4, 3, 1]
    assert ids(AlertFilter(state="open")) == [5, 4, 3, 1]
    assert ids(AlertFilter(since=T0 + timedelta(hours=3, minutes=10))) == [5, 4, 3]


def test_devices_profiles_snapshot_webhooks(store) -> None:
    assert store.get_device("x") is None and store.list_devices() == []
    store.upsert_device(Device("truck-9", "fleet", "chilled", "Truck 9"))
    store.upsert_device(Device("coldroom-1", "plant", "chilled", None))
    store.upsert_device(Device("truck-9", "fleet", "frozen", "Truck 9"))
    assert store.get_device("truck-9") == Device("truck-9", "fleet", "frozen", "Truck 9")
    assert [d.device_id for d in store.list_devices()] == ["coldroom-1", "truck-9"]
    definition = {
        "id": "fast",
        "name": "Fast",
        "rules": [{"kind": "offline", "id": "offline", "timeout_s": 5.0}],
    }
    store.save_profile("fast", definition)
    store.save_profile("fast", {**definition, "name": "Faster"})
    assert store.list_profiles() == {"fast": {**definition, "name": "Faster"}}
    assert store.load_engine_snapshot() is None
    store.save_engine_snapshot({"format": "x", "n": [1, 2]}, T0)
    store.save_engine_snapshot({"format": "x", "n": [3]}, T0 + timedelta(seconds=30))
    assert store.load_engine_snapshot() == ({"format": "x", "n": [3]}, T0 + timedelta(seconds=30))
    for attempt, (status, error) in enumerate([(500, "HTTP 500"), (None, "refused"), (200, None)], 1):
        store.record_webhook_delivery(
            WebhookDelivery(
                "http://127.0.0.1:1/h", "1-0", attempt, status, error, T0 + timedelta(seconds=attempt)
            )
        )
    got = store.webhook_deliveries("1-0")
    assert [(d.attempt, d.status, d.error) for d in got] == [
        (3, 200, None),
        (2, None, "refused"),
        (1, 500, "HTTP 500"),
    ]
    assert store.webhook_deliveries("other") == []


def test_readings_for_the_engine(store) -> None:
    rs = [Reading("dev", T0 + timedelta(minutes=i), 2.0 + i, None, None, i % 2 == 0, i) for i in range(10)]
    before = datetime.now(UTC) - timedelta(seconds=5)
    store.write_batch(rs[:5], [])
    store.write_batch([Reading("other", T0, 1.0)], [])
    span = store.device_readings("dev", T0 + timedelta(minutes=1), T0 + timedelta(minutes=3))
    assert span == rs[1:4]
    got = store.readings_received_since(before, T0 - timedelta(days=1))
    assert sorted(r for r, _ in got) == sorted([*rs[:5], Reading("other", T0, 1.0)])
    assert all(abs((rx - datetime.now(UTC)).total_seconds()) < 60 for _, rx in got)
    assert store.readings_received_since(datetime.now(UTC) + timedelta(seconds=30), T0) == []
    assert store.readings_received_since(before, T0 + timedelta(minutes=3)) == [
        (r, rx) for r, rx in got if r.device_id == "dev" and r.ts >= T0 + timedelta(minutes=3)
    ]
