"""Logging in and out of the pages, and the login page.

    POST   /api/v1/session   {"name", "password"} -> sets the session cookie;
                             {"user", "display_name", "role", "via", "csrf_token", "expires_at"}
    GET    /api/v1/session   the current principal (and the session's CSRF token); 401 if none
    DELETE /api/v1/session   log out (the session ends on the server, the cookie is cleared)
    GET    /login            the login page (zh-CN / en); ``?next=/path`` is where it goes after

A page keeps the ``csrf_token`` in memory and sends it as ``X-CSRF-Token`` with every
write (web.auth). Logging in always makes a new session (an id someone planted in the
browser before the login never becomes a logged-in one) and ends the one the browser had.
"""

from __future__ import annotations

from typing import Any

import orjson
from aiohttp import web

from web.auth import SESSION_COOKIE, Authenticator, same_origin
from web.errors import json_error, json_response
from web.i18n import LANGUAGE_COOKIE, choose_language, load_catalogs
from web.pages import TEMPLATE_DIR, PageRenderer

DEFAULT_NEXT = "/console"
# Answers hold a CSRF token: no cache may keep them.
_NO_STORE = {"Cache-Control": "no-store"}
_CSP = "; ".join(
    (
        "default-src 'self'",
        "script-src 'self'",
        "style-src 'self'",
        "img-src 'self' data:",
        "connect-src 'self'",
        "object-src 'none'",
        "base-uri 'none'",
        "form-action 'self'",
        # A login form in someone else's frame is how passwords get clicked away.
        "frame-ancestors 'none'",
    )
)


def safe_next(value: str | None) -> str:
    """``next`` if it is a path on this site, else the console: a login link must not be
    able to send someone on to another site (an open redirect)."""
    if not value or not value.startswith("/") or value.startswith(("//", "/\\")):
        return DEFAULT_NEXT
    if any(ord(c) < 33 or c == "\\" for c in value) or len(value) > 2000:
        return DEFAULT_NEXT
    return value




class SessionApi:
    def __init__(self, auth: Authenticator) -> None:
        self._auth = auth
        self._renderer = PageRenderer(
            load_catalogs(), {"login": (TEMPLATE_DIR / "login.html").read_text(encoding="utf-8")}
        )

    def register(self, router: web.UrlDispatcher) -> None:
        router.add_post("/api/v1/session", self.login)
        router.add_get("/api/v1/session", self.current)
        router.add_delete("/api/v1/session", self.logout)
        router.add_get("/login", self.page)

    async def login(self, request: web.Request) -> web.Response:
        # A login from another site's page (login CSRF: the victim ends up in the
        # attacker's account) is refused when the browser names that site.
        origin = request.headers.get("Origin")
        if origin is not None and not same_origin(origin, request.host):
            raise json_error(web.HTTPForbidden, "log in from this site's own page")
        body = await _read_credentials(request)
        login = await self._auth.login(request, body["name"], body["password"])
        old = request.cookies.get(SESSION_COOKIE)
        if old and self._auth.accounts is not None:
            await self._auth.accounts.logout(old)
        active = await self._auth.accounts.session(login.session_id) if self._auth.accounts else None
        response = json_response(
            {
                "user": login.user.name,
                "display_name": login.user.display_name,
                "role": login.user.role,
                "via": "session",
                "csrf_token": login.csrf_token,
                "expires_at": active.expires_at.isoformat().replace("+00:00", "Z") if active else None,
            },
            headers=_NO_STORE,
        )
        self._auth.set_session_cookie(request, response, login.session_id)
        return response

    async def current(self, request: web.Request) -> web.Response:
        principal = await self._auth.require(request)
        body: dict[str, Any] = {
            **principal.to_dict(),
            "display_name": None,
            "csrf_token": principal.csrf_token,
        }
        if principal.via != "admin-token" and self._auth.accounts is not None:
            user = await self._auth.accounts.get_user(principal.name)
            body["display_name"] = user.display_name if user else None
        return json_response(body, headers=_NO_STORE)

    async def logout(self, request: web.Request) -> web.Response:
        session_id = request.cookies.get(SESSION_COOKIE)
        principal = await self._auth.identify(request)
        if principal is not None and principal.via == "session":
            self._auth.check_csrf(request, principal)
        if session_id and self._auth.accounts is not None:
            await self._auth.accounts.logout(session_id)
        response = web.Response(status=204, headers={"Cache-Control": "no-store"})
        self._auth.clear_session_cookie(request, response)
        return response

    async def page(self, request: web.Request) -> web.Response:
        lang = choose_language(
            request.query.get("lang"),
            request.cookies.get(LANGUAGE_COOKIE),
            request.headers.get("Accept-Language"),
        )
        text = self._renderer.render("login", "", lang, extra={"next": safe_next(request.query.get("next"))})
        return web.Response(
            text=text,
            content_type="text/html",
            charset="utf-8",
            headers={
                "Content-Security-Policy": _CSP,
                "Referrer-Policy": "same-origin",
                "X-Content-Type-Options": "nosniff",
                "Vary": "Accept-Language, Cookie",
                "Cache-Control": "no-cache",
            },
        )


async def _read_credentials(request: web.Request) -> dict[str, str]:
    # JSON only: a cross-site HTML form cannot send it without the browser asking first.
    if request.content_type != "application/json":
        raise json_error(
            web.HTTPUnsupportedMediaType,
            f"send JSON as Content-Type: application/json (got {request.content_type or 'none'})",
        )
    try:
        body = orjson.loads(await request.read())
    except orjson.JSONDecodeError:
        raise json_error(web.HTTPBadRequest, "the body is not valid JSON") from None
    if not isinstance(body, dict):
        raise json_error(web.HTTPBadRequest, "the body must be a JSON object")
    unknown = sorted(set(body) - {"name", "password"})
    if unknown:
        raise json_error(
            web.HTTPBadRequest, f"unknown field(s): {', '.join(unknown)}; allowed: name, password"
        )
    for key in ("name", "password"):
        if not isinstance(body.get(key), str) or not body[key]:
            raise json_error(web.HTTPBadRequest, f"{key} must be non-empty text")
    if len(body["name"]) > 200 or len(body["password"]) > 1024:
        raise json_error(web.HTTPBadRequest, "name or password too long")
    return {"name": body["name"], "password": body["password"]}


__all__ = ["SessionApi", "safe_next"]
