"""Test reports and origin photos through a real server (SQLite and PostgreSQL): good
PDF/JPEG/PNG uploads are stored under their SHA-256 with an evidence leaf and served
immutable; a wrong type (by magic bytes), a too-big file, a missing file and the wrong
role are refused with nothing stored (no file on disk, no row, no leaf)."""

from __future__ import annotations

import asyncio
import hashlib
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from telemetry.evidence.canonical import parse_record
from web.app import STORE, build_app
from web.config import load_config

ADMIN_TOKEN = "files-admin-token-0123456789abcd"
ADM = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
PASSWORD = "correct horse battery staple"
PDF = b"%PDF-1.4\n1 0 obj<<>>endobj\ntrailer<<>>\n%%EOF\n"
JPEG = b"\xff\xd8\xff\xe0\x00\x10JFIF\x00" + bytes(range(256)) + b"\xff\xd9"
PNG = b"\x89PNG\r\n\x1a\n" + b"\x00\x00\x00\rIHDR" + bytes(64)
MAX = 4096


@pytest.fixture(params=["sqlite", "postgres"])
def db_url(request: pytest.FixtureRequest) -> str:
    return str(request.getfixturevalue("sqlite_url" if request.param == "sqlite" else "pg_url"))


@pytest.fixture
def files_dir(tmp_path: Path) -> Path:
    return tmp_path / "files"


@pytest.fixture
async def client(aiohttp_client: Any, db_url: str, files_dir: Path) -> Any:
    config = load_config(
        env={
            "ORIGINCAST_DATABASE_URL": db_url,
            "ORIGINCAST_ADMIN_TOKEN": ADMIN_TOKEN,
            "ORIGINCAST_FILES_DIR": str(files_dir),
            "ORIGINCAST_FILES_MAX_BYTES": str(MAX),
        }
    )
    return await aiohttp_client(build_app(config, with_ingest=False))


async def _token_for(client: Any, name: str, role: str) -> dict[str, str]:
    r = await client.post(
        "/api/v1/users", json={"name": name, "role": role, "password": PASSWORD}, headers=ADM
    )
    assert r.status == 201, await r.text()
    r = await client.post("/api/v1/tokens", json={"name": "t", "owner": name}, headers=ADM)
    assert r.status == 201, await r.text()
    return {"Authorization": f"Bearer {(await r.json())['token']}"}


def _form(
    kind: str | None, data: bytes | None, name: str = "f.bin", declared: str = "application/pdf", **extra: str
) -> aiohttp.FormData:
    form = aiohttp.FormData(default_to_multipart=True)
    if kind is not None:
        form.add_field("kind", kind)
    for k, v in extra.items():
        form.add_field(k, v)
    if data is not None:
        form.add_field("file", data, filename=name, content_type=declared)
    return form


def _stored(files_dir: Path) -> list[Path]:
    return sorted(p for p in files_dir.rglob("*") if p.is_file())


async def _log_size(client: Any) -> int:
    store = client.app[STORE]

    def size() -> int:
        with store.evidence_connection() as conn:
            return store.evidence.size(conn)

    return await asyncio.to_thread(size)


