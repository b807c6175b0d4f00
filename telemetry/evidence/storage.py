"""SQL storage of the evidence log, for PostgreSQL (psycopg 3) and SQLite (sqlite3).

Every method takes a DB-API cursor or connection and runs inside whatever transaction
the caller has open: the ingest path appends leaves in the transaction of the readings'
COPY, so the two commit or vanish together. Nothing here commits, except ``migrate``.

Migrations live in ``telemetry/evidence/sql/<dialect>/NNNN_name.sql`` and are recorded
in the log's own ``evidence_schema_migrations`` table, apart from the application's.
"""

from __future__ import annotations

import json
import re
import sqlite3
from collections.abc import Sequence
from dataclasses import dataclass
from importlib import resources
from typing import Any

from telemetry.evidence.canonical import LeafRef
from telemetry.evidence.merkle import Node

_FILE = re.compile(r"^(\d{4})_([a-z0-9_]+)\.sql$")
# An arbitrary constant: the PostgreSQL advisory lock that serialises migrators of the
# log (appenders take 0x6F636576, "ocev", inside evidence_lock_head()).
MIGRATE_LOCK_KEY = 0x6F63_6D67  # "ocmg"


class NotInTransaction(RuntimeError):
    """Appending needs the caller's open transaction: that is what makes the leaf and
    the data it covers commit together."""


@dataclass(frozen=True, slots=True)
class StoredLeaf:
    index: int
    leaf_hash: bytes
    entry: bytes
    kind: str
    device_id: str | None
    tree_root: bytes


def load_migrations(dialect: str) -> list[tuple[int, str, str]]:
    """(version, name, sql) of one dialect's migrations, in version order."""
    folder = resources.files("telemetry.evidence") / "sql" / dialect
    found: dict[int, tuple[int, str, str]] = {}
    for entry in folder.iterdir():
        match = _FILE.match(entry.name)
        if match is None:
            continue
        version = int(match.group(1))
        if version in found:
            raise RuntimeError(f"two {dialect} evidence migrations share version {version}")
        found[version] = (version, entry.name.removesuffix(".sql"), entry.read_text(encoding="utf-8"))
    return [found[v] for v in sorted(found)]


def _sqlite_statements(script: str) -> list[str]:
    """One statement per execute() (sqlite3's executescript would COMMIT first)."""
    out: list[str] = []
    pending = ""
    for line in script.splitlines(keepends=True):
        pending += line
        if sqlite3.complete_statement(pending):
            body = "\n".join(ln for ln in pending.splitlines() if not ln.strip().startswith("--")).strip()
            if body:
                out.append(body)
            pending = ""
    if pending.strip() and any(not ln.strip().startswith("--") for ln in pending.splitlines() if ln.strip()):
        raise ValueError(f"incomplete SQL statement at the end of a migration: {pending!r}")
    return out


