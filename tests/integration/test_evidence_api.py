"""The evidence log over HTTP, end to end: readings published over MQTT are covered by
leaves a client can check against a signed checkpoint, with nothing but the public key.
The private key appears in no answer and no log line."""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import uuid
from datetime import UTC, datetime, timedelta

import pytest

from telemetry.evidence.canonical import parse_record, reading_record, readings_digest
from telemetry.evidence.keys import init_key
from telemetry.evidence.merkle import leaf_hash, verify_consistency, verify_inclusion
from telemetry.evidence.note import NoteVerifier, open_checkpoint
from telemetry.evidence.tiles import TILE_WIDTH, split_tile
from tests.integration.test_serve import _publish
from web.app import EVIDENCE, STORE, build_app
from web.config import load_config

ADMIN = "evidence-test-admin-token-0123"
T0 = datetime.now(UTC).replace(microsecond=0) - timedelta(hours=1)


def _b64(s: str) -> bytes:
    return base64.b64decode(s)


@pytest.fixture(params=["sqlite", "postgres"])
def db(request: pytest.FixtureRequest) -> str:
    return str(request.getfixturevalue("sqlite_url" if request.param == "sqlite" else "pg_url"))


async def test_published_readings_are_provably_in_the_signed_log(
    aiohttp_client, mosquitto, db, tmp_path, caplog
):
    caplog.set_level(logging.DEBUG)
    key_file = tmp_path / "log.key"
    signer = init_key(key_file, "test.origincast/log")
    skey = signer.export_skey()
    config = load_config(
        env={
            "ORIGINCAST_DATABASE_URL": db,
            "ORIGINCAST_MQTT_URL": mosquitto.url,
            "ORIGINCAST_INGEST_CLIENT_ID": f"ev-{uuid.uuid4().hex[:8]}",
            "ORIGINCAST_EVIDENCE_KEY_FILE": str(key_file),
            "ORIGINCAST_ADMIN_TOKEN": ADMIN,
        }
    )
    client = await aiohttp_client(build_app(config))
    answers: list[str] = []

    async def get(path: str, status: int = 200) -> bytes:
        staff_only = "/batches" in path
        r = await client.get(path, headers={"Authorization": f"Bearer {ADMIN}"} if staff_only else None)
        body = await r.read()
        answers.append(body.decode("latin-1"))
        assert r.status == status, (path, r.status, body[:300])
        return body

    device = f"truck-{uuid.uuid4().hex[:6]}"
    ms = int(T0.timestamp() * 1000)
    payloads = [
        json.dumps(
            {"ts": ms + i * 60_000, "temp_c": 3.4 + (i % 5) * 0.1, "rh": 80.5, "seq": 500 + i}
        ).encode()
        for i in range(40)
    ]
    await asyncio.to_thread(
        _publish, mosquitto.host, mosquitto.port, f"origincast/{device}/telemetry", payloads[:25]
    )
    await asyncio.sleep(0.3)
    await asyncio.to_thread(
        _publish, mosquitto.host, mosquitto.port, f"origincast/{device}/telemetry", payloads[25:]
    )

    key = json.loads(await get("/api/v1/evidence/key"))
    assert key == {"origin": "test.origincast/log", "vkey": signer.vkey}
    verifier = NoteVerifier.from_vkey(key["vkey"])

    window = f"from={(T0 - timedelta(minutes=1)).isoformat()}&to={(T0 + timedelta(hours=1)).isoformat()}"
    window = window.replace("+", "%2B")
    # A leaf per 15 minutes of a device's readings: the last window's 10 are stored, not
    # yet sealed, until the window ends or someone asks (a shipment's close does).
    store = client.app[STORE]
    for _ in range(100):
        if await asyncio.to_thread(store.count_readings, device) == 40:
            break
        await asyncio.sleep(0.1)
    pending = await asyncio.to_thread(store.pending_readings, device, T0, T0 + timedelta(hours=1))
    assert [r.seq for r in pending] == list(range(530, 540))
    assert await asyncio.to_thread(store.seal_pending, [device]) == []
    batches = json.loads(await get(f"/api/v1/evidence/devices/{device}/batches?{window}"))["batches"]
    assert [b["count"] for b in batches] == [15, 15, 10], batches

    note = (await get("/log/checkpoint")).decode()
    cp, _ = open_checkpoint(note, verifier)
    assert cp.size >= len(batches)
    indices = [b["index"] for b in batches]
    query = "&".join(f"index={i}" for i in indices)
    proofs = json.loads(await get(f"/api/v1/evidence/proofs?size={cp.size}&{query}"))
    assert _b64(proofs["root"]) == cp.root_hash
    leaves = json.loads(await get(f"/api/v1/evidence/leaves?{query}"))["leaves"]
    previous = None
    for i in indices:
        entry = _b64(leaves[str(i)])
        verify_inclusion(
            i, cp.size, leaf_hash(entry), [_b64(h) for h in proofs["proofs"][str(i)]], cp.root_hash
        )
        record = parse_record(entry)
        assert record.device_id == device
        assert (record.prev is None) == (previous is None)
        if previous is not None:
            assert (record.prev.index, record.prev.leaf_hash) == previous
        previous = (i, leaf_hash(entry))
        got = json.loads(await get(f"/api/v1/evidence/batches/{i}/readings"))["readings"]
        assert len(got) == record.count
        digest = readings_digest(
            [
                reading_record(r["ts_us"], r["temp_c"], r["rh"], r["battery_v"], r["door_open"], r["seq"])
                for r in got
            ]
        )
        assert digest == record.readings_sha256

    # C2SP tiles: the level-0 tile holds the leaf hashes; the log only grows (consistency)
    width = min(cp.size, TILE_WIDTH)
    path = "/log/tile/0/000" + ("" if width == TILE_WIDTH else f".p/{width}")
    hashes = split_tile(await get(path))
    for i in indices:
        if i < width:
            assert hashes[i] == leaf_hash(_b64(leaves[str(i)]))
    await get("/log/tile/0/x999/999", status=404)
    await get("/api/v1/evidence/proofs?index=999999999", status=400)
    await get("/api/v1/evidence/leaves", status=400)
    await get(f"/api/v1/evidence/devices/{device}/batches?from=yesterday&to=now", status=400)

    await asyncio.to_thread(
        _publish,
        mosquitto.host,
        mosquitto.port,
        f"origincast/{device}/telemetry",
        [json.dumps({"ts": ms + 50 * 60_000, "temp_c": 4.0}).encode()],
    )
    service = client.app[EVIDENCE]
    for _ in range(100):
        await asyncio.to_thread(store.seal_pending, [device])
        later = await service.checkpoint()
        if later.size > cp.size:
            break
        await asyncio.sleep(0.1)
    assert later.size > cp.size
    with client.app[STORE].evidence_connection() as conn:
        proof = service.log.consistency_proof(conn, cp.size, later.size)
    verify_consistency(cp.size, later.size, cp.root_hash, later.root_hash, proof)

    # PRIVATE+KEY+<name>+<key id>+<base64>: the base64 may hold "+" itself, so split only
    # the four fields off (splitting at every "+" left a few characters that any answer holds).
    secret = skey.split("+", 4)[4]
    assert len(secret) == 44
    assert not any(secret in a for a in answers), "the private key reached an HTTP answer"
    assert secret not in caplog.text, "the private key reached a log line"


