"""The demo's fleet and its test-pattern stream, shared by ``origincast demo`` (web.cli)
and the composition root (web.app), which makes sure the stream exists whenever the test
pattern runs (``demo`` or ``serve`` with ``stream.demo_test_pattern``)."""

from __future__ import annotations

import logging

from stream.registry import StreamExists, StreamLinks, StreamRepository, StreamSpec

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
