"""The stream registry in SQL: SQLite (stdlib ``sqlite3``) or PostgreSQL (psycopg 3).

It lives in the same database as the telemetry tables but owns its schema: stream/ may
not import telemetry's storage, so the ``streams`` table has its own versioned
migrations recorded in ``stream_schema_migrations`` (never in telemetry's
``schema_migrations``, so neither side can mistake the other's versions for its own).
Applied migrations are never edited; a change is a new entry at the end of the list.

The registry is small and read on each WHIP POST and API call: one connection guarded
by a lock (SQLite) or a two-connection pool (PostgreSQL) is plenty.
"""

from __future__ import annotations

import logging
import secrets
import sqlite3
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import psycopg
from psycopg import errors as pg_errors
from psycopg_pool import ConnectionPool

from stream.registry import (
    Stream,
    StreamChanges,
    StreamExists,
    StreamLinks,
    StreamNotFound,
    StreamRepository,
    StreamSpec,
    apply_changes,
    check_links,
    hash_publish_key,
    new_publish_key,
    publish_key_matches,
    validate_spec,
)

log = logging.getLogger(__name__)

# pg_advisory_lock key serialising our migrations across processes ("ocstream" in
# ASCII); distinct from telemetry's key so the two never wait on each other.
MIGRATION_LOCK_KEY = 0x6F63_7374_7265_616D

# (version, name, SQL per dialect). created_at/updated_at: timestamptz on PostgreSQL,
# integer microseconds since the Unix epoch on SQLite (as telemetry stores time there).
_MIGRATIONS: tuple[tuple[int, str, dict[str, str]], ...] = (
    (
        1,
        "0001_streams",
        {
            "postgres": """
CREATE TABLE IF NOT EXISTS streams (
    slug text PRIMARY KEY CHECK (slug ~ '^[a-z0-9-]{1,64}$'),
    title text NOT NULL,
    site text,
    source_kind text NOT NULL CHECK (source_kind IN ('whip', 'rtsp', 'testpattern')),
    rtsp_url text,
    visibility text NOT NULL DEFAULT 'public' CHECK (visibility IN ('public', 'unlisted')),
    owner text,
    publish_key_sha256 text NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now(),
    updated_at timestamptz NOT NULL DEFAULT now()
)""",
            "sqlite": """
CREATE TABLE IF NOT EXISTS streams (
    slug TEXT PRIMARY KEY,
    title TEXT NOT NULL,
    site TEXT,
    source_kind TEXT NOT NULL CHECK (source_kind IN ('whip', 'rtsp', 'testpattern')),
    rtsp_url TEXT,
    visibility TEXT NOT NULL DEFAULT 'public' CHECK (visibility IN ('public', 'unlisted')),
    owner TEXT,
    publish_key_sha256 TEXT NOT NULL,
    created_at INTEGER NOT NULL,
    updated_at INTEGER NOT NULL
)""",
        },
    ),
    # A producer's listing asks for their own streams (owner; the column is in 0001).
    (
        2,
        "0002_streams_owner_index",
        {
            "postgres": "CREATE INDEX IF NOT EXISTS streams_owner ON streams (owner)",
            "sqlite": "CREATE INDEX IF NOT EXISTS streams_owner ON streams (owner)",
        },
    ),
    # 3, not 2: the stream owner's migration was being written at the same time. Links and
    # share links (see StreamRepository.get_links, share_stamp, server_secret).
    (
        3,
        "0003_links_and_share",
        {
            "postgres": """
ALTER TABLE streams ADD COLUMN IF NOT EXISTS share_generation integer NOT NULL DEFAULT 0;
CREATE TABLE IF NOT EXISTS stream_links (
    slug text NOT NULL REFERENCES streams (slug) ON DELETE CASCADE,
    kind text NOT NULL CHECK (kind IN ('site', 'device')),
    target text NOT NULL,
    position integer NOT NULL,
    PRIMARY KEY (slug, kind, target)
);
CREATE TABLE IF NOT EXISTS stream_server_secret (
    id integer PRIMARY KEY CHECK (id = 1),
    secret text NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now()
)""",
            "sqlite": """
ALTER TABLE streams ADD COLUMN share_generation INTEGER NOT NULL DEFAULT 0;
CREATE TABLE IF NOT EXISTS stream_links (
    slug TEXT NOT NULL REFERENCES streams (slug) ON DELETE CASCADE,
    kind TEXT NOT NULL CHECK (kind IN ('site', 'device')),
    target TEXT NOT NULL,
    position INTEGER NOT NULL,
    PRIMARY KEY (slug, kind, target)
);
CREATE TABLE IF NOT EXISTS stream_server_secret (
    id INTEGER PRIMARY KEY CHECK (id = 1),
    secret TEXT NOT NULL,
    created_at INTEGER NOT NULL
)""",
        },
    ),
)

