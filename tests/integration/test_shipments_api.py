"""Shipments through a real server (SQLite and PostgreSQL): the API's rules and roles, and
the report as JSON, CSV and PDF (read back with pdftotext and rendered with pdftoppm)
from readings and alerts stored in the database."""

from __future__ import annotations

import asyncio
import csv
import io
import shutil
import subprocess
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from telemetry.alerts import Alert, AuditEntry, Severity
from telemetry.alerts.lifecycle import SYSTEM, Action, acknowledged
from telemetry.readings import Reading
from web.app import STORE, build_app
from web.config import load_config

ADMIN_TOKEN = "shipments-admin-token-0123456789"
ADM = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
PASSWORD = "correct horse battery staple"
ARTIFACTS = Path(__file__).resolve().parents[2] / "test-artifacts"
T0 = datetime(2026, 11, 20, 8, 0, tzinfo=UTC)


def at(s: float) -> datetime:
    return T0 + timedelta(seconds=s)


def iso(t: datetime) -> str:
    return t.isoformat().replace("+00:00", "Z")


@pytest.fixture(params=["sqlite", "postgres"])
def db_url(request: pytest.FixtureRequest) -> str:
    return str(request.getfixturevalue("sqlite_url" if request.param == "sqlite" else "pg_url"))


@pytest.fixture
async def client(aiohttp_client: Any, db_url: str) -> Any:
    config = load_config(env={"ORIGINCAST_DATABASE_URL": db_url, "ORIGINCAST_ADMIN_TOKEN": ADMIN_TOKEN})
    return await aiohttp_client(build_app(config, with_ingest=False))


async def _token_for(client: Any, name: str, role: str) -> dict[str, str]:
    r = await client.post(
        "/api/v1/users", json={"name": name, "role": role, "password": PASSWORD}, headers=ADM
    )
    assert r.status == 201, await r.text()
    r = await client.post("/api/v1/tokens", json={"name": "t", "owner": name}, headers=ADM)
    assert r.status == 201, await r.text()
    return {"Authorization": f"Bearer {(await r.json())['token']}"}


def _pdf_text(path: Path) -> str:
    return subprocess.run(
        ["pdftotext", "-layout", str(path), "-"], capture_output=True, check=True, text=True
    ).stdout


def _first_page_png(path: Path, prefix: Path) -> None:
    """The first page as PNG, kept in test-artifacts/ to look at (Chinese glyphs, not boxes)."""
    subprocess.run(["pdftoppm", "-r", "60", "-png", "-f", "1", "-l", "1", str(path), str(prefix)], check=True)


async def _error(r: Any, status: int) -> str:
    assert r.status == status, (r.status, await r.text())
    body = await r.json()
    assert set(body) == {"error"} and body["error"]
    return str(body["error"])


