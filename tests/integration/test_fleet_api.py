"""The console's API (web/api_fleet.py) and the live feed's ``all=1`` selection, through the
whole app (ingest, alert engine, live feed) on real mosquitto, SQLite and PostgreSQL:

- GET /api/v1/fleet: staff only; every device with its profile, limits, latest reading and
  a state (ok / stale / offline / alert), the alert state from a real excursion over MQTT;
  ?site= filters;
- GET /api/v1/devices/{id}/history: buckets checked against figures computed here, the
  automatic bucket, the profile's limits, and every kind of bad input → 400 (or 404) with
  a JSON error;
- GET /api/v1/live?all=1: a snapshot of every device (assigned or not), then changes.
"""

from __future__ import annotations

import asyncio
import json
import re
import statistics
import time
import uuid
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from telemetry.readings import Reading
from web.api_alerts import ALERTS
from web.app import STORE, build_app
from web.config import load_config
from web.live import LIVE

TOKEN = "test-admin-token-0123456789"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
ZERO_DELAY = {
    "name": "Zero delay (test)",
    "rules": [
        {"kind": "limit", "id": "upper", "direction": "above", "threshold": 4.0, "delay_s": 0,
         "clear_hysteresis": 0.5, "clear_for_s": 0},
        {"kind": "offline", "id": "offline", "timeout_s": 900},
    ],
}  # fmt: skip


@pytest.fixture(params=["sqlite", "postgres"])
def fleet_db(request: pytest.FixtureRequest) -> str:
    return str(request.getfixturevalue({"sqlite": "sqlite_url", "postgres": "pg_url"}[request.param]))


def publish(host: str, port: int, device: str, ts: datetime, temp: float) -> None:
    c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"p-{uuid.uuid4().hex[:8]}")
    c.connect(host, port)
    c.loop_start()
    body = json.dumps({"ts": int(ts.timestamp() * 1000), "temp_c": temp, "battery_v": 3.01})
    c.publish(f"origincast/{device}/telemetry", body, qos=1).wait_for_publish(10)
    c.disconnect()
    c.loop_stop()


async def until(cond: Callable[[], Awaitable[bool]], within: float = 15.0) -> None:
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        if await cond():
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"not within {within} s")


async def start(aiohttp_client: Any, mosquitto: Any, db: str) -> tuple[Any, Any]:
    config = load_config(
        env={
            "ORIGINCAST_DATABASE_URL": db,
            "ORIGINCAST_MQTT_URL": mosquitto.url,
            "ORIGINCAST_INGEST_CLIENT_ID": f"serve-{uuid.uuid4().hex[:8]}",
            "ORIGINCAST_ADMIN_TOKEN": TOKEN,
        }
    )
    app = build_app(config)
    client = await aiohttp_client(app)
    await until(lambda: asyncio.sleep(0, app[ALERTS].connected))
    await until(lambda: _ready(client))
    return app, client


async def _ready(client: Any) -> bool:
    return (await client.get("/readyz")).status == 200


def _minute(t: datetime) -> datetime:
    return t.replace(second=0, microsecond=0)