_COLUMNS = "slug, title, site, source_kind, visibility, owner, created_at, rtsp_url"
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def _now_us() -> int:
    return time.time_ns() // 1000


def _from_us(us: int) -> datetime:
    return _EPOCH + timedelta(microseconds=us)


def _stream(row: tuple[Any, ...]) -> Stream:
    slug, title, site, kind, visibility, owner, created_at, rtsp_url = row
    if isinstance(created_at, int):
        created_at = _from_us(created_at)
    elif created_at.tzinfo is not UTC:
        created_at = created_at.astimezone(UTC)
    return Stream(
        slug=slug,
        title=title,
        site=site,
        kind=kind,
        visibility=visibility,
        owner=owner,
        created_at=created_at,
        rtsp_url=rtsp_url,
    )


def _statements(sql: str) -> list[str]:
    """One migration's statements (sqlite3's execute takes one at a time)."""
    return [part.strip() for part in sql.split(";\n") if part.strip()]


def _us(when: datetime) -> int:
    return (when - _EPOCH) // timedelta(microseconds=1)


def _stamp(created_at: Any, generation: int) -> str:
    if not isinstance(created_at, int):
        created_at = _us(created_at)
    return f"{created_at}:{generation}"


def _links(rows: list[tuple[Any, ...]]) -> StreamLinks:
    return StreamLinks(
        sites=tuple(t for k, t in rows if k == "site"), devices=tuple(t for k, t in rows if k == "device")
    )


def _link_rows(slug: str, links: StreamLinks) -> list[tuple[str, str, str, int]]:
    return [(slug, "site", t, i) for i, t in enumerate(links.sites)] + [
        (slug, "device", t, i) for i, t in enumerate(links.devices)
    ]


def open_stream_repository(database_url: str) -> StreamRepository:
    """``sqlite:///path.db`` or ``postgresql://…`` (the URL telemetry uses too)."""
    if database_url.startswith("sqlite:"):
        return SqliteStreamRepository(database_url)
    if database_url.startswith(("postgresql:", "postgres:")):
        return PostgresStreamRepository(database_url)
    raise ValueError("database URL must be sqlite:///… or postgresql://…")


def _sqlite_path(url: str) -> str:
    rest = url[len("sqlite://") :].split("?", 1)[0]
    if rest in ("", "/", "/:memory:", ":memory:"):
        return ":memory:"
    if not rest.startswith("/"):
        raise ValueError(f"sqlite URL must be sqlite:///path: {url!r}")
    return rest[1:]


