"""Shared fixtures: real services started by scripts/services.py, one per test session.

A service that cannot start makes the tests that need it ERROR with the reason (the
service log's tail); nothing here skips, because a skipped test is not a passed one.
"""

from __future__ import annotations

import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from scripts.services import Mosquitto, Postgres, Timescale  # noqa: E402


def _unique_db_name(prefix: str) -> str:
    return f"{prefix}_{uuid.uuid4().hex[:16]}"


@pytest.fixture(scope="session")
def mosquitto() -> Iterator[Mosquitto]:
    """An anonymous broker with persistence, on a free port. Tests that restart or
    kill it must leave it running."""
    with Mosquitto() as broker:
        yield broker


@pytest.fixture(scope="session")
def postgres() -> Iterator[Postgres]:
    with Postgres() as server:
        yield server


@pytest.fixture(scope="session")
def timescale() -> Iterator[Timescale]:
    # Builds the cached Debian 13 root on first use (about a minute, once per machine).
    with Timescale() as server:
        yield server


@pytest.fixture
def pg_url(postgres: Postgres) -> str:
    """A brand-new, empty database on the session's PostgreSQL 15."""
    return postgres.create_database(_unique_db_name("t"))


@pytest.fixture
def ts_url(timescale: Timescale) -> str:
    """A brand-new database on the session's TimescaleDB server; the extension is not
    created (the application's migrations do that)."""
    return timescale.create_database(_unique_db_name("t"))


@pytest.fixture
def sqlite_url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'origincast.db'}"


@pytest.fixture(params=["sqlite", "postgres", "timescale"])
def db_url(request: pytest.FixtureRequest) -> str:
    """A fresh database URL of each back end, for contract tests that must behave the
    same on all three. Servers start only when a test asks for their back end."""
    fixture = {"sqlite": "sqlite_url", "postgres": "pg_url", "timescale": "ts_url"}
    return str(request.getfixturevalue(fixture[request.param]))
