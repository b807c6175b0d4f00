"""Streams linked to sensors, signed share links of unlisted streams, and the demo's
test-pattern stream in the registry: through the real server (aiohttp test server, real
mosquitto for the live feed, SQLite and PostgreSQL for the registry).

- GET/PUT /api/v1/streams/{slug}/links and `origincast streams link`; the live feed
  (?stream=) shows the linked sites' and devices' readings, and only theirs;
- POST /api/v1/streams/{slug}/share: the watch page, WHEP and the live feed of an
  unlisted stream need a valid token; missing, forged, expired, other-stream and
  revoked (key rotated) tokens are answered like an unknown stream;
- the share secret: ORIGINCAST_SECRET_KEY, or one kept in the registry database that
  every server on that database shares;
- `demo` is a registry entry with its title (en / zh-CN), live state and the demo fleet.
"""

from __future__ import annotations

import asyncio
import json
import re
import time
import uuid
from datetime import UTC, datetime
from typing import Any

import aiohttp
import paho.mqtt.client as mqtt
import pytest
from aiohttp.test_utils import TestClient
from paho.mqtt.enums import CallbackAPIVersion

from web.app import SHARE, STREAM_HUB, STREAMS, build_app
from web.cli import main as cli_main
from web.config import load_config
from web.demo import DEMO_ASSIGNMENTS
from web.live import LIVE

TOKEN = "test-admin-token-0123456789"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
SDP = {"Content-Type": "application/sdp"}
# An SDP offer shaped enough for WHEP's checks (404/409 come before any negotiation).
OFFER = (
    "v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\ns=-\r\nt=0 0\r\n"
    "m=video 9 UDP/TLS/RTP/SAVPF 96\r\nc=IN IP4 0.0.0.0\r\na=recvonly\r\n"
    "a=rtpmap:96 H264/90000\r\na=fmtp:96 packetization-mode=1;profile-level-id=42e01f\r\n"
)


@pytest.fixture(params=["sqlite", "postgres"])
def registry_db(request: pytest.FixtureRequest) -> str:
    return str(request.getfixturevalue({"sqlite": "sqlite_url", "postgres": "pg_url"}[request.param]))


def env(db: str, **extra: str) -> dict[str, str]:
    return {
        "ORIGINCAST_DATABASE_URL": db,
        "ORIGINCAST_ADMIN_TOKEN": TOKEN,
        "ORIGINCAST_STREAM_ICE_HOST_ADDRESSES": "127.0.0.1",
        # Nothing listens here: the live feed's MQTT client retries quietly meanwhile.
        "ORIGINCAST_MQTT_URL": "mqtt://127.0.0.1:9",
        **extra,
    }


async def serve(aiohttp_client: Any, settings: dict[str, str], *, ingest: bool = False) -> TestClient:
    return await aiohttp_client(build_app(load_config(env=settings), with_ingest=ingest))


async def create(client: TestClient, slug: str, **fields: Any) -> dict[str, Any]:
    body = {"slug": slug, "title": slug.title(), **fields}
    r = await client.post("/api/v1/streams", json=body, headers=AUTH)
    created = await r.json()
    assert r.status == 201, created
    return dict(created)


async def page_config(client: TestClient, path: str) -> tuple[int, dict[str, Any], str]:
    r = await client.get(path)
    text = await r.text()
    found = re.search(r'<script type="application/json" id="oc-config">(.*?)</script>', text, re.S)
    assert found is not None
    return r.status, dict(json.loads(found.group(1))), text


async def share(client: TestClient, slug: str, ttl_s: int = 600) -> str:
    r = await client.post(f"/api/v1/streams/{slug}/share", json={"ttl_s": ttl_s}, headers=AUTH)
    body = await r.json()
    assert r.status == 201, body
    assert body["url"].startswith(f"/watch/{slug}?share=")
    expires = datetime.fromisoformat(body["expires_at"].replace("Z", "+00:00"))
    assert abs((expires - datetime.now(UTC)).total_seconds() - ttl_s) < 5
    return str(body["url"].split("?share=", 1)[1])


# -- links ---------------------------------------------------------------------------------


