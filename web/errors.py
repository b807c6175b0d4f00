"""The one error shape every HTTP API of ours answers with: ``{"error": "<what is wrong>"}``."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import orjson
from aiohttp import web


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
