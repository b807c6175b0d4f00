"""The public trust page of a shipment: ``/v/<id>`` and the one endpoint it reads,
``GET /api/v1/public/shipments/{id}``, plus the QR codes that lead to it.

The endpoint answers what a customer may see and, beside it, every piece of evidence
the page checks in the browser (web/static/trust.js with verify.js): a signed
checkpoint, the leaves (shipment opened/closed, each device's readings batches over its
segment, alert events, files) with their inclusion proofs, and each batch's raw
readings. It is a self-contained bundle: the page needs no other request to verify, and
the server is not trusted for any of it — a lie shows as a failed check.

What a customer sees: the product, batch, origin, route (devices, labels, times), the
report's figures, excursions with their audit trail (actor names as the audit records
them: every alert event is a public leaf of the log anyway, so hiding them here would
hide nothing), the batch's files and the linked streams. Not shown: shipment versions,
uploaders' account names, device sites and anything of other shipments.
"""

from __future__ import annotations

import asyncio
import base64
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Protocol

import orjson
from aiohttp import web

from telemetry.evidence.canonical import ReadingsBatch, parse_record
from telemetry.evidence.log import EvidenceLog, SignedCheckpoint
from telemetry.reports import ShipmentReport, build_report
from telemetry.shipments import Shipment, ShipmentError, check_shipment_id, find_profile, gather
from telemetry.storage import Store
from telemetry.storage.evidence_batches import ts_us
from telemetry.storage.files import FileCatalog
from web.errors import json_error

NO_STORE = "no-store"


class EvidenceAccess(Protocol):
    """What the trust endpoint needs of the app's evidence service (web.evidence): the
    log with its signing key's public half, and signed checkpoints."""

    @property
    def vkey(self) -> str | None: ...

    async def checkpoint(self, *, force: bool = False) -> SignedCheckpoint: ...


def evidence_of(app: web.Application) -> EvidenceAccess | None:
    """The app's evidence service when it can sign (it has a key), else None: a page or
    QR code without the log's key could only say "cannot verify"."""
    from web.app import EVIDENCE  # web.app imports this module: looked up at call time

    service = app.get(EVIDENCE)
    if service is None or service.vkey is None:
        return None
    return service  # type: ignore[return-value]


def _json(body: object, status: int = 200) -> web.Response:
    return web.Response(
        body=orjson.dumps(body),
        status=status,
        content_type="application/json",
        headers={"Cache-Control": NO_STORE},
    )


def _b64(b: bytes) -> str:
    return base64.b64encode(b).decode("ascii")


def _iso(t: datetime | None) -> str | None:
    return None if t is None else t.astimezone(UTC).isoformat().replace("+00:00", "Z")


@dataclass(frozen=True, slots=True)
class StreamInfo:
    slug: str
    title: str | None
    live: bool