async def test_links_api_and_cli(aiohttp_client, registry_db, monkeypatch, capsys):
    client = await serve(aiohttp_client, env(registry_db))
    await create(client, "farm", site="farm-7")
    r = await client.get("/api/v1/streams/farm/links")
    assert await r.json() == {"slug": "farm", "sites": ["farm-7"], "devices": [], "default": True}

    url = "/api/v1/streams/farm/links"
    body = {"sites": ["dock", "dock", "farm-7"], "devices": ["truck-9"]}
    # The same credential as PATCH: none, a wrong one → 401, and nothing changes.
    assert (await client.put(url, json=body)).status == 401
    r = await client.put(url, json=body, headers={"Authorization": "Bearer wrong-token-0123456789"})
    assert r.status == 401 and "error" in await r.json()
    assert (await (await client.get(url)).json())["default"] is True
    # Bad input: 4xx with a JSON error, nothing stored.
    for bad, status in [
        ({"sites": "dock"}, 422),
        ({"sites": [""]}, 422),
        ({"devices": [7]}, 422),
        ({"devices": ["x" * 65]}, 422),
        ({"sites": [f"s{i}" for i in range(101)]}, 422),
        ({"site": ["dock"]}, 400),
    ]:
        r = await client.put(url, json=bad, headers=AUTH)
        assert r.status == status, bad
        assert "error" in await r.json()
    r = await client.put(url, data="[", headers={**AUTH, "Content-Type": "application/json"})
    assert r.status == 400
    r = await client.put(url, data="x", headers={**AUTH, "Content-Type": "text/plain"})
    assert r.status == 415
    assert (await client.put("/api/v1/streams/nope/links", json=body, headers=AUTH)).status == 404
    assert (await client.get("/api/v1/streams/nope/links")).status == 404
    assert (await (await client.get(url)).json())["default"] is True

    r = await client.put(url, json=body, headers=AUTH)
    assert r.status == 200
    want = {"slug": "farm", "sites": ["dock", "farm-7"], "devices": ["truck-9"], "default": False}
    assert await r.json() == want
    assert await (await client.get(url)).json() == want
    # Both empty: back to the default.
    r = await client.put(url, json={"sites": [], "devices": []}, headers=AUTH)
    assert (await r.json())["sites"] == ["farm-7"] and (await r.json())["default"] is True

    # The CLI, on the same database (SQLite or PostgreSQL).
    monkeypatch.setenv("ORIGINCAST_DATABASE_URL", registry_db)
    await asyncio.to_thread(cli_main, ["streams", "link", "farm", "--site", "dock", "--device", "coldroom-1"])
    assert "farm: sites dock · devices coldroom-1" in capsys.readouterr().out
    assert await (await client.get(url)).json() == {
        "slug": "farm", "sites": ["dock"], "devices": ["coldroom-1"], "default": False,
    }  # fmt: skip
    await asyncio.to_thread(cli_main, ["streams", "link", "farm"])  # shows, changes nothing
    assert "devices coldroom-1" in capsys.readouterr().out
    await asyncio.to_thread(cli_main, ["streams", "link", "farm", "--default"])
    assert "(default: the stream's own site)" in capsys.readouterr().out
    with pytest.raises(SystemExit, match="no stream 'nope'"):
        await asyncio.to_thread(cli_main, ["streams", "link", "nope", "--site", "x"])
    with pytest.raises(SystemExit, match="devices"):
        await asyncio.to_thread(cli_main, ["streams", "link", "farm", "--device", "x" * 65])

    # Removing the stream removes its links (a new stream of that name starts clean).
    assert (await client.put(url, json=body, headers=AUTH)).status == 200
    assert (await client.delete("/api/v1/streams/farm", headers=AUTH)).status == 204
    await create(client, "farm", site="elsewhere")
    assert (await (await client.get(url)).json())["sites"] == ["elsewhere"]


class Sensor:
    def __init__(self, host: str, port: int) -> None:
        self._c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"sensor-{uuid.uuid4().hex[:8]}")
        self._c.connect(host, port)
        self._c.loop_start()

    def reading(self, device: str, temp: float) -> None:
        body = json.dumps({"ts": int(time.time() * 1000), "temp_c": temp})
        self._c.publish(f"origincast/{device}/telemetry", body, qos=1).wait_for_publish(10)

    def close(self) -> None:
        self._c.disconnect()
        self._c.loop_stop()