async def test_without_a_key_the_log_grows_but_signs_nothing(aiohttp_client, sqlite_url):
    config = load_config(env={"ORIGINCAST_DATABASE_URL": sqlite_url})
    client = await aiohttp_client(build_app(config, with_ingest=False))
    r = await client.get("/log/checkpoint")
    assert r.status == 503
    assert "origincast keys init" in (await r.json())["error"]
    assert (await client.get("/api/v1/evidence/key")).status == 503


async def test_raw_readings_are_for_staff_only(aiohttp_client, sqlite_url):
    config = load_config(env={"ORIGINCAST_DATABASE_URL": sqlite_url})
    client = await aiohttp_client(build_app(config, with_ingest=False))
    assert (await client.get("/api/v1/evidence/batches/0/readings")).status == 401
    window = "from=2026-11-01T00:00:00Z&to=2026-11-02T00:00:00Z"
    assert (await client.get(f"/api/v1/evidence/devices/x/batches?{window}")).status == 401


async def test_nul_and_control_characters_are_refused_before_any_handler(aiohttp_client, sqlite_url):
    config = load_config(env={"ORIGINCAST_DATABASE_URL": sqlite_url, "ORIGINCAST_ADMIN_TOKEN": ADMIN})
    client = await aiohttp_client(build_app(config, with_ingest=False))
    r = await client.post(
        "/api/v1/tokens", json={"owner": "a\x00b"}, headers={"Authorization": f"Bearer {ADMIN}"}
    )
    assert r.status == 400 and "NUL" in (await r.json())["error"]
    r = await client.get("/api/v1/streams?x=%00")
    assert r.status == 400 and "control characters" in (await r.json())["error"]
