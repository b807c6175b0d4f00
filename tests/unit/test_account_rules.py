"""Accounts' logic: password hashing and rehash, secrets, sessions' expiry, CSRF and origin
rules, safe login redirects, the throttle, and the route × role table covering every route."""

from __future__ import annotations

import sqlite3
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from aiohttp.test_utils import make_mocked_request
from argon2 import PasswordHasher

from web.accounts import (
    TOKEN_PREFIX,
    AccountService,
    InvalidAccount,
    LastAdmin,
    SessionPolicy,
    UserChanges,
    UserExists,
    WrongPassword,
    check_name,
    check_password,
    new_api_token,
    sha256_hex,
)
from web.accounts_sql import SqliteAccountRepository
from web.api_session import safe_next
from web.app import build_app
from web.auth import FailureThrottle, csrf_ok, same_origin
from web.config import load_config
from web.permissions import ADMIN, DEFAULT_ROLES, PUBLIC, RULES, STAFF, rule_for

# Small argon2 parameters: the tests check behaviour, not cost.
FAST = PasswordHasher(time_cost=1, memory_cost=8 * 1024, parallelism=1)
PASSWORD = "correct horse battery"


class Clock:
    def __init__(self) -> None:
        self.now = datetime(2026, 11, 25, 8, 0, tzinfo=UTC)

    def __call__(self) -> datetime:
        return self.now


@pytest.fixture
async def repo(tmp_path: Path) -> AsyncIterator[SqliteAccountRepository]:
    r = SqliteAccountRepository(f"sqlite:///{tmp_path / 'accounts.db'}")
    r.open()
    assert r.migrate() == ["0001_accounts"]
    assert r.migrate() == []
    yield r
    r.close()


def test_names_and_passwords_are_checked() -> None:
    assert check_name("li.wei-2") == "li.wei-2"
    for bad in ("", "Alice", "-x", "a b", "x" * 65, 5):
        with pytest.raises(InvalidAccount):
            check_name(bad)
    with pytest.raises(InvalidAccount, match="at least 12"):
        check_password("short")
    with pytest.raises(InvalidAccount) as err:
        check_password("x" * 2000)
    assert "x" * 20 not in str(err.value)  # never echoed


def test_api_tokens_are_random_prefixed_and_hashed() -> None:
    tokens = {new_api_token() for _ in range(200)}
    assert len(tokens) == 200
    for t in tokens:
        assert t.startswith(TOKEN_PREFIX) and len(t) == len(TOKEN_PREFIX) + 43
    t = next(iter(tokens))
    assert sha256_hex(t) != t and len(sha256_hex(t)) == 64


async def test_password_hash_is_argon2id_and_verifies(repo: SqliteAccountRepository, tmp_path: Path) -> None:
    svc = AccountService(repo, hasher=FAST)
    await svc.create_user("alice", "producer", PASSWORD, "Alice")
    with pytest.raises(UserExists):
        await svc.create_user("alice", "admin", PASSWORD)
    found = repo.get_user_and_hash("alice")
    assert found is not None and found[1].startswith("$argon2id$") and PASSWORD not in found[1]
    assert (await svc.verify_login("alice", PASSWORD)) is not None
    assert await svc.verify_login("alice", PASSWORD + "x") is None
    assert await svc.verify_login("nobody", PASSWORD) is None
    assert await svc.verify_login("NOT A NAME", PASSWORD) is None
    # Nothing in the file holds the clear password.
    raw = (tmp_path / "accounts.db").read_bytes()
    assert PASSWORD.encode() not in raw


async def test_login_rehashes_when_parameters_change(repo: SqliteAccountRepository) -> None:
    await AccountService(repo, hasher=FAST).create_user("bob", "logistics", PASSWORD)
    old = repo.get_user_and_hash("bob")
    assert old is not None and "m=8192,t=1,p=1" in old[1]
    stronger = PasswordHasher(time_cost=2, memory_cost=16 * 1024, parallelism=1)
    svc = AccountService(repo, hasher=stronger)
    assert await svc.verify_login("bob", "wrong password here") is None
    assert repo.get_user_and_hash("bob")[1] == old[1]  # type: ignore[index]  # a failure changes nothing
    assert await svc.verify_login("bob", PASSWORD) is not None
    new = repo.get_user_and_hash("bob")
    assert new is not None and "m=16384,t=2,p=1" in new[1] and new[1].startswith("$argon2id$")
    assert await svc.verify_login("bob", PASSWORD) is not None


