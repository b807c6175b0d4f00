"""Accounts in SQL: SQLite (stdlib ``sqlite3``) or PostgreSQL (psycopg 3).

Same database as telemetry and the stream registry, its own tables (``users``,
``user_sessions``, ``api_tokens``) and its own versioned migrations recorded in
``account_schema_migrations``, as ``stream.registry_sql`` does for streams. Applied
migrations are never edited; a change is a new entry at the end of the list.

Sessions and tokens reference their user with ON DELETE CASCADE: removing a user ends
everything that acted as them in the same statement.

Changes that could leave no enabled admin (demote, disable, remove) count the remaining
admins inside the same transaction, serialised (BEGIN IMMEDIATE on SQLite, an advisory
transaction lock on PostgreSQL), so two admins removing each other at once cannot both win.
"""

from __future__ import annotations

import logging
import sqlite3
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import psycopg
from psycopg import errors as pg_errors
from psycopg_pool import ConnectionPool

from telemetry.storage.sqlite import database_path
from web.accounts import (
    AccountRepository,
    ApiToken,
    LastAdmin,
    StoredSession,
    User,
    UserChanges,
    UserExists,
    UserNotFound,
)

log = logging.getLogger(__name__)

# pg_advisory_xact_lock keys: migrations ("ocaccnts") and user changes that must see a
# stable set of admins ("ocadmins"); distinct from telemetry's and the registry's.
MIGRATION_LOCK_KEY = 0x6F63_6163_636E_7473
ADMINS_LOCK_KEY = 0x6F63_6164_6D69_6E73

# (version, name, statements per dialect). Times: timestamptz on PostgreSQL, integer
# microseconds since the Unix epoch on SQLite (as the registry and telemetry store them).
_MIGRATIONS: tuple[tuple[int, str, dict[str, Sequence[str]]], ...] = (
    (
        1,
        "0001_accounts",
        {
            "postgres": (
                """
CREATE TABLE IF NOT EXISTS users (
    name text PRIMARY KEY CHECK (name ~ '^[a-z0-9][a-z0-9_.-]{0,63}$'),
    display_name text,
    role text NOT NULL CHECK (role IN ('admin', 'logistics', 'producer')),
    password_hash text NOT NULL CHECK (password_hash LIKE '$argon2id$%'),
    disabled boolean NOT NULL DEFAULT false,
    created_at timestamptz NOT NULL,
    updated_at timestamptz NOT NULL DEFAULT now()
)""",
                """
CREATE TABLE IF NOT EXISTS user_sessions (
    id_sha256 text PRIMARY KEY,
    user_name text NOT NULL REFERENCES users (name) ON DELETE CASCADE,
    csrf_token text NOT NULL,
    created_at timestamptz NOT NULL,
    last_seen_at timestamptz NOT NULL
)""",
                "CREATE INDEX IF NOT EXISTS user_sessions_user ON user_sessions (user_name)",
                """
CREATE TABLE IF NOT EXISTS api_tokens (
    id text PRIMARY KEY,
    token_sha256 text NOT NULL UNIQUE,
    owner text NOT NULL REFERENCES users (name) ON DELETE CASCADE,
    name text NOT NULL,
    created_at timestamptz NOT NULL,
    last_used_at timestamptz
)""",
                "CREATE INDEX IF NOT EXISTS api_tokens_owner ON api_tokens (owner)",
            ),
            "sqlite": (
                """
CREATE TABLE IF NOT EXISTS users (
    name TEXT PRIMARY KEY,
    display_name TEXT,
    role TEXT NOT NULL CHECK (role IN ('admin', 'logistics', 'producer')),
    password_hash TEXT NOT NULL CHECK (password_hash LIKE '$argon2id$%'),
    disabled INTEGER NOT NULL DEFAULT 0,
    created_at INTEGER NOT NULL,
    updated_at INTEGER NOT NULL
)""",
                """
CREATE TABLE IF NOT EXISTS user_sessions (
    id_sha256 TEXT PRIMARY KEY,
    user_name TEXT NOT NULL REFERENCES users (name) ON DELETE CASCADE,
    csrf_token TEXT NOT NULL,
    created_at INTEGER NOT NULL,
    last_seen_at INTEGER NOT NULL
)""",
                "CREATE INDEX IF NOT EXISTS user_sessions_user ON user_sessions (user_name)",
                """
CREATE TABLE IF NOT EXISTS api_tokens (
    id TEXT PRIMARY KEY,
    token_sha256 TEXT NOT NULL UNIQUE,
    owner TEXT NOT NULL REFERENCES users (name) ON DELETE CASCADE,
    name TEXT NOT NULL,
    created_at INTEGER NOT NULL,
    last_used_at INTEGER
)""",
                "CREATE INDEX IF NOT EXISTS api_tokens_owner ON api_tokens (owner)",
            ),
        },
    ),
)

