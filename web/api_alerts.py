"""JSON API for alerts, alert profiles and device assignments.

    GET  /api/v1/alerts                        filters: state (open, acknowledged, resolved,
                                               active), device, site, severity, since
                                               (ISO 8601), limit (1-1000); newest first
    GET  /api/v1/alerts/{id}                   one alert with its audit trail
    POST /api/v1/alerts/{id}/acknowledge       {"comment": "…"} (comment optional)
    POST /api/v1/alerts/{id}/resolve           {"comment": "…"} (the corrective action, required)
    GET  /api/v1/alert-profiles                built-in and custom profiles
    PUT  /api/v1/alert-profiles/{id}           a custom profile (Profile JSON)
    GET  /api/v1/devices                       devices with their site and profile
    PUT  /api/v1/devices/{id}                  {"site_id", "profile_id", "name"}

Everything here is for staff, admins and logistics (web.permissions); producers and
viewers get 403 and 401. Acknowledgements and resolutions are recorded in the audit
trail with the acting user's name (``admin-token`` for the legacy admin token).

Writes act on the alert engine, which runs in the process that ingests (``serve``
without ``--no-ingest``); a web-only node answers them with 503. Errors are
``{"error": "message"}``.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import orjson
from aiohttp import web

from telemetry.alerts import LifecycleError, Profile, RuleError, Severity, UnknownAlert
from telemetry.alerts.rules import builtin_profiles
from telemetry.alerts.service import AlertService
from telemetry.readings import PLAIN_ID
from telemetry.storage import Store
from telemetry.storage.alerts import ACTIVE, ALERT_STATES, AlertFilter, Device
from web.auth import Authenticator
from web.errors import json_error, json_response
from web.permissions import STAFF

ALERTS = web.AppKey("alerts", AlertService)

# Ids that are safe in an MQTT topic level (no '/', '+', '#') and in a URL.
_MAX_LIMIT = 1000




async def _body(request: web.Request) -> dict[str, Any]:
    try:
        data = orjson.loads(await request.read())
    except orjson.JSONDecodeError as exc:
        raise json_error(web.HTTPBadRequest, f"the body is not JSON: {exc}") from None
    if not isinstance(data, dict):
        raise json_error(web.HTTPBadRequest, "the body must be a JSON object")
    return data


def _optional_id(data: dict[str, Any], key: str) -> str | None:
    value = data.get(key)
    if value is None:
        return None
    if not isinstance(value, str) or not PLAIN_ID.match(value):
        raise json_error(
            web.HTTPBadRequest, f"{key} must be 1-64 of A-Z a-z 0-9 _ . - (starting with a letter or digit)"
        )
    return value


class AlertsApi:
    def __init__(
        self,
        auth: Authenticator,
        store: Callable[[], Store],
        service: Callable[[], AlertService | None],
    ) -> None:
        self._auth = auth
        # Looked up per request: the store and the service are opened in cleanup_ctx,
        # after the routes are made.
        self._store = store
        self._service = service

    def register(self, router: web.UrlDispatcher) -> None:
        router.add_get("/api/v1/alerts", self.list_alerts)
        router.add_get("/api/v1/alerts/{id}", self.get_alert)
        router.add_post("/api/v1/alerts/{id}/acknowledge", self.acknowledge)
        router.add_post("/api/v1/alerts/{id}/resolve", self.resolve)
        router.add_get("/api/v1/alert-profiles", self.list_profiles)
        router.add_put("/api/v1/alert-profiles/{id}", self.put_profile)
        router.add_get("/api/v1/devices", self.list_devices)
        router.add_put("/api/v1/devices/{id}", self.put_device)

    def _engine(self) -> AlertService:
        service = self._service()
        if service is None:
            raise json_error(
                web.HTTPServiceUnavailable,
                "the alert engine does not run in this process (serve --no-ingest); send writes to the"
                " serve process that ingests",
            )
        return service

    # -- alerts ----------------------------------------------------------------------------

    async def list_alerts(self, request: web.Request) -> web.Response:
        await self._auth.require(request, *STAFF)
        q = request.query
        state = q.get("state") or None
        if state is not None and state not in (*ALERT_STATES, ACTIVE):
            raise json_error(web.HTTPBadRequest, f"state must be one of {', '.join((*ALERT_STATES, ACTIVE))}")
        severity = q.get("severity") or None
        if severity is not None and severity not in {s.value for s in Severity}:
            raise json_error(
                web.HTTPBadRequest, f"severity must be one of {', '.join(s.value for s in Severity)}"
            )
        since = None
        if q.get("since"):
            try:
                since = datetime.fromisoformat(q["since"].replace("Z", "+00:00"))
            except ValueError:
                raise json_error(
                    web.HTTPBadRequest, "since must be an ISO 8601 time, e.g. 2026-11-24T08:00:00Z"
                ) from None
            if since.tzinfo is None:
                since = since.replace(tzinfo=UTC)
        try:
            limit = int(q.get("limit", "100"))
        except ValueError:
            raise json_error(web.HTTPBadRequest, "limit must be a whole number") from None
        if not 1 <= limit <= _MAX_LIMIT:
            raise json_error(web.HTTPBadRequest, f"limit must be 1..{_MAX_LIMIT}")
        f = AlertFilter(
            state=state,
            device_id=q.get("device") or None,
            site_id=q.get("site") or None,
            severity=severity,
            since=since,
            limit=limit,
        )
        rows = await asyncio.to_thread(self._store().list_alerts, f)
        return json_response({"alerts": [r.to_dict() for r in rows]})

    def _alert_id(self, request: web.Request) -> int:
        try:
            return int(request.match_info["id"])
        except ValueError:
            raise json_error(web.HTTPNotFound, f"no alert {request.match_info['id']!r}") from None

    async def get_alert(self, request: web.Request) -> web.Response:
        await self._auth.require(request, *STAFF)
        alert_id = self._alert_id(request)
        rec = await asyncio.to_thread(self._store().get_alert, alert_id)
        if rec is None:
            raise json_error(web.HTTPNotFound, f"no alert {alert_id}")
        return json_response(rec.to_dict(with_audit=True))

    async def acknowledge(self, request: web.Request) -> web.Response:
        return await self._act(request, "acknowledge")

    async def resolve(self, request: web.Request) -> web.Response:
        return await self._act(request, "resolve")

    async def _act(self, request: web.Request, action: str) -> web.Response:
        principal = await self._auth.require(request, *STAFF)
        alert_id = self._alert_id(request)
        # body_exists, not can_read_body: a middleware may have read the body already
        # (web.errors.refuse_nul_in_json), which leaves nothing "to read" but the cache.
        data = await _body(request) if request.body_exists else {}
        comment = data.get("comment", "")
        if not isinstance(comment, str):
            raise json_error(web.HTTPBadRequest, "comment must be text")
        if action == "resolve" and not comment.strip():
            raise json_error(web.HTTPBadRequest, "resolving needs a comment: what was done about it")
        service = self._engine()
        fn = service.acknowledge if action == "acknowledge" else service.resolve
        try:
            event = await asyncio.to_thread(fn, alert_id, principal.name, comment)
        except UnknownAlert as exc:
            raise json_error(web.HTTPNotFound, str(exc)) from None
        except LifecycleError as exc:
            raise json_error(web.HTTPConflict, str(exc)) from None
        return json_response(event)

    # -- profiles --------------------------------------------------------------------------

    async def list_profiles(self, request: web.Request) -> web.Response:
        await self._auth.require(request, *STAFF)
        service = self._service()
        builtin = builtin_profiles()
        if service is not None:
            profiles = service.profiles()
        else:
            profiles = dict(builtin)
            for pid, d in (await asyncio.to_thread(self._store().list_profiles)).items():
                try:
                    profiles[pid] = Profile.from_dict(d)
                except RuleError:
                    continue  # the engine logs it when it loads; not usable anyway
        return json_response(
            {"profiles": [{**p.to_dict(), "builtin": pid in builtin} for pid, p in sorted(profiles.items())]}
        )

    async def put_profile(self, request: web.Request) -> web.Response:
        await self._auth.require(request, *STAFF)
        pid = request.match_info["id"]
        data = await _body(request)
        data.setdefault("id", pid)
        if data["id"] != pid:
            raise json_error(web.HTTPBadRequest, f"the body's id {data['id']!r} is not the URL's {pid!r}")
        try:
            profile = Profile.from_dict(data)
        except RuleError as exc:
            raise json_error(web.HTTPBadRequest, str(exc)) from None
        service = self._engine()
        try:
            await asyncio.to_thread(service.save_profile, profile)
        except RuleError as exc:
            raise json_error(web.HTTPBadRequest, str(exc)) from None
        return json_response({**profile.to_dict(), "builtin": False})

    # -- devices ---------------------------------------------------------------------------

    async def list_devices(self, request: web.Request) -> web.Response:
        await self._auth.require(request, *STAFF)
        devices = await asyncio.to_thread(self._store().list_devices)
        return json_response({"devices": [d.to_dict() for d in devices]})

    async def put_device(self, request: web.Request) -> web.Response:
        principal = await self._auth.require(request, *STAFF)
        device_id = request.match_info["id"]
        if not PLAIN_ID.match(device_id):
            raise json_error(web.HTTPBadRequest, "device id must be 1-64 of A-Z a-z 0-9 _ . -")
        data = await _body(request)
        unknown = set(data) - {"site_id", "profile_id", "name"}
        if unknown:
            raise json_error(web.HTTPBadRequest, f"unknown field(s): {', '.join(sorted(unknown))}")
        name = data.get("name")
        if name is not None and (not isinstance(name, str) or len(name) > 200):
            raise json_error(web.HTTPBadRequest, "name must be text of at most 200 characters")
        device = Device(device_id, _optional_id(data, "site_id"), _optional_id(data, "profile_id"), name)
        service = self._engine()
        try:
            # A new site moves the device's open alerts, in this person's name.
            await asyncio.to_thread(service.assign, device, principal.name)
        except KeyError as exc:
            raise json_error(web.HTTPBadRequest, str(exc.args[0])) from None
        return json_response(device.to_dict())
