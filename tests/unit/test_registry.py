"""The stream registry: rules in stream.registry, storage on SQLite and PostgreSQL alike."""

from __future__ import annotations

import sqlite3
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import pytest
from aiohttp import ClientResponse
from aiohttp.test_utils import TestClient

from stream.registry import (
    InvalidStream,
    StreamChanges,
    StreamExists,
    StreamNotFound,
    StreamRepository,
    StreamSpec,
    hash_publish_key,
    mask_url_credentials,
    new_publish_key,
    publish_key_matches,
    validate_spec,
)
from stream.registry_sql import open_stream_repository
from web.app import AUTH, STREAMS, build_app
from web.auth import FailureThrottle
from web.cli import main as cli_main
from web.config import load_config


@pytest.fixture(params=["sqlite", "postgres"])
def repo(request: pytest.FixtureRequest) -> Iterator[StreamRepository]:
    url = str(request.getfixturevalue("sqlite_url" if request.param == "sqlite" else "pg_url"))
    r = open_stream_repository(url)
    r.open()
    applied = r.migrate()
    assert applied[0] == "0001_streams" and applied[-1] == "0003_links_and_share"
    assert r.migrate() == []  # idempotent
    yield r
    r.close()


# -- rules -------------------------------------------------------------------------------


@pytest.mark.parametrize("slug", ["a", "farm-1", "x" * 64, "0-0"])
def test_good_slugs(slug: str) -> None:
    assert validate_spec(StreamSpec(slug=slug, title="t")).slug == slug


@pytest.mark.parametrize("slug", ["", "A", "farm_1", "x" * 65, "caf\u00e9", "a b", "../x", "a\n"])
def test_bad_slugs(slug: str) -> None:
    with pytest.raises(InvalidStream, match="slug"):
        validate_spec(StreamSpec(slug=slug, title="t"))


def test_kind_and_url_go_together() -> None:
    with pytest.raises(InvalidStream, match="needs rtsp_url"):
        validate_spec(StreamSpec(slug="cam", title="t", kind="rtsp"))
    with pytest.raises(InvalidStream, match="only for streams of kind rtsp"):
        validate_spec(StreamSpec(slug="cam", title="t", kind="whip", rtsp_url="rtsp://cam/x"))
    with pytest.raises(InvalidStream, match="kind must be"):
        validate_spec(StreamSpec(slug="cam", title="t", kind="hls"))  # type: ignore[arg-type]
    with pytest.raises(InvalidStream) as info:
        validate_spec(StreamSpec(slug="cam", title="t", kind="rtsp", rtsp_url="http://u:secret@cam/x"))
    assert "secret" not in str(info.value)  # the message never echoes a credential
    with pytest.raises(InvalidStream, match="visibility"):
        validate_spec(StreamSpec(slug="cam", title="t", visibility="private"))  # type: ignore[arg-type]
    with pytest.raises(InvalidStream, match="title"):
        validate_spec(StreamSpec(slug="cam", title="   "))


def test_masking() -> None:
    assert mask_url_credentials("rtsp://admin:hunter2@10.0.0.5:554/s1") == "rtsp://***@10.0.0.5:554/s1"
    assert mask_url_credentials("rtsp://cam/s1?user=admin&password=hunter2&ch=1") == (
        "rtsp://cam/s1?user=***&password=***&ch=1"
    )
    assert mask_url_credentials("rtsp://cam/s1") == "rtsp://cam/s1"


def test_keys_are_random_and_hashed() -> None:
    keys = {new_publish_key() for _ in range(100)}
    assert len(keys) == 100 and all(len(k) == 43 for k in keys)  # 32 bytes, base64url
    k = keys.pop()
    h = hash_publish_key(k)
    assert len(h) == 64 and k not in h
    assert publish_key_matches(k, h)
    assert not publish_key_matches(k[:-1] + ("A" if k[-1] != "A" else "B"), h)
    assert not publish_key_matches("", h)


# -- storage -----------------------------------------------------------------------------