class EvidenceStorage:
    """The SQL both dialects share; subclasses set the placeholder and the differences."""

    dialect = ""
    _p = "?"

    def _sql(self, sql: str) -> str:
        return sql.replace("?", self._p)

    # -- schema ------------------------------------------------------------------------

    def migrate(self, conn: Any) -> list[str]:  # pragma: no cover - dialects override
        raise NotImplementedError

    # -- the append path ---------------------------------------------------------------

    def require_transaction(self, conn: Any) -> None:  # pragma: no cover
        raise NotImplementedError

    def lock_head(self, cur: Any) -> tuple[int, bytes | None]:
        """Serialise appenders until the caller's transaction ends; then the head."""
        return self.head(cur)

    def head(self, cur: Any) -> tuple[int, bytes | None]:
        """(size, root) of the tree as this transaction sees it; root None when empty."""
        cur.execute("SELECT idx, tree_root FROM evidence_leaves ORDER BY idx DESC LIMIT 1")
        row = cur.fetchone()
        return (0, None) if row is None else (int(row[0]) + 1, bytes(row[1]))

    def insert(
        self,
        cur: Any,
        leaves: Sequence[tuple[int, bytes, bytes, str, str | None, bytes]],
        nodes: Sequence[tuple[int, int, bytes]],
    ) -> None:
        cur.executemany(
            self._sql(
                "INSERT INTO evidence_leaves (idx, leaf_hash, entry, kind, device_id, tree_root)"
                " VALUES (?, ?, ?, ?, ?, ?)"
            ),
            leaves,
        )
        if nodes:
            cur.executemany(
                self._sql("INSERT INTO evidence_nodes (level, idx, hash) VALUES (?, ?, ?)"), nodes
            )

    def last_batches(self, cur: Any, device_ids: Sequence[str]) -> dict[str, LeafRef]:
        """Each device's latest leaf carrying its id (its latest readings batch)."""
        out: dict[str, LeafRef] = {}
        for device in device_ids:
            cur.execute(
                self._sql(
                    "SELECT idx, leaf_hash FROM evidence_leaves WHERE device_id = ? ORDER BY idx DESC LIMIT 1"
                ),
                (device,),
            )
            row = cur.fetchone()
            if row is not None:
                out[device] = LeafRef(int(row[0]), bytes(row[1]))
        return out

    # -- reads -------------------------------------------------------------------------

    def root_at(self, cur: Any, size: int) -> bytes | None:
        cur.execute(self._sql("SELECT tree_root FROM evidence_leaves WHERE idx = ?"), (size - 1,))
        row = cur.fetchone()
        return None if row is None else bytes(row[0])

    def fetch_nodes(self, cur: Any, nodes: Sequence[Node]) -> dict[Node, bytes]:  # pragma: no cover
        raise NotImplementedError

    def level_range(self, cur: Any, level: int, start: int, end: int) -> list[bytes]:
        """The hashes of nodes (level, start..end-1), in order (what a tile is made of)."""
        if level == 0:
            cur.execute(
                self._sql("SELECT leaf_hash FROM evidence_leaves WHERE idx >= ? AND idx < ? ORDER BY idx"),
                (start, end),
            )
        else:
            cur.execute(
                self._sql(
                    "SELECT hash FROM evidence_nodes WHERE level = ? AND idx >= ? AND idx < ? ORDER BY idx"
                ),
                (level, start, end),
            )
        return [bytes(r[0]) for r in cur.fetchall()]

    def leaves(self, cur: Any, start: int, end: int) -> list[StoredLeaf]:
        cur.execute(
            self._sql(
                "SELECT idx, leaf_hash, entry, kind, device_id, tree_root FROM evidence_leaves"
                " WHERE idx >= ? AND idx < ? ORDER BY idx"
            ),
            (start, end),
        )
        return [StoredLeaf(int(i), bytes(h), bytes(e), k, d, bytes(r)) for i, h, e, k, d, r in cur.fetchall()]

    def device_leaves(self, cur: Any, device_id: str, start: int, end: int) -> list[StoredLeaf]:
        cur.execute(
            self._sql(
                "SELECT idx, leaf_hash, entry, kind, device_id, tree_root FROM evidence_leaves"
                " WHERE device_id = ? AND idx >= ? AND idx < ? ORDER BY idx"
            ),
            (device_id, start, end),
        )
        return [StoredLeaf(int(i), bytes(h), bytes(e), k, d, bytes(r)) for i, h, e, k, d, r in cur.fetchall()]

    def next_device_leaf(self, cur: Any, device_id: str, after: int) -> StoredLeaf | None:
        """The device's first leaf after index ``after``: the batch that shows where a
        window's chain goes on."""
        cur.execute(
            self._sql(
                "SELECT idx, leaf_hash, entry, kind, device_id, tree_root FROM evidence_leaves"
                " WHERE device_id = ? AND idx > ? ORDER BY idx LIMIT 1"
            ),
            (device_id, after),
        )
        row = cur.fetchone()
        if row is None:
            return None
        i, h, e, k, d, r = row
        return StoredLeaf(int(i), bytes(h), bytes(e), k, d, bytes(r))

    # -- checkpoints -------------------------------------------------------------------

    def insert_checkpoint(
        self, cur: Any, size: int, key_name: str, key_id: int, root_hash: bytes, note: str
    ) -> None:
        # checked first, not ON CONFLICT: SQLite's no-replace trigger fires before any
        # conflict clause would
        cur.execute(
            self._sql(
                "SELECT 1 FROM evidence_checkpoints WHERE key_name = ? AND key_id = ? AND tree_size = ?"
            ),
            (key_name, key_id, size),
        )
        if cur.fetchone() is not None:
            return
        cur.execute(
            self._sql(
                "INSERT INTO evidence_checkpoints (tree_size, key_name, key_id, root_hash, note)"
                " VALUES (?, ?, ?, ?, ?)"
            ),
            (size, key_name, key_id, root_hash, note),
        )

    def latest_checkpoint(self, cur: Any, key_name: str, key_id: int) -> tuple[int, bytes, str] | None:
        cur.execute(
            self._sql(
                "SELECT tree_size, root_hash, note FROM evidence_checkpoints"
                " WHERE key_name = ? AND key_id = ? ORDER BY tree_size DESC LIMIT 1"
            ),
            (key_name, key_id),
        )
        row = cur.fetchone()
        return None if row is None else (int(row[0]), bytes(row[1]), str(row[2]))

    def checkpoint_at(self, cur: Any, key_name: str, key_id: int, size: int) -> str | None:
        cur.execute(
            self._sql(
                "SELECT note FROM evidence_checkpoints WHERE key_name = ? AND key_id = ? AND tree_size = ?"
            ),
            (key_name, key_id, size),
        )
        row = cur.fetchone()
        return None if row is None else str(row[0])