async def test_fleet_states_and_site_filter(aiohttp_client, mosquitto, fleet_db):
    app, client = await start(aiohttp_client, mosquitto, fleet_db)
    tag = uuid.uuid4().hex[:6]
    site, other = f"depot-{tag}", f"farm-{tag}"
    fresh, stale, silent, stray, hot = (f"{n}-{tag}" for n in ("fresh", "stale", "silent", "stray", "hot"))

    assert (await client.get("/api/v1/fleet")).status == 401
    r = await client.get("/api/v1/fleet", headers={"Authorization": "Bearer wrong-token-0123456789"})
    assert r.status == 401 and "error" in await r.json()

    assert (await client.put("/api/v1/alert-profiles/zero", json=ZERO_DELAY, headers=AUTH)).status == 200
    for dev, s, profile, name in (
        (fresh, site, "chilled", "Cold room"),
        (stale, site, "frozen", "Freezer"),
        (silent, other, "pharma", None),
        (hot, site, "zero", "Truck 9"),
    ):
        body = {"site_id": s, "profile_id": profile} | ({"name": name} if name else {})
        r = await client.put(f"/api/v1/devices/{dev}", json=body, headers=AUTH)
        assert r.status == 200, await r.text()
    now = datetime.now(UTC).replace(microsecond=0)
    store = app[STORE]
    await asyncio.to_thread(
        store.write_batch,
        [
            Reading(fresh, now - timedelta(seconds=5), 3.1, 80.0, 3.0, False),
            Reading(stale, now - timedelta(minutes=5), -19.5, None, 2.95, True),
            Reading(stray, now - timedelta(minutes=20), 7.0),  # never assigned: offline after 600 s
        ],
        [],
    )
    # An excursion through the real pipeline: broker → ingest → engine → alert.
    await asyncio.to_thread(publish, mosquitto.host, mosquitto.port, hot, datetime.now(UTC), 6.5)

    async def fleet(query: str = "") -> dict[str, Any]:
        r = await client.get(f"/api/v1/fleet{query}", headers=AUTH)
        assert r.status == 200, await r.text()
        return dict(await r.json())

    async def hot_alerting() -> bool:
        d = {x["device_id"]: x for x in (await fleet())["devices"]}
        return d.get(hot, {}).get("state") == "alert"

    await until(hot_alerting)
    body = await fleet()
    assert body["stale_after_s"] == 120
    assert abs(datetime.fromisoformat(body["now"]).timestamp() - time.time()) < 5
    devices = {d["device_id"]: d for d in body["devices"]}
    assert {fresh, stale, silent, stray, hot} <= set(devices)
    f = devices[fresh]
    assert (f["state"], f["site_id"], f["profile_id"], f["name"]) == ("ok", site, "chilled", "Cold room")
    assert f["reading"] == {
        "ts": (now - timedelta(seconds=5)).isoformat().replace("+00:00", "Z"),
        "temp_c": 3.1, "rh": 80.0, "battery_v": 3.0, "door_open": False,
    }  # fmt: skip
    assert 5 <= f["age_s"] < 30 and f["active_alerts"] == 0 and f["worst_severity"] is None
    assert sorted((x["rule_id"], x["direction"], x["threshold"]) for x in f["limits"]) == [
        ("lower", "below", 0.0), ("upper", "above", 4.0),
    ]  # fmt: skip
    assert f["offline_after_s"] == 600 and f["profile_name"] == "Chilled (0-4 °C)"
    assert devices[stale]["state"] == "stale" and devices[stale]["reading"]["door_open"] is True
    assert [x["threshold"] for x in devices[stale]["limits"]] == [-18.0, -15.0]
    assert devices[silent]["state"] == "offline" and devices[silent]["reading"] is None
    assert devices[silent]["age_s"] is None
    s = devices[stray]
    assert (s["state"], s["site_id"], s["profile_id"], s["limits"]) == ("offline", None, None, [])
    h = devices[hot]
    assert (h["active_alerts"], h["worst_severity"], h["offline_after_s"]) == (1, "major", 900)
    assert h["reading"]["temp_c"] == 6.5 and h["reading"]["battery_v"] == 3.01

    only = await fleet(f"?site={site}")
    assert sorted(d["device_id"] for d in only["devices"]) == sorted([fresh, stale, hot])
    both = await fleet(f"?site={site}&site={other}")
    assert sorted(d["device_id"] for d in both["devices"]) == sorted([fresh, stale, hot, silent])
    assert (await fleet("?site=nowhere-at-all"))["devices"] == []

    # Resolving the alert puts the device back to ok.
    r = await client.get(f"/api/v1/alerts?device={hot}&state=active", headers=AUTH)
    [alert] = (await r.json())["alerts"]
    r = await client.post(
        f"/api/v1/alerts/{alert['id']}/resolve", json={"comment": "door shut"}, headers=AUTH
    )
    assert r.status == 200
    d = {x["device_id"]: x for x in (await fleet())["devices"]}
    assert (d[hot]["state"], d[hot]["active_alerts"]) == ("ok", 0)