async def test_sessions_expire_idle_and_absolute(repo: SqliteAccountRepository) -> None:
    clock = Clock()
    svc = AccountService(
        repo, hasher=FAST, policy=SessionPolicy(idle_s=3600, absolute_s=3 * 3600), clock=clock
    )
    user = await svc.create_user("carol", "admin", PASSWORD)
    login = await svc.login(user)
    # Only the id's SHA-256 is stored.
    stored = {r[0] for r in repo._conn.execute("SELECT id_sha256 FROM user_sessions")}  # type: ignore[union-attr]
    assert stored == {sha256_hex(login.session_id)}
    active = await svc.session(login.session_id)
    assert active is not None and active.csrf_token == login.csrf_token and active.user.name == "carol"
    # Used every 50 minutes: the idle limit moves, the absolute one does not.
    for _ in range(3):
        clock.now += timedelta(minutes=50)
        assert await svc.session(login.session_id) is not None
    clock.now += timedelta(minutes=31)  # 3 h 1 min after login
    assert await svc.session(login.session_id) is None
    idle = await svc.login(user)
    clock.now += timedelta(hours=1, seconds=1)
    assert await svc.session(idle.session_id) is None
    assert await svc.session("not-a-session") is None


async def test_password_change_ends_other_sessions_and_checks_old(repo: SqliteAccountRepository) -> None:
    svc = AccountService(repo, hasher=FAST)
    user = await svc.create_user("dan", "producer", PASSWORD)
    here, elsewhere = await svc.login(user), await svc.login(user)
    with pytest.raises(WrongPassword):
        await svc.set_password("dan", "a brand new password", old_password="not the password")
    await svc.set_password("dan", "a brand new password", old_password=PASSWORD, keep_session=here.session_id)
    assert await svc.session(here.session_id) is not None
    assert await svc.session(elsewhere.session_id) is None
    assert await svc.verify_login("dan", "a brand new password") is not None


async def test_disabling_ends_sessions_and_tokens(repo: SqliteAccountRepository) -> None:
    svc = AccountService(repo, hasher=FAST)
    await svc.create_user("root", "admin", PASSWORD)
    user = await svc.create_user("erin", "producer", PASSWORD)
    login = await svc.login(user)
    token, record = await svc.create_token("erin", "ci")
    assert (await svc.token_user(token)) is not None
    assert await svc.token_user("oc_" + "x" * 43) is None and await svc.token_user("whatever") is None
    await svc.update_user("erin", UserChanges(disabled=True))
    assert await svc.session(login.session_id) is None
    assert await svc.token_user(token) is None
    assert await svc.verify_login("erin", PASSWORD) is None
    await svc.update_user("erin", UserChanges(disabled=False))
    assert (await svc.token_user(token)) is not None
    assert await svc.revoke_token(record.id, "root") is False  # not root's own
    assert await svc.revoke_token(record.id, "erin") is True
    assert await svc.token_user(token) is None


async def test_last_admin_cannot_be_removed_disabled_or_demoted(repo: SqliteAccountRepository) -> None:
    svc = AccountService(repo, hasher=FAST)
    await svc.create_user("root", "admin", PASSWORD)
    for change in (UserChanges(role="producer"), UserChanges(disabled=True)):
        with pytest.raises(LastAdmin):
            await svc.update_user("root", change)
    with pytest.raises(LastAdmin):
        await svc.delete_user("root")
    await svc.create_user("root2", "admin", PASSWORD)
    await svc.update_user("root", UserChanges(role="logistics"))
    with pytest.raises(LastAdmin):
        await svc.delete_user("root2")
    token, _ = await svc.create_token("root", None)
    assert await svc.delete_user("root") is True
    assert await svc.token_user(token) is None  # the cascade took the token


