"""Versioned SQL migrations shipped with the package.

Files live in ``telemetry/storage/migrations/<dialect>/NNNN_name.sql``. The four digits
are the version (applied in ascending order, recorded in ``schema_migrations``); the
rest of the stem is the name. A file is applied in one transaction, whole or not at
all. Applied files are never edited: a change is a new file.
"""

from __future__ import annotations

import re
import sqlite3
from dataclasses import dataclass
from importlib import resources

_FILE = re.compile(r"^(\d{4})_([a-z0-9_]+)\.sql$")


@dataclass(frozen=True, slots=True)
class Migration:
    version: int
    name: str  # e.g. "0001_readings"
    sql: str


def load_migrations(dialect: str) -> list[Migration]:
    """The migrations of one dialect ("postgres" or "sqlite"), in version order."""
    folder = resources.files("telemetry.storage") / "migrations" / dialect
    found: dict[int, Migration] = {}
    for entry in folder.iterdir():
        match = _FILE.match(entry.name)
        if match is None:
            continue
        version = int(match.group(1))
        if version in found:
            raise RuntimeError(f"two {dialect} migrations share version {version}")
        name = entry.name.removesuffix(".sql")
        found[version] = Migration(version, name, entry.read_text(encoding="utf-8"))
    if not found:
        raise RuntimeError(f"no migrations found for {dialect!r}")
    return [found[v] for v in sorted(found)]


def split_sqlite_statements(script: str) -> list[str]:
    """Split a SQL script into complete statements (sqlite3 runs one per execute()).

    ``executescript`` cannot be used inside our own transaction: it commits first.
    """
    statements: list[str] = []
    pending = ""
    for line in script.splitlines(keepends=True):
        pending += line
        if sqlite3.complete_statement(pending):
            stripped = pending.strip()
            if stripped and not all(
                ln.strip().startswith("--") or not ln.strip() for ln in stripped.splitlines()
            ):
                statements.append(stripped)
            pending = ""
    if pending.strip() and not all(
        ln.strip().startswith("--") or not ln.strip() for ln in pending.splitlines()
    ):
        raise ValueError(f"incomplete SQL statement at the end of the script: {pending!r}")
    return statements