class PostgresEvidenceStorage(EvidenceStorage):
    """psycopg 3 connections (not in autocommit mode when appending)."""

    dialect = "postgres"
    _p = "%s"

    def migrate(self, conn: Any) -> list[str]:
        applied: list[str] = []
        with conn.transaction(), conn.cursor() as cur:
            cur.execute("SELECT pg_advisory_xact_lock(%s)", (MIGRATE_LOCK_KEY,))
            cur.execute(
                "CREATE TABLE IF NOT EXISTS evidence_schema_migrations ("
                " version integer PRIMARY KEY, name text NOT NULL,"
                " applied_at timestamptz NOT NULL DEFAULT now())"
            )
            cur.execute("SELECT version FROM evidence_schema_migrations")
            done = {int(v) for (v,) in cur.fetchall()}
            for version, name, sql in load_migrations(self.dialect):
                if version in done:
                    continue
                cur.execute(sql)
                cur.execute(
                    "INSERT INTO evidence_schema_migrations (version, name) VALUES (%s, %s)", (version, name)
                )
                applied.append(name)
        return applied

    def require_transaction(self, conn: Any) -> None:
        # autocommit off: the first statement opens the transaction; autocommit on: only
        # inside conn.transaction(), which has sent BEGIN already
        if getattr(conn, "autocommit", False) and conn.info.transaction_status.name != "INTRANS":
            raise NotInTransaction("append needs an open transaction (autocommit off, or conn.transaction())")

    def lock_head(self, cur: Any) -> tuple[int, bytes | None]:
        cur.execute("SELECT tree_size, tree_root FROM evidence_lock_head()")
        size, root = cur.fetchone()
        return int(size), None if root is None else bytes(root)

    def insert(
        self,
        cur: Any,
        leaves: Sequence[tuple[int, bytes, bytes, str, str | None, bytes]],
        nodes: Sequence[tuple[int, int, bytes]],
    ) -> None:
        # one statement, whatever the count: at ingest rates the round trips and
        # psycopg's executemany pipeline cost more CPU than the rows themselves
        cur.execute(
            "WITH l AS (INSERT INTO evidence_leaves (idx, leaf_hash, entry, kind, device_id, tree_root)"
            " SELECT u.idx, u.leaf_hash, u.entry, u.kind, u.device_id, u.tree_root"
            " FROM unnest(%s::bigint[], %s::bytea[], %s::bytea[], %s::text[], %s::text[], %s::bytea[])"
            " WITH ORDINALITY AS u(idx, leaf_hash, entry, kind, device_id, tree_root, ord) ORDER BY u.ord)"
            " INSERT INTO evidence_nodes (level, idx, hash)"
            " SELECT * FROM unnest(%s::smallint[], %s::bigint[], %s::bytea[])",
            (
                *map(list, zip(*leaves, strict=True)),
                *(map(list, zip(*nodes, strict=True)) if nodes else ([], [], [])),
            ),
        )

    def fetch_nodes(self, cur: Any, nodes: Sequence[Node]) -> dict[Node, bytes]:
        out: dict[Node, bytes] = {}
        leaves = [i for lv, i in nodes if lv == 0]
        inner = [(lv, i) for lv, i in nodes if lv > 0]
        if leaves:
            cur.execute("SELECT idx, leaf_hash FROM evidence_leaves WHERE idx = ANY(%s)", (leaves,))
            out.update({(0, int(i)): bytes(h) for i, h in cur.fetchall()})
        if inner:
            cur.execute(
                "SELECT n.level, n.idx, n.hash FROM evidence_nodes n"
                " JOIN unnest(%s::smallint[], %s::bigint[]) AS w(level, idx)"
                " ON n.level = w.level AND n.idx = w.idx",
                ([lv for lv, _ in inner], [i for _, i in inner]),
            )
            out.update({(int(lv), int(i)): bytes(h) for lv, i, h in cur.fetchall()})
        return out


