"""A shipment's close seals its route's readings before its closing leaf, through the API
and the CLI alike (web.evidence.close_shipment), on SQLite and PostgreSQL: readings held
in this server's own batches, in batches of a writer that is gone, and in batches of a
live writer (another ingester) that seals them when asked. An ingester that does not
answer in time makes the close a 503 that changes nothing. The CLI's close also signs the
checkpoint covering its closing leaf and gets the RFC 3161 token, as the API's does.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import threading
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from telemetry.evidence.keys import init_key
from telemetry.readings import Reading
from telemetry.settings import StorageSettings
from telemetry.shipments import shipment_from_request
from telemetry.storage import open_store
from tests.integration.test_bundle_verify import LocalTsa, tsa  # noqa: F401  (the TSA fixture)
from tests.support.evidence import assert_every_reading_sealed, batch_leaves, check_coverage
from web import evidence as web_evidence
from web.app import STORE, build_app
from web.config import load_config

REPO = Path(__file__).resolve().parents[2]
ADMIN_TOKEN = "close-seals-admin-token-0123456789"
ADM = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
T0 = datetime.now(UTC).replace(second=0, microsecond=0) - timedelta(hours=3)


@pytest.fixture(params=["sqlite", "postgres"])
def db(request: pytest.FixtureRequest) -> str:
    return str(request.getfixturevalue("sqlite_url" if request.param == "sqlite" else "pg_url"))


def readings(device: str, n: int, start: datetime = T0) -> list[Reading]:
    return [Reading(device, start + timedelta(minutes=i), 3.0 + (i % 5) / 10, seq=i) for i in range(n)]


def new_shipment(store: Any, sid: str, devices: list[str]) -> None:
    def leg(i: int, device: str) -> dict[str, Any]:
        end = None if i == len(devices) - 1 else (T0 + timedelta(minutes=30 * (i + 1))).isoformat()
        return {"device_id": device, "start": (T0 + timedelta(minutes=30 * i)).isoformat(), "end": end}

    segments = [leg(i, d) for i, d in enumerate(devices)]
    data = {"id": sid, "product": "Cod", "batch": "C-1", "origin_site": "harbour", "profile_id": "chilled",
            "opened_at": T0.isoformat(), "segments": segments}  # fmt: skip
    store.create_shipment(shipment_from_request(data, datetime.now(UTC)))


class Ticking:
    """Another live writer (an ingester of another process, as far as the database can
    tell): a store of its own, ticking like the ingester does once started."""

    def __init__(self, url: str) -> None:
        self.store = open_store(StorageSettings(url=url))
        self.store.open()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        def run() -> None:
            while not self._stop.is_set():
                self.store.seal_due()
                self._stop.wait(0.05)

        self._thread = threading.Thread(target=run, daemon=True)
        self._thread.start()

    def close(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(30)
        self.store.close()


@pytest.fixture
def other(db: str) -> Iterator[Ticking]:
    o = Ticking(db)
    yield o
    o.close()


def leaf_indices_of_readings(store: Any, devices: list[str]) -> list[int]:
    return sorted(i for i, r in batch_leaves(store) if r.device_id in devices)


async def test_api_close_seals_the_route_first_or_refuses(
    aiohttp_client: Any, db: str, other: Ticking, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    key = tmp_path / "log.key"
    init_key(key, "close.origincast.test/log")
    config = load_config(
        env={"ORIGINCAST_DATABASE_URL": db, "ORIGINCAST_ADMIN_TOKEN": ADMIN_TOKEN,
             "ORIGINCAST_EVIDENCE_KEY_FILE": str(key), "ORIGINCAST_FILES_DIR": str(tmp_path / "files")}
    )  # fmt: skip
    client = await aiohttp_client(build_app(config, with_ingest=False))
    store = client.app[STORE]
    await asyncio.to_thread(new_shipment, store, "cod-1", ["room", "truck"])
    # the server's own open batch, and one held by another live writer
    await asyncio.to_thread(store.write_batch, readings("room", 20), [])
    await asyncio.to_thread(other.store.write_batch, readings("truck", 20, T0 + timedelta(minutes=30)), [])
    assert await asyncio.to_thread(lambda: len(batch_leaves(store))) == 2  # the first windows

    # the other writer does not answer: a 503 naming the device, and the shipment stays open
    monkeypatch.setattr(web_evidence, "SEAL_WAIT_S", 0.3)
    r = await client.post("/api/v1/shipments/cod-1/close", json={}, headers=ADM)
    assert r.status == 503, await r.text()
    assert "truck" in (await r.json())["error"]
    r = await client.get("/api/v1/shipments/cod-1", headers=ADM)
    assert (await r.json())["state"] == "open"

    other.start()
    monkeypatch.setattr(web_evidence, "SEAL_WAIT_S", 30.0)
    r = await client.post("/api/v1/shipments/cod-1/close", json={}, headers=ADM)
    assert r.status == 200, await r.text()
    closed_leaf = (await r.json())["closed_leaf"]
    sealed = await asyncio.to_thread(leaf_indices_of_readings, store, ["room", "truck"])
    assert len(sealed) == 4 and max(sealed) < closed_leaf
    assert await asyncio.to_thread(store.pending_readings, "truck", T0, T0 + timedelta(days=1)) == []
    cp = await client.get("/log/checkpoint")
    assert cp.status == 200
    size = int((await cp.text()).splitlines()[1])
    assert size > closed_leaf
    await asyncio.to_thread(check_coverage, store, 40)


async def test_api_close_seals_the_batches_of_a_writer_gone(aiohttp_client: Any, db: str) -> None:
    config = load_config(env={"ORIGINCAST_DATABASE_URL": db, "ORIGINCAST_ADMIN_TOKEN": ADMIN_TOKEN})
    client = await aiohttp_client(build_app(config, with_ingest=False))
    store = client.app[STORE]
    await asyncio.to_thread(new_shipment, store, "cod-2", ["reefer"])
    killed = await asyncio.to_thread(
        subprocess.run,
        [sys.executable, "-c", _WRITE_THEN_DIE, db, T0.isoformat()],
        cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)}, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert killed.returncode == -9, killed.stderr
    r = await client.post("/api/v1/shipments/cod-2/close", json={}, headers=ADM)
    assert r.status == 200, await r.text()
    closed_leaf = (await r.json())["closed_leaf"]
    sealed = await asyncio.to_thread(leaf_indices_of_readings, store, ["reefer"])
    assert [r.count for i, r in batch_leaves(store) if i in sealed] == [15, 5]
    assert max(sealed) < closed_leaf
    await asyncio.to_thread(check_coverage, store, 20)


_WRITE_THEN_DIE = """
import os, signal, sys
from datetime import datetime, timedelta
from telemetry.readings import Reading
from telemetry.settings import StorageSettings
from telemetry.storage import open_store
s = open_store(StorageSettings(url=sys.argv[1]))
s.open()
t0 = datetime.fromisoformat(sys.argv[2])
s.write_batch([Reading("reefer", t0 + timedelta(minutes=i), 2.0, seq=i) for i in range(20)], [])
os.kill(os.getpid(), signal.SIGKILL)
"""


async def test_cli_close_seals_signs_and_timestamps_like_the_api(
    db: str, other: Ticking, tmp_path: Path, tsa: tuple[LocalTsa, str]  # noqa: F811
) -> None:
    local_tsa, tsa_url = tsa
    local_tsa.up = True
    key = tmp_path / "log.key"
    signer = init_key(key, "cli.origincast.test/log")
    store = other.store
    await asyncio.to_thread(store.migrate)
    await asyncio.to_thread(new_shipment, store, "cod-3", ["reefer"])
    await asyncio.to_thread(store.write_batch, readings("reefer", 20), [])
    other.start()  # `serve`'s ingester, say: it holds the last window's batch
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("ORIGINCAST_")},
        "ORIGINCAST_DATABASE_URL": db,
        "ORIGINCAST_EVIDENCE_KEY_FILE": str(key),
        "ORIGINCAST_EVIDENCE_TSA_URL": tsa_url,
        "PYTHONPATH": str(REPO),
    }
    out = await asyncio.to_thread(
        subprocess.run,
        [sys.executable, "-m", "web", "shipments", "close", "cod-3"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert out.returncode == 0, out.stdout + out.stderr
    assert "closed" in out.stdout and "failed" not in out.stderr, out.stdout + out.stderr
    shipment = await asyncio.to_thread(store.get_shipment, "cod-3")
    assert shipment is not None and shipment.closed_leaf is not None
    sealed = await asyncio.to_thread(leaf_indices_of_readings, store, ["reefer"])
    assert len(sealed) == 2 and max(sealed) < shipment.closed_leaf
    # the checkpoint that covers the closing leaf, signed by the log's key, and its token
    stamps = await asyncio.to_thread(_stamps, store, signer.name, signer.key_id)
    assert stamps and stamps[0][0] > shipment.closed_leaf and stamps[0][1], stamps
    assert local_tsa.answered == 1
    await asyncio.to_thread(check_coverage, store, 20)
    other.close()
    assert_every_reading_sealed(db, 20)


def _stamps(store: Any, key_name: str, key_id: int) -> list[tuple[int, bool]]:
    with store.evidence_connection() as conn:
        lite = store.kind == "sqlite"
        sql = "SELECT tree_size, response IS NOT NULL FROM evidence_timestamps"
        sql += " WHERE key_name = ? AND key_id = ?"
        rows = conn.execute(sql if lite else sql.replace("?", "%s"), (key_name, key_id)).fetchall()
    return [(int(size), bool(ok)) for size, ok in rows]