def test_create_get_list(repo: StreamRepository) -> None:
    before = datetime.now(UTC).replace(microsecond=0)
    s, key = repo.create(StreamSpec(slug="farm", title=" Farm gate ", site="site-1"))
    assert s.title == "Farm gate" and s.kind == "whip" and s.visibility == "public" and s.owner is None
    assert s.created_at >= before and s.created_at.tzinfo is not None
    got = repo.get("farm")
    assert got == s
    repo.create(StreamSpec(slug="hidden", title="H", visibility="unlisted"))
    repo.create(StreamSpec(slug="cam", title="C", kind="rtsp", rtsp_url="rtsp://u:p@cam:554/x"))
    assert [x.slug for x in repo.list_streams()] == ["cam", "farm"]
    assert [x.slug for x in repo.list_streams(include_unlisted=True)] == ["cam", "farm", "hidden"]
    assert repo.get("nope") is None
    with pytest.raises(StreamExists):
        repo.create(StreamSpec(slug="farm", title="again"))
    cam = repo.get("cam")
    assert cam is not None and cam.rtsp_url == "rtsp://u:p@cam:554/x"
    assert "u:p" not in repr(cam) and cam.masked_rtsp_url == "rtsp://***@cam:554/x"
    assert repo.verify_publish_key("farm", key)


def test_key_is_stored_hashed_only(repo: StreamRepository, request: pytest.FixtureRequest) -> None:
    _, key = repo.create(StreamSpec(slug="farm", title="Farm"))
    if repo.kind == "sqlite":
        url = str(request.getfixturevalue("sqlite_url"))
        conn = sqlite3.connect(url[len("sqlite:///") :])
        rows = conn.execute("SELECT * FROM streams").fetchall()
        conn.close()
        dump = repr(rows)
        assert key not in dump and hash_publish_key(key) in dump


def test_verify_and_rotate(repo: StreamRepository) -> None:
    _, key = repo.create(StreamSpec(slug="farm", title="Farm"))
    _, other = repo.create(StreamSpec(slug="dock", title="Dock"))
    assert repo.verify_publish_key("farm", key)
    assert not repo.verify_publish_key("farm", other)  # another stream's key
    assert not repo.verify_publish_key("farm", "")
    assert not repo.verify_publish_key("nope", key)
    new = repo.rotate_key("farm")
    assert new != key
    assert repo.verify_publish_key("farm", new) and not repo.verify_publish_key("farm", key)
    with pytest.raises(StreamNotFound):
        repo.rotate_key("nope")


def test_update(repo: StreamRepository) -> None:
    repo.create(StreamSpec(slug="farm", title="Farm", site="s1"))
    s = repo.update("farm", StreamChanges(title="Farm 2", visibility="unlisted"))
    assert (s.title, s.visibility, s.site) == ("Farm 2", "unlisted", "s1")
    assert repo.get("farm") == s
    s = repo.update("farm", StreamChanges(clear_site=True))
    assert s.site is None
    with pytest.raises(InvalidStream, match="needs rtsp_url"):
        repo.update("farm", StreamChanges(kind="rtsp"))
    s = repo.update("farm", StreamChanges(kind="rtsp", rtsp_url="rtsp://cam/1"))
    assert s.kind == "rtsp" and s.rtsp_url == "rtsp://cam/1"
    # Leaving rtsp drops the stored camera URL with it.
    s = repo.update("farm", StreamChanges(kind="testpattern"))
    assert s.rtsp_url is None and repo.get("farm") == s
    with pytest.raises(StreamNotFound):
        repo.update("nope", StreamChanges(title="x"))
    unchanged = repo.get("farm")
    with pytest.raises(InvalidStream):
        repo.update("farm", StreamChanges(title=""))
    assert repo.get("farm") == unchanged


def test_delete(repo: StreamRepository) -> None:
    _, key = repo.create(StreamSpec(slug="farm", title="Farm"))
    assert repo.delete("farm") and not repo.delete("farm")
    assert repo.get("farm") is None and not repo.verify_publish_key("farm", key)