class SqliteStreamRepository:
    kind = "sqlite"

    def __init__(self, url: str) -> None:
        self._path = _sqlite_path(url)
        self._lock = threading.Lock()
        self._conn: sqlite3.Connection | None = None

    def open(self) -> None:
        with self._lock:
            if self._conn is not None:
                return
            if self._path != ":memory:":
                Path(self._path).parent.mkdir(parents=True, exist_ok=True)
            # isolation_level=None: no implicit transactions; BEGIN/COMMIT are ours.
            conn = sqlite3.connect(self._path, timeout=10.0, isolation_level=None, check_same_thread=False)
            # WAL as telemetry's store sets it: readers never wait for the ingest writer.
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA busy_timeout=10000")
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
                raise RuntimeError("stream registry is not open")
            conn = self._conn
            # IMMEDIATE takes the write lock up front: a read-then-write never fails half-way
            # on a lock another process took in between.
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
                "CREATE TABLE IF NOT EXISTS stream_schema_migrations ("
                " version INTEGER PRIMARY KEY, name TEXT NOT NULL, applied_at INTEGER NOT NULL)"
            )
        for version, name, sql in _MIGRATIONS:
            with self._tx(write=True) as conn:
                done = conn.execute(
                    "SELECT 1 FROM stream_schema_migrations WHERE version = ?", (version,)
                ).fetchone()
                if done is None:
                    for statement in _statements(sql["sqlite"]):
                        conn.execute(statement)
                    conn.execute(
                        "INSERT INTO stream_schema_migrations (version, name, applied_at) VALUES (?, ?, ?)",
                        (version, name, _now_us()),
                    )
                    applied.append(name)
        for name in applied:
            log.info("stream registry migration applied (sqlite): %s", name)
        return applied

    def create(self, spec: StreamSpec) -> tuple[Stream, str]:
        spec = validate_spec(spec)
        key = new_publish_key()
        now = _now_us()
        try:
            with self._tx(write=True) as conn:
                conn.execute(
                    "INSERT INTO streams (slug, title, site, source_kind, rtsp_url, visibility, owner,"
                    " publish_key_sha256, created_at, updated_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    (
                        spec.slug,
                        spec.title,
                        spec.site,
                        spec.kind,
                        spec.rtsp_url,
                        spec.visibility,
                        spec.owner,
                        hash_publish_key(key),
                        now,
                        now,
                    ),
                )
        except sqlite3.IntegrityError:
            raise StreamExists(f"stream {spec.slug!r} already exists") from None
        stream = Stream(
            slug=spec.slug,
            title=spec.title,
            site=spec.site,
            kind=spec.kind,
            visibility=spec.visibility,
            owner=spec.owner,
            created_at=_from_us(now),
            rtsp_url=spec.rtsp_url,
        )
        return stream, key

    def get(self, slug: str) -> Stream | None:
        with self._tx(write=False) as conn:
            row = conn.execute(f"SELECT {_COLUMNS} FROM streams WHERE slug = ?", (slug,)).fetchone()
        return _stream(row) if row else None

    def list_streams(self, *, include_unlisted: bool = False) -> list[Stream]:
        where = "" if include_unlisted else " WHERE visibility = 'public'"
        with self._tx(write=False) as conn:
            rows = conn.execute(f"SELECT {_COLUMNS} FROM streams{where} ORDER BY slug").fetchall()
        return [_stream(r) for r in rows]

    def update(self, slug: str, changes: StreamChanges) -> Stream:
        with self._tx(write=True) as conn:
            row = conn.execute(f"SELECT {_COLUMNS} FROM streams WHERE slug = ?", (slug,)).fetchone()
            if row is None:
                raise StreamNotFound(f"no stream {slug!r}")
            new = apply_changes(_stream(row), changes)
            conn.execute(
                "UPDATE streams SET title = ?, site = ?, source_kind = ?, rtsp_url = ?, visibility = ?,"
                " owner = ?, updated_at = ? WHERE slug = ?",
                (new.title, new.site, new.kind, new.rtsp_url, new.visibility, new.owner, _now_us(), slug),
            )
        return new

    def rotate_key(self, slug: str) -> str:
        key = new_publish_key()
        with self._tx(write=True) as conn:
            cur = conn.execute(
                "UPDATE streams SET publish_key_sha256 = ?, share_generation = share_generation + 1,"
                " updated_at = ? WHERE slug = ?",
                (hash_publish_key(key), _now_us(), slug),
            )
            if cur.rowcount == 0:
                raise StreamNotFound(f"no stream {slug!r}")
        return key

    def delete(self, slug: str) -> bool:
        with self._tx(write=True) as conn:
            # Foreign keys are off in SQLite unless asked for: the links go by hand.
            conn.execute("DELETE FROM stream_links WHERE slug = ?", (slug,))
            return conn.execute("DELETE FROM streams WHERE slug = ?", (slug,)).rowcount > 0

    def verify_publish_key(self, slug: str, key: str) -> bool:
        with self._tx(write=False) as conn:
            row = conn.execute("SELECT publish_key_sha256 FROM streams WHERE slug = ?", (slug,)).fetchone()
        return row is not None and publish_key_matches(key, row[0])

    def get_links(self, slug: str) -> StreamLinks | None:
        with self._tx(write=False) as conn:
            if conn.execute("SELECT 1 FROM streams WHERE slug = ?", (slug,)).fetchone() is None:
                return None
            rows = conn.execute(
                "SELECT kind, target FROM stream_links WHERE slug = ? ORDER BY kind, position", (slug,)
            ).fetchall()
        return _links(rows)

    def set_links(self, slug: str, links: StreamLinks) -> StreamLinks:
        links = check_links(list(links.sites), list(links.devices))
        with self._tx(write=True) as conn:
            if conn.execute("SELECT 1 FROM streams WHERE slug = ?", (slug,)).fetchone() is None:
                raise StreamNotFound(f"no stream {slug!r}")
            conn.execute("DELETE FROM stream_links WHERE slug = ?", (slug,))
            conn.executemany(
                "INSERT INTO stream_links (slug, kind, target, position) VALUES (?, ?, ?, ?)",
                _link_rows(slug, links),
            )
        return links

    def share_stamp(self, slug: str) -> str | None:
        with self._tx(write=False) as conn:
            row = conn.execute(
                "SELECT created_at, share_generation FROM streams WHERE slug = ?", (slug,)
            ).fetchone()
        return _stamp(row[0], row[1]) if row else None

    def server_secret(self) -> bytes:
        with self._tx(write=True) as conn:
            row = conn.execute("SELECT secret FROM stream_server_secret WHERE id = 1").fetchone()
            if row is None:
                row = (secrets.token_urlsafe(32),)
                conn.execute(
                    "INSERT INTO stream_server_secret (id, secret, created_at) VALUES (1, ?, ?)",
                    (row[0], _now_us()),
                )
        return str(row[0]).encode("ascii")


