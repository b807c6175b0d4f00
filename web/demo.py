"""The demo's fleet and its test-pattern stream, shared by ``origincast demo`` (web.cli)
and the composition root (web.app), which makes sure the stream exists whenever the test
pattern runs (``demo`` or ``serve`` with ``stream.demo_test_pattern``)."""

from __future__ import annotations

import logging
import secrets
from datetime import datetime
from pathlib import Path

from stream.registry import StreamExists, StreamLinks, StreamRepository, StreamSpec
from telemetry.evidence.keys import init_key
from telemetry.shipments import shipment_from_request
from telemetry.storage import Store
from telemetry.storage.sqlite import database_path
from web.accounts import AccountService

log = logging.getLogger(__name__)

# The demo fleet's sites and profiles: truck-7's one-minute door openings stay within the
# reefer profile's 5-minute delay; truck-9's failed compressor does not (an alert about
# seven minutes in, so a newcomer sees both soon).
DEMO_ASSIGNMENTS = (
    ("coldroom-1", "warehouse", "chilled", "Cold room 1"),
    ("freezer-1", "warehouse", "frozen", "Freezer 1"),
    ("pharma-fridge-1", "pharmacy", "pharma", "Pharma fridge 1"),
    ("truck-7", "fleet", "reefer-demo", "Truck 7"),
    ("truck-9", "fleet", "reefer-demo", "Truck 9"),
)

DEMO_SLUG = "demo"
# The registry keeps one title; pages show the catalog's "watch.demo_title" instead, in
# the reader's language (web/static/watch.js, web.pages).
DEMO_TITLE = "Demo farm — test pattern"
DEMO_SITE = "warehouse"  # where the demo's cold room and freezer stand


def ensure_demo_stream(registry: StreamRepository) -> None:
    """The test pattern's registry entry, linked to every simulated sensor (called in a
    worker thread once the registry is open). An operator's later changes to it are kept."""
    try:
        spec = StreamSpec(DEMO_SLUG, DEMO_TITLE, site=DEMO_SITE, kind="testpattern", visibility="public")
        registry.create(spec)
    except StreamExists:
        return
    registry.set_links(DEMO_SLUG, StreamLinks(devices=tuple(d[0] for d in DEMO_ASSIGNMENTS)))
    log.info("stream %r registered for the test pattern, linked to the demo fleet", DEMO_SLUG)


# -- what `origincast demo` adds for a newcomer: a login, a signing key, a shipment --------

DEMO_USER = "demo"
DEMO_KEY_FILE = "origincast-demo-log.key"
DEMO_LOG_ORIGIN = "origincast.demo/log"
DEMO_SHIPMENT = "demo-shipment"


async def ensure_demo_login(accounts: AccountService) -> str:
    """An admin ``demo`` with a fresh random password each run (printed by the demo): a
    demo database may be shared, a fixed password would not stay private."""
    password = secrets.token_urlsafe(12)
    if await accounts.get_user(DEMO_USER) is None:
        await accounts.create_user(DEMO_USER, "admin", password, "Demo admin")
    else:
        await accounts.set_password(DEMO_USER, password)
    return password


def demo_key_file(database_url: str) -> Path:
    """The demo's signing key, made once beside its SQLite database (or in the working
    directory for another database)."""
    folder = Path(database_path(database_url)).parent if database_url.startswith("sqlite") else Path.cwd()
    path = folder / DEMO_KEY_FILE
    if not path.exists():
        init_key(path, DEMO_LOG_ORIGIN)
        log.info("made the demo's evidence signing key %s", path)
    return path


def ensure_demo_shipment(store: Store, now: datetime) -> str:
    """A frozen-fish shipment watched by the demo freezer from now on: its trust page
    verifies the freezer's readings as they arrive."""
    if store.get_shipment(DEMO_SHIPMENT) is None:
        store.create_shipment(
            shipment_from_request(
                {
                    "id": DEMO_SHIPMENT,
                    "product": "Frozen sea bream",
                    "batch": "DEMO-2026-11",
                    "origin_site": "warehouse",
                    "profile_id": "frozen",
                    "streams": [DEMO_SLUG],
                    "segments": [{"device_id": "freezer-1", "start": now.isoformat(), "label": "Freezer 1"}],
                },
                now,
            )
        )
    return DEMO_SHIPMENT
