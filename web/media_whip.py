"""WHIP ingest endpoints (RFC 9725): HTTP in front of stream.sources.whip.

    POST    /whip/<slug>               Bearer publish key, application/sdp offer
                                       -> 201, Location, SDP answer, Link rel="ice-server"
    DELETE  /whip/<slug>/<session>     -> 204: the publisher leaves, the stream goes offline
    OPTIONS on both                    CORS preflight, so a publish page on another origin works
    PATCH   /whip/<slug>/<session>     405: the answer carries every candidate, no trickle

Every refusal is JSON ``{"error": "message"}`` with its status, checked in this order
(least revealing first): 401 missing key, or a key that is not this stream's, where an
unknown stream is refused with the same words and the same growing delay as a wrong
key (an unlisted stream's name must not be confirmable by probing; web.auth: constant
time, growing delay, 429 lockout), 409 a stream that does not take WHIP (kind rtsp or
testpattern), 415 not ``application/sdp``, 400 not SDP, 422 SDP without H.264 or VP8
video the publisher sends, 409 a stream that already has a publisher.

OPTIONS with the stream's key (RFC 9725 4.6: ICE servers "to authenticated clients")
answers the STUN/TURN servers as Link headers, so the publish page can build its peer
connection with them before it makes the offer; a CORS preflight carries no key and
gets none (TURN credentials are for publishers only).

DELETE needs the session URL (random, 128 bits) and the publish key the session was
opened with (a Location leaked from a log must not let anyone cut a stream); it ends
the viewers' sessions too. Ending a session another way (the stream removed, its key
rotated) goes through ``end_stream``.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import logging
import secrets
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from aiohttp import web

from stream.hub import StreamBusy, StreamHub
from stream.ice import IcePolicy
from stream.registry import SLUG_RE, Stream
from stream.settings import StreamSettings
from stream.sources.whip import OfferError, WhipSource, inspect_offer
from web.auth import Authenticator, bearer_token
from web.errors import json_error

log = logging.getLogger(__name__)

SDP = "application/sdp"
_CORS = {
    # "*" is safe here: credentials are Bearer headers a page must set itself, never
    # cookies a browser would attach on its own.
    "Access-Control-Allow-Origin": "*",
    "Access-Control-Allow-Methods": "POST, DELETE, PATCH, OPTIONS",
    "Access-Control-Allow-Headers": "Authorization, Content-Type, If-Match",
    "Access-Control-Expose-Headers": "Location, Link, Retry-After, WWW-Authenticate",
    "Access-Control-Max-Age": "86400",
}


@dataclass(slots=True)
class WhipSession:
    id: str
    slug: str
    source: WhipSource
    key_digest: bytes  # SHA-256 of the key that opened it: what DELETE must present


class WhipEndpoints:
    """The WHIP routes and the publisher sessions of this process."""

    def __init__(
        self,
        hub: StreamHub,
        ice: IcePolicy,
        settings: StreamSettings,
        auth: Authenticator,
        lookup: Callable[[str], Awaitable[Stream | None]],
        verify_key: Callable[[str, str], Awaitable[bool]],
        *,
        connect_timeout_s: float = 20.0,
        media_timeout_s: float = 10.0,
    ) -> None:
        self._hub = hub
        self._ice = ice
        self._settings = settings
        self._auth = auth
        self._lookup = lookup
        self._verify_key = verify_key
        self._connect_timeout_s = connect_timeout_s
        self._media_timeout_s = media_timeout_s
        self._sessions: dict[str, WhipSession] = {}

    def register(self, app: web.Application) -> None:
        r = app.router
        r.add_post("/whip/{slug}", self.offer)
        r.add_route("OPTIONS", "/whip/{slug}", self.preflight)
        r.add_delete("/whip/{slug}/{session}", self.delete)
        r.add_route("PATCH", "/whip/{slug}/{session}", self.patch)
        r.add_route("OPTIONS", "/whip/{slug}/{session}", self.preflight)
        # CORS on every answer, errors included: a browser hides a response without it,
        # and the publish page must be able to show why it was refused.
        app.on_response_prepare.append(_add_cors)

    # -- sessions ------------------------------------------------------------------------

    def sessions(self, slug: str | None = None) -> list[WhipSession]:
        return [s for s in self._sessions.values() if slug is None or s.slug == slug]

    async def end_stream(self, slug: str, reason: str) -> None:
        """End the publisher of ``slug``, if any (the stream was removed, its key rotated)."""
        for session in self.sessions(slug):
            await session.source.close(reason)

    def _forget(self, session_id: str) -> None:
        self._sessions.pop(session_id, None)

    async def close(self) -> None:
        await asyncio.gather(
            *(s.source.close("server shutting down") for s in list(self._sessions.values())),
            return_exceptions=True,
        )
        self._sessions.clear()

    # -- handlers ------------------------------------------------------------------------

    def _links(self) -> dict[str, str]:
        links = self._ice.link_headers()
        return {"Link": ", ".join(links)} if links else {}

    async def preflight(self, request: web.Request) -> web.Response:
        # A browser's CORS preflight never carries Authorization: no Link for it. A client
        # that sends the stream's key gets the ICE servers (see the module doc).
        if "session" in request.match_info or bearer_token(request) is None:
            return web.Response(status=204, headers={"Accept-Post": SDP})
        slug = request.match_info["slug"]
        await self._auth.require_publish_key(request, lambda key: self._key_matches(slug, key))
        return web.Response(status=204, headers={"Accept-Post": SDP, **self._links()})

    async def _key_matches(self, slug: str, key: str) -> bool:
        # An unknown or impossible slug is "not this key" (the registry finds no row).
        return SLUG_RE.fullmatch(slug) is not None and await self._verify_key(slug, key)

    async def offer(self, request: web.Request) -> web.Response:
        slug = request.match_info["slug"]
        await self._auth.require_publish_key(request, lambda key: self._key_matches(slug, key))
        key = bearer_token(request)
        assert key is not None
        stream = await self._lookup(slug)
        if stream is None:  # removed since the key was checked
            raise json_error(web.HTTPUnauthorized, "wrong publish key for this stream, or no such stream")
        if stream.kind != "whip":
            raise json_error(
                web.HTTPConflict,
                f"stream {slug!r} takes its video from its {stream.kind} source, not from WHIP publishers",
            )
        if request.content_type != SDP:
            raise json_error(
                web.HTTPUnsupportedMediaType,
                f"send the SDP offer as Content-Type: {SDP} (got {request.content_type or 'none'})",
                headers={"Accept-Post": SDP},
            )
        try:
            offer_sdp = (await request.read()).decode("utf-8")
        except UnicodeDecodeError:
            raise json_error(web.HTTPBadRequest, "the offer is not UTF-8 text") from None
        try:
            summary = inspect_offer(offer_sdp)
        except OfferError as exc:
            raise _offer_error(exc) from None
        if self._hub.publisher(slug) is not None:
            # Checked before any peer connection is made; attach() below decides races.
            raise json_error(web.HTTPConflict, f"stream {slug!r} already has a publisher")

        session_id = secrets.token_urlsafe(16)
        source = WhipSource(
            slug,
            self._settings,
            summary,
            ice=self._ice,
            connect_timeout_s=self._connect_timeout_s,
            media_timeout_s=self._media_timeout_s,
            on_closed=lambda _src: self._forget(session_id),
        )
        try:
            publication = self._hub.attach(slug, source)
        except StreamBusy:
            raise json_error(web.HTTPConflict, f"stream {slug!r} already has a publisher") from None
        self._sessions[session_id] = WhipSession(session_id, slug, source, _digest(key))
        try:
            answer = await source.start(offer_sdp, publication)
        except OfferError as exc:
            raise _offer_error(exc) from None
        except BaseException:
            await source.close("negotiation failed")
            raise
        log.info(
            "whip %s: publisher session %s… from %s (video %s%s)",
            slug,
            session_id[:6],
            request.remote,
            "/".join(summary.video_codecs),
            ", audio " + "/".join(summary.audio_codecs) if summary.has_audio else "",
        )
        headers = {"Location": f"/whip/{slug}/{session_id}", "Content-Type": SDP, **self._links()}
        return web.Response(status=201, body=answer.encode(), headers=headers)

    async def delete(self, request: web.Request) -> web.Response:
        slug, session_id = request.match_info["slug"], request.match_info["session"]
        session = self._sessions.get(session_id)
        if session is None or session.slug != slug:
            raise json_error(web.HTTPNotFound, f"no WHIP session {session_id!r} on stream {slug!r}")
        # The key the session was opened with, not the stream's current one: a rotation
        # while live must not leave the publisher unable to leave cleanly.
        await self._auth.require_publish_key(
            request, lambda key: _true(hmac.compare_digest(_digest(key), session.key_digest))
        )
        await session.source.close("the publisher ended the session (DELETE)")
        # A DELETE is the broadcast ending on purpose, so its viewers' sessions end too.
        # A publisher lost to the network (ICE failure, silence) is different: viewers
        # stay and carry on if it comes back (LiveStream continues the timeline).
        if self._hub.publisher(slug) is None:
            self._hub.remove(slug)
        return web.Response(status=204)

    async def patch(self, request: web.Request) -> web.Response:
        # RFC 9725 4.3.1: a session with neither trickle ICE nor ICE restarts answers 405.
        return web.json_response(
            {"error": "trickle ICE and ICE restarts are not supported: the answer has every candidate"},
            status=405,
            headers={"Allow": "DELETE, OPTIONS"},
        )


def _digest(key: str) -> bytes:
    return hashlib.sha256(key.encode("utf-8")).digest()


async def _true(value: bool) -> bool:
    return value


def _offer_error(exc: OfferError) -> web.HTTPException:
    kinds: dict[int, type[web.HTTPException]] = {
        400: web.HTTPBadRequest,
        422: web.HTTPUnprocessableEntity,
    }
    return json_error(kinds.get(exc.status, web.HTTPBadRequest), str(exc))


async def _add_cors(request: web.Request, response: web.StreamResponse) -> None:
    if request.path.startswith("/whip/"):
        response.headers.update(_CORS)