async def test_history_buckets_limits_and_bad_ranges(aiohttp_client, mosquitto, fleet_db):
    app, client = await start(aiohttp_client, mosquitto, fleet_db)
    dev = f"hist-{uuid.uuid4().hex[:6]}"
    r = await client.put(
        f"/api/v1/devices/{dev}", json={"site_id": "depot", "profile_id": "chilled"}, headers=AUTH
    )
    assert r.status == 200
    # Two hours of one reading a minute, ending at a whole hour (so 10-minute buckets line up).
    end = _minute(datetime.now(UTC)).replace(minute=0) - timedelta(hours=1)
    start_ = end - timedelta(hours=2)
    readings = [
        Reading(dev, start_ + timedelta(minutes=i), round(2.0 + (i % 7) * 0.5, 2)) for i in range(120)
    ]
    await asyncio.to_thread(app[STORE].write_batch, readings, [])

    def iso(t: datetime) -> str:
        return t.isoformat().replace("+00:00", "Z")

    url = f"/api/v1/devices/{dev}/history"
    assert (await client.get(f"{url}?from={iso(start_)}&to={iso(end)}")).status == 401

    r = await client.get(f"{url}?from={iso(start_)}&to={iso(end)}&bucket=10m", headers=AUTH)
    assert r.status == 200, await r.text()
    body = await r.json()
    assert (body["device_id"], body["site_id"], body["profile_id"], body["bucket_s"]) == (
        dev, "depot", "chilled", 600.0,
    )  # fmt: skip
    assert (body["from"], body["to"]) == (iso(start_), iso(end))
    assert sorted(x["threshold"] for x in body["limits"]) == [0.0, 4.0]
    assert len(body["points"]) == 12
    for k, p in enumerate(body["points"]):
        mine = [x.temp_c for x in readings[k * 10 : (k + 1) * 10]]
        assert p["t"] == iso(start_ + timedelta(minutes=10 * k))
        assert (p["min"], p["max"], p["count"]) == (min(mine), max(mine), 10)
        assert p["mean"] == pytest.approx(statistics.fmean(mine))

    # No bucket given: the smallest usual width with ≤ 1,000 points (2 h → 10 s: 720 points).
    r = await client.get(f"{url}?from={iso(start_)}&to={iso(end)}", headers=AUTH)
    body = await r.json()
    assert body["bucket_s"] == 10.0 and sum(p["count"] for p in body["points"]) == 120
    assert len(body["points"]) == 120  # one reading a minute: one non-empty bucket each
    for span, expect in (
        (timedelta(days=7), 900.0),
        (timedelta(days=400), 43200.0),
        (timedelta(hours=1), 10.0),
    ):
        r = await client.get(f"{url}?from={iso(end - span)}&to={iso(end)}", headers=AUTH)
        body = await r.json()
        assert body["bucket_s"] == expect, span
        assert span.total_seconds() / body["bucket_s"] <= 1000
    # No range: the last 24 h, which holds all 120 readings.
    body = await (await client.get(url, headers=AUTH)).json()
    got = datetime.fromisoformat(body["to"]) - datetime.fromisoformat(body["from"])
    assert got == timedelta(hours=24) and sum(p["count"] for p in body["points"]) == 120
    # Seconds without a unit, and an offset instead of Z.
    r = await client.get(
        f"{url}?from={(start_ + timedelta(hours=8)).isoformat().replace('+00:00', '%2B08:00')}"
        f"&to={iso(end)}&bucket=3600",
        headers=AUTH,
    )
    assert r.status == 200, await r.text()
    assert [p["count"] for p in (await r.json())["points"]] == [60, 60]

    bad = [
        (f"from=yesterday&to={iso(end)}", "from must be an ISO 8601 time"),
        (f"from={iso(start_)}&to=2026-13-45T00:00:00Z", "to must be an ISO 8601 time"),
        (f"from={iso(end)}&to={iso(start_)}", "from must be before to"),
        (f"from={iso(end)}&to={iso(end)}", "from must be before to"),
        (f"from={iso(end - timedelta(days=401))}&to={iso(end)}", "at most 400 days"),
        (f"from={iso(start_)}&to={iso(end)}&bucket=0", "bucket must be"),
        (f"from={iso(start_)}&to={iso(end)}&bucket=-5", "bucket must be"),
        (f"from={iso(start_)}&to={iso(end)}&bucket=5x", "bucket must be"),
        (f"from={iso(end - timedelta(days=7))}&to={iso(end)}&bucket=1s", "604800 points"),
    ]
    for query, message in bad:
        r = await client.get(f"{url}?{query}", headers=AUTH)
        assert r.status == 400, (query, await r.text())
        assert message in (await r.json())["error"], (query, await r.text())
    r = await client.get("/api/v1/devices/no-such-device-here/history", headers=AUTH)
    assert r.status == 404 and "no device" in (await r.json())["error"]
    r = await client.get("/api/v1/devices/bad%20id!/history", headers=AUTH)
    assert r.status == 400 and "device id" in (await r.json())["error"]
    # Bad input harmed nothing: the data is all still there.
    assert await asyncio.to_thread(app[STORE].count_readings, dev) == 120