async def next_of(ws: Any, kind: str, within: float) -> dict[str, Any]:
    deadline = time.monotonic() + within
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            raise AssertionError(f"no {kind} within {within} s")
        msg = await ws.receive(timeout=left)
        assert msg.type == aiohttp.WSMsgType.TEXT, msg
        doc = json.loads(msg.data)
        if doc["type"] == kind:
            return dict(doc)


async def live_server(aiohttp_client: Any, mosquitto: Any, db: str) -> TestClient:
    client = await serve(
        aiohttp_client,
        env(db, ORIGINCAST_MQTT_URL=mosquitto.url, ORIGINCAST_INGEST_CLIENT_ID=f"t-{uuid.uuid4().hex[:8]}"),
        ingest=True,
    )
    for _ in range(300):
        if client.app[LIVE].connected.is_set():
            break
        await asyncio.sleep(0.05)
    await asyncio.sleep(0.2)  # the live feed's SUBACK
    return client


async def test_live_feed_follows_the_links(aiohttp_client, mosquitto, registry_db):
    client = await live_server(aiohttp_client, mosquitto, registry_db)
    tag = uuid.uuid4().hex[:6]
    own, dock = f"farm-{tag}", f"dock-{tag}"
    at_farm, at_dock, truck = f"room-{tag}", f"bay-{tag}", f"truck-{tag}"
    for device, site in [(at_farm, own), (at_dock, dock), (truck, "fleet")]:
        body = {"site_id": site, "name": device}
        r = await client.put(f"/api/v1/devices/{device}", json=body, headers=AUTH)
        assert r.status == 200, await r.text()
    await create(client, "farm", site=own)
    await client.app[LIVE].refresh_devices()

    # No links: the stream's own site.
    ws = await client.ws_connect("/api/v1/live?stream=farm")
    snap = await next_of(ws, "snapshot", 5)
    assert [d["device_id"] for d in snap["devices"]] == [at_farm]
    await ws.close()

    links = {"sites": [dock], "devices": [truck]}
    assert (await client.put("/api/v1/streams/farm/links", json=links, headers=AUTH)).status == 200
    ws = await client.ws_connect("/api/v1/live?stream=farm")
    snap = await next_of(ws, "snapshot", 5)
    assert {d["device_id"] for d in snap["devices"]} == {at_dock, truck}
    assert snap["selection"]["sites"] == [dock] and snap["selection"]["devices"] == [truck]
    sensor = Sensor(mosquitto.host, mosquitto.port)
    try:
        for device, temp in [(at_farm, 9.0), (at_dock, 3.5), (truck, 4.5)]:
            await asyncio.to_thread(sensor.reading, device, temp)
        got = {}
        for _ in range(2):
            doc = await next_of(ws, "reading", 2.0)
            got[doc["device_id"]] = doc["temp_c"]
        # Linked by site and by device; the stream's own site is no longer linked.
        assert got == {at_dock: 3.5, truck: 4.5}
        with pytest.raises((AssertionError, asyncio.TimeoutError)):
            await next_of(ws, "reading", 0.5)
    finally:
        sensor.close()
        await ws.close()

    # Sites and devices are staff views: refused without the admin token, as JSON.
    for q in (f"site={dock}", f"device={truck}"):
        r = await client.get(f"/api/v1/live?{q}")
        assert r.status == 401 and "error" in await r.json()
    ws = await client.ws_connect(f"/api/v1/live?device={truck}", headers=AUTH)
    assert [d["device_id"] for d in (await next_of(ws, "snapshot", 5))["devices"]] == [truck]
    await ws.close()


# -- share links -----------------------------------------------------------------------------


