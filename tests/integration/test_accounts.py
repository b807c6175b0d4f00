"""Accounts against a real server (aiohttp on loopback) on SQLite and PostgreSQL: login and
logout, the growing delay, cookie flags (Secure only over TLS), CSRF, API tokens, every
role on every write route, producers' own streams, argon2id in the database, and the CLI."""

from __future__ import annotations

import datetime as dt
import ipaddress
import os
import sqlite3
import ssl
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from http.cookies import SimpleCookie
from pathlib import Path
from typing import Any

import aiohttp
import psycopg
import pytest
from aiohttp.test_utils import TestClient, TestServer
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from yarl import URL

from tests.support.processes import REPO
from web.app import build_app
from web.config import load_config

ADMIN_TOKEN = "accounts-admin-token-0123456789"
ADM = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
PASSWORD = "correct horse battery"
BASE_DELAY = 0.1

ClientFactory = Callable[..., Awaitable[TestClient]]


@pytest.fixture(params=["sqlite", "postgres"])
def db_url(request: pytest.FixtureRequest) -> str:
    return str(request.getfixturevalue("sqlite_url" if request.param == "sqlite" else "pg_url"))


def _config(db_url: str, **env: str) -> Any:
    return load_config(
        env={
            "ORIGINCAST_DATABASE_URL": db_url,
            "ORIGINCAST_ADMIN_TOKEN": ADMIN_TOKEN,
            "ORIGINCAST_AUTH_FAILURE_BASE_DELAY_S": str(BASE_DELAY),
            "ORIGINCAST_AUTH_FAILURE_MAX_DELAY_S": "2",
            # Cheap hashes, so the measured time is the delay (the cost is tested elsewhere).
            "ORIGINCAST_AUTH_ARGON2_TIME_COST": "1",
            "ORIGINCAST_AUTH_ARGON2_MEMORY_KIB": "1024",
            "ORIGINCAST_AUTH_ARGON2_PARALLELISM": "1",
            **env,
        }
    )


@pytest.fixture
async def client(aiohttp_client: Any, db_url: str) -> TestClient:
    return await aiohttp_client(build_app(_config(db_url), with_ingest=False))


async def _add_user(client: TestClient, name: str, role: str) -> None:
    r = await client.post(
        "/api/v1/users", json={"name": name, "role": role, "password": PASSWORD}, headers=ADM
    )
    assert r.status == 201, await r.text()


def _set_cookie(r: aiohttp.ClientResponse) -> SimpleCookie:
    jar: SimpleCookie = SimpleCookie()
    for header in r.headers.getall("Set-Cookie", []):
        jar.load(header)
    return jar


async def _login(client: TestClient, name: str, password: str = PASSWORD) -> dict[str, str]:
    """Headers that act as ``name``'s browser session: the cookie and the CSRF token. (The
    client's own cookie jar is emptied: each test names the session it uses.)"""
    r = await client.post("/api/v1/session", json={"name": name, "password": password})
    assert r.status == 200, await r.text()
    body = await r.json()
    client.session.cookie_jar.clear()
    cookie = _set_cookie(r)["origincast_session"].value
    return {"Cookie": f"origincast_session={cookie}", "X-CSRF-Token": body["csrf_token"]}


async def _error(r: aiohttp.ClientResponse, status: int) -> str:
    assert r.status == status, await r.text()
    body = await r.json()
    assert list(body) == ["error"] and body["error"]
    return str(body["error"])


def _password_hashes(db_url: str) -> dict[str, str]:
    if db_url.startswith("sqlite:"):
        conn = sqlite3.connect(db_url[len("sqlite:///") :])
        rows = conn.execute("SELECT name, password_hash FROM users").fetchall()
        conn.close()
    else:
        with psycopg.connect(db_url) as pg:
            rows = pg.execute("SELECT name, password_hash FROM users").fetchall()
    return dict(rows)


# -- login, logout, cookies ----------------------------------------------------------------


