"""JSON API for streams: the registry's settings joined with the hub's live state.

    GET    /api/v1/streams                    public streams (+ unlisted with the admin token)
    GET    /api/v1/streams/{slug}             one stream, public or unlisted
    POST   /api/v1/streams                    admin: create; the answer has the publish key, once
    PATCH  /api/v1/streams/{slug}             admin: change title, site, kind, rtsp_url, visibility
    DELETE /api/v1/streams/{slug}             admin: remove; its publisher and viewers are cut off
    POST   /api/v1/streams/{slug}/rotate-key  admin: a new publish key; the live publisher is cut off

Writes need ``Authorization: Bearer <ORIGINCAST_ADMIN_TOKEN>`` (web.auth) until users and
roles arrive. A camera's ``rtsp_url`` is never returned in full: admins get it with its
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
)
from web.auth import Authenticator, json_error

log = logging.getLogger(__name__)

_CREATE_FIELDS = frozenset({"slug", "title", "site", "kind", "rtsp_url", "visibility"})
_PATCH_FIELDS = frozenset({"title", "site", "kind", "rtsp_url", "visibility"})


class StreamsApi:
    def __init__(
        self,
        registry: StreamRepository,
        hub: StreamHub,
        auth: Authenticator,
        end_publisher: Callable[[str, str], Awaitable[None]],
    ) -> None:
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

    # -- reads ---------------------------------------------------------------------------

    async def list_streams(self, request: web.Request) -> web.Response:
        # Unlisted streams only for an admin: a public listing would defeat "unlisted".
        admin = "Authorization" in request.headers
        if admin:
            await self._auth.require_admin(request)
        streams = await asyncio.to_thread(self._registry.list_streams, include_unlisted=admin)
        return _json({"streams": [self._describe(s, admin=admin) for s in streams]})

    async def get(self, request: web.Request) -> web.Response:
        slug = request.match_info["slug"]
        admin = "Authorization" in request.headers
        if admin:
            await self._auth.require_admin(request)
        stream = await asyncio.to_thread(self._registry.get, slug)
        if stream is None:
            raise json_error(web.HTTPNotFound, f"no stream named {slug!r}")
        return _json(self._describe(stream, admin=admin))

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
        await self._auth.require_admin(request)
        body = await _read_object(request, _CREATE_FIELDS)
        for name in ("slug", "title"):
            if name not in body:
                raise json_error(web.HTTPBadRequest, f"missing field {name!r}")
        spec = StreamSpec(
            slug=body["slug"],
            title=body["title"],
            site=body.get("site"),
            kind=body.get("kind", "whip"),
            visibility=body.get("visibility", "public"),
            rtsp_url=body.get("rtsp_url"),
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
        return _json(out, status=201, headers={"Location": f"/api/v1/streams/{stream.slug}"})

    async def update(self, request: web.Request) -> web.Response:
        await self._auth.require_admin(request)
        slug = request.match_info["slug"]
        body = await _read_object(request, _PATCH_FIELDS)
        # null clears the optional fields; absent leaves them as they are.
        changes = StreamChanges(
            title=body.get("title"),
            site=body.get("site"),
            clear_site="site" in body and body["site"] is None,
            kind=body.get("kind"),
            visibility=body.get("visibility"),
            rtsp_url=body.get("rtsp_url"),
            clear_rtsp_url="rtsp_url" in body and body["rtsp_url"] is None,
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
        return _json(self._describe(stream, admin=True))

    async def delete(self, request: web.Request) -> web.Response:
        await self._auth.require_admin(request)
        slug = request.match_info["slug"]
        if not await asyncio.to_thread(self._registry.delete, slug):
            raise json_error(web.HTTPNotFound, f"no stream named {slug!r}")
        await self._end_publisher(slug, "the stream was removed")
        self._hub.remove(slug)  # viewers' feeds end, and the hub forgets the stream
        log.info("stream %s removed", slug)
        return web.Response(status=204)

    async def rotate_key(self, request: web.Request) -> web.Response:
        await self._auth.require_admin(request)
        slug = request.match_info["slug"]
        try:
            key = await asyncio.to_thread(self._registry.rotate_key, slug)
        except StreamNotFound as exc:
            raise json_error(web.HTTPNotFound, str(exc)) from None
        # A rotation is how a leaked key is revoked: whoever publishes with it goes too.
        await self._end_publisher(slug, "the publish key was rotated")
        log.info("stream %s: publish key rotated", slug)
        return _json({"slug": slug, "publish_key": key})


def _json(body: object, *, status: int = 200, headers: dict[str, str] | None = None) -> web.Response:
    return web.Response(
        body=orjson.dumps(body), status=status, content_type="application/json", headers=headers
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
