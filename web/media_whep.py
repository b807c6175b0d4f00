"""WHEP endpoints (the playback twin of WHIP, RFC 9725): HTTP in front of stream.whep.

    POST    /whep/<slug>               application/sdp offer -> 201, Location, SDP answer
    DELETE  /whep/<slug>/<session>     -> 204 (404 for an unknown session)
    OPTIONS on both                    CORS preflight, so a player on another origin works
    PATCH   /whep/<slug>/<session>     405: the answer carries every candidate, no trickle

Errors are JSON ``{"error": "message"}`` like every other endpoint of ours, with the
status that says what to do: 404 unknown stream, 409 + Retry-After while it is offline,
415 not SDP, 400 an offer we cannot use. No login: a public stream is watchable by
anyone; an unlisted one needs its share token (``?share=<token>``, web.share), and
without a valid one it is answered exactly like an unknown stream. The session URL
(random, 144 bits) is the only key to ending a session.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable

from aiohttp import web

from stream.whep import BadOffer, StreamOffline, UnknownStream, WhepService
from web.share import Access

log = logging.getLogger(__name__)

SDP = "application/sdp"
_CORS = {
    "Access-Control-Allow-Origin": "*",
    "Access-Control-Allow-Methods": "POST, DELETE, PATCH, OPTIONS",
    "Access-Control-Allow-Headers": "Content-Type, Authorization, If-Match",
    "Access-Control-Expose-Headers": "Location, Link, Retry-After",
    "Access-Control-Max-Age": "86400",
}


def _error(status: int, message: str, **headers: str) -> web.Response:
    return web.json_response({"error": message}, status=status, headers={**_CORS, **headers})


class WhepEndpoints:
    def __init__(
        self, service: WhepService, access: Callable[[str, str | None], Awaitable[Access]] | None = None
    ) -> None:
        self._service = service
        # (slug, share token) -> may this viewer watch it; None: every stream is public.
        self._access = access

    def register(self, router: web.UrlDispatcher) -> None:
        router.add_post("/whep/{slug}", self.offer)
        router.add_route("OPTIONS", "/whep/{slug}", self.preflight)
        router.add_delete("/whep/{slug}/{session}", self.delete)
        router.add_route("PATCH", "/whep/{slug}/{session}", self.patch)
        router.add_route("OPTIONS", "/whep/{slug}/{session}", self.preflight)

    def _links(self) -> dict[str, str]:
        links = self._service.ice.link_headers()
        return {"Link": ", ".join(links)} if links else {}

    async def preflight(self, request: web.Request) -> web.Response:
        return web.Response(status=204, headers={**_CORS, "Accept-Post": SDP, **self._links()})

    async def offer(self, request: web.Request) -> web.Response:
        slug = request.match_info["slug"]
        if request.content_type != SDP:
            return _error(
                415,
                f"send the SDP offer as Content-Type: {SDP} (got {request.content_type or 'none'})",
                **{"Accept-Post": SDP},
            )
        try:
            offer = await request.text()
        except UnicodeDecodeError:
            return _error(400, "the offer is not UTF-8 text")
        if self._access is not None and not (await self._access(slug, request.query.get("share"))).allowed:
            # The same answer as for a slug that does not exist: an unlisted stream's name
            # is not confirmed to someone without its link.
            return _error(404, f"no stream named {slug!r}")
        try:
            session = await self._service.open(slug, offer)
        except UnknownStream as exc:
            return _error(404, str(exc))
        except BadOffer as exc:
            return _error(400, str(exc))
        except StreamOffline as exc:
            return _error(409, str(exc), **{"Retry-After": str(exc.retry_after_s)})
        location = f"/whep/{slug}/{session.id}"
        log.info("whep %s: viewer session %s", slug, session.id[:6])
        headers = {**_CORS, "Location": location, "Content-Type": SDP, **self._links()}
        return web.Response(status=201, body=session.answer_sdp.encode(), headers=headers)

    async def delete(self, request: web.Request) -> web.Response:
        slug, session_id = request.match_info["slug"], request.match_info["session"]
        if not await self._service.end(slug, session_id):
            return _error(404, f"no WHEP session {session_id!r} on stream {slug!r}")
        return web.Response(status=204, headers=_CORS)

    async def patch(self, request: web.Request) -> web.Response:
        return _error(
            405,
            "trickle ICE and ICE restarts are not supported: the answer has every candidate",
            Allow="DELETE, OPTIONS",
        )


def add_whep_routes(
    app: web.Application,
    service: WhepService,
    access: Callable[[str, str | None], Awaitable[Access]] | None = None,
) -> None:
    WhepEndpoints(service, access).register(app.router)