async def test_login_session_logout(client: TestClient, db_url: str) -> None:
    await _add_user(client, "li.wei", "logistics")
    r = await client.post("/api/v1/session", json={"name": "li.wei", "password": PASSWORD})
    assert r.status == 200
    body = await r.json()
    assert (body["user"], body["role"], body["via"]) == ("li.wei", "logistics", "session")
    assert len(body["csrf_token"]) == 43 and r.headers["Cache-Control"] == "no-store"
    morsel = _set_cookie(r)["origincast_session"]
    assert len(morsel.value) == 43
    assert morsel["httponly"] and morsel["samesite"] == "Lax" and morsel["path"] == "/"
    assert not morsel["secure"]  # plain HTTP here
    client.session.cookie_jar.clear()
    session = {"Cookie": f"origincast_session={morsel.value}"}

    me = await (await client.get("/api/v1/session", headers=session)).json()
    assert me["user"] == "li.wei" and me["csrf_token"] == body["csrf_token"]
    assert (await client.get("/api/v1/alerts", headers=session)).status == 200

    # Logging out is a write: the CSRF token is needed, then the session is gone.
    assert await _error(await client.delete("/api/v1/session", headers=session), 403) == (
        "missing or wrong CSRF token"
    )
    r = await client.delete("/api/v1/session", headers={**session, "X-CSRF-Token": body["csrf_token"]})
    assert r.status == 204
    assert _set_cookie(r)["origincast_session"].value == ""
    r = await client.get("/api/v1/session", headers=session)
    await _error(r, 401)
    assert r.headers["WWW-Authenticate"].startswith("Bearer")
    # A stale cookie on a public page is no login, not an error.
    assert (await client.get("/api/v1/streams", headers=session)).status == 200
    await _error(await client.get("/api/v1/alerts", headers=session), 401)

    # Stored: argon2id hashes only, never the password.
    hashes = _password_hashes(db_url)
    assert hashes["li.wei"].startswith("$argon2id$v=19$") and PASSWORD not in hashes["li.wei"]


async def test_wrong_password_gets_a_growing_delay(client: TestClient) -> None:
    await _add_user(client, "alice", "producer")
    took = []
    for _ in range(4):
        t0 = time.monotonic()
        r = await client.post("/api/v1/session", json={"name": "alice", "password": "not her password!"})
        took.append(time.monotonic() - t0)
        assert await _error(r, 401) == "wrong user name or password"
        assert "origincast_session" not in _set_cookie(r)
    # 0.1, 0.2, 0.4, 0.8 s (the base delay configured above, doubled each time) on top of
    # the argon2 check, which takes about the same time each time.
    assert took[0] >= BASE_DELAY * 0.9
    for i in range(3):
        assert took[i + 1] - took[i] >= BASE_DELAY * 2**i * 0.6, took
    # An unknown name is refused the same way.
    await _error(await client.post("/api/v1/session", json={"name": "nobody", "password": PASSWORD}), 401)
    # The right password still works (no lockout yet) and clears the record.
    await _login(client, "alice")
    t0 = time.monotonic()
    await _error(
        await client.post("/api/v1/session", json={"name": "alice", "password": "nope nope nope"}), 401
    )
    assert time.monotonic() - t0 < took[2], took  # back to the first delay
    # Bad bodies: 4xx with a message, nothing else happens.
    await _error(await client.post("/api/v1/session", data="name=alice"), 415)
    await _error(await client.post("/api/v1/session", json={"name": "alice"}), 400)
    await _error(await client.post("/api/v1/session", json=["alice"]), 400)


async def test_cookie_secure_by_configuration(aiohttp_client: Any, sqlite_url: str) -> None:
    client = await aiohttp_client(
        build_app(_config(sqlite_url, ORIGINCAST_AUTH_COOKIE_SECURE="true"), with_ingest=False)
    )
    await _add_user(client, "bob", "producer")
    r = await client.post("/api/v1/session", json={"name": "bob", "password": PASSWORD})
    assert r.status == 200 and _set_cookie(r)["origincast_session"]["secure"]