async def test_shipment_lifecycle_rules_and_roles(client: Any) -> None:
    producer = await _token_for(client, "pat", "producer")
    logistics = await _token_for(client, "lou", "logistics")
    body = {"product": "Milk", "batch": "77", "origin_site": "farm-7", "profile_id": "chilled"}
    await _error(await client.post("/api/v1/shipments", json=body), 401)
    await _error(await client.get("/api/v1/shipments"), 401)
    r = await client.post("/api/v1/shipments", json=body, headers=producer)
    assert r.status == 201
    made = await r.json()
    assert len(made["id"]) == 10 and made["state"] == "open" and made["version"] == 1
    # Bad input: 400 naming the field, and nothing stored.
    for bad, field in [
        ({**body, "profile_id": "nope"}, "profile_id"),
        ({**body, "id": "Not OK"}, "id"),
        ({**body, "product": ""}, "product"),
        ({**body, "opened_at": "yesterday"}, "opened_at"),
        ({**body, "colour": "red"}, "colour"),
        ({**body, "segments": [{"device_id": "t", "start": iso(at(0)), "end": iso(at(-5))}]}, "segments"),
    ]:
        assert (await _error(await client.post("/api/v1/shipments", json=bad, headers=ADM), 400)).startswith(
            field
        )
    await _error(await client.post("/api/v1/shipments", data=b"{", headers=ADM), 400)
    assert len((await (await client.get("/api/v1/shipments", headers=ADM)).json())["shipments"]) == 1

    r = await client.post(
        "/api/v1/shipments", json={**body, "id": "milk-77", "opened_at": iso(at(0))}, headers=logistics
    )
    assert r.status == 201
    await _error(await client.post("/api/v1/shipments", json={**body, "id": "milk-77"}, headers=ADM), 409)
    r = await client.post(
        "/api/v1/shipments/milk-77/segments",
        json={"device_id": "coldroom-1", "start": iso(at(0)), "label": "冷库"},
        headers=producer,
    )
    assert r.status == 201
    r = await client.post(
        "/api/v1/shipments/milk-77/segments",
        json={"device_id": "truck-7", "start": iso(at(3600))},
        headers=ADM,
    )
    route = (await r.json())["segments"]
    assert [(s["device_id"], s["start"], s["end"]) for s in route] == [
        ("coldroom-1", iso(at(0)), iso(at(3600))),
        ("truck-7", iso(at(3600)), None),
    ]
    err = await _error(
        await client.post(
            "/api/v1/shipments/milk-77/segments", json={"device_id": "x", "start": iso(at(60))}, headers=ADM
        ),
        400,
    )
    assert err.startswith("segments.start")
    r = await client.patch(
        "/api/v1/shipments/milk-77", json={"product": "Whole milk", "version": 3}, headers=ADM
    )
    assert r.status == 200 and (await r.json())["version"] == 4
    await _error(
        await client.patch("/api/v1/shipments/milk-77", json={"batch": "x", "version": 3}, headers=ADM), 409
    )
    await _error(await client.patch("/api/v1/shipments/milk-77", json={"state": "closed"}, headers=ADM), 400)
    await _error(await client.get("/api/v1/shipments/nope-nope", headers=ADM), 404)
    r = await client.post("/api/v1/shipments/milk-77/close", json={"at": iso(at(7200))}, headers=ADM)
    closed = await r.json()
    assert r.status == 200 and closed["state"] == "closed" and closed["segments"][-1]["end"] == iso(at(7200))
    await _error(await client.post("/api/v1/shipments/milk-77/close", headers=ADM), 409)
    await _error(await client.patch("/api/v1/shipments/milk-77", json={"batch": "y"}, headers=ADM), 409)
    await _error(
        await client.post("/api/v1/shipments/milk-77/segments", json={"device_id": "t"}, headers=ADM), 409
    )
    listed = (await (await client.get("/api/v1/shipments?state=closed", headers=producer)).json())[
        "shipments"
    ]
    assert [s["id"] for s in listed] == ["milk-77"] and listed[0]["product"] == "Whole milk"
    await _error(await client.get("/api/v1/shipments?limit=0", headers=ADM), 400)
    # The full report is for staff: producers get 403.
    await _error(await client.get("/api/v1/shipments/milk-77/report", headers=producer), 403)
    assert (await client.get("/api/v1/shipments/milk-77/report", headers=logistics)).status == 200
    await _error(await client.get("/api/v1/shipments/milk-77/report?gap_factor=-1", headers=ADM), 400)
    await _error(await client.get("/api/v1/shipments/milk-77/report.pdf?lang=fr", headers=ADM), 400)


def _alert(i: int, device: str, start: datetime, cleared: datetime | None) -> Alert:
    return Alert(
        id=i, device_id=device, profile_id="chilled", rule_id="upper", rule_kind="limit",
        severity=Severity.MAJOR, start=start, raised_at=start + timedelta(minutes=10), metric="temp_c",
        threshold=4.0, peak=7.5, peak_at=start + timedelta(minutes=5), cleared_at=cleared,
        audit=(AuditEntry(start + timedelta(minutes=10), Action.RAISED, SYSTEM, "", 7.5),),
    )  # fmt: skip


