"""The values that flow through ingest: one accepted reading, one rejected message."""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime
from typing import NamedTuple

# Device, site, profile, rule and batch ids appear in MQTT topics, alert keys and URLs:
# plain text, one rule for all of them.
PLAIN_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-]{0,63}$")


class Reading(NamedTuple):
    """One temperature reading of one device at one instant (identity: device_id + ts).

    A tuple in the column order of the ``readings`` table, so the store can hand it to
    COPY as the row itself: at hundreds of thousands of readings a second, building a
    second object per reading is a measurable share of the ingester's CPU.
    """

    device_id: str
    ts: datetime  # timezone-aware UTC
    temp_c: float
    rh: float | None = None
    battery_v: float | None = None
    door_open: bool | None = None
    seq: int | None = None


@dataclass(frozen=True, slots=True)
class Rejection:
    """A message (or one entry of a batch message) that was not stored, and why."""

    topic: str
    payload_head: str  # the first bytes of the payload, decoded leniently for a human
    reason: str  # a stable machine code, e.g. "malformed_json", used as a metric label
    detail: str  # what exactly was wrong, for the operator
    received_at: datetime


@dataclass(frozen=True, slots=True)
class Bucket:
    """Aggregate of one device's readings over one time bucket."""

    device_id: str
    start: datetime
    min_c: float
    max_c: float
    mean_c: float
    count: int