def _tls_context(tmp_path: Path) -> ssl.SSLContext:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(hours=1))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False
        )
        .sign(key, hashes.SHA256())
    )
    (tmp_path / "cert.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    (tmp_path / "key.pem").write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(tmp_path / "cert.pem", tmp_path / "key.pem")
    return context


async def test_cookie_is_secure_over_tls(aiohttp_client: Any, sqlite_url: str, tmp_path: Path) -> None:
    server = TestServer(build_app(_config(sqlite_url), with_ingest=False))
    await server.start_server(ssl=_tls_context(tmp_path))  # started here: TLS is a start argument
    client = await aiohttp_client(server, connector=aiohttp.TCPConnector(ssl=False))
    assert str(client.make_url("/")).startswith("https://")
    await _add_user(client, "carol", "admin")
    r = await client.post("/api/v1/session", json={"name": "carol", "password": PASSWORD})
    assert r.status == 200
    morsel = _set_cookie(r)["origincast_session"]
    assert morsel["secure"] and morsel["httponly"] and morsel["samesite"] == "Lax"


# -- CSRF and API tokens -------------------------------------------------------------------


async def test_csrf_on_cookie_writes(client: TestClient) -> None:
    await _add_user(client, "pat", "producer")
    session = await _login(client, "pat")
    cookie_only = {"Cookie": session["Cookie"]}
    body = {"slug": "farm", "title": "Farm"}
    assert await _error(await client.post("/api/v1/streams", json=body, headers=cookie_only), 403) == (
        "missing or wrong CSRF token"
    )
    wrong = {**cookie_only, "X-CSRF-Token": session["X-CSRF-Token"][:-1] + "A"}
    await _error(await client.post("/api/v1/streams", json=body, headers=wrong), 403)
    foreign = {**session, "Origin": "https://evil.example"}
    await _error(await client.post("/api/v1/streams", json=body, headers=foreign), 403)
    same = {**session, "Origin": str(client.make_url("/")).rstrip("/")}
    r = await client.post("/api/v1/streams", json=body, headers=same)
    assert r.status == 201 and (await r.json())["owner"] == "pat"
    # Reads need no CSRF token.
    assert (await client.get("/api/v1/streams/farm", headers=cookie_only)).status == 200
    # A login from another site's page is refused too (login CSRF).
    r = await client.post(
        "/api/v1/session",
        json={"name": "pat", "password": PASSWORD},
        headers={"Origin": "https://evil.example"},
    )
    await _error(r, 403)


async def test_api_tokens(client: TestClient) -> None:
    await _add_user(client, "pat", "producer")
    await _add_user(client, "quinn", "producer")
    session = await _login(client, "pat")
    r = await client.post("/api/v1/tokens", json={"name": "obs script"}, headers=session)
    assert r.status == 201
    made = await r.json()
    token = made["token"]
    assert token.startswith("oc_") and made["owner"] == "pat" and made["name"] == "obs script"
    listed = await (await client.get("/api/v1/tokens", headers=session)).json()
    assert [t["id"] for t in listed["tokens"]] == [made["id"]]
    assert token not in str(listed)  # shown once only

    # Bearer requests are not ambient: no CSRF token needed.
    bearer = {"Authorization": f"Bearer {token}"}
    r = await client.post("/api/v1/streams", json={"slug": "by-token", "title": "T"}, headers=bearer)
    assert r.status == 201 and (await r.json())["owner"] == "pat"
    me = await (await client.get("/api/v1/session", headers=bearer)).json()
    assert (me["user"], me["via"], me["csrf_token"]) == ("pat", "api-token", None)
    # The token acts with its owner's role: not an admin's.
    await _error(await client.get("/api/v1/users", headers=bearer), 403)
    # Another producer cannot revoke it; its owner can, and then it fails.
    other = await _login(client, "quinn")
    await _error(await client.delete(f"/api/v1/tokens/{made['id']}", headers=other), 404)
    assert (await client.delete(f"/api/v1/tokens/{made['id']}", headers=session)).status == 204
    r = await client.get("/api/v1/session", headers=bearer)
    assert await _error(r, 401) == "unknown or revoked API token"
    await _error(await client.post("/api/v1/streams", json={"slug": "x", "title": "X"}, headers=bearer), 401)
    # The admin token is an admin but owns no tokens of its own.
    await _error(await client.post("/api/v1/tokens", json={"name": "x"}, headers=ADM), 422)
    r = await client.post("/api/v1/tokens", json={"name": "for quinn", "owner": "quinn"}, headers=ADM)
    assert r.status == 201 and (await r.json())["owner"] == "quinn"


# -- roles -------------------------------------------------------------------------------

# (method, path, body, who may) for every write route, and a few reads that are not public.
# "allowed" means authorization passed: the answer is neither 401 nor 403 (an alert that does
# not exist is 404, and this web-only server has no alert engine to act on, 503).
ROUTES: list[tuple[str, str, Any, set[str]]] = [
    ("POST", "/api/v1/streams", {"slug": "{role}-new", "title": "N"}, {"admin", "producer"}),
    ("PATCH", "/api/v1/streams/{role}-own", {"title": "Renamed"}, {"admin", "producer"}),
    ("POST", "/api/v1/streams/{role}-own/rotate-key", None, {"admin", "producer"}),
    # which sensors a stream shows is staff's call (web.permissions)
    ("PUT", "/api/v1/streams/{role}-own/links", {"sites": ["s1"]}, {"admin", "logistics"}),
    ("POST", "/api/v1/streams/{role}-own/share", {"ttl_s": 600}, {"admin", "producer"}),
    ("DELETE", "/api/v1/streams/{role}-own", None, {"admin", "producer"}),
    ("POST", "/api/v1/alerts/1/acknowledge", {"comment": "on it"}, {"admin", "logistics"}),
    ("POST", "/api/v1/alerts/1/resolve", {"comment": "fixed"}, {"admin", "logistics"}),
    ("PUT", "/api/v1/alert-profiles/custom-1", {"name": "C", "rules": []}, {"admin", "logistics"}),
    ("PUT", "/api/v1/devices/truck-1", {"site_id": "fleet"}, {"admin", "logistics"}),
    ("POST", "/api/v1/users", {"name": "{role}-made", "role": "producer", "password": PASSWORD}, {"admin"}),
    ("PATCH", "/api/v1/users/victim", {"role": "admin"}, {"admin"}),
    ("DELETE", "/api/v1/users/victim2", None, {"admin"}),
    ("GET", "/api/v1/users", None, {"admin"}),
    ("GET", "/api/v1/alerts", None, {"admin", "logistics"}),
    ("GET", "/api/v1/devices", None, {"admin", "logistics"}),
    ("GET", "/api/v1/alert-profiles", None, {"admin", "logistics"}),
    ("GET", "/api/v1/live?site=fleet", None, {"admin", "logistics"}),
    ("POST", "/api/v1/tokens", {"name": "t"}, {"admin", "logistics", "producer"}),
]
ROLES = ["admin", "logistics", "producer"]


async def test_each_role_on_each_write_route(client: TestClient) -> None:
    sessions: dict[str, dict[str, str]] = {}
    for role in ROLES:
        await _add_user(client, f"u-{role}", role)
        sessions[role] = await _login(client, f"u-{role}")
        if role != "logistics":  # a stream of their own to change
            r = await client.post(
                "/api/v1/streams", json={"slug": f"{role}-own", "title": "Own"}, headers=sessions[role]
            )
            assert r.status == 201
    await client.post("/api/v1/streams", json={"slug": "logistics-own", "title": "L"}, headers=ADM)
    for name in ("victim", "victim2"):
        await _add_user(client, name, "producer")

    refused = []
    for who in [*ROLES, "nobody"]:
        for method, path, body, allowed in ROUTES:
            if "victim2" in path and who == "admin":
                continue  # done last, so the others still find the user
            url = path.replace("{role}", who)
            data = None if body is None else {k: (v.replace("{role}", who) if isinstance(v, str) else v)
                                              for k, v in body.items()}  # fmt: skip
            r = await client.request(method, url, json=data, headers=sessions.get(who, {}))
            if who in allowed:
                if r.status in (401, 403):
                    refused.append(f"{who} {method} {url}: {r.status} {await r.text()}")
            else:
                expected = 401 if who == "nobody" else 403
                if r.status != expected:
                    refused.append(f"{who} {method} {url}: {r.status}, expected {expected}")
                else:
                    await _error(r, expected)
    r = await client.delete("/api/v1/users/victim2", headers=sessions["admin"])
    assert r.status == 204
    assert refused == []

    # The console page: staff in, a producer refused, no login sent to the login page.
    r = await client.get("/console", allow_redirects=False)
    location = URL(r.headers["Location"])
    assert r.status == 303 and location.path == "/login" and location.query["next"] == "/console"
    assert (await client.get("/console", headers=sessions["logistics"])).status == 200
    assert (await client.get("/console", headers=sessions["producer"])).status == 403
    page = await client.get("/login?next=/console", headers={"Accept-Language": "zh-CN"})
    text = await page.text()
    assert (
        page.status == 200
        and "登录" in text
        and "frame-ancestors 'none'" in page.headers["Content-Security-Policy"]
    )


async def test_producers_own_streams(client: TestClient) -> None:
    for name in ("pat", "quinn"):
        await _add_user(client, name, "producer")
    await _add_user(client, "li", "logistics")
    pat, quinn, li = await _login(client, "pat"), await _login(client, "quinn"), await _login(client, "li")
    assert (
        await client.post("/api/v1/streams", json={"slug": "pat-farm", "title": "P"}, headers=pat)
    ).status == 201
    r = await client.post(
        "/api/v1/streams", json={"slug": "pat-secret", "title": "S", "visibility": "unlisted"}, headers=pat
    )
    assert r.status == 201
    # Not on someone else's behalf.
    r = await client.post("/api/v1/streams", json={"slug": "x", "title": "X", "owner": "quinn"}, headers=pat)
    await _error(r, 403)

    for method, url, body in [
        ("PATCH", "/api/v1/streams/pat-farm", {"title": "Mine now"}),
        ("DELETE", "/api/v1/streams/pat-farm", None),
        ("POST", "/api/v1/streams/pat-farm/rotate-key", None),
    ]:
        assert "not yours" in await _error(await client.request(method, url, json=body, headers=quinn), 403)
    # Links are staff's, even for a stream's owner.
    r = await client.put("/api/v1/streams/pat-farm/links", json={"sites": ["x"]}, headers=pat)
    assert "admin or logistics" in await _error(r, 403)
    # Another producer's unlisted stream does not exist for quinn.
    await _error(await client.patch("/api/v1/streams/pat-secret", json={"title": "x"}, headers=quinn), 404)
    await _error(await client.get("/api/v1/streams/pat-secret", headers=quinn), 404)
    # The owner may, and an admin may; only the admin may change the owner.
    assert (await client.patch("/api/v1/streams/pat-farm", json={"title": "P2"}, headers=pat)).status == 200
    await _error(await client.patch("/api/v1/streams/pat-farm", json={"owner": "pat2"}, headers=pat), 403)
    r = await client.patch("/api/v1/streams/pat-farm", json={"owner": "quinn"}, headers=ADM)
    assert r.status == 200 and (await r.json())["owner"] == "quinn"
    assert (await client.patch("/api/v1/streams/pat-farm", json={"title": "Q"}, headers=quinn)).status == 200

    def slugs(body: dict[str, Any]) -> list[str]:
        return [s["slug"] for s in body["streams"]]

    assert slugs(await (await client.get("/api/v1/streams")).json()) == ["pat-farm"]
    assert slugs(await (await client.get("/api/v1/streams", headers=pat)).json()) == [
        "pat-farm",
        "pat-secret",
    ]
    assert slugs(await (await client.get("/api/v1/streams", headers=quinn)).json()) == ["pat-farm"]
    assert slugs(await (await client.get("/api/v1/streams", headers=li)).json()) == ["pat-farm", "pat-secret"]
    assert (await client.get("/api/v1/streams/pat-secret", headers=pat)).status == 200


async def test_users_api_rules(client: TestClient) -> None:
    await _add_user(client, "root", "admin")
    await _add_user(client, "pat", "producer")
    root, pat = await _login(client, "root"), await _login(client, "pat")
    # Own password: the old one is needed, and other sessions end.
    other_pat = await _login(client, "pat")
    r = await client.patch("/api/v1/users/pat", json={"password": "a new long password"}, headers=pat)
    await _error(r, 422)
    r = await client.patch(
        "/api/v1/users/pat", json={"password": "a new long password", "old_password": "wrong!"}, headers=pat
    )
    await _error(r, 403)
    r = await client.patch(
        "/api/v1/users/pat",
        json={"password": "a new long password", "old_password": PASSWORD, "display_name": "Pat"},
        headers=pat,
    )
    assert r.status == 200 and (await r.json())["display_name"] == "Pat"
    assert (await client.get("/api/v1/session", headers=pat)).status == 200
    await _error(await client.get("/api/v1/session", headers=other_pat), 401)
    # Not their role, not others.
    await _error(await client.patch("/api/v1/users/pat", json={"role": "admin"}, headers=pat), 403)
    await _error(await client.patch("/api/v1/users/root", json={"display_name": "x"}, headers=pat), 403)
    # Bad input: 4xx, nothing changes.
    for body, status in [
        ({"name": "Bad Name", "role": "admin", "password": PASSWORD}, 422),
        ({"name": "x", "role": "boss", "password": PASSWORD}, 422),
        ({"name": "x", "role": "admin", "password": "short"}, 422),
        ({"name": "x", "role": "admin"}, 400),
        ({"name": "pat", "role": "admin", "password": PASSWORD}, 409),
    ]:
        await _error(await client.post("/api/v1/users", json=body, headers=root), status)
    # The last enabled admin stays.
    assert "only enabled admin" in await _error(
        await client.patch("/api/v1/users/root", json={"disabled": True}, headers=root), 409
    )
    # Disabling a user ends their session at once.
    assert (await client.patch("/api/v1/users/pat", json={"disabled": True}, headers=root)).status == 200
    await _error(await client.get("/api/v1/session", headers=pat), 401)
    listed = await (await client.get("/api/v1/users", headers=root)).json()
    assert {u["name"]: u["disabled"] for u in listed["users"]} == {"pat": True, "root": False}
    assert all("password" not in str(u) for u in listed["users"])


# -- the CLI ---------------------------------------------------------------------------------


def _cli(db_url: str, *args: str, stdin: str = "") -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("ORIGINCAST_")}
    return subprocess.run(
        [sys.executable, "-m", "web", "users", *args],
        cwd=REPO,
        env={**env, "ORIGINCAST_DATABASE_URL": db_url},
        input=stdin,
        capture_output=True,
        text=True,
        timeout=60,
    )


