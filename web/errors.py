"""JSON in and out of every HTTP API of ours: answers through ``json_response``, and the one
error shape, ``{"error": "<what is wrong>"}``."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import orjson
from aiohttp import web


def json_response(
    body: object, *, status: int = 200, headers: dict[str, str] | None = None
) -> web.Response:
    return web.Response(
        body=orjson.dumps(body), status=status, content_type="application/json", headers=headers
    )


def json_error(
    kind: type[web.HTTPException], message: str, *, headers: dict[str, str] | None = None
) -> web.HTTPException:
    """An aiohttp HTTP error (raise it) whose JSON body says what is wrong."""
    return kind(
        text=orjson.dumps({"error": message}).decode(), content_type="application/json", headers=headers
    )


Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@web.middleware
async def refuse_control_characters(request: web.Request, handler: Handler) -> web.StreamResponse:
    """No name, id or filter of ours holds a control character, and PostgreSQL cannot
    store NUL in text: refusing them here, once, keeps every query parameter and path
    segment from reaching a handler (or the database) with one."""
    raw = request.rel_url.path + request.rel_url.query_string
    if any(ord(c) < 32 or ord(c) == 127 for c in raw):
        raise json_error(web.HTTPBadRequest, "control characters are not allowed in the URL")
    return await handler(request)


def _has_nul(value: object) -> bool:
    if isinstance(value, str):
        return "\x00" in value
    if isinstance(value, dict):
        return any(_has_nul(k) or _has_nul(v) for k, v in value.items())
    if isinstance(value, list):
        return any(_has_nul(v) for v in value)
    return False


@web.middleware
async def refuse_nul_in_json(request: web.Request, handler: Handler) -> web.StreamResponse:
    """PostgreSQL cannot store NUL in text, and no field of ours means one: a JSON body
    with a NUL anywhere is refused here, once, instead of failing deep in a query.
    (Bodies are at most client_max_size, 1 MiB; the handler reads the cached bytes.)"""
    if request.method in ("POST", "PUT", "PATCH") and request.content_type == "application/json":
        raw = await request.read()
        if b"\\u0000" in raw:  # the only way JSON carries a NUL
            try:
                parsed = orjson.loads(raw)
            except orjson.JSONDecodeError:
                parsed = None  # the handler says what is wrong with it
            if _has_nul(parsed):
                raise json_error(web.HTTPBadRequest, "text must not contain NUL characters (\\u0000)")
    return await handler(request)
