"""The shipments part of the storage contract, the same on SQLite and PostgreSQL, and a
report built from what the store holds."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import pytest

from telemetry.alerts import Alert, AuditEntry, Severity
from telemetry.alerts.lifecycle import SYSTEM, Action, acknowledged
from telemetry.readings import Reading
from telemetry.reports import ReportParams, build_report
from telemetry.settings import StorageSettings
from telemetry.shipments import (
    Segment,
    Shipment,
    ShipmentConflict,
    add_segment,
    close,
    find_profile,
    gather,
    patch,
)
from telemetry.storage import open_store

T0 = datetime(2026, 11, 20, 8, 0, tzinfo=UTC)


def at(s: float) -> datetime:
    return T0 + timedelta(seconds=s)


@pytest.fixture(params=["sqlite", "postgres"])
def store(request: pytest.FixtureRequest) -> Iterator:
    url = str(request.getfixturevalue({"sqlite": "sqlite_url", "postgres": "pg_url"}[request.param]))
    s = open_store(StorageSettings(url=url))
    s.open()
    s.migrate()
    yield s
    s.close()


def shipment(sid: str = "hairtail-77", **kw: object) -> Shipment:
    fields: dict[str, object] = {
        "id": sid,
        "product": "冷冻带鱼 Frozen hairtail",
        "batch": "B-77",
        "origin_site": "zhoushan",
        "profile_id": "chilled",
        "opened_at": at(0),
        "streams": ("farm-cam",),
    }
    fields.update(kw)
    return Shipment(**fields)  # type: ignore[arg-type]


def test_create_get_list_save_and_versions(store) -> None:
    s = store.create_shipment(shipment(segments=(Segment("coldroom-1", at(0), label="冷库 1"),)))
    assert s.version == 1 and s.created_at is not None
    got = store.get_shipment("hairtail-77")
    assert got is not None
    assert got.product == "冷冻带鱼 Frozen hairtail" and got.streams == ("farm-cam",)
    assert got.segments == (Segment("coldroom-1", at(0), None, "冷库 1"),)
    assert got.opened_at == at(0) and got.opened_at.tzinfo is not None
    with pytest.raises(ShipmentConflict):
        store.create_shipment(shipment())
    moved = store.save_shipment(add_segment(got, Segment("truck-7", at(3600), label="Truck 7")))
    assert moved.version == 2
    assert [(x.device_id, x.start, x.end) for x in moved.segments] == [
        ("coldroom-1", at(0), at(3600)),
        ("truck-7", at(3600), None),
    ]
    # A writer holding the old version loses, and is told so.
    with pytest.raises(ShipmentConflict):
        store.save_shipment(patch(got, {"product": "stale"}))
    done = store.save_shipment(close(moved, at(7200)))
    assert done.state.value == "closed" and done.closed_at == at(7200) and done.segments[-1].end == at(7200)
    store.create_shipment(shipment("other-1", origin_site="farm-7", opened_at=at(100), streams=()))
    assert [x.id for x in store.list_shipments()] == ["other-1", "hairtail-77"]
    assert [x.id for x in store.list_shipments(state="closed")] == ["hairtail-77"]
    assert [x.id for x in store.list_shipments(origin_site="farm-7")] == ["other-1"]
    assert [x.id for x in store.list_shipments(limit=1)] == ["other-1"]
    assert store.get_shipment("nope-1") is None


def test_concurrent_saves_one_wins(store) -> None:
    s = store.create_shipment(shipment())
    results: list[str] = []

    def edit(name: str) -> None:
        try:
            store.save_shipment(patch(s, {"batch": name}))
            results.append("ok")
        except ShipmentConflict:
            results.append("conflict")

    threads = [threading.Thread(target=edit, args=(f"b{i}",)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert sorted(results) == ["conflict"] * 3 + ["ok"]
    assert store.get_shipment(s.id).version == 2


def _alert(i: int, device: str, start: datetime, cleared: datetime | None) -> Alert:
    return Alert(
        id=i,
        device_id=device,
        profile_id="chilled",
        rule_id="upper",
        rule_kind="limit",
        severity=Severity.MAJOR,
        start=start,
        raised_at=start + timedelta(minutes=10),
        metric="temp_c",
        threshold=4.0,
        peak=6.5,
        peak_at=start + timedelta(minutes=5),
        cleared_at=cleared,
        audit=(AuditEntry(start + timedelta(minutes=10), Action.RAISED, SYSTEM, "", 6.5),),
    )


def test_alerts_overlapping_and_a_report_from_the_store(store) -> None:
    # truck-7: an excursion inside the window (acknowledged with a comment), one that ended
    # before it and one on another device.
    inside = acknowledged(_alert(1, "truck-7", at(1200), at(1800)), "li.wei", "门未关好 door ajar", at(1500))
    store.record_alert(inside, "fleet", at(1500))
    store.record_alert(_alert(2, "truck-7", at(-7200), at(-3600)), "fleet", at(-3600))
    store.record_alert(_alert(3, "truck-9", at(1200), None), "fleet", at(1300))
    store.record_alert(_alert(4, "truck-7", at(3000), None), "fleet", at(3100))  # still open
    got = store.alerts_overlapping("truck-7", at(0), at(3600))
    assert [a.alert_id for a in got] == [1, 4]
    assert got[0].audit[-1].comment == "门未关好 door ajar" and got[0].audit[-1].actor == "li.wei"
    assert store.alerts_overlapping("truck-7", at(3600), at(7200))[0].alert_id == 4

    # A reading a minute, 3 °C, one 6 °C reading, and a 20-minute hole.
    rows = [Reading("truck-7", at(i * 60), 3.0) for i in range(0, 20)]
    rows += [Reading("truck-7", at(1200), 6.0)]
    rows += [Reading("truck-7", at(i * 60), 3.0) for i in range(41, 60)]
    store.write_batch(rows, [])
    s = store.create_shipment(shipment(segments=(Segment("truck-7", at(0), at(3600)),)))
    data = gather(store, s, at(4000))
    assert len(data[0].readings) == 40 and [a.alert_id for a in data[0].alerts] == [1, 4]
    rep = build_report(s, data, find_profile(store, "chilled"), at(4000), ReportParams())
    seg = rep.segments[0].summary
    # G = max(3 × 60, 300) = 300 s; the 6 °C reading at 1200 s stands for 300 s, then a gap
    # [1500, 2460) of 960 s. Covered: 20 × 60 + 300 + 19 × 60 (the last to the end) = 2640 s.
    assert seg.covered.total_seconds() == 2640 and seg.gap.total_seconds() == 960
    assert [(g.start, g.end) for g in rep.gaps] == [(at(1500), at(2460))]
    assert {b.limit.id: b.beyond.total_seconds() for b in seg.beyond}["upper"] == 300
    assert seg.mean_c == pytest.approx((3.0 * 2340 + 6.0 * 300) / 2640)
    assert rep.to_dict()["excursions"][0]["acknowledged_by"] == "li.wei"
