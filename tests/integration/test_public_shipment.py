"""The public shipment endpoint, its cache and rate limit, and the QR code, through a real
server on SQLite.

The app's evidence service (web.evidence, wired by the composition root) is stood in
for by ``LogService`` over the store's own log and a fresh signing key, which is what
web.trust needs of it (``vkey`` and ``checkpoint``)."""

from __future__ import annotations

import asyncio
import base64
import json
import shutil
import sqlite3
import subprocess
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from telemetry.evidence.canonical import float32, parse_record, unpack_readings
from telemetry.evidence.log import EvidenceLog, SignedCheckpoint
from telemetry.evidence.merkle import leaf_hash, verify_multi_inclusion
from telemetry.evidence.note import NoteSigner
from telemetry.evidence.verify import check_batch_readings, verify_checkpoint
from telemetry.readings import Reading
from web import app as app_module
from web.app import ANSWER_CACHE, CONFIG, PUBLIC_LIMITER, STORE, build_app
from web.bundle import ShipmentEvidence
from web.config import load_config
from web.verify_bundle import verify_bundle

ADMIN_TOKEN = "public-admin-token-0123456789abc"
ADM = {"Authorization": f"Bearer {ADMIN_TOKEN}"}


class LogService:
    def __init__(self, app: Any, signer: NoteSigner) -> None:
        self._app = app
        self._signer = signer
        self.vkey = signer.vkey

    async def checkpoint(self, *, force: bool = False) -> SignedCheckpoint:
        store = self._app[STORE]
        log = EvidenceLog(store.evidence.storage, self._signer)

        def sign() -> SignedCheckpoint:
            with store.evidence_connection() as conn:
                return log.checkpoint(conn, force=force)

        return await asyncio.to_thread(sign)