_USER_COLUMNS = "u.name, u.display_name, u.role, u.created_at, u.disabled"
_TOKEN_COLUMNS = "t.id, t.name, t.owner, t.created_at, t.last_used_at"
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def _to_us(t: datetime) -> int:
    delta = t.astimezone(UTC) - _EPOCH
    return (delta.days * 86_400 + delta.seconds) * 1_000_000 + delta.microseconds


def _time(value: Any) -> datetime:
    if isinstance(value, int):
        return _EPOCH + timedelta(microseconds=value)
    assert isinstance(value, datetime)
    return value.astimezone(UTC)


def _user(row: Sequence[Any]) -> User:
    name, display_name, role, created_at, disabled = row[:5]
    return User(name, display_name, role, _time(created_at), bool(disabled))


def _token(row: Sequence[Any]) -> ApiToken:
    token_id, name, owner, created_at, last_used_at = row[:5]
    return ApiToken(token_id, name, owner, _time(created_at), _time(last_used_at) if last_used_at else None)


def _would_lose_admin(user: User, changes: UserChanges | None) -> bool:
    """Whether this change (None: removal) takes an enabled admin away."""
    if user.role != "admin" or user.disabled:
        return False
    if changes is None:
        return True
    return (changes.role is not None and changes.role != "admin") or changes.disabled is True


def _changed(user: User, changes: UserChanges) -> User:
    if changes.clear_display_name:
        display = None
    elif changes.display_name is not None:
        display = changes.display_name
    else:
        display = user.display_name
    return User(
        name=user.name,
        display_name=display,
        role=changes.role if changes.role is not None else user.role,
        created_at=user.created_at,
        disabled=changes.disabled if changes.disabled is not None else user.disabled,
    )


def open_account_repository(database_url: str) -> AccountRepository:
    """``sqlite:///path.db`` or ``postgresql://…`` (the URL telemetry uses too)."""
    if database_url.startswith("sqlite:"):
        return SqliteAccountRepository(database_url)
    if database_url.startswith(("postgresql:", "postgres:")):
        return PostgresAccountRepository(database_url)
    raise ValueError("database URL must be sqlite:///… or postgresql://…")