def test_concurrent_creates_of_one_slug(repo: StreamRepository) -> None:
    """Many threads create the same slug: exactly one wins, the rest get StreamExists."""
    results: list[str] = []
    lock = threading.Lock()

    def attempt() -> None:
        try:
            repo.create(StreamSpec(slug="race", title="R"))
            outcome = "created"
        except StreamExists:
            outcome = "exists"
        with lock:
            results.append(outcome)

    threads = [threading.Thread(target=attempt) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(results) == ["created"] + ["exists"] * 7


def test_tables_beside_telemetry(sqlite_url: str) -> None:
    """The registry shares the database with telemetry without touching its migrations."""
    from telemetry.settings import StorageSettings
    from telemetry.storage import open_store

    store = open_store(StorageSettings(url=sqlite_url))
    store.open()
    store.migrate()
    r = open_stream_repository(sqlite_url)
    r.open()
    assert r.migrate()[0] == "0001_streams"
    assert store.migrate() == []
    r.close()
    store.close()
    conn = sqlite3.connect(sqlite_url[len("sqlite:///") :])
    tables = {row[0] for row in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    conn.close()
    assert {"streams", "stream_schema_migrations", "schema_migrations", "readings"} <= tables


# -- the JSON API ------------------------------------------------------------------------

ADMIN = "unit-admin-token-0123456789"
ADM = {"Authorization": f"Bearer {ADMIN}"}
CAMERA = "rtsp://admin:s3cret-pw@127.0.0.1:8554/live?password=other-s3cret"


@pytest.fixture
async def api(aiohttp_client: Any, sqlite_url: str) -> TestClient:
    config = load_config(env={"ORIGINCAST_DATABASE_URL": sqlite_url, "ORIGINCAST_ADMIN_TOKEN": ADMIN})
    return await aiohttp_client(build_app(config, with_ingest=False))


async def _error(r: ClientResponse, status: int) -> str:
    assert r.status == status, await r.text()
    body = await r.json()
    assert set(body) == {"error"} and isinstance(body["error"], str) and body["error"]
    return str(body["error"])


async def test_api_create_and_read(api: TestClient) -> None:
    assert await (await api.get("/api/v1/streams")).json() == {"streams": []}
    r = await api.post(
        "/api/v1/streams", json={"slug": "farm", "title": "Farm gate", "site": "s1"}, headers=ADM
    )
    assert r.status == 201 and r.headers["Location"] == "/api/v1/streams/farm"
    created = await r.json()
    key = created.pop("publish_key")
    assert len(key) == 43
    assert created["slug"] == "farm" and created["kind"] == "whip" and created["visibility"] == "public"
    assert created["urls"] == {"watch": "/watch/farm", "whep": "/whep/farm", "whip": "/whip/farm"}
    assert created["state"]["status"] == "offline" and created["state"]["viewers"] == 0
    assert created["created_at"].endswith("Z")
    got = await (await api.get("/api/v1/streams/farm")).json()
    assert got == created and "publish_key" not in got
    assert api.app[STREAMS].verify_publish_key("farm", key)
    await _error(await api.get("/api/v1/streams/nope"), 404)


async def test_api_visibility_and_camera_urls(api: TestClient) -> None:
    for body in [
        {"slug": "pub", "title": "P"},
        {"slug": "hid", "title": "H", "visibility": "unlisted"},
        {"slug": "cam", "title": "C", "kind": "rtsp", "rtsp_url": CAMERA},
    ]:
        r = await api.post("/api/v1/streams", json=body, headers=ADM)
        assert r.status == 201
        text = await r.text()
        assert "s3cret" not in text
    admin_view = await (await api.get("/api/v1/streams/cam", headers=ADM)).json()
    assert admin_view["rtsp_url"] == "rtsp://***@127.0.0.1:8554/live?password=***"
    public_view = await (await api.get("/api/v1/streams/cam")).json()
    assert "rtsp_url" not in public_view and "whip" not in public_view["urls"]
    listed = await (await api.get("/api/v1/streams")).json()
    assert [s["slug"] for s in listed["streams"]] == ["cam", "pub"]  # unlisted left out
    listed = await (await api.get("/api/v1/streams", headers=ADM)).json()
    assert [s["slug"] for s in listed["streams"]] == ["cam", "hid", "pub"]
    # Unlisted: unknown to anyone without a role or a share token (web.share), seen by the admin.
    assert (await api.get("/api/v1/streams/hid")).status == 404
    assert (await api.get("/api/v1/streams/hid", headers=ADM)).status == 200
    await _error(await api.get("/api/v1/streams", headers={"Authorization": "Bearer nope"}), 401)
    for path in ["/api/v1/streams", "/api/v1/streams/cam", "/api/v1/streams/hid"]:
        for headers in ({}, ADM):
            assert "s3cret" not in await (await api.get(path, headers=headers)).text()


async def test_api_writes_need_the_admin_token(api: TestClient) -> None:
    body = {"slug": "farm", "title": "F"}
    error = await _error(await api.post("/api/v1/streams", json=body), 401)
    assert "Authorization" in error
    await _error(await api.post("/api/v1/streams", json=body, headers={"Authorization": "Bearer x"}), 401)
    r = await api.post("/api/v1/streams", json=body, headers={"Authorization": f"bearer {ADMIN}"})
    assert r.status == 201  # the scheme is case-insensitive (RFC 6750)
    await _error(await api.patch("/api/v1/streams/farm", json={"title": "x"}), 401)
    await _error(await api.delete("/api/v1/streams/farm"), 401)
    await _error(await api.post("/api/v1/streams/farm/rotate-key"), 401)
    assert (await api.get("/api/v1/streams/farm")).status == 200


async def test_api_without_a_configured_token_refuses_writes(aiohttp_client: Any, sqlite_url: str) -> None:
    client = await aiohttp_client(
        build_app(load_config(env={"ORIGINCAST_DATABASE_URL": sqlite_url}), with_ingest=False)
    )
    # Without ORIGINCAST_ADMIN_TOKEN the token is just a wrong credential.
    error = await _error(
        await client.post("/api/v1/streams", json={"slug": "a", "title": "A"}, headers=ADM), 401
    )
    assert "admin token" in error


async def test_api_bad_requests(api: TestClient) -> None:
    url = "/api/v1/streams"
    await _error(await api.post(url, data="slug=farm", headers={**ADM, "Content-Type": "text/plain"}), 415)
    await _error(await api.post(url, data="{nope", headers={**ADM, "Content-Type": "application/json"}), 400)
    await _error(await api.post(url, json=["farm"], headers=ADM), 400)
    assert "title" in await _error(await api.post(url, json={"slug": "farm"}, headers=ADM), 400)
    assert "visiblity" in await _error(
        await api.post(url, json={"slug": "farm", "title": "F", "visiblity": "unlisted"}, headers=ADM),
        400,
    )
    assert "slug" in await _error(await api.post(url, json={"slug": "Farm!", "title": "F"}, headers=ADM), 422)
    await _error(await api.post(url, json={"slug": "farm", "title": 5}, headers=ADM), 422)
    await _error(await api.post(url, json={"slug": "cam", "title": "C", "kind": "rtsp"}, headers=ADM), 422)
    assert (await api.post(url, json={"slug": "farm", "title": "F"}, headers=ADM)).status == 201
    assert "exists" in await _error(
        await api.post(url, json={"slug": "farm", "title": "F"}, headers=ADM), 409
    )


async def test_api_update_delete_rotate(api: TestClient) -> None:
    r = await api.post("/api/v1/streams", json={"slug": "farm", "title": "F", "site": "s1"}, headers=ADM)
    old_key = (await r.json())["publish_key"]
    r = await api.patch(
        "/api/v1/streams/farm", json={"title": "Farm 2", "visibility": "unlisted"}, headers=ADM
    )
    body = await r.json()
    assert r.status == 200 and (body["title"], body["visibility"], body["site"]) == (
        "Farm 2",
        "unlisted",
        "s1",
    )
    body = await (await api.patch("/api/v1/streams/farm", json={"site": None}, headers=ADM)).json()
    assert body["site"] is None
    await _error(await api.patch("/api/v1/streams/farm", json={"title": None}, headers=ADM), 422)
    await _error(await api.patch("/api/v1/streams/farm", json={"kind": "rtsp"}, headers=ADM), 422)
    await _error(await api.patch("/api/v1/streams/farm", json={"ownr": "me"}, headers=ADM), 400)
    # An admin may hand a stream to a producer (web.permissions), and take it back.
    body = await (await api.patch("/api/v1/streams/farm", json={"owner": "me"}, headers=ADM)).json()
    assert body["owner"] == "me"
    body = await (await api.patch("/api/v1/streams/farm", json={"owner": None}, headers=ADM)).json()
    assert body["owner"] is None
    await _error(await api.patch("/api/v1/streams/nope", json={"title": "x"}, headers=ADM), 404)

    r = await api.post("/api/v1/streams/farm/rotate-key", headers=ADM)
    new_key = (await r.json())["publish_key"]
    assert r.status == 200 and new_key != old_key
    repo = api.app[STREAMS]
    assert repo.verify_publish_key("farm", new_key) and not repo.verify_publish_key("farm", old_key)
    await _error(await api.post("/api/v1/streams/nope/rotate-key", headers=ADM), 404)

    assert (await api.delete("/api/v1/streams/farm", headers=ADM)).status == 204
    await _error(await api.delete("/api/v1/streams/farm", headers=ADM), 404)
    await _error(await api.get("/api/v1/streams/farm"), 404)


async def test_admin_failures_slow_down_then_lock_out(api: TestClient) -> None:
    throttle = api.app[AUTH].throttle
    throttle.lockout_after = 3
    bad = {"Authorization": "Bearer wrong-token"}
    t0 = time.monotonic()
    for _ in range(3):
        await _error(await api.delete("/api/v1/streams/x", headers=bad), 401)
    assert time.monotonic() - t0 >= 0.1 + 0.2 + 0.4 - 0.05  # 0.1 s, doubling
    r = await api.delete("/api/v1/streams/x", headers=ADM)
    assert r.status == 429 and "Retry-After" in r.headers  # even the right token, while locked


def test_throttle_grows_forgets_and_is_bounded() -> None:
    now = [0.0]
    t = FailureThrottle(
        base_delay_s=0.1,
        max_delay_s=1.0,
        lockout_after=5,
        lockout_s=30.0,
        forget_after_s=60.0,
        max_addresses=3,
        clock=lambda: now[0],
    )
    assert [t.record_failure("a") for _ in range(6)] == [0.1, 0.2, 0.4, 0.8, 1.0, 1.0]
    assert t.locked_for("a") == 30.0
    now[0] = 31.0
    assert t.locked_for("a") == 0.0
    assert t.record_failure("a") == 1.0  # still remembered: the count keeps growing
    now[0] = 100.0
    assert t.record_failure("a") == 0.1  # quiet for forget_after_s: a fresh start
    for addr in "bcde":
        t.record_failure(addr)
    assert len(t._by_address) == 3  # bounded: the oldest addresses go first
    t.record_success("e")
    assert t.locked_for("e") == 0.0 and "e" not in t._by_address


# -- the CLI -----------------------------------------------------------------------------


def test_cli(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], sqlite_url: str) -> None:
    monkeypatch.setenv("ORIGINCAST_DATABASE_URL", sqlite_url)
    monkeypatch.delenv("ORIGINCAST_CONFIG", raising=False)

    def run(*args: str) -> str:
        cli_main(["--log-level", "WARNING", "streams", *args])
        return capsys.readouterr().out

    out = run("add", "farm", "--title", "Farm gate", "--site", "s1")
    key = out.split("publish key: ")[1].split()[0]
    out = run("add", "cam", "--title", "Cam", "--kind", "rtsp", "--rtsp-url", CAMERA, "--unlisted")
    assert "s3cret" not in out and "rtsp://***@127.0.0.1:8554" in out
    out = run("list")
    assert "farm" in out and "cam" in out and "unlisted" in out and "s3cret" not in out
    out = run("show", "cam")
    assert "kind        rtsp" in out and "s3cret" not in out
    new = run("rotate-key", "farm").split("farm: ")[1].split()[0]
    repo = open_stream_repository(sqlite_url)
    repo.open()
    try:
        assert repo.verify_publish_key("farm", new) and not repo.verify_publish_key("farm", key)
    finally:
        repo.close()
    assert "removed cam" in run("remove", "cam")
    with pytest.raises(SystemExit, match="no stream 'cam'"):
        run("remove", "cam")
    with pytest.raises(SystemExit, match="slug must be"):
        run("add", "Bad Slug", "--title", "x")
    with pytest.raises(SystemExit, match="needs rtsp_url"):
        run("add", "cam2", "--title", "x", "--kind", "rtsp")