class TrustApi:
    def __init__(
        self,
        store: Callable[[], Store],
        files: FileCatalog,
        evidence: Callable[[], EvidenceAccess | None],
        streams: Callable[[Sequence[str]], Any] | None = None,
    ) -> None:
        self._store = store
        self._files = files
        self._evidence = evidence
        # slugs -> [StreamInfo] (public streams only), async
        self._streams = streams

    def register(self, router: web.UrlDispatcher) -> None:
        router.add_get("/api/v1/public/shipments/{id}", self.public_shipment)

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

    async def public_shipment(self, request: web.Request) -> web.Response:
        shipment = await self._load(request)
        store = self._store()
        as_of = datetime.now(UTC)

        def build() -> ShipmentReport:
            data = gather(store, shipment, as_of)
            return build_report(shipment, data, find_profile(store, shipment.profile_id), as_of)

        report = await asyncio.to_thread(build)
        files = await asyncio.to_thread(self._files.for_batch, shipment.batch, shipment.id)
        streams: list[StreamInfo] = []
        if self._streams is not None and shipment.streams:
            streams = await self._streams(shipment.streams)
        body: dict[str, Any] = {
            "shipment": {
                "id": shipment.id,
                "product": shipment.product,
                "batch": shipment.batch,
                "origin_site": shipment.origin_site,
                "state": shipment.state.value,
                "opened_at": _iso(shipment.opened_at),
                "closed_at": _iso(shipment.closed_at),
                "segments": [
                    {
                        "index": s.index,
                        "device_id": s.device_id,
                        "label": s.label,
                        "start": _iso(s.start),
                        "end": _iso(s.end),
                        "start_us": ts_us(s.start),
                        "end_us": ts_us(s.end),
                        "open": s.open,
                    }
                    for s in report.segments
                ],
            },
            "profile": {
                "id": report.profile_id,
                "name": report.profile_name,
                "limits": [lim.to_dict() for lim in report.limits],
            },
            "report": _public_report(report),
            "files": [{k: v for k, v in f.to_dict().items() if k not in ("id",)} for f in files],
            "streams": [
                {"slug": s.slug, "title": s.title, "live": s.live, "url": f"/watch/{s.slug}"} for s in streams
            ],
        }
        evidence = self._evidence()
        if evidence is None:
            body["evidence"] = None
        else:
            body["evidence"] = await self._evidence_bundle(evidence, shipment, report, files)
        return _json(body)

    async def _evidence_bundle(
        self, evidence: EvidenceAccess, shipment: Shipment, report: ShipmentReport, files: Sequence[Any]
    ) -> dict[str, Any]:
        store = self._store()
        log: EvidenceLog = store.evidence  # type: ignore[attr-defined]
        # Each audit row keeps the index of its alert_event leaf: a direct lookup, where
        # scanning the log from the shipment's opening would read every leaf since.
        alert_leaves = sorted(
            {x.evidence_leaf for e in report.excursions for x in e.alert.audit if x.evidence_leaf is not None}
        )
        windows = [(s.device_id, ts_us(s.start), ts_us(s.end)) for s in report.segments]

        def collect() -> tuple[dict[str, Any], dict[int, bytes]]:
            leaves: dict[int, bytes] = {}
            devices: list[dict[str, Any]] = []
            with store.evidence_connection() as conn:  # type: ignore[attr-defined]
                for i, (device, start, end) in enumerate(windows, start=1):
                    chain = log.device_leaves(conn, device)
                    picked = _batches_over(chain, start, end)
                    for leaf in picked:
                        leaves[leaf.index] = leaf.entry
                    devices.append(
                        {"segment": i, "device_id": device, "start_us": start, "end_us": end,
                         "batches": [leaf.index for leaf in picked]}
                    )  # fmt: skip
                singles = [x for x in (shipment.opened_leaf, shipment.closed_leaf) if x is not None]
                singles += [f.evidence_leaf for f in files] + alert_leaves
                for index in singles:
                    got = log.leaves(conn, index, index + 1)
                    if got:
                        leaves[index] = got[0].entry
            return {"devices": devices}, leaves

        part, leaves = await asyncio.to_thread(collect)
        needed = max(leaves, default=-1) + 1
        checkpoint = await evidence.checkpoint()
        if checkpoint.size < needed:
            checkpoint = await evidence.checkpoint(force=True)

        def prove_and_read() -> tuple[dict[int, list[bytes]], dict[int, list[dict[str, Any]]]]:
            with store.evidence_connection() as conn:  # type: ignore[attr-defined]
                proofs = log.inclusion_proofs(conn, sorted(leaves), checkpoint.size) if leaves else {}
            readings: dict[int, list[dict[str, Any]]] = {}
            for index, entry in leaves.items():
                rec = parse_record(entry)
                if isinstance(rec, ReadingsBatch):
                    rows = store.readings_of_leaf(rec.device_id, index, rec.ts_first_us, rec.ts_last_us)
                    readings[index] = [
                        {"ts_us": ts_us(r.ts), "temp_c": r.temp_c, "rh": r.rh, "battery_v": r.battery_v,
                         "door_open": r.door_open, "seq": r.seq}
                        for r in rows
                    ]  # fmt: skip
            return proofs, readings

        proofs, readings = await asyncio.to_thread(prove_and_read)
        return {
            "vkey_origin": (evidence.vkey or "").split("+", 1)[0],
            "checkpoint": checkpoint.note,
            "size": checkpoint.size,
            "opened_leaf": shipment.opened_leaf,
            "closed_leaf": shipment.closed_leaf,
            **part,
            "alert_leaves": alert_leaves,
            "file_leaves": {f.sha256: f.evidence_leaf for f in files},
            "leaves": {str(i): _b64(e) for i, e in sorted(leaves.items())},
            "proofs": {str(i): [_b64(h) for h in p] for i, p in sorted(proofs.items())},
            "readings": {str(i): r for i, r in sorted(readings.items())},
        }