class SqliteAccountRepository:
    kind = "sqlite"

    def __init__(self, url: str) -> None:
        self._path = database_path(url)
        self._lock = threading.Lock()
        self._conn: sqlite3.Connection | None = None

    def open(self) -> None:
        with self._lock:
            if self._conn is not None:
                return
            if self._path != ":memory:":
                Path(self._path).parent.mkdir(parents=True, exist_ok=True)
            conn = sqlite3.connect(self._path, timeout=10.0, isolation_level=None, check_same_thread=False)
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA busy_timeout=10000")
            # Off by default in SQLite, per connection: the CASCADEs depend on it.
            conn.execute("PRAGMA foreign_keys=ON")
            self._conn = conn

    def close(self) -> None:
        with self._lock:
            if self._conn is not None:
                self._conn.close()
                self._conn = None

    @contextmanager
    def _tx(self, *, write: bool) -> Iterator[sqlite3.Connection]:
        with self._lock:
            if self._conn is None:
                raise RuntimeError("account store is not open")
            conn = self._conn
            conn.execute("BEGIN IMMEDIATE" if write else "BEGIN")
            try:
                yield conn
            except BaseException:
                conn.execute("ROLLBACK")
                raise
            conn.execute("COMMIT")

    def migrate(self) -> list[str]:
        applied: list[str] = []
        with self._tx(write=True) as conn:
            conn.execute(
                "CREATE TABLE IF NOT EXISTS account_schema_migrations ("
                " version INTEGER PRIMARY KEY, name TEXT NOT NULL, applied_at INTEGER NOT NULL)"
            )
        for version, name, sql in _MIGRATIONS:
            with self._tx(write=True) as conn:
                done = conn.execute(
                    "SELECT 1 FROM account_schema_migrations WHERE version = ?", (version,)
                ).fetchone()
                if done is None:
                    for statement in sql["sqlite"]:
                        conn.execute(statement)
                    conn.execute(
                        "INSERT INTO account_schema_migrations (version, name, applied_at) VALUES (?, ?, ?)",
                        (version, name, time.time_ns() // 1000),
                    )
                    applied.append(name)
        for name in applied:
            log.info("account migration applied (sqlite): %s", name)
        return applied

    # -- users ----------------------------------------------------------------------------

    def add_user(self, user: User, password_hash: str) -> None:
        now = _to_us(user.created_at)
        try:
            with self._tx(write=True) as conn:
                conn.execute(
                    "INSERT INTO users (name, display_name, role, password_hash, disabled, created_at,"
                    " updated_at) VALUES (?, ?, ?, ?, ?, ?, ?)",
                    (user.name, user.display_name, user.role, password_hash, int(user.disabled), now, now),
                )
        except sqlite3.IntegrityError:
            raise UserExists(f"user {user.name!r} already exists") from None

    def get_user(self, name: str) -> User | None:
        with self._tx(write=False) as conn:
            row = conn.execute(f"SELECT {_USER_COLUMNS} FROM users u WHERE u.name = ?", (name,)).fetchone()
        return _user(row) if row else None

    def get_user_and_hash(self, name: str) -> tuple[User, str] | None:
        with self._tx(write=False) as conn:
            row = conn.execute(
                f"SELECT {_USER_COLUMNS}, u.password_hash FROM users u WHERE u.name = ?", (name,)
            ).fetchone()
        return (_user(row), row[5]) if row else None

    def list_users(self) -> list[User]:
        with self._tx(write=False) as conn:
            rows = conn.execute(f"SELECT {_USER_COLUMNS} FROM users u ORDER BY u.name").fetchall()
        return [_user(r) for r in rows]

    def _locked_user(self, conn: sqlite3.Connection, name: str) -> User:
        row = conn.execute(f"SELECT {_USER_COLUMNS} FROM users u WHERE u.name = ?", (name,)).fetchone()
        if row is None:
            raise UserNotFound(f"no user {name!r}")
        return _user(row)

    def _check_admins(self, conn: sqlite3.Connection, user: User, changes: UserChanges | None) -> None:
        if _would_lose_admin(user, changes):
            (others,) = conn.execute(
                "SELECT count(*) FROM users WHERE role = 'admin' AND disabled = 0 AND name <> ?", (user.name,)
            ).fetchone()
            if others == 0:
                raise LastAdmin(f"{user.name!r} is the only enabled admin; make another admin first")

    def update_user(self, name: str, changes: UserChanges) -> User:
        with self._tx(write=True) as conn:
            user = self._locked_user(conn, name)
            self._check_admins(conn, user, changes)
            new = _changed(user, changes)
            conn.execute(
                "UPDATE users SET display_name = ?, role = ?, disabled = ?, updated_at = ? WHERE name = ?",
                (new.display_name, new.role, int(new.disabled), time.time_ns() // 1000, name),
            )
            if new.disabled:
                conn.execute("DELETE FROM user_sessions WHERE user_name = ?", (name,))
        return new

    def set_password_hash(self, name: str, password_hash: str, *, end_sessions_except: str | None) -> None:
        with self._tx(write=True) as conn:
            cur = conn.execute(
                "UPDATE users SET password_hash = ?, updated_at = ? WHERE name = ?",
                (password_hash, time.time_ns() // 1000, name),
            )
            if cur.rowcount == 0:
                raise UserNotFound(f"no user {name!r}")
            conn.execute(
                "DELETE FROM user_sessions WHERE user_name = ? AND id_sha256 <> ?",
                (name, end_sessions_except or ""),
            )

    def replace_password_hash(self, name: str, old_hash: str, new_hash: str) -> None:
        with self._tx(write=True) as conn:
            conn.execute(
                "UPDATE users SET password_hash = ? WHERE name = ? AND password_hash = ?",
                (new_hash, name, old_hash),
            )

    def delete_user(self, name: str) -> bool:
        with self._tx(write=True) as conn:
            try:
                user = self._locked_user(conn, name)
            except UserNotFound:
                return False
            self._check_admins(conn, user, None)
            conn.execute("DELETE FROM users WHERE name = ?", (name,))
        return True

    # -- sessions -------------------------------------------------------------------------

    def add_session(self, id_hash: str, user: str, csrf_token: str, now: datetime) -> None:
        with self._tx(write=True) as conn:
            conn.execute(
                "INSERT INTO user_sessions (id_sha256, user_name, csrf_token, created_at, last_seen_at)"
                " VALUES (?, ?, ?, ?, ?)",
                (id_hash, user, csrf_token, _to_us(now), _to_us(now)),
            )

    def get_session(self, id_hash: str) -> StoredSession | None:
        with self._tx(write=False) as conn:
            row = conn.execute(
                f"SELECT {_USER_COLUMNS}, s.csrf_token, s.created_at, s.last_seen_at"
                " FROM user_sessions s JOIN users u ON u.name = s.user_name WHERE s.id_sha256 = ?",
                (id_hash,),
            ).fetchone()
        if row is None:
            return None
        return StoredSession(_user(row), row[5], _time(row[6]), _time(row[7]))

    def touch_session(self, id_hash: str, now: datetime) -> None:
        with self._tx(write=True) as conn:
            conn.execute(
                "UPDATE user_sessions SET last_seen_at = ? WHERE id_sha256 = ?", (_to_us(now), id_hash)
            )

    def delete_session(self, id_hash: str) -> None:
        with self._tx(write=True) as conn:
            conn.execute("DELETE FROM user_sessions WHERE id_sha256 = ?", (id_hash,))

    def purge_sessions(self, idle_before: datetime, created_before: datetime) -> int:
        with self._tx(write=True) as conn:
            return conn.execute(
                "DELETE FROM user_sessions WHERE last_seen_at < ? OR created_at < ?",
                (_to_us(idle_before), _to_us(created_before)),
            ).rowcount

    # -- tokens ---------------------------------------------------------------------------

    def add_token(self, token: ApiToken, token_hash: str) -> None:
        try:
            with self._tx(write=True) as conn:
                conn.execute(
                    "INSERT INTO api_tokens (id, token_sha256, owner, name, created_at)"
                    " VALUES (?, ?, ?, ?, ?)",
                    (token.id, token_hash, token.owner, token.name, _to_us(token.created_at)),
                )
        except sqlite3.IntegrityError:
            raise UserNotFound(f"no user {token.owner!r}") from None

    def get_token(self, token_hash: str) -> tuple[User, ApiToken] | None:
        with self._tx(write=False) as conn:
            row = conn.execute(
                f"SELECT {_USER_COLUMNS}, {_TOKEN_COLUMNS} FROM api_tokens t JOIN users u ON u.name = t.owner"
                " WHERE t.token_sha256 = ?",
                (token_hash,),
            ).fetchone()
        return (_user(row), _token(row[5:])) if row else None

    def touch_token(self, token_id: str, now: datetime) -> None:
        with self._tx(write=True) as conn:
            conn.execute("UPDATE api_tokens SET last_used_at = ? WHERE id = ?", (_to_us(now), token_id))

    def list_tokens(self, owner: str | None) -> list[ApiToken]:
        where, args = (" WHERE t.owner = ?", (owner,)) if owner is not None else ("", ())
        with self._tx(write=False) as conn:
            rows = conn.execute(
                f"SELECT {_TOKEN_COLUMNS} FROM api_tokens t{where} ORDER BY t.created_at, t.id", args
            ).fetchall()
        return [_token(r) for r in rows]

    def delete_token(self, token_id: str, owner: str | None) -> bool:
        with self._tx(write=True) as conn:
            if owner is None:
                cur = conn.execute("DELETE FROM api_tokens WHERE id = ?", (token_id,))
            else:
                cur = conn.execute("DELETE FROM api_tokens WHERE id = ? AND owner = ?", (token_id, owner))
            return cur.rowcount > 0


class PostgresAccountRepository:
    kind = "postgres"

    def __init__(self, url: str) -> None:
        self._url = url
        self._pool: ConnectionPool | None = None

    def open(self) -> None:
        if self._pool is not None:
            return
        pool = ConnectionPool(
            self._url,
            min_size=1,
            max_size=4,
            kwargs={"autocommit": True, "connect_timeout": 5, "application_name": "origincast-accounts"},
            check=ConnectionPool.check_connection,
            timeout=5.0,
            name="origincast-accounts",
            open=False,
        )
        pool.open(wait=False)
        self._pool = pool

    def close(self) -> None:
        if self._pool is not None:
            self._pool.close()
            self._pool = None

    @contextmanager
    def _tx(self) -> Iterator[psycopg.Cursor[Any]]:
        if self._pool is None:
            raise RuntimeError("account store is not open")
        with self._pool.connection() as conn, conn.transaction(), conn.cursor() as cur:
            yield cur

    def migrate(self) -> list[str]:
        applied: list[str] = []
        with self._tx() as cur:
            cur.execute("SELECT pg_advisory_xact_lock(%s)", (MIGRATION_LOCK_KEY,))
            cur.execute(
                "CREATE TABLE IF NOT EXISTS account_schema_migrations ("
                " version integer PRIMARY KEY, name text NOT NULL,"
                " applied_at timestamptz NOT NULL DEFAULT now())"
            )
            cur.execute("SELECT version FROM account_schema_migrations")
            done = {r[0] for r in cur.fetchall()}
            for version, name, sql in _MIGRATIONS:
                if version in done:
                    continue
                for statement in sql["postgres"]:
                    cur.execute(statement)
                cur.execute(
                    "INSERT INTO account_schema_migrations (version, name) VALUES (%s, %s)", (version, name)
                )
                applied.append(name)
        for name in applied:
            log.info("account migration applied (postgres): %s", name)
        return applied

    # -- users ----------------------------------------------------------------------------

    def add_user(self, user: User, password_hash: str) -> None:
        try:
            with self._tx() as cur:
                cur.execute(
                    "INSERT INTO users (name, display_name, role, password_hash, disabled, created_at)"
                    " VALUES (%s, %s, %s, %s, %s, %s)",
                    (user.name, user.display_name, user.role, password_hash, user.disabled, user.created_at),
                )
        except pg_errors.UniqueViolation:
            raise UserExists(f"user {user.name!r} already exists") from None

    def get_user(self, name: str) -> User | None:
        with self._tx() as cur:
            cur.execute(f"SELECT {_USER_COLUMNS} FROM users u WHERE u.name = %s", (name,))
            row = cur.fetchone()
        return _user(row) if row else None

    def get_user_and_hash(self, name: str) -> tuple[User, str] | None:
        with self._tx() as cur:
            cur.execute(f"SELECT {_USER_COLUMNS}, u.password_hash FROM users u WHERE u.name = %s", (name,))
            row = cur.fetchone()
        return (_user(row), row[5]) if row else None

    def list_users(self) -> list[User]:
        with self._tx() as cur:
            cur.execute(f"SELECT {_USER_COLUMNS} FROM users u ORDER BY u.name")
            rows = cur.fetchall()
        return [_user(r) for r in rows]

    def _locked_user(self, cur: psycopg.Cursor[Any], name: str) -> User:
        # Every change to who is an admin takes this lock first, so the count below sees
        # a set of admins nobody else is changing.
        cur.execute("SELECT pg_advisory_xact_lock(%s)", (ADMINS_LOCK_KEY,))
        cur.execute(f"SELECT {_USER_COLUMNS} FROM users u WHERE u.name = %s FOR UPDATE", (name,))
        row = cur.fetchone()
        if row is None:
            raise UserNotFound(f"no user {name!r}")
        return _user(row)

    def _check_admins(self, cur: psycopg.Cursor[Any], user: User, changes: UserChanges | None) -> None:
        if _would_lose_admin(user, changes):
            cur.execute(
                "SELECT count(*) FROM users WHERE role = 'admin' AND NOT disabled AND name <> %s",
                (user.name,),
            )
            row = cur.fetchone()
            if row is None or row[0] == 0:
                raise LastAdmin(f"{user.name!r} is the only enabled admin; make another admin first")

    def update_user(self, name: str, changes: UserChanges) -> User:
        with self._tx() as cur:
            user = self._locked_user(cur, name)
            self._check_admins(cur, user, changes)
            new = _changed(user, changes)
            cur.execute(
                "UPDATE users SET display_name = %s, role = %s, disabled = %s, updated_at = now()"
                " WHERE name = %s",
                (new.display_name, new.role, new.disabled, name),
            )
            if new.disabled:
                cur.execute("DELETE FROM user_sessions WHERE user_name = %s", (name,))
        return new

    def set_password_hash(self, name: str, password_hash: str, *, end_sessions_except: str | None) -> None:
        with self._tx() as cur:
            cur.execute(
                "UPDATE users SET password_hash = %s, updated_at = now() WHERE name = %s",
                (password_hash, name),
            )
            if cur.rowcount == 0:
                raise UserNotFound(f"no user {name!r}")
            cur.execute(
                "DELETE FROM user_sessions WHERE user_name = %s AND id_sha256 <> %s",
                (name, end_sessions_except or ""),
            )

    def replace_password_hash(self, name: str, old_hash: str, new_hash: str) -> None:
        with self._tx() as cur:
            cur.execute(
                "UPDATE users SET password_hash = %s WHERE name = %s AND password_hash = %s",
                (new_hash, name, old_hash),
            )

    def delete_user(self, name: str) -> bool:
        with self._tx() as cur:
            try:
                user = self._locked_user(cur, name)
            except UserNotFound:
                return False
            self._check_admins(cur, user, None)
            cur.execute("DELETE FROM users WHERE name = %s", (name,))
        return True

    # -- sessions -------------------------------------------------------------------------

    def add_session(self, id_hash: str, user: str, csrf_token: str, now: datetime) -> None:
        with self._tx() as cur:
            cur.execute(
                "INSERT INTO user_sessions (id_sha256, user_name, csrf_token, created_at, last_seen_at)"
                " VALUES (%s, %s, %s, %s, %s)",
                (id_hash, user, csrf_token, now, now),
            )

    def get_session(self, id_hash: str) -> StoredSession | None:
        with self._tx() as cur:
            cur.execute(
                f"SELECT {_USER_COLUMNS}, s.csrf_token, s.created_at, s.last_seen_at"
                " FROM user_sessions s JOIN users u ON u.name = s.user_name WHERE s.id_sha256 = %s",
                (id_hash,),
            )
            row = cur.fetchone()
        if row is None:
            return None
        return StoredSession(_user(row), row[5], _time(row[6]), _time(row[7]))

    def touch_session(self, id_hash: str, now: datetime) -> None:
        with self._tx() as cur:
            cur.execute("UPDATE user_sessions SET last_seen_at = %s WHERE id_sha256 = %s", (now, id_hash))

    def delete_session(self, id_hash: str) -> None:
        with self._tx() as cur:
            cur.execute("DELETE FROM user_sessions WHERE id_sha256 = %s", (id_hash,))

    def purge_sessions(self, idle_before: datetime, created_before: datetime) -> int:
        with self._tx() as cur:
            cur.execute(
                "DELETE FROM user_sessions WHERE last_seen_at < %s OR created_at < %s",
                (idle_before, created_before),
            )
            return cur.rowcount

    # -- tokens ---------------------------------------------------------------------------

    def add_token(self, token: ApiToken, token_hash: str) -> None:
        try:
            with self._tx() as cur:
                cur.execute(
                    "INSERT INTO api_tokens (id, token_sha256, owner, name, created_at)"
                    " VALUES (%s, %s, %s, %s, %s)",
                    (token.id, token_hash, token.owner, token.name, token.created_at),
                )
        except pg_errors.ForeignKeyViolation:
            raise UserNotFound(f"no user {token.owner!r}") from None

    def get_token(self, token_hash: str) -> tuple[User, ApiToken] | None:
        with self._tx() as cur:
            cur.execute(
                f"SELECT {_USER_COLUMNS}, {_TOKEN_COLUMNS} FROM api_tokens t JOIN users u ON u.name = t.owner"
                " WHERE t.token_sha256 = %s",
                (token_hash,),
            )
            row = cur.fetchone()
        return (_user(row), _token(row[5:])) if row else None

    def touch_token(self, token_id: str, now: datetime) -> None:
        with self._tx() as cur:
            cur.execute("UPDATE api_tokens SET last_used_at = %s WHERE id = %s", (now, token_id))

    def list_tokens(self, owner: str | None) -> list[ApiToken]:
        with self._tx() as cur:
            if owner is None:
                cur.execute(f"SELECT {_TOKEN_COLUMNS} FROM api_tokens t ORDER BY t.created_at, t.id")
            else:
                cur.execute(
                    f"SELECT {_TOKEN_COLUMNS} FROM api_tokens t WHERE t.owner = %s"
                    " ORDER BY t.created_at, t.id",
                    (owner,),
                )
            rows = cur.fetchall()
        return [_token(r) for r in rows]

    def delete_token(self, token_id: str, owner: str | None) -> bool:
        with self._tx() as cur:
            if owner is None:
                cur.execute("DELETE FROM api_tokens WHERE id = %s", (token_id,))
            else:
                cur.execute("DELETE FROM api_tokens WHERE id = %s AND owner = %s", (token_id, owner))
            return cur.rowcount > 0


__all__ = [
    "PostgresAccountRepository",
    "SqliteAccountRepository",
    "open_account_repository",
]