def test_foreign_keys_cascade_in_sqlite(tmp_path: Path) -> None:
    repo = SqliteAccountRepository(f"sqlite:///{tmp_path / 'a.db'}")
    repo.open()
    repo.migrate()
    repo.close()
    conn = sqlite3.connect(tmp_path / "a.db")
    tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    assert {"users", "user_sessions", "api_tokens", "account_schema_migrations"} <= tables
    conn.close()


def test_same_origin_and_csrf_rules() -> None:
    assert same_origin("https://live.example.com", "live.example.com")
    assert same_origin("http://127.0.0.1:8080", "127.0.0.1:8080")
    assert same_origin("https://live.example.com:443", "live.example.com")
    assert not same_origin("https://evil.example", "live.example.com")
    assert not same_origin("https://live.example.com.evil.example", "live.example.com")
    assert not same_origin("null", "live.example.com")
    assert not same_origin("http://127.0.0.1:8081", "127.0.0.1:8080")

    def req(headers: dict[str, str]) -> object:
        return make_mocked_request("POST", "/api/v1/streams", headers={"Host": "127.0.0.1:8080", **headers})

    assert csrf_ok(req({"X-CSRF-Token": "abc"}), "abc")  # type: ignore[arg-type]
    assert csrf_ok(req({"X-CSRF-Token": "abc", "Origin": "http://127.0.0.1:8080"}), "abc")  # type: ignore[arg-type]
    assert not csrf_ok(req({}), "abc")  # type: ignore[arg-type]
    assert not csrf_ok(req({"X-CSRF-Token": "abd"}), "abc")  # type: ignore[arg-type]
    assert not csrf_ok(req({"X-CSRF-Token": "abc", "Origin": "http://evil.example"}), "abc")  # type: ignore[arg-type]
    assert not csrf_ok(req({"X-CSRF-Token": ""}), "")  # type: ignore[arg-type]


def test_login_redirect_stays_on_this_site() -> None:
    assert safe_next("/console?tab=alerts") == "/console?tab=alerts"
    assert safe_next("/watch/farm") == "/watch/farm"
    for bad in (
        None,
        "",
        "https://evil.example/",
        "//evil.example/x",
        "/\\evil.example",
        "javascript:x",
        "/a b",
    ):
        assert safe_next(bad) == "/console"


def test_throttle_grows_per_key_and_locks_out() -> None:
    now = [0.0]
    t = FailureThrottle(
        base_delay_s=0.01, max_delay_s=0.08, lockout_after=5, lockout_s=60, clock=lambda: now[0]
    )
    delays = [t.record_failure("user:alice") for _ in range(4)]
    assert delays == [0.01, 0.02, 0.04, 0.08]
    assert t.locked_for("user:alice") == 0 and t.locked_for("10.0.0.1") == 0
    t.record_failure("user:alice")
    assert t.locked_for("user:alice") == 60
    now[0] += 61
    assert t.locked_for("user:alice") == 0
    t.record_success("user:alice")
    assert t.record_failure("user:alice") == 0.01


def test_every_route_has_a_rule(sqlite_url: str) -> None:
    """A new endpoint must be given its roles in web.permissions (without one it is admin
    only, which the author should decide, not inherit)."""
    app = build_app(load_config(env={"ORIGINCAST_DATABASE_URL": sqlite_url}), with_ingest=False)
    missing = []
    for route in app.router.routes():
        if route.method == "HEAD" or route.resource is None:
            continue
        if rule_for(route.method, route.resource.canonical) is None:
            missing.append(f"{route.method} {route.resource.canonical}")
    assert missing == []
    assert DEFAULT_ROLES == ADMIN
    # Spot checks of the table the brief asks for.
    assert rule_for("POST", "/api/v1/alerts/{id}/acknowledge").roles == STAFF  # type: ignore[union-attr]
    assert rule_for("GET", "/api/v1/streams").roles == PUBLIC  # type: ignore[union-attr]
    assert rule_for("HEAD", "/healthz").roles == PUBLIC  # type: ignore[union-attr]
    assert len({(r.method, r.path) for r in RULES}) == len(RULES)