async def test_unlisted_streams_need_a_valid_share_link(aiohttp_client, registry_db):
    client = await serve(aiohttp_client, env(registry_db))
    await create(client, "secret-farm", visibility="unlisted", site="farm-9")
    publish_key = (await create(client, "other", visibility="unlisted"))["publish_key"]
    assert publish_key

    # Issuing: the PATCH credential, a sane ttl, a known stream.
    url = "/api/v1/streams/secret-farm/share"
    assert (await client.post(url, json={"ttl_s": 600})).status == 401
    for bad in ({"ttl_s": 5}, {"ttl_s": 10**9}, {"ttl_s": "600"}, {"ttl_s": True}):
        r = await client.post(url, json=bad, headers=AUTH)
        assert r.status == 422 and "ttl_s" in (await r.json())["error"]
    assert (await client.post(url, json={"ttl": 600}, headers=AUTH)).status == 400
    assert (await client.post("/api/v1/streams/nope/share", json={}, headers=AUTH)).status == 404
    token = await share(client, "secret-farm")

    # The watch page: 404 (the unknown-stream page) without a valid token, the stream with one.
    status, unknown_cfg, _ = await page_config(client, "/watch/no-such-stream")
    assert status == 404 and unknown_cfg["stream"] is None
    status, cfg, _ = await page_config(client, f"/watch/secret-farm?share={token}")
    assert status == 200
    assert cfg["stream"] == {"title": "Secret-Farm", "site": "farm-9", "builtin": False}
    assert cfg["share"] == token  # passed on to WHEP and the live feed by the scripts

    share_links = client.app[SHARE]
    stamp = await asyncio.to_thread(client.app[STREAMS].share_stamp, "secret-farm")
    assert stamp is not None
    past = int(time.time()) - 10
    expiry, mac = token.split(".")
    refused = {
        "none": "",
        "garbage": "?share=hello",
        "forged": f"?share={expiry}.{mac[:-2]}{'AA' if mac[-2:] != 'AA' else 'BB'}",
        "extended": f"?share={int(expiry) + 3600}.{mac}",  # the expiry is signed too
        "expired": f"?share={past}.{share_links._mac('secret-farm', stamp, past)}",
        "other stream's": f"?share={await share(client, 'other')}",
        "too long": f"?share={'9' * 200}",
    }
    for name, query in refused.items():
        status, cfg, html = await page_config(client, f"/watch/secret-farm{query}")
        assert status == 404, name
        assert cfg["stream"] is None and cfg["share"] is None, name
        assert "Secret-Farm" not in html and "farm-9" not in html, name

        # WHEP: the same 404 as an unknown stream. With a valid token, the (idle) stream
        # is known: 409 offline, retry.
        r = await client.post(f"/whep/secret-farm{query}", data=OFFER, headers=SDP)
        assert r.status == 404, name
        assert await r.json() == {"error": "no stream named 'secret-farm'"}
        # The live feed likewise.
        live_query = query.replace("?", "&")
        r = await client.get(f"/api/v1/live?stream=secret-farm{live_query}")
        assert r.status == 404, name
    r = await client.post(f"/whep/secret-farm?share={token}", data=OFFER, headers=SDP)
    assert r.status == 409 and "offline" in (await r.json())["error"]

    # Rotating the publish key revokes every share link of the stream (and only its own).
    other_token = await share(client, "other")
    assert (await client.post("/api/v1/streams/secret-farm/rotate-key", headers=AUTH)).status == 200
    assert (await page_config(client, f"/watch/secret-farm?share={token}"))[0] == 404
    r = await client.post(f"/whep/secret-farm?share={token}", data=OFFER, headers=SDP)
    assert r.status == 404
    assert (await page_config(client, f"/watch/other?share={other_token}"))[0] == 200
    fresh = await share(client, "secret-farm")
    assert (await page_config(client, f"/watch/secret-farm?share={fresh}"))[0] == 200

    # Removed and made again under the same name: the old links do not carry over.
    assert (await client.delete("/api/v1/streams/secret-farm", headers=AUTH)).status == 204
    await create(client, "secret-farm", visibility="unlisted")
    assert (await page_config(client, f"/watch/secret-farm?share={fresh}"))[0] == 404

    # Public streams need none, and ignore one.
    await create(client, "open-farm")
    assert (await page_config(client, "/watch/open-farm"))[0] == 200
    status, cfg, _ = await page_config(client, "/watch/open-farm?share=whatever")
    assert status == 200 and cfg["share"] is None
    r = await client.post("/whep/open-farm", data=OFFER, headers=SDP)
    assert r.status == 409