def _seed(store: Any) -> None:
    """A cold room 08:00-09:00 logging every minute at 2.0 °C; then truck-7 logging every
    2 minutes at 3.0 °C, except 7.5 °C at 09:30-09:38 (5 readings), and nothing between
    09:50 and 10:20 (a gap); the shipment closes at 11:00."""
    rows = [Reading("coldroom-1", at(i * 60), 2.0) for i in range(60)]
    for i in range(60):  # truck readings at 3600 + 120 i, i.e. 09:00 … 10:58
        t = 3600 + 120 * i
        if 6600 < t < 8400:
            continue  # 09:50-10:20: the logger lost power
        hot = 5400 <= t <= 5880
        rows.append(Reading("truck-7", at(t), 7.5 if hot else 3.0))
    rows.append(Reading("truck-7", at(-600), 20.0))  # before the shipment: not in it
    store.write_batch(rows, [])
    excursion = acknowledged(
        _alert(1, "truck-7", at(5400), at(6000)), "lou", "司机关好了车门 driver closed the door", at(6100)
    )
    store.record_alert(excursion, "fleet", at(6100))
    store.record_alert(_alert(2, "freezer-9", at(5400), None), "fleet", at(6000))  # not on the route


async def test_report_json_csv_pdf_from_stored_readings(client: Any) -> None:
    await asyncio.to_thread(_seed, client.app[STORE])
    body = {
        "id": "hairtail-77", "product": "冷冻带鱼 Hairtail", "batch": "B-77", "origin_site": "zhoushan",
        "profile_id": "chilled", "opened_at": iso(at(0)), "streams": ["farm-cam"],
        "segments": [
            {"device_id": "coldroom-1", "start": iso(at(0)), "end": iso(at(3600)), "label": "冷库 1"},
            {"device_id": "truck-7", "start": iso(at(3600))},
        ],
    }  # fmt: skip
    assert (await client.post("/api/v1/shipments", json=body, headers=ADM)).status == 201
    r = await client.post("/api/v1/shipments/hairtail-77/close", json={"at": iso(at(10800))}, headers=ADM)
    assert r.status == 200

    rep = await (await client.get("/api/v1/shipments/hairtail-77/report", headers=ADM)).json()
    seg1, seg2 = rep["segments"]
    total = rep["total"]
    # Segment 1: 60 readings a minute at 2.0 °C, each standing for 60 s; G = max(3·60, 300) = 300 s.
    assert seg1["gap_threshold_s"] == 300 and seg1["summary"]["covered_s"] == 3600
    assert seg1["summary"]["mkt_c"] == pytest.approx(2.0, abs=1e-9)
    # Segment 2: 46 readings (60, less the 14 of 09:52-10:18). Intervals 120 s but one of
    # 1800 s → median 120 s, G = max(3·120, 300) = 360 s. The reading at 09:50 (6600 s) stands
    # for 360 s, then a gap [6960, 8400) of 1440 s; the last reading (10:58) stands for the
    # 120 s to the close. Covered: 45 · 120 + 360 = 5760 s = 7200 − 1440.
    assert seg2["gap_threshold_s"] == 360 and seg2["summary"]["reading_count"] == 46
    assert seg2["summary"]["covered_s"] == 5760 and seg2["summary"]["gap_s"] == 1440
    assert [(g["start"], g["end"]) for g in seg2["gaps"]] == [(iso(at(6960)), iso(at(8400)))]
    # Five readings at 7.5 °C, 120 s each: 600 s above the 4 °C limit; 5160 s in range.
    beyond = {b["limit_id"]: b["beyond_s"] for b in seg2["summary"]["beyond"]}
    assert beyond == {"upper": 600, "lower": 0} and seg2["summary"]["in_range_s"] == 5160
    # mean = (3.0·5160 + 7.5·600)/5760 = 3.46875 °C; MKT (by hand, weights 5160 and 600):
    #   10000/276.15 = 36.21220, 10000/280.65 = 35.63157; e^(36.21220 − 35.63157) = e^0.58063 = 1.78707
    #   ln((5160 + 600 · 1.78707)/5760) = ln(1.081986) = 0.078797
    #   MKT = 10000/(36.21220 − 0.078797) = 276.7522 K = 3.6022 °C
    assert seg2["summary"]["mean_c"] == pytest.approx(3.46875, abs=1e-9)
    assert seg2["summary"]["mkt_c"] == pytest.approx(3.6022, abs=0.005)
    assert total["covered_s"] == 9360 and total["gap_s"] == 1440 and total["window_s"] == 10800
    assert total["min_c"] == 2.0 and total["max_c"] == 7.5 and total["reading_count"] == 106
    assert [e["id"] for e in rep["excursions"]] == [1] and rep["excursions"][0]["category"] == "single"
    assert rep["excursions"][0]["acknowledged_by"] == "lou"
    assert rep["excursions"][0]["audit"][-1]["comment"] == "司机关好了车门 driver closed the door"
    assert rep["device_alerts"] == [] and rep["profile"]["id"] == "chilled"
    # A fixed G of 20 min: the 30-minute silence leaves a gap of 1800 − 1200 = 600 s.
    fixed = await (
        await client.get("/api/v1/shipments/hairtail-77/report?gap_threshold_s=1200", headers=ADM)
    ).json()
    assert fixed["segments"][1]["summary"]["gap_s"] == 600

    r = await client.get("/api/v1/shipments/hairtail-77/report.csv", headers=ADM)
    assert r.status == 200 and r.content_type == "text/csv"
    text = (await r.read()).decode("utf-8-sig")
    rows = list(csv.reader(io.StringIO(text)))
    summary = rows[rows.index(["summary"]) + 1 : rows.index(["summary"]) + 5]
    head = summary[0]
    total_row = dict(zip(head, summary[3], strict=False))
    assert total_row["scope"] == "total" and total_row["mkt_c"] == f"{total['mkt_c']:.2f}"
    assert total_row["gap_s"] == "1440" and total_row["beyond_upper_s"] == "600"
    readings = rows[rows.index(["readings"]) + 2 :]
    assert len(readings) == 106 and readings[0][:4] == ["1", "coldroom-1", iso(at(0)), "2"]
    assert ["2", "truck-7", iso(at(5400)), "7.5", "120", "1", "0"] in readings
    gaps = rows[rows.index(["gaps"]) + 2 : rows.index(["gaps"]) + 3]
    assert gaps == [["2", iso(at(6960)), iso(at(8400)), "1440", iso(at(6600)), iso(at(8400))]]

    assert shutil.which("pdftotext") and shutil.which("pdftoppm"), (
        "poppler-utils is missing (scripts/test.sh)"
    )
    ARTIFACTS.mkdir(exist_ok=True)
    for lang, labels in {
        "zh-CN": ["冷链运输温度报告", "运输路线", "平均动力学温度", "数据缺口", "温度偏离", "全程",
                  "冷冻带鱼"],
        "en": ["Cold-chain shipment report", "Route", "MKT", "Gaps in the data", "Temperature excursions",
               "Whole shipment"],
    }.items():  # fmt: skip
        r = await client.get(f"/api/v1/shipments/hairtail-77/report.pdf?lang={lang}", headers=ADM)
        assert r.status == 200 and r.content_type == "application/pdf"
        pdf = await r.read()
        assert pdf.startswith(b"%PDF-")
        path = ARTIFACTS / f"shipment-report-{lang}.pdf"
        path.write_bytes(pdf)
        text = await asyncio.to_thread(_pdf_text, path)
        for label in labels:
            assert label in text, (lang, label)
        # The figures, as rounded for people, and the person who acknowledged and their comment.
        figures = [f"{seg2['summary']['mkt_c']:.2f} °C", f"{total['mean_c']:.2f} °C", "7.50 °C"]
        figures += [
            "0:24:00",
            "0:10:00",
            "lou",
            "司机关好了车门",
            "2026-11-20 09:56:00",
            "2026-11-20 09:50:00",
        ]
        for figure in figures:
            assert figure in text, (lang, figure)
        await asyncio.to_thread(_first_page_png, path, ARTIFACTS / f"shipment-report-{lang}")
        assert (ARTIFACTS / f"shipment-report-{lang}-1.png").stat().st_size > 10_000
