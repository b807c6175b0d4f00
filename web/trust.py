"""The public trust page of a shipment: ``/v/<id>`` and the one endpoint it reads,
``GET /api/v1/public/shipments/{id}``, plus the QR codes that lead to it.

The endpoint answers what a customer may see and, beside it, every piece of evidence
the page checks in the browser (web/static/trust.js with verify.js): a signed
checkpoint, the leaves (shipment opened/closed, each device's readings batches over its
segment, alert events, files) with one multi-leaf inclusion proof for them all, and each
batch's raw readings as the records its digest is over. It is a self-contained bundle:
the page needs no other request to verify, and the server is not trusted for any of it
— a lie shows as a failed check. The body is built (and kept for repeat requests) by
web.bundle, which also builds the offline evidence bundle from the same parts. Both
endpoints are rate-limited per client address (web.rate_limit).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from typing import Any

import orjson
from aiohttp import web

from telemetry.shipments import ShipmentError, check_shipment_id
from telemetry.storage import Store
from web.bundle import EvidenceAccess, ShipmentEvidence, StreamInfo, load_shipment
from web.rate_limit import RateLimiter

NO_STORE = "no-store"


def evidence_of(app: web.Application) -> EvidenceAccess | None:
    """The app's evidence service when it can sign (it has a key), else None: a page or
    QR code without the log's key could only say "cannot verify"."""
    from web.app import EVIDENCE  # web.app imports this module: looked up at call time

    service = app.get(EVIDENCE)
    if service is None or service.vkey is None:
        return None
    return service


class TrustApi:
    def __init__(
        self,
        store: Callable[[], Store],
        builder: ShipmentEvidence,
        streams: Callable[[Sequence[str]], Any] | None = None,
        limiter: RateLimiter | None = None,
    ) -> None:
        self._store = store
        self._builder = builder
        # slugs -> [StreamInfo] (public streams only), async
        self._streams = streams
        self._limiter = limiter

    def register(self, router: web.UrlDispatcher) -> None:
        router.add_get("/api/v1/public/shipments/{id}", self.public_shipment)

    async def public_shipment(self, request: web.Request) -> web.Response:
        if self._limiter is not None:
            self._limiter.check(request)
        shipment = await load_shipment(self._store(), request.match_info["id"])
        streams: list[StreamInfo] = []
        if self._streams is not None and shipment.streams:
            streams = await self._streams(shipment.streams)
        body = await self._builder.view(shipment, streams)
        # (a month of readings is megabytes: serialized off the event loop)
        data = await asyncio.to_thread(orjson.dumps, body)
        return web.Response(body=data, content_type="application/json", headers={"Cache-Control": NO_STORE})


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