async def test_unlisted_live_feed_with_a_share_link(aiohttp_client, mosquitto, sqlite_url):
    client = await live_server(aiohttp_client, mosquitto, sqlite_url)
    tag = uuid.uuid4().hex[:6]
    r = await client.put(f"/api/v1/devices/cr-{tag}", json={"site_id": f"s-{tag}"}, headers=AUTH)
    assert r.status == 200
    await create(client, "hidden", visibility="unlisted", site=f"s-{tag}")
    await client.app[LIVE].refresh_devices()
    assert (await client.get("/api/v1/live?stream=hidden")).status == 404
    token = await share(client, "hidden")
    ws = await client.ws_connect(f"/api/v1/live?stream=hidden&share={token}")
    snap = await next_of(ws, "snapshot", 5)
    assert [d["device_id"] for d in snap["devices"]] == [f"cr-{tag}"]
    await ws.close()


async def test_the_share_secret_is_shared_by_servers_on_one_database(aiohttp_client, registry_db):
    first = await serve(aiohttp_client, env(registry_db))
    await create(first, "hidden", visibility="unlisted")
    token = await share(first, "hidden")
    # A second web node on the same database: the secret kept there, the same answer.
    second = await serve(aiohttp_client, env(registry_db))
    assert (await page_config(second, f"/watch/hidden?share={token}"))[0] == 200
    # A configured key replaces it: the stored one's links are not accepted there.
    key = "k" * 40
    third = await serve(aiohttp_client, env(registry_db, ORIGINCAST_SECRET_KEY=key))
    assert (await page_config(third, f"/watch/hidden?share={token}"))[0] == 404
    token3 = await share(third, "hidden")
    fourth = await serve(aiohttp_client, env(registry_db, ORIGINCAST_SECRET_KEY=key))
    assert (await page_config(fourth, f"/watch/hidden?share={token3}"))[0] == 200


# -- the demo stream ---------------------------------------------------------------------------


async def test_the_demo_stream_is_in_the_registry(aiohttp_client, sqlite_url):
    settings = env(
        sqlite_url,
        ORIGINCAST_STREAM_DEMO_TEST_PATTERN="true",
        ORIGINCAST_STREAM_TEST_PATTERN_WIDTH="320",
        ORIGINCAST_STREAM_TEST_PATTERN_HEIGHT="180",
    )
    client = await serve(aiohttp_client, settings)
    for _ in range(200):  # the test pattern's first keyframe makes it live
        live = client.app[STREAM_HUB].get("demo")
        if live is not None and live.live:
            break
        await asyncio.sleep(0.05)
    listed = (await (await client.get("/api/v1/streams")).json())["streams"]
    demo = next(s for s in listed if s["slug"] == "demo")
    assert demo["title"] == "Demo farm — test pattern"
    assert (demo["kind"], demo["visibility"], demo["site"]) == ("testpattern", "public", "warehouse")
    assert demo["state"]["status"] == "live" and demo["state"]["width"] == 320
    links = await (await client.get("/api/v1/streams/demo/links")).json()
    assert links["devices"] == [d[0] for d in DEMO_ASSIGNMENTS] and links["default"] is False

    # The watch page's title, in the reader's language.
    for lang, title in (("en", "Demo farm — test pattern"), ("zh", "演示农场 — 测试图案")):
        status, cfg, html = await page_config(client, f"/watch/demo?lang={lang}")
        assert status == 200 and cfg["stream"]["builtin"] is True
        assert f'<h1 id="title">{title}</h1>' in html and f"<title>{title}</title>" in html
    # The live feed picks the demo fleet's devices through the links.
    ws = await client.ws_connect("/api/v1/live?stream=demo")
    snap = await next_of(ws, "snapshot", 5)
    assert sorted(d["device_id"] for d in snap["devices"]) == sorted(d[0] for d in DEMO_ASSIGNMENTS)
    await ws.close()

    # A restart keeps the entry (and an operator's changes to it) and adds no second one.
    r = await client.patch("/api/v1/streams/demo", json={"title": "Our farm"}, headers=AUTH)
    assert r.status == 200
    again = await serve(aiohttp_client, settings)
    listed = (await (await again.get("/api/v1/streams")).json())["streams"]
    assert [s["title"] for s in listed if s["slug"] == "demo"] == ["Our farm"]
    status, cfg, html = await page_config(again, "/watch/demo?lang=zh")
    assert cfg["stream"]["builtin"] is False and '<h1 id="title">Our farm</h1>' in html