async def test_good_uploads_are_stored_logged_listed_and_served(client: Any, files_dir: Path) -> None:
    producer = await _token_for(client, "pat", "producer")
    logistics = await _token_for(client, "lou", "logistics")
    r = await client.post(
        "/api/v1/shipments",
        json={
            "id": "fish-1",
            "product": "Fish",
            "batch": "B-77",
            "origin_site": "sea",
            "profile_id": "frozen",
        },
        headers=producer,
    )
    assert r.status == 201
    made = []
    for who, kind, data, name, declared in [
        (producer, "test_report", PDF, "检测报告.pdf", "application/pdf"),
        (producer, "photo", JPEG, "boat.jpg", "image/jpeg"),
        (logistics, "photo", PNG, "dock.png", "application/octet-stream"),  # the bytes decide
    ]:
        before = await _log_size(client)
        r = await client.post(
            "/api/v1/batches/B-77/files",
            data=_form(kind, data, name, declared, shipment_id="fish-1"),
            headers=who,
        )
        assert r.status == 201, await r.text()
        body = await r.json()
        sha = hashlib.sha256(data).hexdigest()
        assert body["sha256"] == sha and body["size"] == len(data) and body["kind"] == kind
        assert body["content_type"] == {PDF: "application/pdf", JPEG: "image/jpeg", PNG: "image/png"}[data]
        assert body["name"] == name and body["shipment_id"] == "fish-1"
        # the leaf: appended, and it fingerprints exactly these bytes
        assert body["evidence_leaf"] == before and await _log_size(client) == before + 1
        store = client.app[STORE]

        def leaf(i: int = body["evidence_leaf"], store: Any = store) -> Any:
            with store.evidence_connection() as conn:
                return parse_record(store.evidence.leaves(conn, i, i + 1)[0].entry)

        rec = await asyncio.to_thread(leaf)
        assert rec.kind == ("test_report" if kind == "test_report" else "media_manifest")
        assert rec.sha256 == sha and rec.size == len(data) and rec.product_batch == "B-77"
        assert (files_dir / sha[:2] / sha).read_bytes() == data
        made.append(body)
    r = await client.get("/api/v1/batches/B-77/files")  # public
    listed = (await r.json())["files"]
    assert [f["sha256"] for f in listed] == [m["sha256"] for m in made]
    assert all("uploaded_by" not in f for f in listed)
    # served: public, immutable, the right type, never sniffed; a PDF as an attachment
    r = await client.get(f"/files/{made[0]['sha256']}")
    assert r.status == 200 and await r.read() == PDF
    assert r.headers["Content-Type"] == "application/pdf"
    assert r.headers["Content-Disposition"].startswith("attachment;")
    assert r.headers["X-Content-Type-Options"] == "nosniff"
    assert "immutable" in r.headers["Cache-Control"]
    r = await client.get(f"/files/{made[2]['sha256']}")
    assert r.headers["Content-Type"] == "image/png" and r.headers["Content-Disposition"].startswith("inline;")
    r = await client.get("/files/" + "0" * 64)
    assert r.status == 404 and "error" in await r.json()


async def test_bad_uploads_are_refused_and_nothing_is_stored(client: Any, files_dir: Path) -> None:
    producer = await _token_for(client, "pat", "producer")
    size = await _log_size(client)
    cases = [
        (None, "photo", PNG, 401),  # no credentials
        (producer, "photo", b"<html><script>alert(1)</script>", 415),  # declared PDF, is HTML
        (producer, "photo", PDF, 415),  # a PDF is not a photo
        (producer, "test_report", b"GIF89a" + bytes(32), 415),
        (producer, "test_report", b"%PDF-" + bytes(MAX), 413),  # one past the limit
        (producer, "test_report", b"", 400),
        (producer, "nonsense", PDF, 400),
        (producer, None, PDF, 400),
        (producer, "photo", None, 400),  # no file
    ]
    for who, kind, data, status in cases:
        r = await client.post("/api/v1/batches/B-1/files", data=_form(kind, data), headers=who or {})
        assert r.status == status, (kind, status, await r.text())
        body = await r.json()
        assert set(body) == {"error"} and body["error"]
    r = await client.post(
        "/api/v1/batches/B-1/files",
        data=_form("photo", PNG, shipment_id="no-such-shipment"),
        headers=producer,
    )
    assert r.status == 400
    # not multipart at all
    r = await client.post(
        "/api/v1/batches/B-1/files", data=b"%PDF-1.4", headers={**producer, "Content-Type": "application/pdf"}
    )
    assert r.status == 415
    assert _stored(files_dir) == []  # not even a temporary file
    assert await _log_size(client) == size
    r = await client.get("/api/v1/batches/B-1/files")
    assert (await r.json())["files"] == []
