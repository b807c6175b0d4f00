"""Who handled an alert is who the API says acted: logistics staff acknowledge and resolve
through the API (a browser session with its CSRF token, and a script's API token), and
the alert, its audit trail and its MQTT events name them; a producer and a visitor are
refused and leave no trace. Real mosquitto, real PostgreSQL, the real alert engine.
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import paho.mqtt.client as mqtt
from aiohttp.test_utils import TestClient
from paho.mqtt.enums import CallbackAPIVersion

from web.api_alerts import ALERTS
from web.app import build_app
from web.config import load_config

TOKEN = "alert-roles-admin-token-0123456789"
ADM = {"Authorization": f"Bearer {TOKEN}"}
PASSWORD = "cold chain all day"
ZERO_DELAY = {
    "name": "Zero delay (roles test)",
    "rules": [
        {"kind": "limit", "id": "upper", "direction": "above", "threshold": 4.0, "delay_s": 0,
         "clear_hysteresis": 0.5, "clear_for_s": 0},
    ],
}  # fmt: skip


class Events:
    """The alert events on origincast/alerts/<site>, as they arrive."""

    def __init__(self, host: str, port: int, site: str) -> None:
        self.items: list[dict[str, Any]] = []
        self._c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"roles-ev-{uuid.uuid4().hex[:8]}")
        ready = threading.Event()
        self._c.on_connect = lambda c, *_: c.subscribe(f"origincast/alerts/{site}", qos=1)
        self._c.on_subscribe = lambda *_: ready.set()
        self._c.on_message = lambda _c, _u, m: self.items.append(json.loads(m.payload))
        self._c.connect(host, port)
        self._c.loop_start()
        assert ready.wait(10)

    def close(self) -> None:
        self._c.disconnect()
        self._c.loop_stop()


def _publish(host: str, port: int, topic: str, payloads: list[bytes]) -> None:
    c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"roles-p-{uuid.uuid4().hex[:8]}")
    c.connect(host, port)
    c.loop_start()
    try:
        for p in payloads:
            c.publish(topic, p, qos=1).wait_for_publish(10)
    finally:
        c.disconnect()
        c.loop_stop()


async def _until(check: Any, within: float = 15.0) -> Any:
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        found = await check()
        if found:
            return found
        await asyncio.sleep(0.05)
    raise AssertionError(f"not within {within} s")


async def _login(client: TestClient, name: str) -> dict[str, str]:
    r = await client.post("/api/v1/session", json={"name": name, "password": PASSWORD})
    assert r.status == 200, await r.text()
    body = await r.json()
    client.session.cookie_jar.clear()  # each request below names its own credentials
    return {
        "Cookie": f"origincast_session={r.cookies['origincast_session'].value}",
        "X-CSRF-Token": body["csrf_token"],
    }


async def _refused(r: Any, status: int) -> None:
    assert r.status == status, await r.text()
    body = await r.json()
    assert list(body) == ["error"] and body["error"]


async def test_logistics_staff_acknowledge_and_resolve_under_their_own_names(
    aiohttp_client: Any, mosquitto: Any, pg_url: str
) -> None:
    site, dev = f"site-{uuid.uuid4().hex[:6]}", f"truck-{uuid.uuid4().hex[:6]}"
    config = load_config(
        env={
            "ORIGINCAST_DATABASE_URL": pg_url,
            "ORIGINCAST_MQTT_URL": mosquitto.url,
            "ORIGINCAST_INGEST_CLIENT_ID": f"roles-{uuid.uuid4().hex[:8]}",
            "ORIGINCAST_ADMIN_TOKEN": TOKEN,
            "ORIGINCAST_AUTH_ARGON2_TIME_COST": "1",
            "ORIGINCAST_AUTH_ARGON2_MEMORY_KIB": "1024",
            "ORIGINCAST_AUTH_ARGON2_PARALLELISM": "1",
        }
    )
    app = build_app(config)
    client = await aiohttp_client(app)
    events = Events(mosquitto.host, mosquitto.port, site)
    try:
        await _until(lambda: asyncio.sleep(0, app[ALERTS].connected))

        async def ready() -> bool:
            return (await client.get("/readyz")).status == 200

        await _until(ready)
        for name, role in (("li.wei", "logistics"), ("zhao.min", "logistics"), ("pat", "producer")):
            r = await client.post(
                "/api/v1/users", headers=ADM, json={"name": name, "role": role, "password": PASSWORD}
            )
            assert r.status == 201, await r.text()
        li, pat = await _login(client, "li.wei"), await _login(client, "pat")
        zhao_session = await _login(client, "zhao.min")
        r = await client.post("/api/v1/tokens", json={"name": "night shift script"}, headers=zhao_session)
        assert r.status == 201, await r.text()
        zhao_script = {"Authorization": f"Bearer {(await r.json())['token']}"}

        # Logistics staff set the device up themselves (profiles and devices are theirs).
        r = await client.put("/api/v1/alert-profiles/zero-roles", json=ZERO_DELAY, headers=li)
        assert r.status == 200, await r.text()
        r = await client.put(
            f"/api/v1/devices/{dev}", json={"site_id": site, "profile_id": "zero-roles"}, headers=li
        )
        assert r.status == 200, await r.text()
        t0 = datetime.now(UTC).replace(microsecond=0)
        readings = [
            json.dumps({"ts": int((t0 + timedelta(seconds=s)).timestamp() * 1000), "temp_c": t}).encode()
            for s, t in ((0, 3.0), (1, 8.5))
        ]
        await asyncio.to_thread(
            _publish, mosquitto.host, mosquitto.port, f"origincast/{dev}/telemetry", readings
        )

        async def raised() -> list[dict[str, Any]]:
            r = await client.get(f"/api/v1/alerts?device={dev}", headers=li)
            assert r.status == 200
            return (await r.json())["alerts"]

        [alert] = await _until(raised)
        url = f"/api/v1/alerts/{alert['id']}"

        # Refused: no login, a producer, a session without its CSRF token. Nothing recorded.
        await _refused(await client.post(f"{url}/acknowledge", json={"comment": "x"}), 401)
        await _refused(
            await client.post(f"{url}/acknowledge", json={"comment": "mine now"}, headers=pat), 403
        )
        await _refused(await client.post(f"{url}/resolve", json={"comment": "fixed it"}, headers=pat), 403)
        await _refused(await client.get(url, headers=pat), 403)
        no_csrf = {"Cookie": li["Cookie"]}
        await _refused(await client.post(f"{url}/acknowledge", json={"comment": "x"}, headers=no_csrf), 403)
        detail = await (await client.get(url, headers=li)).json()
        assert [(e["action"], e["actor"]) for e in detail["audit"]] == [("raised", "system")]
        assert detail["status"] == "open" and detail["acknowledged_by"] is None

        # Li acknowledges from the console (session + CSRF); Zhao's script resolves it.
        r = await client.post(f"{url}/acknowledge", json={"comment": "driver called, door shut"}, headers=li)
        assert r.status == 200, await r.text()
        assert (await r.json())["alert"]["acknowledged_by"] == "li.wei"
        r = await client.post(
            f"{url}/resolve", json={"comment": "load moved to truck 3"}, headers=zhao_script
        )
        assert r.status == 200, await r.text()

        detail = await (await client.get(url, headers=zhao_script)).json()
        assert detail["status"] == "resolved"
        assert (detail["acknowledged_by"], detail["ack_comment"]) == ("li.wei", "driver called, door shut")
        assert (detail["resolved_by"], detail["resolution_comment"]) == ("zhao.min", "load moved to truck 3")
        assert [(e["action"], e["actor"], e["comment"]) for e in detail["audit"]] == [
            ("raised", "system", ""),
            ("acknowledged", "li.wei", "driver called, door shut"),
            ("resolved", "zhao.min", "load moved to truck 3"),
        ]
        # The events on MQTT (what webhooks and the live feed carry) name them too.

        async def both_events() -> bool:
            return [e["event"] for e in events.items][-2:] == ["acknowledged", "resolved"]

        await _until(both_events, 10)
        ack, res = events.items[-2], events.items[-1]
        assert ack["alert"]["acknowledged_by"] == "li.wei"
        assert res["alert"]["resolved_by"] == "zhao.min"
    finally:
        events.close()