async def test_live_feed_all_devices(aiohttp_client, mosquitto, fleet_db):
    app, client = await start(aiohttp_client, mosquitto, fleet_db)
    tag = uuid.uuid4().hex[:6]
    assigned, stray = f"room-{tag}", f"stray-{tag}"
    assert (
        await client.put(f"/api/v1/devices/{assigned}", json={"site_id": f"s-{tag}"}, headers=AUTH)
    ).status == 200
    ts = datetime.now(UTC).replace(microsecond=0) - timedelta(seconds=3)
    await asyncio.to_thread(app[STORE].write_batch, [Reading(stray, ts, 1.5)], [])

    assert (await client.get("/api/v1/live?all=yes", headers=AUTH)).status == 400
    assert (await client.get(f"/api/v1/live?all=1&site=s-{tag}", headers=AUTH)).status == 400
    await app[LIVE].refresh_devices()  # its cache of the devices table is refreshed every 10 s
    ws = await client.ws_connect("/api/v1/live?all=1", headers=AUTH)
    try:
        snap = json.loads((await ws.receive(timeout=10)).data)
        assert snap["type"] == "snapshot" and snap["selection"]["kind"] == "all"
        assert assigned in {d["device_id"] for d in snap["devices"]}
        # The unassigned device is there too, with its reading.
        assert {"device_id": stray, "temp_c": 1.5} in [
            {"device_id": r["device_id"], "temp_c": r["temp_c"]} for r in snap["readings"]
        ]
        for dev, temp in ((assigned, 2.25), (stray, 9.75)):
            await asyncio.to_thread(publish, mosquitto.host, mosquitto.port, dev, datetime.now(UTC), temp)
            deadline = time.monotonic() + 5
            while True:
                msg = json.loads((await ws.receive(timeout=max(0.1, deadline - time.monotonic()))).data)
                if msg["type"] == "reading" and msg["device_id"] == dev:
                    assert msg["temp_c"] == temp
                    break
    finally:
        await ws.close()


async def test_console_page_is_a_staff_shell_that_loads_nothing_from_elsewhere(aiohttp_client, sqlite_url):
    config = load_config(env={"ORIGINCAST_DATABASE_URL": sqlite_url, "ORIGINCAST_ADMIN_TOKEN": TOKEN})
    client = await aiohttp_client(build_app(config, with_ingest=False))
    r = await client.get("/console", allow_redirects=False)
    assert r.status == 303 and r.headers["Location"].startswith("/login?next=")
    r = await client.get("/console?lang=zh", headers=AUTH)
    assert r.status == 200, await r.text()
    page = await r.text()
    assert '<html lang="zh-CN">' in page and "物流控制台" in page and "/static/console.js" in page
    csp = r.headers["Content-Security-Policy"]
    assert "frame-ancestors 'none'" in csp and "script-src 'self'" in csp
    # Every script and style is ours, the chart library included (vendored, with its licence);
    # the one link is to our own shipments page.
    for url in re.findall(r'(?:src|href)="([^"]+)"', page):
        assert url.startswith(("/static/", "data:")) or url == "/shipments", url
    for path in ("/static/console.js", "/static/console.css", "/static/vendor/uplot/uPlot.esm.js"):
        assert (await client.get(path)).status == 200, path
    lic = await (await client.get("/static/vendor/uplot/LICENSE")).text()
    assert "MIT" in lic