async def test_cli_users_then_login(aiohttp_client: Any, db_url: str) -> None:
    out = _cli(db_url, "add", "boss", "--role", "admin", "--display-name", "The Boss", "--password-stdin",
               stdin=PASSWORD + "\n")  # fmt: skip
    assert out.returncode == 0, out.stderr
    assert "added boss (admin)" in out.stdout
    bad = _cli(db_url, "add", "weak", "--role", "producer", "--password-stdin", stdin="short\n")
    assert bad.returncode != 0 and "at least 12" in bad.stderr and "Traceback" not in bad.stderr
    listed = _cli(db_url, "list")
    assert listed.returncode == 0 and "boss" in listed.stdout and "admin" in listed.stdout
    token_out = _cli(db_url, "token", "boss", "--label", "backup script")
    assert token_out.returncode == 0, token_out.stderr
    token = next(w for w in token_out.stdout.split() if w.startswith("oc_"))
    assert _password_hashes(db_url)["boss"].startswith("$argon2id$")

    client = await aiohttp_client(
        build_app(load_config(env={"ORIGINCAST_DATABASE_URL": db_url}), with_ingest=False)
    )
    session = await _login(client, "boss")
    me = await (await client.get("/api/v1/session", headers=session)).json()
    assert (me["user"], me["role"], me["display_name"]) == ("boss", "admin", "The Boss")
    tokens = await (await client.get("/api/v1/tokens", headers={"Authorization": f"Bearer {token}"})).json()
    assert [t["name"] for t in tokens["tokens"]] == ["backup script"]

    assert _cli(db_url, "passwd", "boss", "--password-stdin", stdin="another long password\n").returncode == 0
    await _error(await client.get("/api/v1/session", headers=session), 401)  # its sessions ended
    await _login(client, "boss", "another long password")
    removed = _cli(db_url, "remove", "boss")
    assert removed.returncode != 0 and "only enabled admin" in removed.stderr
    assert _cli(db_url, "remove", "nobody").returncode != 0