@pytest.fixture
async def client(
    aiohttp_client: Any, sqlite_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Any:
    config = load_config(
        env={
            "ORIGINCAST_DATABASE_URL": sqlite_url,
            "ORIGINCAST_ADMIN_TOKEN": ADMIN_TOKEN,
            "ORIGINCAST_FILES_DIR": str(tmp_path / "files"),
            "ORIGINCAST_HTTP_PUBLIC_URL": "https://trust.example.test",
        }
    )
    app = build_app(config, with_ingest=False)
    signer = NoteSigner.generate("origincast.test/log")
    service = LogService(app, signer)
    monkeypatch.setattr(app_module, "evidence_of", lambda a: service)
    c = await aiohttp_client(app)
    c.signer = signer
    return c


async def test_public_shipment_carries_verifiable_evidence(client: Any) -> None:
    t0 = datetime.now(UTC) - timedelta(hours=2)
    r = await client.post(
        "/api/v1/shipments",
        json={
            "id": "milk-9",
            "product": "Milk",
            "batch": "M-9",
            "origin_site": "farm",
            "profile_id": "chilled",
            "opened_at": t0.isoformat(),
            "segments": [{"device_id": "room-1", "start": t0.isoformat()}],
        },
        headers=ADM,
    )
    assert r.status == 201, await r.text()
    store = client.app[STORE]
    readings = [Reading("room-1", t0 + timedelta(minutes=5 * i), 2.0 + (i % 3)) for i in range(20)]
    await asyncio.to_thread(store.write_batch, readings[:10], [])
    await asyncio.to_thread(store.write_batch, readings[10:], [])
    r = await client.post("/api/v1/shipments/milk-9/close", json={}, headers=ADM)
    assert r.status == 200
    closed = await r.json()
    assert closed["opened_leaf"] is not None and closed["closed_leaf"] is not None

    r = await client.get("/api/v1/public/shipments/milk-9")  # no login
    assert r.status == 200
    body = await r.json()
    assert body["shipment"]["product"] == "Milk" and "version" not in body["shipment"]
    assert body["report"]["total"]["reading_count"] == 20
    ev = body["evidence"]
    cp = verify_checkpoint(ev["checkpoint"], client.signer.vkey)
    # one proof for every leaf shown, against the signed checkpoint
    entries = {int(i): base64.b64decode(b64) for i, b64 in ev["leaves"].items()}
    blob = base64.b64decode(ev["multiproof"])
    proof = [blob[i : i + 32] for i in range(0, len(blob), 32)]
    verify_multi_inclusion(cp.size, {i: leaf_hash(e) for i, e in entries.items()}, proof, cp.root_hash)
    assert {ev["opened_leaf"], ev["closed_leaf"]} <= set(entries)
    (device,) = ev["devices"]
    # a reading every 5 minutes: a leaf per 15-minute window, 3 readings each (the last 2
    # sealed by the close)
    assert device["device_id"] == "room-1" and len(device["batches"]) == 7
    # each batch's readings: the records its digest is over
    readings = []
    for i in device["batches"]:
        rows = unpack_readings(base64.b64decode(ev["records"][str(i)]))
        check_batch_readings(i, parse_record(entries[i]), rows)  # type: ignore[arg-type]
        readings += rows
    assert [r["temp_c"] for r in readings] == [2.0 + (i % 3) for i in range(20)]

    r = await client.get("/api/v1/public/shipments/nope-404")
    assert r.status == 404 and "error" in await r.json()
    r = await client.get("/v/milk-9", headers={"Accept-Language": "zh-CN"})
    assert r.status == 200 and "冷链记录" in await r.text()
    assert "frame-ancestors 'none'" in r.headers["Content-Security-Policy"]


async def test_qr_encodes_the_page_url_with_the_key(client: Any, tmp_path: Path) -> None:
    r = await client.post(
        "/api/v1/shipments",
        json={
            "id": "fish-2",
            "product": "Fish",
            "batch": "F-2",
            "origin_site": "sea",
            "profile_id": "frozen",
        },
        headers=ADM,
    )
    assert r.status == 201
    expected = f"https://trust.example.test/v/fish-2#k={client.signer.vkey}"
    assert (await client.get("/api/v1/shipments/fish-2/qr.svg")).status == 401  # staff and producers
    r = await client.get("/api/v1/shipments/fish-2/qr.svg", headers=ADM)
    assert r.status == 200 and r.headers["Content-Type"] == "image/svg+xml"
    assert f"<title>{expected}</title>" in await r.text()
    r = await client.get("/api/v1/shipments/fish-2/qr.png", headers=ADM)
    assert r.status == 200 and r.headers["Content-Type"] == "image/png"
    png = tmp_path / "qr.png"
    png.write_bytes(await r.read())
    zbarimg = shutil.which("zbarimg")
    assert zbarimg, "zbar-tools is missing (scripts/test.sh installs it)"
    out = await asyncio.to_thread(
        subprocess.run, [zbarimg, "--raw", "-q", str(png)], capture_output=True, text=True, check=True
    )
    assert out.stdout.strip() == expected
    r = await client.get("/api/v1/shipments/nope-404/qr.png", headers=ADM)
    assert r.status == 404


async def _month_of_readings(client: Any, sid: str, device: str) -> None:
    """A closed shipment with a day of readings, a reading a minute, 15 to a batch."""
    t0 = (datetime.now(UTC) - timedelta(days=2)).replace(second=0, microsecond=0)
    r = await client.post(
        "/api/v1/shipments",
        json={"id": sid, "product": "Cod", "batch": f"B-{sid}", "origin_site": "sea", "profile_id": "chilled",
              "opened_at": t0.isoformat(), "segments": [{"device_id": device, "start": t0.isoformat()}]},
        headers=ADM,
    )  # fmt: skip
    assert r.status == 201, await r.text()
    readings = [Reading(device, t0 + timedelta(minutes=m), 2.0 + (m % 9) * 0.25) for m in range(24 * 60)]
    store = client.app[STORE]
    for i in range(0, len(readings), 15):
        await asyncio.to_thread(store.write_batch, readings[i : i + 15], [])
    r = await client.post(f"/api/v1/shipments/{sid}/close", json={"at": (t0 + timedelta(days=1)).isoformat()},
                          headers=ADM)  # fmt: skip
    assert r.status == 200, await r.text()


async def test_repeat_requests_are_served_from_the_cache_until_the_data_changes(client: Any) -> None:
    await _month_of_readings(client, "cod-7", "reefer-7")
    cache = client.app[ANSWER_CACHE]
    builds = []
    builder_build = ShipmentEvidence._build

    async def counted(self: ShipmentEvidence, *args: Any) -> Any:
        builds.append(args[0].id)
        return await builder_build(self, *args)

    ShipmentEvidence._build = counted  # type: ignore[method-assign]
    try:
        # many at once on a cold cache: one build, the others wait for it
        answers = await asyncio.gather(*(client.get("/api/v1/public/shipments/cod-7") for _ in range(6)))
        bodies = [await r.read() for r in answers]
        assert {r.status for r in answers} == {200} and len(set(bodies)) == 1
        assert builds == ["cod-7"] and len(cache) == 1
        r = await client.get("/api/v1/public/shipments/cod-7/bundle")
        assert r.status == 200 and builds == ["cod-7"]  # the bundle is made from the same answer
        bundle = await r.json()
        assert bundle["version"] == 2 and bundle["evidence"] == json.loads(bodies[0])["evidence"]

        # a reading changed behind the server's back: rebuilt, and the change is in the answer
        db = client.app[CONFIG].storage.url.removeprefix("sqlite:///")
        with sqlite3.connect(db) as conn:
            conn.execute("UPDATE readings SET temp_c = temp_c + 1 WHERE device_id = 'reefer-7'"
                         " AND ts = (SELECT min(ts) FROM readings WHERE device_id = 'reefer-7')")  # fmt: skip
        r = await client.get("/api/v1/public/shipments/cod-7")
        assert builds == ["cod-7", "cod-7"] and await r.read() != bodies[0]
        # a reading deleted
        with sqlite3.connect(db) as conn:
            conn.execute("DELETE FROM readings WHERE device_id = 'reefer-7'"
                         " AND ts = (SELECT max(ts) FROM readings WHERE device_id = 'reefer-7')")  # fmt: skip
        await client.get("/api/v1/public/shipments/cod-7")
        assert len(builds) == 3
        # unchanged since: from the cache again
        await client.get("/api/v1/public/shipments/cod-7")
        assert len(builds) == 3 and cache.hits >= 6

        # an open shipment: cached too, and an edit (a new version) is a new answer
        t0 = datetime.now(UTC) - timedelta(hours=1)
        segments = [{"device_id": "reefer-8", "start": t0.isoformat()}]
        r = await client.post(
            "/api/v1/shipments",
            json={"id": "cod-8", "product": "Cod", "batch": "B-8", "origin_site": "sea",
                  "profile_id": "chilled", "opened_at": t0.isoformat(), "segments": segments},
            headers=ADM,
        )  # fmt: skip
        assert r.status == 201
        rows = [Reading("reefer-8", t0 + timedelta(minutes=m), 3.0) for m in range(30)]
        await asyncio.to_thread(client.app[STORE].write_batch, rows, [])
        for _ in range(2):
            assert (await client.get("/api/v1/public/shipments/cod-8")).status == 200
        assert builds.count("cod-8") == 1
        r = await client.patch("/api/v1/shipments/cod-8", json={"product": "Cod loins"}, headers=ADM)
        assert r.status == 200, await r.text()
        body = await (await client.get("/api/v1/public/shipments/cod-8")).json()
        assert body["shipment"]["product"] == "Cod loins" and builds.count("cod-8") == 2
        # a new reading of an open shipment
        await asyncio.to_thread(
            client.app[STORE].write_batch, [Reading("reefer-8", t0 + timedelta(minutes=40), 3.5)], []
        )
        body = await (await client.get("/api/v1/public/shipments/cod-8")).json()
        # (rebuilt; not sealed yet, so shown as pending rather than in the verified record)
        assert builds.count("cod-8") == 3 and body["pending"]["count"] == 1
        assert body["report"]["total"]["reading_count"] == 30
    finally:
        ShipmentEvidence._build = builder_build  # type: ignore[method-assign]


async def test_public_endpoints_are_rate_limited_per_address(client: Any) -> None:
    limiter = client.app[PUBLIC_LIMITER]
    limiter.burst, limiter.per_second = 4, 0.01  # (the defaults are far more generous)
    statuses = [(await client.get("/api/v1/public/shipments/nope-404")).status for _ in range(4)]
    assert statuses == [404] * 4  # an unknown id costs too: guessing ids is what it limits
    r = await client.get("/api/v1/public/shipments/nope-404")
    assert r.status == 429
    assert r.headers["Content-Type"].startswith("application/json")
    assert int(r.headers["Retry-After"]) >= 1
    assert "too many requests" in (await r.json())["error"]
    r = await client.get("/api/v1/public/shipments/nope-404/bundle")
    assert r.status == 429 and int(r.headers["Retry-After"]) >= 1
    # the page itself and staff's API are not limited by it
    assert (await client.get("/v/nope-404")).status == 200  # the shell; its answer is the limited part
    assert (await client.get("/api/v1/shipments", headers=ADM)).status == 200


class AnchoredLogService(LogService):
    """A log with a timestamp authority (web.bundle.AnchorAccess) whose token covers the
    checkpoint ``anchored`` (set by the test): what the bundle's timestamp part reads."""

    tsa_url = "http://tsa.invalid/"
    anchored: SignedCheckpoint | None = None

    async def timestamp_covering(self, leaf: int) -> Any:
        cp = self.anchored
        return SimpleNamespace(
            tree_size=cp.size, note=cp.note, response=b"not a real token", tsa_url=self.tsa_url,
            gen_time=datetime.now(UTC), last_error=None,
        )  # fmt: skip


async def test_a_bundle_is_never_older_than_its_timestamp(
    client: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The answer kept for a closed shipment was built with a checkpoint signed before the
    one its close was timestamped at (a page read in between): the bundle takes a newer
    answer rather than a consistency proof that would have to run backwards."""
    service = AnchoredLogService(client.app, client.signer)
    monkeypatch.setattr(app_module, "evidence_of", lambda a: service)
    await _month_of_readings(client, "cod-9", "reefer-9")
    kept = (await (await client.get("/api/v1/public/shipments/cod-9")).json())["evidence"]
    # the log grows (another device), and the close's checkpoint is signed after it
    other = Reading("other-9", datetime.now(UTC), 1.0)
    await asyncio.to_thread(client.app[STORE].write_batch, [other], [])
    await asyncio.to_thread(client.app[STORE].seal_pending, ["other-9"])  # its leaf now
    service.anchored = await service.checkpoint()
    assert service.anchored.size > kept["size"]
    r = await client.get("/api/v1/public/shipments/cod-9/bundle")
    assert r.status == 200, await r.text()
    bundle = await r.json()
    assert bundle["timestamp"]["status"] == "stamped"
    assert bundle["timestamp"]["size"] == service.anchored.size <= bundle["evidence"]["size"]
    assert bundle["evidence"]["leaves"] == kept["leaves"]  # the same records, a newer checkpoint


async def test_a_bundle_of_deep_frozen_readings_verifies(client: Any) -> None:
    """SQLite keeps a reading's double where the log commits to its float32: the public
    figures are computed from the committed values, so they agree with those the verifier
    recomputes from the records (version 2), and a real change does not."""
    t0 = (datetime.now(UTC) - timedelta(hours=5)).replace(microsecond=0)
    r = await client.post(
        "/api/v1/shipments",
        json={"id": "vax-1", "product": "Vaccine", "batch": "V-1", "origin_site": "lab",
              "profile_id": "frozen", "opened_at": t0.isoformat(),
              "segments": [{"device_id": "ult-1", "start": t0.isoformat()}]},
        headers=ADM,
    )  # fmt: skip
    assert r.status == 201, await r.text()
    rows = [Reading("ult-1", t0 + timedelta(minutes=m), -78.123456789 + m * 1.23e-5) for m in range(240)]
    await asyncio.to_thread(client.app[STORE].write_batch, rows, [])
    at = (t0 + timedelta(minutes=240)).isoformat()
    r = await client.post("/api/v1/shipments/vax-1/close", json={"at": at}, headers=ADM)
    assert r.status == 200, await r.text()
    bundle = await (await client.get("/api/v1/public/shipments/vax-1/bundle")).json()
    assert rows[0].temp_c != float32(rows[0].temp_c)  # the double is not what the log holds
    assert bundle["report"]["total"]["min_c"] == float32(rows[0].temp_c)
    verdict = verify_bundle(bundle, client.signer.vkey)
    assert verdict.ok and verdict.headline() == "verified", verdict.lines()
    bundle["report"]["total"]["mean_c"] += 1e-3
    verdict = verify_bundle(bundle, client.signer.vkey)
    assert not verdict.ok and "report figures of the whole shipment: mean_c" in verdict.mismatches[0]


async def test_an_open_shipment_shows_its_unsealed_readings_as_pending(client: Any) -> None:
    """A live sensor's current window is stored but not sealed yet (15 min by default): the
    public record stops before it, says how many readings wait, and still verifies."""
    now = datetime.now(UTC).replace(microsecond=0)
    t0 = now - timedelta(minutes=40)
    r = await client.post(
        "/api/v1/shipments",
        json={"id": "kale-3", "product": "Kale", "batch": "K-3", "origin_site": "farm",
              "profile_id": "chilled",
              "opened_at": t0.isoformat(), "segments": [{"device_id": "cart-3", "start": t0.isoformat()}]},
        headers=ADM,
    )  # fmt: skip
    assert r.status == 201, await r.text()
    store = client.app[STORE]
    for m in range(40):  # a reading a minute, each in its own transaction, as a live sensor's
        await asyncio.to_thread(store.write_batch, [Reading("cart-3", t0 + timedelta(minutes=m), 3.0)], [])
    unsealed = await asyncio.to_thread(store.pending_readings, "cart-3", t0, now)
    assert 0 < len(unsealed) < 40  # the last window is still open

    bundle = await (await client.get("/api/v1/public/shipments/kale-3/bundle")).json()
    pending = bundle["pending"]
    assert pending["count"] == len(unsealed)
    assert pending["first"] == unsealed[0].ts.isoformat().replace("+00:00", "Z")
    assert pending["through"] == pending["first"]
    assert bundle["report"]["total"]["reading_count"] == 40 - len(unsealed)
    verdict = verify_bundle(bundle, client.signer.vkey)
    assert verdict.ok, verdict.lines()
    assert any(f"{len(unsealed)} newer readings" in n for n in verdict.notes), verdict.notes

    # Sealed (as the ingester's tick does once the window is over): nothing pending any more
    # (and the kept answer is not served: the leaves covering the readings changed).
    await asyncio.to_thread(store.seal_pending, ["cart-3"])
    body = await (await client.get("/api/v1/public/shipments/kale-3")).json()
    assert body["pending"] is None
    assert body["report"]["total"]["reading_count"] == 40
