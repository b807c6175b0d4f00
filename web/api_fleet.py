"""The logistics console's read API: the fleet at a glance and one device's history.

    GET /api/v1/fleet                   every known device (assigned, or seen publishing):
                                        site, profile and its temperature limits, latest
                                        reading and its age, active alerts, state; filter
                                        ?site=<id> (repeatable)
    GET /api/v1/devices/{id}/history    ?from=&to= (ISO 8601; default: the last 24 h) and
                                        bucket= (seconds, or 30s / 5m / 1h / 1d; default:
                                        the smallest usual width giving ≤ 1,000 points):
                                        min / mean / max / count per bucket, and the
                                        profile's temperature limits to draw as lines

A device's state, one word the console colours (the page recomputes it every second
with the same thresholds, which this answer carries, so the two never disagree):
``alert`` (an active alert other than "offline"), ``offline`` (an active offline alert,
no reading at all, or none for the profile's offline timeout), ``stale`` (no reading
for ``STALE_AFTER_S``), else ``ok``.

Both need staff (admin or logistics, ``_staff``): the fleet's positions and temperatures are
the shippers' business, not the public's. Errors are ``{"error": "message"}``.
"""

from __future__ import annotations

import asyncio
import math
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from aiohttp import web

from telemetry.alerts import Profile, RuleError
from telemetry.alerts.rules import LimitRule, Metric, OfflineRule, builtin_profiles
from telemetry.alerts.service import AlertService
from telemetry.readings import PLAIN_ID, Reading
from telemetry.storage import Store
from telemetry.storage.alerts import ACTIVE, AlertFilter, AlertRecord, Device
from web.auth import Authenticator
from web.errors import json_error, json_response

# The watch page calls a reading stale after two minutes too: one meaning everywhere.
STALE_AFTER_S = 120.0
# ThingsBoard's inactivity default, and the offline rule's own default: devices without a
# profile (or whose profile has no offline rule) go offline after this long.
DEFAULT_OFFLINE_AFTER_S = OfflineRule().timeout_s
# Readings are kept 400 days by default (database.retention_days): a longer range shows nothing more.
MAX_RANGE = timedelta(days=400)
DEFAULT_RANGE = timedelta(hours=24)
# What a chart can show on a wide screen; a caller choosing the bucket may ask for more.
TARGET_POINTS = 1000
MAX_POINTS = 10_000
# Widths a person reads easily, smallest first; the first that fits TARGET_POINTS wins.
NICE_BUCKETS_S = (10, 30, 60, 120, 300, 600, 900, 1800, 3600, 7200, 10800, 21600, 43200, 86400)
MAX_ACTIVE_ALERTS = 1000

_BUCKET = re.compile(r"^\s*(\d{1,9})\s*([smhd]?)\s*$")
_UNIT_S = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}
_SEVERITY_RANK = {"critical": 0, "major": 1, "minor": 2, "warning": 3}




def _iso(t: datetime) -> str:
    return t.isoformat().replace("+00:00", "Z")


@dataclass(frozen=True, slots=True)
class ProfileView:
    """What the console needs of a profile: its name, limit lines and offline timeout."""

    profile_id: str
    name: str
    limits: tuple[dict[str, Any], ...]
    offline_after_s: float

    @classmethod
    def of(cls, profile: Profile) -> ProfileView:
        limits = tuple(
            {
                "rule_id": r.id,
                "direction": r.direction.value,
                "threshold": r.threshold,
                "severity": r.severity.value,
            }
            for r in profile.rules
            if isinstance(r, LimitRule) and r.metric is Metric.TEMP_C
        )
        offline = profile.offline
        return cls(
            profile.id, profile.name, limits, offline.timeout_s if offline else DEFAULT_OFFLINE_AFTER_S
        )


def device_state(
    reading: Reading | None, alerts: Iterable[AlertRecord], now: datetime, offline_after_s: float
) -> str:
    kinds = {a.kind for a in alerts}
    if kinds - {"offline"}:
        return "alert"
    if "offline" in kinds or reading is None:
        return "offline"
    age = (now - reading.ts).total_seconds()
    if age > offline_after_s:
        return "offline"
    if age > STALE_AFTER_S:
        return "stale"
    return "ok"


def parse_time(name: str, raw: str) -> datetime:
    try:
        t = datetime.fromisoformat(raw.strip().replace("Z", "+00:00").replace("z", "+00:00"))
    except ValueError:
        raise json_error(
            web.HTTPBadRequest, f"{name} must be an ISO 8601 time, e.g. 2026-11-24T08:00:00Z"
        ) from None
    return t.replace(tzinfo=UTC) if t.tzinfo is None else t.astimezone(UTC)


def parse_bucket(raw: str) -> timedelta:
    m = _BUCKET.match(raw)
    if m is None or int(m.group(1)) == 0:
        raise json_error(
            web.HTTPBadRequest, "bucket must be a whole number of seconds ≥ 1, or like 30s, 5m, 1h, 1d"
        )
    return timedelta(seconds=int(m.group(1)) * _UNIT_S[m.group(2)])


def choose_bucket(span: timedelta) -> timedelta:
    for seconds in NICE_BUCKETS_S:
        if span / timedelta(seconds=seconds) <= TARGET_POINTS:
            return timedelta(seconds=seconds)
    return timedelta(seconds=NICE_BUCKETS_S[-1])  # unreachable within MAX_RANGE; kept total