def _batches_over(chain: Sequence[Any], start_us: int, end_us: int) -> list[Any]:
    """A device's batch leaves that hold readings in [start, end), with the batch just
    before and just after the window when they exist: the neighbours let a verifier see
    that nothing was left out at the window's edges (the chain's prev pointers link them)."""
    records = [(leaf, parse_record(leaf.entry)) for leaf in chain]
    inside = [i for i, (_, r) in enumerate(records) if r.ts_last_us >= start_us and r.ts_first_us < end_us]  # type: ignore[attr-defined]
    if not inside:
        before = [i for i, (_, r) in enumerate(records) if r.ts_last_us < start_us]  # type: ignore[attr-defined]
        after = [i for i, (_, r) in enumerate(records) if r.ts_first_us >= end_us]  # type: ignore[attr-defined]
        pick = before[-1:] + after[:1]
        return [records[i][0] for i in pick]
    lo, hi = max(inside[0] - 1, 0), min(inside[-1] + 1, len(records) - 1)
    return [records[i][0] for i in range(lo, hi + 1)]


def _public_report(report: ShipmentReport) -> dict[str, Any]:
    full = report.to_dict()
    excursions = []
    for e in report.excursions:
        a = e.alert
        excursions.append(
            {
                "id": a.alert_id,
                "category": e.category,
                "segments": list(e.segments),
                "device_id": a.device_id,
                "rule_id": a.rule_id,
                "rule_kind": a.kind,
                "severity": a.severity,
                "status": a.state,
                "threshold": a.threshold,
                "start": _iso(a.start),
                "cleared_at": _iso(a.cleared_at),
                "peak": a.peak,
                "peak_at": _iso(a.peak_at),
                "audit": [
                    # "" and no comment are one thing: the alert_event leaf stores "" as null.
                    {"at": _iso(x.at), "action": x.action, "actor": x.actor, "comment": x.comment or None}
                    for x in a.audit
                ],
            }
        )
    return {
        "as_of": full["as_of"],
        "method": full["method"],
        "segments": full["segments"],
        "total": full["total"],
        "gaps": full["gaps"],
        "excursions": excursions,
    }


# Only this origin; never framed (a frame could dress another site's claims in our
# "verified"); images from /files/ and the chart's canvas only.
TRUST_CSP = "; ".join(
    (
        "default-src 'self'",
        "script-src 'self'",
        "style-src 'self'",
        "img-src 'self' data: blob:",
        "connect-src 'self'",
        "object-src 'none'",
        "base-uri 'none'",
        "form-action 'none'",
        "frame-ancestors 'none'",
    )
)


class TrustPage:
    """``GET /v/{id}``: the server-rendered shell in the reader's language; trust.js
    fills it from the public endpoint and verifies. An id that cannot exist still gets
    the page (which says so) with a 404."""

    def __init__(self) -> None:
        from web.i18n import load_catalogs
        from web.pages import TEMPLATE_DIR, PageRenderer

        template = (TEMPLATE_DIR / "trust.html").read_text(encoding="utf-8")
        self._renderer = PageRenderer(load_catalogs(), {"trust": template})

    def register(self, router: web.UrlDispatcher) -> None:
        router.add_get("/v/{id}", self.handle)

    async def handle(self, request: web.Request) -> web.Response:
        from web.i18n import LANGUAGE_COOKIE, choose_language

        raw = request.match_info["id"]
        lang = choose_language(
            request.query.get("lang"),
            request.cookies.get(LANGUAGE_COOKIE),
            request.headers.get("Accept-Language"),
        )
        try:
            sid = check_shipment_id(raw)
            status = 200
        except ShipmentError:
            sid, status = "", 404
        title = self._renderer.catalogs.text(lang, "trust.page_title")
        return web.Response(
            text=self._renderer.render("trust", sid, lang, {"shipment": sid}, title),
            status=status,
            content_type="text/html",
            charset="utf-8",
            headers={
                "Content-Security-Policy": TRUST_CSP,
                "Permissions-Policy": "camera=(), microphone=(), geolocation=()",
                # The key is in the fragment, which no Referer carries; still, say nothing.
                "Referrer-Policy": "no-referrer",
                "X-Content-Type-Options": "nosniff",
                "Vary": "Accept-Language, Cookie",
                "Cache-Control": "no-cache",
            },
        )


__all__ = ["TRUST_CSP", "EvidenceAccess", "StreamInfo", "TrustApi", "TrustPage", "evidence_of"]
