"""QR codes for a shipment's package: the trust page's short URL with the log's public
key in the fragment, ``<public base URL>/v/<id>#k=<vkey>``.

The key rides in the fragment, which browsers never send to the server: the page checks
the log's signatures against the key printed on the package, not against one the server
would hand it. The base URL is ``http.public_url`` when configured (what a customer's
phone can reach), else the scheme and host of the request (fine for a label printed from
the same address customers use).
"""

from __future__ import annotations

import asyncio
import io
from collections.abc import Callable
from urllib.parse import quote

import segno
from aiohttp import web

from telemetry.shipments import ShipmentError, check_shipment_id
from telemetry.storage import Store
from web.errors import json_error
from web.trust import EvidenceAccess

PNG_SCALE = 8
SVG_SCALE = 4
BORDER = 4  # the quiet zone ISO/IEC 18004 asks for, in modules


def trust_url(base: str, shipment_id: str, vkey: str | None) -> str:
    url = f"{base.rstrip('/')}/v/{shipment_id}"
    # '+' and '/' of the key's base64 are kept: they are valid in a fragment and the page
    # reads the fragment raw (quoting them would only make the code denser).
    return url if vkey is None else f"{url}#k={quote(vkey, safe='+/=')}"


def make_qr(url: str) -> segno.QRCode:
    # Error correction M (15 %): survives a scuffed label; upper-case-insensitive bytes mode.
    return segno.make_qr(url, error="m")


class QrApi:
    def __init__(
        self,
        store: Callable[[], Store],
        evidence: Callable[[], EvidenceAccess | None],
        public_url: str | None,
    ) -> None:
        self._store = store
        self._evidence = evidence
        self._public_url = public_url

    def register(self, router: web.UrlDispatcher) -> None:
        router.add_get("/api/v1/shipments/{id}/qr.svg", self.svg)
        router.add_get("/api/v1/shipments/{id}/qr.png", self.png)

    def base_url(self, request: web.Request) -> str:
        if self._public_url:
            return self._public_url
        return f"{request.scheme}://{request.host}"

    async def _url(self, request: web.Request) -> tuple[str, str]:
        raw = request.match_info["id"]
        try:
            sid = check_shipment_id(raw)
        except ShipmentError:
            raise json_error(web.HTTPNotFound, f"no shipment {raw!r}") from None
        if await asyncio.to_thread(self._store().get_shipment, sid) is None:
            raise json_error(web.HTTPNotFound, f"no shipment {sid!r}")
        evidence = self._evidence()
        if evidence is None:
            raise json_error(
                web.HTTPServiceUnavailable,
                "the evidence log has no signing key yet (origincast keys init): a QR without"
                " the key would lead to a page that cannot verify",
            )
        return sid, trust_url(self.base_url(request), sid, evidence.vkey)

    async def svg(self, request: web.Request) -> web.Response:
        sid, url = await self._url(request)
        out = io.BytesIO()
        make_qr(url).save(out, kind="svg", scale=SVG_SCALE, border=BORDER, xmldecl=True, title=url)
        return self._answer(out.getvalue(), "image/svg+xml", f"shipment-{sid}.svg")

    async def png(self, request: web.Request) -> web.Response:
        sid, url = await self._url(request)
        out = io.BytesIO()
        make_qr(url).save(out, kind="png", scale=PNG_SCALE, border=BORDER)
        return self._answer(out.getvalue(), "image/png", f"shipment-{sid}.png")

    @staticmethod
    def _answer(body: bytes, content_type: str, filename: str) -> web.Response:
        return web.Response(
            body=body,
            content_type=content_type,
            headers={
                "Content-Disposition": f'inline; filename="{filename}"',
                "X-Content-Type-Options": "nosniff",
                # An SVG opened on its own is a document: no scripts, nothing loaded.
                "Content-Security-Policy": "default-src 'none'; style-src 'unsafe-inline'; sandbox",
                "Cache-Control": "no-cache",
            },
        )