class SqliteEvidenceStorage(EvidenceStorage):
    """sqlite3 connections; appends need the caller's ``BEGIN IMMEDIATE`` (SQLite's write
    lock is what serialises appenders there)."""

    dialect = "sqlite"
    _p = "?"

    def migrate(self, conn: sqlite3.Connection) -> list[str]:
        if conn.in_transaction:
            raise RuntimeError("migrate the evidence log outside of a transaction")
        applied: list[str] = []
        conn.execute("BEGIN IMMEDIATE")
        try:
            conn.execute(
                "CREATE TABLE IF NOT EXISTS evidence_schema_migrations ("
                " version INTEGER PRIMARY KEY, name TEXT NOT NULL,"
                " applied_at INTEGER NOT NULL"
                " DEFAULT (CAST((julianday('now') - 2440587.5) * 86400000000 AS INTEGER)))"
            )
            done = {int(v) for (v,) in conn.execute("SELECT version FROM evidence_schema_migrations")}
            for version, name, sql in load_migrations(self.dialect):
                if version in done:
                    continue
                for statement in _sqlite_statements(sql):
                    conn.execute(statement)
                conn.execute(
                    "INSERT INTO evidence_schema_migrations (version, name) VALUES (?, ?)", (version, name)
                )
                applied.append(name)
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        return applied

    def require_transaction(self, conn: Any) -> None:
        if not getattr(conn, "in_transaction", False):
            raise NotInTransaction("append needs an open transaction (BEGIN IMMEDIATE) on the connection")

    def fetch_nodes(self, cur: Any, nodes: Sequence[Node]) -> dict[Node, bytes]:
        out: dict[Node, bytes] = {}
        leaves = [i for lv, i in nodes if lv == 0]
        inner = [[lv, i] for lv, i in nodes if lv > 0]
        # one JSON parameter instead of a placeholder per node: no variable limit
        if leaves:
            cur.execute(
                "SELECT idx, leaf_hash FROM evidence_leaves WHERE idx IN (SELECT value FROM json_each(?))",
                (json.dumps(leaves),),
            )
            out.update({(0, int(i)): bytes(h) for i, h in cur.fetchall()})
        if inner:
            cur.execute(
                "SELECT n.level, n.idx, n.hash FROM json_each(?) AS w JOIN evidence_nodes AS n"
                " ON n.level = json_extract(w.value, '$[0]') AND n.idx = json_extract(w.value, '$[1]')",
                (json.dumps(inner),),
            )
            out.update({(int(lv), int(i)): bytes(h) for lv, i, h in cur.fetchall()})
        return out


def storage_for(conn: Any) -> EvidenceStorage:
    """The storage dialect that fits a DB-API connection."""
    if isinstance(conn, sqlite3.Connection):
        return SqliteEvidenceStorage()
    if type(conn).__module__.split(".")[0] == "psycopg":
        return PostgresEvidenceStorage()
    raise TypeError(f"no evidence storage for connections of type {type(conn).__name__}")
