"""JSON API for shipments and their reports.

    GET   /api/v1/shipments                      ?state=open|closed &origin_site= &limit=1..1000
    POST  /api/v1/shipments                      {id?, product, batch, origin_site, profile_id,
                                                 opened_at?, streams?, segments?} → 201
    GET   /api/v1/shipments/{id}
    PATCH /api/v1/shipments/{id}                 editable fields (+ "version": refuse if it moved on)
    POST  /api/v1/shipments/{id}/segments        {device_id, start?, end?, label?} → 201; ends the
                                                 open segment where this one starts
    POST  /api/v1/shipments/{id}/close           {at?} (default: now); the route's readings are
                                                 sealed into the evidence log first (503 when an
                                                 ingester does not seal its part in time)
    GET   /api/v1/shipments/{id}/report          the report (JSON; full-precision figures)
    GET   /api/v1/shipments/{id}/report.csv      the same as CSV (summary, gaps, excursions, readings)
    GET   /api/v1/shipments/{id}/report.pdf      ?lang=zh-CN|en (default en)

The report endpoints take ``gap_threshold_s``, ``gap_factor`` and ``min_gap_s`` to
change the gap rule (telemetry.reports). Writes need a user who ships goods (``_writer``:
admin, logistics, producer); reading shipments needs any such user, the full report
staff (``_staff``: admin, logistics) until the public page comes with the evidence log.
Errors are ``{"error": "..."}``: 400 bad input (naming the field), 404 unknown shipment,
409 a closed shipment or a concurrent change.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Any

import orjson
from aiohttp import web

from telemetry.alerts.rules import builtin_profiles
from telemetry.reports import ReportError, ReportParams, ShipmentReport, build_report
from telemetry.shipments import (
    Segment,
    Shipment,
    ShipmentConflict,
    ShipmentError,
    ShipmentState,
    ShipmentStateError,
    add_segment,
    check_shipment_id,
    close,
    find_profile,
    gather,
    parse_time,
    patch,
    shipment_from_request,
)
from telemetry.storage import Store
from web.accounts import Role
from web.auth import Authenticator
from web.errors import json_error
from web.evidence import ReadingsNotSealed, close_shipment
from web.i18n import LANGUAGES, Catalogs, load_catalogs

WRITERS: tuple[Role, ...] = ("admin", "logistics", "producer")
STAFF: tuple[Role, ...] = ("admin", "logistics")
MAX_LIMIT = 1000
# A read-modify-write that lost to another writer is redone this many times before 409.
SAVE_ATTEMPTS = 3
LANG_ALIASES = {"zh": "zh-CN", "zh-cn": "zh-CN", "en": "en"}


def _json(body: object, status: int = 200) -> web.Response:
    return web.Response(body=orjson.dumps(body), status=status, content_type="application/json")


async def _body(request: web.Request, *, optional: bool = False) -> dict[str, Any]:
    raw = await request.read()
    if optional and not raw.strip():
        return {}
    try:
        data = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise json_error(web.HTTPBadRequest, f"the body is not JSON: {exc}") from None
    if not isinstance(data, dict):
        raise json_error(web.HTTPBadRequest, "the body must be a JSON object")
    return data


def report_params(query: Any) -> ReportParams:
    """The gap rule from a query string (defaults for what is absent); 400 when wrong."""
    kwargs: dict[str, float] = {}
    for name in ("gap_threshold_s", "gap_factor", "min_gap_s"):
        raw = query.get(name)
        if raw is None or raw == "":
            continue
        try:
            value = float(raw)
        except ValueError:
            raise json_error(web.HTTPBadRequest, f"{name} must be a number, got {raw!r}") from None
        if not math.isfinite(value) or value > 10 * 86400:
            raise json_error(web.HTTPBadRequest, f"{name} must be a finite number up to 864000")
        kwargs[name] = value
    try:
        return ReportParams(**kwargs)
    except ReportError as exc:
        raise json_error(web.HTTPBadRequest, str(exc)) from None


class ShipmentsApi:
    def __init__(
        self,
        auth: Authenticator,
        store: Callable[[], Store],
        catalogs: Catalogs | None = None,
        on_closed: Callable[[Shipment], Awaitable[None]] | None = None,
    ) -> None:
        self._auth = auth
        # After a close is saved: the composition root signs and timestamps it.
        self._on_closed = on_closed
        # Looked up per request: the store opens in cleanup_ctx, after the routes are made.
        self._store = store
        self._catalogs = catalogs or load_catalogs()

    def register(self, router: web.UrlDispatcher) -> None:
        router.add_get("/api/v1/shipments", self.list_shipments)
        router.add_post("/api/v1/shipments", self.create)
        router.add_get("/api/v1/shipments/{id}", self.get)
        router.add_patch("/api/v1/shipments/{id}", self.edit)
        router.add_post("/api/v1/shipments/{id}/segments", self.add_segment)
        router.add_post("/api/v1/shipments/{id}/close", self.close)
        router.add_get("/api/v1/shipments/{id}/report", self.report_json)
        router.add_get("/api/v1/shipments/{id}/report.csv", self.report_csv)
        router.add_get("/api/v1/shipments/{id}/report.pdf", self.report_pdf)

    # -- who may -------------------------------------------------------------------------------

    async def _writer(self, request: web.Request) -> None:
        """The one check of every write: people who ship goods. (A producer may later be
        limited to shipments of their own origin site.)"""
        await self._auth.require(request, *WRITERS)

    async def _reader(self, request: web.Request) -> None:
        await self._auth.require(request, *WRITERS)

    async def _staff(self, request: web.Request) -> None:
        """The full report (names of staff, every excursion) is for staff until the public
        page, with the evidence log, decides what customers see."""
        await self._auth.require(request, *STAFF)

    # -- helpers -------------------------------------------------------------------------------

    async def _load(self, request: web.Request) -> Shipment:
        raw = request.match_info["id"]
        try:
            sid = check_shipment_id(raw)
        except ShipmentError:
            raise json_error(web.HTTPNotFound, f"no shipment {raw!r}") from None
        found = await asyncio.to_thread(self._store().get_shipment, sid)
        if found is None:
            raise json_error(web.HTTPNotFound, f"no shipment {sid!r}")
        return found

    async def _check_profile(self, profile_id: str) -> None:
        if profile_id in builtin_profiles():
            return
        custom = await asyncio.to_thread(self._store().list_profiles)
        if profile_id not in custom:
            known = ", ".join(sorted({*builtin_profiles(), *custom}))
            raise json_error(
                web.HTTPBadRequest, f"profile_id: unknown profile {profile_id!r} (known: {known})"
            )

    async def _change(
        self, request: web.Request, fn: Callable[[Shipment], Shipment], expected_version: int | None = None
    ) -> Shipment:
        """Read, apply ``fn``, save under the read version; redo when another writer won."""
        store = self._store()
        for attempt in range(SAVE_ATTEMPTS):
            current = await self._load(request)
            if expected_version is not None and current.version != expected_version:
                raise json_error(
                    web.HTTPConflict,
                    f"shipment {current.id} is at version {current.version}, not {expected_version}:"
                    " read it again",
                )
            try:
                changed = fn(current)
            except ShipmentStateError as exc:
                raise json_error(web.HTTPConflict, str(exc)) from None
            except ShipmentError as exc:
                raise json_error(web.HTTPBadRequest, str(exc)) from None
            if changed.profile_id != current.profile_id:
                await self._check_profile(changed.profile_id)
            try:
                return await asyncio.to_thread(store.save_shipment, changed)
            except ShipmentConflict as exc:
                if attempt == SAVE_ATTEMPTS - 1 or expected_version is not None:
                    raise json_error(web.HTTPConflict, str(exc)) from None
        raise AssertionError("unreachable")

    # -- shipments -----------------------------------------------------------------------------

    async def list_shipments(self, request: web.Request) -> web.Response:
        await self._reader(request)
        q = request.query
        state = q.get("state") or None
        if state is not None and state not in {s.value for s in ShipmentState}:
            raise json_error(web.HTTPBadRequest, "state must be open or closed")
        try:
            limit = int(q.get("limit", "100"))
        except ValueError:
            raise json_error(web.HTTPBadRequest, "limit must be a whole number") from None
        if not 1 <= limit <= MAX_LIMIT:
            raise json_error(web.HTTPBadRequest, f"limit must be 1..{MAX_LIMIT}")
        site = q.get("origin_site") or None
        rows = await asyncio.to_thread(
            lambda: self._store().list_shipments(state=state, origin_site=site, limit=limit)
        )
        return _json({"shipments": [s.to_dict() for s in rows]})

    async def create(self, request: web.Request) -> web.Response:
        await self._writer(request)
        data = await _body(request)
        try:
            shipment = shipment_from_request(data, datetime.now(UTC))
        except ShipmentError as exc:
            raise json_error(web.HTTPBadRequest, str(exc)) from None
        await self._check_profile(shipment.profile_id)
        try:
            saved = await asyncio.to_thread(self._store().create_shipment, shipment)
        except ShipmentConflict as exc:
            raise json_error(web.HTTPConflict, str(exc)) from None
        return _json(saved.to_dict(), status=201)

    async def get(self, request: web.Request) -> web.Response:
        await self._reader(request)
        return _json((await self._load(request)).to_dict())

    async def edit(self, request: web.Request) -> web.Response:
        await self._writer(request)
        data = await _body(request)
        version = data.pop("version", None)
        if version is not None and (isinstance(version, bool) or not isinstance(version, int)):
            raise json_error(web.HTTPBadRequest, "version must be a whole number")
        saved = await self._change(request, lambda s: patch(s, data), version)
        return _json(saved.to_dict())

    async def add_segment(self, request: web.Request) -> web.Response:
        await self._writer(request)
        data = await _body(request)
        data.setdefault("start", datetime.now(UTC).isoformat())
        try:
            segment = Segment.from_dict(data)
        except ShipmentError as exc:
            raise json_error(web.HTTPBadRequest, str(exc)) from None
        saved = await self._change(request, lambda s: add_segment(s, segment))
        return _json(saved.to_dict(), status=201)

    async def close(self, request: web.Request) -> web.Response:
        await self._writer(request)
        data = await _body(request, optional=True)
        unknown = set(data) - {"at"}
        if unknown:
            raise json_error(web.HTTPBadRequest, f"{sorted(unknown)[0]}: unknown field (only: at)")
        try:
            at = parse_time(data["at"], "at") if data.get("at") is not None else datetime.now(UTC)
        except ShipmentError as exc:
            raise json_error(web.HTTPBadRequest, str(exc)) from None
        current = await self._load(request)
        try:
            saved = await close_shipment(
                self._store(), current, lambda: self._change(request, lambda s: close(s, at)), self._on_closed
            )
        except ReadingsNotSealed as exc:
            raise json_error(web.HTTPServiceUnavailable, str(exc)) from None
        return _json(saved.to_dict())

    # -- reports -------------------------------------------------------------------------------

    async def _report(self, request: web.Request) -> ShipmentReport:
        await self._staff(request)
        params = report_params(request.query)
        shipment = await self._load(request)
        store = self._store()
        as_of = datetime.now(UTC)

        def build() -> ShipmentReport:
            data = gather(store, shipment, as_of)
            return build_report(shipment, data, find_profile(store, shipment.profile_id), as_of, params)

        return await asyncio.to_thread(build)

    async def report_json(self, request: web.Request) -> web.Response:
        return _json((await self._report(request)).to_dict())

    async def report_csv(self, request: web.Request) -> web.Response:
        from web.shipment_csv import report_csv

        report = await self._report(request)
        text = await asyncio.to_thread(report_csv, report)
        return web.Response(
            body=text.encode("utf-8-sig"),  # the BOM makes spreadsheet programs read UTF-8 (Chinese) right
            content_type="text/csv",
            charset="utf-8",
            headers={"Content-Disposition": f'attachment; filename="shipment-{report.shipment.id}.csv"'},
        )

    async def report_pdf(self, request: web.Request) -> web.Response:
        from web.shipment_pdf import FontMissing, render_pdf

        raw = request.query.get("lang", "en")
        lang = LANG_ALIASES.get(raw.lower(), raw)
        if lang not in LANGUAGES:
            raise json_error(web.HTTPBadRequest, f"lang must be one of {', '.join(LANGUAGES)}, got {raw!r}")
        report = await self._report(request)
        try:
            pdf = await asyncio.to_thread(
                lambda: render_pdf(report, lang, generated_at=datetime.now(UTC), catalogs=self._catalogs)
            )
        except FontMissing as exc:
            raise json_error(web.HTTPServiceUnavailable, str(exc)) from None
        return web.Response(
            body=pdf,
            content_type="application/pdf",
            headers={"Content-Disposition": f'inline; filename="shipment-{report.shipment.id}-{lang}.pdf"'},
        )
