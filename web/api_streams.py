"""JSON API for streams: the registry's settings joined with the hub's live state.

    GET    /api/v1/streams                    public streams (+ unlisted ones: all for staff, a
                                              producer's own for them)
    GET    /api/v1/streams/{slug}             one stream (unlisted: staff, its owner or ?share=<token>)
    POST   /api/v1/streams                    create; the answer has the publish key, once
    PATCH  /api/v1/streams/{slug}             change title, site, kind, rtsp_url, visibility (owner: admin)
    DELETE /api/v1/streams/{slug}             remove; its publisher and viewers are cut off
    POST   /api/v1/streams/{slug}/rotate-key  a new publish key; the live publisher is cut off,
                                              and every share link of the stream stops working
    GET    /api/v1/streams/{slug}/links       the sensors its page shows: {"sites", "devices", "default"}
    PUT    /api/v1/streams/{slug}/links       as PATCH: {"sites": [...], "devices": [...]} (both empty:
                                              back to the default, the stream's own site)
    POST   /api/v1/streams/{slug}/share       as PATCH: {"ttl_s": n} -> a signed, expiring watch link
                                              (web.share), what an unlisted stream needs

Writes are for admins and producers (web.permissions); a producer's new stream is theirs
(``owner``), and a producer may change, rotate, link, share or remove only their own.
An unlisted stream is answered as unknown (404) to whoever may not see it. A camera's
``rtsp_url`` is never returned in full: an admin and the stream's owner get it with its
credentials masked, everyone else not at all. Errors are ``{"error": "message"}``.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Any

import orjson
from aiohttp import web

from stream.hub import StreamHub
from stream.registry import (
    InvalidStream,
    Stream,
    StreamChanges,
    StreamExists,
    StreamNotFound,
    StreamRepository,
    StreamSpec,
    check_links,
    effective_links,
)
from web.auth import Authenticator, Principal
from web.errors import json_error, json_response
from web.permissions import STREAM_OWNERS
from web.share import SHARE_TTL_DEFAULT_S, SHARE_TTL_MAX_S, SHARE_TTL_MIN_S, ShareLinks

log = logging.getLogger(__name__)

_CREATE_FIELDS = frozenset({"slug", "title", "site", "kind", "rtsp_url", "visibility", "owner"})
_PATCH_FIELDS = frozenset({"title", "site", "kind", "rtsp_url", "visibility", "owner"})


def _may_see_unlisted(p: Principal | None, s: Stream) -> bool:
    if p is None:
        return False
    return p.role in ("admin", "logistics") or (p.role == "producer" and s.owner == p.name)


def _may_manage(p: Principal | None, s: Stream) -> bool:
    return p is not None and (p.role == "admin" or (p.role == "producer" and s.owner == p.name))


class StreamsApi:
    def __init__(
        self,
        registry: StreamRepository,
        hub: StreamHub,
        auth: Authenticator,
        end_publisher: Callable[[str, str], Awaitable[None]],
        share: ShareLinks | None = None,
    ) -> None:
        self._share = share
        self._registry = registry
        self._hub = hub
        self._auth = auth
        # Ends a stream's WHIP session (slug, reason): after a key rotation or removal the
        # old key's publisher must not stay on.
        self._end_publisher = end_publisher

    def register(self, router: web.UrlDispatcher) -> None:
        router.add_get("/api/v1/streams", self.list_streams)
        router.add_post("/api/v1/streams", self.create)
        router.add_get("/api/v1/streams/{slug}", self.get)
        router.add_patch("/api/v1/streams/{slug}", self.update)
        router.add_delete("/api/v1/streams/{slug}", self.delete)
        router.add_post("/api/v1/streams/{slug}/rotate-key", self.rotate_key)
        router.add_get("/api/v1/streams/{slug}/links", self.get_links)
        router.add_put("/api/v1/streams/{slug}/links", self.put_links)
        router.add_post("/api/v1/streams/{slug}/share", self.share)

    # -- reads ---------------------------------------------------------------------------

    async def list_streams(self, request: web.Request) -> web.Response:
        # Unlisted streams only for whoever may see them: a public listing would defeat
        # "unlisted".
        p = await self._auth.identify(request)
        streams = await asyncio.to_thread(self._registry.list_streams, include_unlisted=p is not None)
        shown = [s for s in streams if s.visibility == "public" or _may_see_unlisted(p, s)]
        return json_response({"streams": [self._describe(s, admin=_may_manage(p, s)) for s in shown]})

    async def _readable(self, request: web.Request, slug: str) -> tuple[Principal | None, Stream]:
        """The stream if this request may read it; 404 as for an unknown one otherwise."""
        p = await self._auth.identify(request)
        stream = await asyncio.to_thread(self._registry.get, slug)
        if stream is not None and stream.visibility == "unlisted" and not _may_see_unlisted(p, stream):
            share = request.query.get("share")
            if self._share is None or not (await self._share.access(slug, share)).allowed:
                stream = None
        if stream is None:
            raise json_error(web.HTTPNotFound, f"no stream named {slug!r}")
        return p, stream

    async def _owned(self, request: web.Request, slug: str) -> tuple[Principal, Stream]:
        """The stream if this principal may change it: an admin any, a producer their own."""
        p = await self._auth.require(request, *STREAM_OWNERS)
        stream = await asyncio.to_thread(self._registry.get, slug)
        if stream is None or (stream.visibility == "unlisted" and not _may_see_unlisted(p, stream)):
            raise json_error(web.HTTPNotFound, f"no stream named {slug!r}")
        if not _may_manage(p, stream):
            message = f"stream {slug!r} is not yours: a producer changes only their own"
            raise json_error(web.HTTPForbidden, message)
        return p, stream

    async def get(self, request: web.Request) -> web.Response:
        p, stream = await self._readable(request, request.match_info["slug"])
        return json_response(self._describe(stream, admin=_may_manage(p, stream)))

    def _describe(self, s: Stream, *, admin: bool) -> dict[str, Any]:
        body: dict[str, Any] = {
            "slug": s.slug,
            "title": s.title,
            "site": s.site,
            "kind": s.kind,
            "visibility": s.visibility,
            "owner": s.owner,
            "created_at": s.created_at.isoformat().replace("+00:00", "Z"),
            "urls": {"watch": f"/watch/{s.slug}", "whep": f"/whep/{s.slug}"}
            | ({"whip": f"/whip/{s.slug}"} if s.kind == "whip" else {}),
            "state": self._state(s.slug),
        }
        if admin and s.rtsp_url:
            body["rtsp_url"] = s.masked_rtsp_url
        return body

    def _state(self, slug: str) -> dict[str, Any]:
        live = self._hub.get(slug)
        if live is None:
            return {
                "status": "offline",
                "video_codec": None,
                "audio_codec": None,
                "width": None,
                "height": None,
                "fps": 0.0,
                "bitrate_bps": 0,
                "viewers": 0,
                "uptime_s": 0.0,
            }
        st = live.state()
        return {
            "status": st.status,
            "video_codec": st.video_codec,
            "audio_codec": st.audio_codec,
            "width": st.width,
            "height": st.height,
            "fps": st.fps,
            "bitrate_bps": st.bitrate_bps,
            "viewers": st.viewers,
            "uptime_s": st.uptime_s,
        }

    # -- writes --------------------------------------------------------------------------

    async def create(self, request: web.Request) -> web.Response:
        p = await self._auth.require(request, *STREAM_OWNERS)
        body = await _read_object(request, _CREATE_FIELDS)
        for name in ("slug", "title"):
            if name not in body:
                raise json_error(web.HTTPBadRequest, f"missing field {name!r}")
        own = p.name if p.via != "admin-token" else None
        if p.role != "admin" and body.get("owner", own) != own:
            raise json_error(web.HTTPForbidden, "a producer's streams are their own: owner must be you")
        owner = body.get("owner", own) if p.role == "admin" else own
        spec = StreamSpec(
            slug=body["slug"],
            title=body["title"],
            site=body.get("site"),
            kind=body.get("kind", "whip"),
            visibility=body.get("visibility", "public"),
            rtsp_url=body.get("rtsp_url"),
            owner=owner,
        )
        try:
            stream, key = await asyncio.to_thread(self._registry.create, spec)
        except InvalidStream as exc:
            raise json_error(web.HTTPUnprocessableEntity, str(exc)) from None
        except StreamExists as exc:
            raise json_error(web.HTTPConflict, str(exc)) from None
        log.info("stream %s created (%s, %s)", stream.slug, stream.kind, stream.visibility)
        out = self._describe(stream, admin=True)
        out["publish_key"] = key  # shown once: only its hash is stored
        return json_response(out, status=201, headers={"Location": f"/api/v1/streams/{stream.slug}"})

    async def update(self, request: web.Request) -> web.Response:
        slug = request.match_info["slug"]
        p, _stream = await self._owned(request, slug)
        body = await _read_object(request, _PATCH_FIELDS)
        if "owner" in body and p.role != "admin":
            raise json_error(web.HTTPForbidden, "only an admin may give a stream to another owner")
        # null clears the optional fields; absent leaves them as they are.
        changes = StreamChanges(
            title=body.get("title"),
            site=body.get("site"),
            clear_site="site" in body and body["site"] is None,
            kind=body.get("kind"),
            visibility=body.get("visibility"),
            rtsp_url=body.get("rtsp_url"),
            clear_rtsp_url="rtsp_url" in body and body["rtsp_url"] is None,
            owner=body.get("owner"),
            clear_owner="owner" in body and body["owner"] is None,
        )
        if "title" in body and body["title"] is None:
            raise json_error(web.HTTPUnprocessableEntity, "title cannot be null")
        try:
            stream = await asyncio.to_thread(self._registry.update, slug, changes)
        except StreamNotFound as exc:
            raise json_error(web.HTTPNotFound, str(exc)) from None
        except InvalidStream as exc:
            raise json_error(web.HTTPUnprocessableEntity, str(exc)) from None
        if stream.kind != "whip":
            await self._end_publisher(slug, "the stream no longer takes WHIP publishers")
        return json_response(self._describe(stream, admin=True))

    async def delete(self, request: web.Request) -> web.Response:
        slug = request.match_info["slug"]
        await self._owned(request, slug)
        if not await asyncio.to_thread(self._registry.delete, slug):
            raise json_error(web.HTTPNotFound, f"no stream named {slug!r}")
        await self._end_publisher(slug, "the stream was removed")
        self._hub.remove(slug)  # viewers' feeds end, and the hub forgets the stream
        log.info("stream %s removed", slug)
        return web.Response(status=204)

    async def rotate_key(self, request: web.Request) -> web.Response:
        slug = request.match_info["slug"]
        await self._owned(request, slug)
        try:
            key = await asyncio.to_thread(self._registry.rotate_key, slug)
        except StreamNotFound as exc:
            raise json_error(web.HTTPNotFound, str(exc)) from None
        # A rotation is how a leaked key is revoked: whoever publishes with it goes too.
        await self._end_publisher(slug, "the publish key was rotated")
        log.info("stream %s: publish key rotated", slug)
        return json_response({"slug": slug, "publish_key": key})


    # -- links and share links --------------------------------------------------------------

    async def _links_body(self, slug: str) -> dict[str, Any]:
        stream = await asyncio.to_thread(self._registry.get, slug)
        stored = await asyncio.to_thread(self._registry.get_links, slug)
        if stream is None or stored is None:
            raise json_error(web.HTTPNotFound, f"no stream named {slug!r}")
        shown = effective_links(stream, stored)
        return {
            "slug": slug,
            "sites": list(shown.sites),
            "devices": list(shown.devices),
            "default": stored.empty,
        }

    async def get_links(self, request: web.Request) -> web.Response:
        await self._readable(request, request.match_info["slug"])
        return json_response(await self._links_body(request.match_info["slug"]))

    async def put_links(self, request: web.Request) -> web.Response:
        slug = request.match_info["slug"]
        # Staff only (web.permissions): a stream owner linking any device would publish
        # readings that only staff may see.
        await self._auth.require(request, "admin", "logistics")
        body = await _read_object(request, frozenset({"sites", "devices"}))
        try:
            links = check_links(body.get("sites", []), body.get("devices", []))
            await asyncio.to_thread(self._registry.set_links, slug, links)
        except StreamNotFound as exc:
            raise json_error(web.HTTPNotFound, str(exc)) from None
        except InvalidStream as exc:
            raise json_error(web.HTTPUnprocessableEntity, str(exc)) from None
        log.info("stream %s: links set (%d sites, %d devices)", slug, len(links.sites), len(links.devices))
        return json_response(await self._links_body(slug))

    async def share(self, request: web.Request) -> web.Response:
        slug = request.match_info["slug"]
        await self._owned(request, slug)  # the same check as update (PATCH)
        body = await _read_object(request, frozenset({"ttl_s"}))
        ttl = body.get("ttl_s", SHARE_TTL_DEFAULT_S)
        if isinstance(ttl, bool) or not isinstance(ttl, int) or not SHARE_TTL_MIN_S <= ttl <= SHARE_TTL_MAX_S:
            raise json_error(
                web.HTTPUnprocessableEntity,
                f"ttl_s must be a whole number of seconds from {SHARE_TTL_MIN_S} to {SHARE_TTL_MAX_S}",
            )
        if self._share is None:
            raise json_error(web.HTTPServiceUnavailable, "share links are not configured on this server")
        try:
            token, expires = await self._share.issue(slug, ttl)
        except StreamNotFound:
            raise json_error(web.HTTPNotFound, f"no stream named {slug!r}") from None
        log.info("stream %s: share link issued for %d s", slug, ttl)
        return json_response(
            {
                "url": f"/watch/{slug}?share={token}",
                "expires_at": expires.isoformat().replace("+00:00", "Z"),
            },
            status=201,
        )




async def _read_object(request: web.Request, allowed: frozenset[str]) -> dict[str, Any]:
    if request.content_type != "application/json":
        raise json_error(
            web.HTTPUnsupportedMediaType,
            f"send JSON as Content-Type: application/json (got {request.content_type or 'none'})",
        )
    try:
        body = orjson.loads(await request.read())
    except orjson.JSONDecodeError as exc:
        raise json_error(web.HTTPBadRequest, f"the body is not valid JSON: {exc}") from None
    if not isinstance(body, dict):
        raise json_error(web.HTTPBadRequest, "the body must be a JSON object")
    unknown = sorted(set(body) - allowed)
    if unknown:
        # Strict: a typo ("visiblity") would otherwise be ignored without a word.
        message = f"unknown field(s): {', '.join(unknown)}; allowed: {', '.join(sorted(allowed))}"
        raise json_error(web.HTTPBadRequest, message)
    return body