class FleetApi:
    def __init__(
        self,
        auth: Authenticator,
        store: Callable[[], Store],
        service: Callable[[], AlertService | None],
    ) -> None:
        self._auth = auth
        # Looked up per request: both are opened in cleanup_ctx, after the routes are made.
        self._store = store
        self._service = service

    def register(self, router: web.UrlDispatcher) -> None:
        router.add_get("/api/v1/fleet", self.fleet)
        router.add_get("/api/v1/devices/{id}/history", self.history)

    async def _staff(self, request: web.Request) -> None:
        """The one authorization check of this module: the people who run the fleet (the
        route table in web.permissions says the same; this holds if a route escapes it)."""
        await self._auth.require(request, "admin", "logistics")

    async def _profiles(self) -> dict[str, ProfileView]:
        service = self._service()
        if service is not None:
            profiles = service.profiles()
        else:
            # A web-only node (serve --no-ingest) has no engine: read what it would load.
            profiles = dict(builtin_profiles())
            for pid, d in (await asyncio.to_thread(self._store().list_profiles)).items():
                try:
                    profiles[pid] = Profile.from_dict(d)
                except RuleError:
                    continue  # the engine logs it when it loads; unusable anyway
        return {pid: ProfileView.of(p) for pid, p in profiles.items()}

    # -- GET /api/v1/fleet ---------------------------------------------------------------------

    async def fleet(self, request: web.Request) -> web.Response:
        await self._staff(request)
        sites = {s.strip() for s in request.query.getall("site", []) if s.strip()}
        store = self._store()

        def read() -> tuple[list[Device], list[Reading], list[AlertRecord]]:
            return (
                store.list_devices(),
                store.latest(None),
                store.list_alerts(AlertFilter(state=ACTIVE, limit=MAX_ACTIVE_ALERTS)),
            )

        devices, latest, alerts = await asyncio.to_thread(read)
        profiles = await self._profiles()
        now = datetime.now(UTC)
        by_id = {d.device_id: d for d in devices}
        # A device that publishes before anyone assigns it is still part of the fleet.
        for reading in latest:
            by_id.setdefault(reading.device_id, Device(reading.device_id))
        readings = {reading.device_id: reading for reading in latest}
        active: dict[str, list[AlertRecord]] = {}
        for a in alerts:
            active.setdefault(a.device_id, []).append(a)
        out = []
        for device_id in sorted(by_id):
            d = by_id[device_id]
            if sites and d.site_id not in sites:
                continue
            view = profiles.get(d.profile_id) if d.profile_id else None
            offline_after = view.offline_after_s if view else DEFAULT_OFFLINE_AFTER_S
            r = readings.get(device_id)
            mine = active.get(device_id, [])
            worst = min(mine, key=lambda a: _SEVERITY_RANK.get(a.severity, 9)).severity if mine else None
            out.append(
                {
                    **d.to_dict(),
                    "profile_name": view.name if view else None,
                    "limits": list(view.limits) if view else [],
                    "offline_after_s": offline_after,
                    "reading": None
                    if r is None
                    else {
                        "ts": _iso(r.ts),
                        "temp_c": r.temp_c,
                        "rh": r.rh,
                        "battery_v": r.battery_v,
                        "door_open": r.door_open,
                    },
                    "age_s": None if r is None else round((now - r.ts).total_seconds(), 3),
                    "active_alerts": len(mine),
                    "worst_severity": worst,
                    "state": device_state(r, mine, now, offline_after),
                }
            )
        return json_response({"now": _iso(now), "stale_after_s": STALE_AFTER_S, "devices": out})

    # -- GET /api/v1/devices/{id}/history ------------------------------------------------------

    async def history(self, request: web.Request) -> web.Response:
        await self._staff(request)
        device_id = request.match_info["id"]
        if not PLAIN_ID.match(device_id):
            raise json_error(web.HTTPBadRequest, "device id must be 1-64 of A-Z a-z 0-9 _ . -")
        q = request.query
        end = parse_time("to", q["to"]) if q.get("to") else datetime.now(UTC)
        start = parse_time("from", q["from"]) if q.get("from") else end - DEFAULT_RANGE
        if start >= end:
            raise json_error(web.HTTPBadRequest, "from must be before to")
        span = end - start
        if span > MAX_RANGE:
            raise json_error(
                web.HTTPBadRequest,
                f"the range is at most {MAX_RANGE.days} days (as long as readings are kept)",
            )
        if q.get("bucket"):
            bucket = parse_bucket(q["bucket"])
            points = math.ceil(span / bucket)
            if points > MAX_POINTS:
                raise json_error(
                    web.HTTPBadRequest,
                    f"bucket {bucket.total_seconds():g} s gives {points} points over this range (at most"
                    f" {MAX_POINTS}); choose a wider bucket or leave it out",
                )
        else:
            bucket = choose_bucket(span)
        store = self._store()

        def read() -> tuple[Device | None, bool, list[Any]]:
            device = store.get_device(device_id)
            known = device is not None or bool(store.latest([device_id]))
            return device, known, store.history(device_id, start, end, bucket) if known else []

        device, known, buckets = await asyncio.to_thread(read)
        if not known:
            raise json_error(web.HTTPNotFound, f"no device {device_id!r} (never assigned, never published)")
        profile_id = device.profile_id if device else None
        view = (await self._profiles()).get(profile_id) if profile_id else None
        return json_response(
            {
                "device_id": device_id,
                "name": device.name if device else None,
                "site_id": device.site_id if device else None,
                "profile_id": profile_id,
                "profile_name": view.name if view else None,
                "limits": list(view.limits) if view else [],
                "from": _iso(start),
                "to": _iso(end),
                "bucket_s": bucket.total_seconds(),
                "points": [
                    {"t": _iso(b.start), "min": b.min_c, "mean": b.mean_c, "max": b.max_c, "count": b.count}
                    for b in buckets
                ],
            }
        )