class PostgresStreamRepository:
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
            max_size=2,
            # connect_timeout: a vanished server is an error in seconds, not a hang.
            kwargs={"autocommit": True, "connect_timeout": 5, "application_name": "origincast-streams"},
            check=ConnectionPool.check_connection,
            timeout=5.0,
            name="origincast-streams",
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
            raise RuntimeError("stream registry is not open")
        with self._pool.connection() as conn, conn.transaction(), conn.cursor() as cur:
            yield cur

    def migrate(self) -> list[str]:
        applied: list[str] = []
        with self._tx() as cur:
            # Transaction-scoped lock: two processes migrating at once take turns, and the
            # lock goes with the transaction whatever happens.
            cur.execute("SELECT pg_advisory_xact_lock(%s)", (MIGRATION_LOCK_KEY,))
            cur.execute(
                "CREATE TABLE IF NOT EXISTS stream_schema_migrations ("
                " version integer PRIMARY KEY, name text NOT NULL,"
                " applied_at timestamptz NOT NULL DEFAULT now())"
            )
            cur.execute("SELECT version FROM stream_schema_migrations")
            done = {r[0] for r in cur.fetchall()}
            for version, name, sql in _MIGRATIONS:
                if version in done:
                    continue
                for statement in _statements(sql["postgres"]):
                    cur.execute(statement)
                cur.execute(
                    "INSERT INTO stream_schema_migrations (version, name) VALUES (%s, %s)", (version, name)
                )
                applied.append(name)
        for name in applied:
            log.info("stream registry migration applied (postgres): %s", name)
        return applied

    def create(self, spec: StreamSpec) -> tuple[Stream, str]:
        spec = validate_spec(spec)
        key = new_publish_key()
        try:
            with self._tx() as cur:
                cur.execute(
                    "INSERT INTO streams (slug, title, site, source_kind, rtsp_url, visibility, owner,"
                    " publish_key_sha256) VALUES (%s, %s, %s, %s, %s, %s, %s, %s)"
                    f" RETURNING {_COLUMNS}",
                    (
                        spec.slug,
                        spec.title,
                        spec.site,
                        spec.kind,
                        spec.rtsp_url,
                        spec.visibility,
                        spec.owner,
                        hash_publish_key(key),
                    ),
                )
                row = cur.fetchone()
        except pg_errors.UniqueViolation:
            raise StreamExists(f"stream {spec.slug!r} already exists") from None
        assert row is not None
        return _stream(row), key

    def get(self, slug: str) -> Stream | None:
        with self._tx() as cur:
            cur.execute(f"SELECT {_COLUMNS} FROM streams WHERE slug = %s", (slug,))
            row = cur.fetchone()
        return _stream(row) if row else None

    def list_streams(self, *, include_unlisted: bool = False) -> list[Stream]:
        where = "" if include_unlisted else " WHERE visibility = 'public'"
        with self._tx() as cur:
            cur.execute(f"SELECT {_COLUMNS} FROM streams{where} ORDER BY slug")
            rows = cur.fetchall()
        return [_stream(r) for r in rows]

    def update(self, slug: str, changes: StreamChanges) -> Stream:
        with self._tx() as cur:
            # FOR UPDATE: a concurrent PATCH waits, so neither overwrites the other's check.
            cur.execute(f"SELECT {_COLUMNS} FROM streams WHERE slug = %s FOR UPDATE", (slug,))
            row = cur.fetchone()
            if row is None:
                raise StreamNotFound(f"no stream {slug!r}")
            new = apply_changes(_stream(row), changes)
            cur.execute(
                "UPDATE streams SET title = %s, site = %s, source_kind = %s, rtsp_url = %s,"
                " visibility = %s, owner = %s, updated_at = now() WHERE slug = %s",
                (new.title, new.site, new.kind, new.rtsp_url, new.visibility, new.owner, slug),
            )
        return new

    def rotate_key(self, slug: str) -> str:
        key = new_publish_key()
        with self._tx() as cur:
            cur.execute(
                "UPDATE streams SET publish_key_sha256 = %s, share_generation = share_generation + 1,"
                " updated_at = now() WHERE slug = %s",
                (hash_publish_key(key), slug),
            )
            if cur.rowcount == 0:
                raise StreamNotFound(f"no stream {slug!r}")
        return key

    def delete(self, slug: str) -> bool:
        with self._tx() as cur:
            cur.execute("DELETE FROM streams WHERE slug = %s", (slug,))
            return cur.rowcount > 0

    def verify_publish_key(self, slug: str, key: str) -> bool:
        with self._tx() as cur:
            cur.execute("SELECT publish_key_sha256 FROM streams WHERE slug = %s", (slug,))
            row = cur.fetchone()
        return row is not None and publish_key_matches(key, row[0])

    def get_links(self, slug: str) -> StreamLinks | None:
        with self._tx() as cur:
            cur.execute("SELECT 1 FROM streams WHERE slug = %s", (slug,))
            if cur.fetchone() is None:
                return None
            cur.execute(
                "SELECT kind, target FROM stream_links WHERE slug = %s ORDER BY kind, position", (slug,)
            )
            rows = cur.fetchall()
        return _links(rows)

    def set_links(self, slug: str, links: StreamLinks) -> StreamLinks:
        links = check_links(list(links.sites), list(links.devices))
        with self._tx() as cur:
            # FOR UPDATE: two PUTs at once end as one of them, never a mix.
            cur.execute("SELECT 1 FROM streams WHERE slug = %s FOR UPDATE", (slug,))
            if cur.fetchone() is None:
                raise StreamNotFound(f"no stream {slug!r}")
            cur.execute("DELETE FROM stream_links WHERE slug = %s", (slug,))
            cur.executemany(
                "INSERT INTO stream_links (slug, kind, target, position) VALUES (%s, %s, %s, %s)",
                _link_rows(slug, links),
            )
        return links

    def share_stamp(self, slug: str) -> str | None:
        with self._tx() as cur:
            cur.execute("SELECT created_at, share_generation FROM streams WHERE slug = %s", (slug,))
            row = cur.fetchone()
        return _stamp(row[0], row[1]) if row else None

    def server_secret(self) -> bytes:
        with self._tx() as cur:
            # Two nodes starting together: one insert wins, both read the same secret.
            cur.execute(
                "INSERT INTO stream_server_secret (id, secret) VALUES (1, %s) ON CONFLICT (id) DO NOTHING",
                (secrets.token_urlsafe(32),),
            )
            cur.execute("SELECT secret FROM stream_server_secret WHERE id = 1")
            row = cur.fetchone()
        assert row is not None
        return str(row[0]).encode("ascii")


__all__ = [
    "PostgresStreamRepository",
    "SqliteStreamRepository",
    "open_stream_repository",
]
