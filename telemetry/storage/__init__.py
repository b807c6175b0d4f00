"""Storage back ends behind one interface: TimescaleDB, PostgreSQL, SQLite."""

from __future__ import annotations

from telemetry.settings import StorageSettings
from telemetry.storage.base import StorageUnavailable, Store, WriteResult

__all__ = ["StorageUnavailable", "Store", "WriteResult", "open_store"]


def open_store(settings: StorageSettings) -> Store:
    """Build (not yet open) the back end the URL names."""
    url = settings.url
    if url.startswith("sqlite://"):
        from telemetry.storage.sqlite import SqliteStore

        return SqliteStore(settings)
    if url.startswith(("postgresql://", "postgres://")):
        from telemetry.storage.postgres import PostgresStore

        return PostgresStore(settings)
    raise ValueError(f"unsupported database URL scheme: {url.split(':', 1)[0]!r}")
