"""The public shipment endpoint and the QR code, through a real server on SQLite.

The app's evidence service (web.evidence, wired by the composition root) is stood in
for by ``LogService`` over the store's own log and a fresh signing key, which is what
web.trust needs of it (``vkey`` and ``checkpoint``)."""

from __future__ import annotations

import asyncio
import base64
import shutil
import subprocess
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from telemetry.evidence.log import EvidenceLog, SignedCheckpoint
from telemetry.evidence.merkle import leaf_hash
from telemetry.evidence.note import NoteSigner
from telemetry.evidence.verify import verify_checkpoint, verify_leaf_inclusion
from telemetry.readings import Reading
from web import app as app_module
from web.app import STORE, build_app
from web.config import load_config

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
    for i, b64 in ev["leaves"].items():
        entry = base64.b64decode(b64)
        proof = [base64.b64decode(p) for p in ev["proofs"][i]]
        verify_leaf_inclusion(entry, int(i), proof, cp)
        assert leaf_hash(entry)
    assert {ev["opened_leaf"], ev["closed_leaf"]} <= {int(i) for i in ev["leaves"]}
    (device,) = ev["devices"]
    assert device["device_id"] == "room-1" and len(device["batches"]) == 2
    assert sum(len(ev["readings"][str(i)]) for i in device["batches"]) == 20

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
