"""JSON API for users and API tokens (roles: web.permissions).

    GET    /api/v1/users          admin: every user
    POST   /api/v1/users          admin: {"name", "role", "password", "display_name"?} -> 201
    PATCH  /api/v1/users/{name}   admin: {"display_name", "role", "disabled", "password"} of anyone;
                                  anyone: their own {"display_name"} and {"password", "old_password"}
    DELETE /api/v1/users/{name}   admin: remove (their sessions and tokens end with them)
    GET    /api/v1/tokens         their own tokens (an admin: everyone's), never the secrets
    POST   /api/v1/tokens         {"name"?} (an admin may add "owner") -> 201 with "token", shown once
    DELETE /api/v1/tokens/{id}    revoke one's own token (an admin: anyone's)

A new password ends every other session of the user (whoever else held one may be why
it changed); disabling a user ends their sessions and stops their tokens at once. The
last enabled admin cannot be removed, disabled or demoted (409). Errors are
``{"error": "message"}``.
"""

from __future__ import annotations

import asyncio
from typing import Any

import orjson
from aiohttp import web

from web.accounts import (
    AccountError,
    AccountService,
    InvalidAccount,
    LastAdmin,
    UserChanges,
    UserExists,
    UserNotFound,
    WrongPassword,
)
from web.auth import SESSION_COOKIE, Authenticator, Principal
from web.errors import json_error, json_response
from web.permissions import ADMIN, ANY_USER

_CREATE = frozenset({"name", "role", "password", "display_name"})
_PATCH = frozenset({"display_name", "role", "disabled", "password", "old_password"})
_SELF_PATCH = frozenset({"display_name", "password", "old_password"})




async def _read_object(request: web.Request, allowed: frozenset[str]) -> dict[str, Any]:
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
    unknown = sorted(set(body) - allowed)
    if unknown:
        message = f"unknown field(s): {', '.join(unknown)}; allowed: {', '.join(sorted(allowed))}"
        raise json_error(web.HTTPBadRequest, message)
    return body


def _account_error(exc: AccountError) -> web.HTTPException:
    if isinstance(exc, UserNotFound):
        return json_error(web.HTTPNotFound, str(exc))
    if isinstance(exc, UserExists | LastAdmin):
        return json_error(web.HTTPConflict, str(exc))
    if isinstance(exc, WrongPassword):
        return json_error(web.HTTPForbidden, str(exc))
    return json_error(web.HTTPUnprocessableEntity, str(exc))


class UsersApi:
    def __init__(self, auth: Authenticator, accounts: AccountService) -> None:
        self._auth = auth
        self._accounts = accounts

    def register(self, router: web.UrlDispatcher) -> None:
        router.add_get("/api/v1/users", self.list_users)
        router.add_post("/api/v1/users", self.create_user)
        router.add_patch("/api/v1/users/{name}", self.update_user)
        router.add_delete("/api/v1/users/{name}", self.delete_user)
        router.add_get("/api/v1/tokens", self.list_tokens)
        router.add_post("/api/v1/tokens", self.create_token)
        router.add_delete("/api/v1/tokens/{id}", self.revoke_token)

    # -- users ----------------------------------------------------------------------------

    async def list_users(self, request: web.Request) -> web.Response:
        await self._auth.require(request, *ADMIN)
        return json_response({"users": [u.to_dict() for u in await self._accounts.list_users()]})

    async def create_user(self, request: web.Request) -> web.Response:
        await self._auth.require(request, *ADMIN)
        body = await _read_object(request, _CREATE)
        for key in ("name", "role", "password"):
            if key not in body:
                raise json_error(web.HTTPBadRequest, f"missing field {key!r}")
        try:
            user = await self._accounts.create_user(
                body["name"], body["role"], body["password"], body.get("display_name")
            )
        except AccountError as exc:
            raise _account_error(exc) from None
        return json_response(user.to_dict(), status=201, headers={"Location": f"/api/v1/users/{user.name}"})

    async def update_user(self, request: web.Request) -> web.Response:
        principal = await self._auth.require(request, *ANY_USER)
        name = request.match_info["name"]
        is_self = principal.via != "admin-token" and principal.name == name
        if principal.role != "admin" and not is_self:
            raise json_error(web.HTTPForbidden, "only an admin may change another user")
        body = await _read_object(request, _PATCH)
        if principal.role != "admin" and set(body) - _SELF_PATCH:
            raise json_error(web.HTTPForbidden, "only an admin may change a role or disable a user")
        try:
            changes = _changes(body)  # checked first: a bad field must not follow a new password
            if "password" in body:
                await self._set_password(request, principal, name, body, is_self=is_self)
            if changes != UserChanges():
                user = await self._accounts.update_user(name, changes)
            else:
                found = await self._accounts.get_user(name)
                if found is None:
                    raise UserNotFound(f"no user {name!r}")
                user = found
        except AccountError as exc:
            raise _account_error(exc) from None
        return json_response(user.to_dict())

    async def _set_password(
        self, request: web.Request, principal: Principal, name: str, body: dict[str, Any], *, is_self: bool
    ) -> None:
        old = body.get("old_password")
        if is_self:
            # A session left open on a shared machine must not be enough to take the
            # account over: the current password proves it is its owner.
            if not isinstance(old, str) or not old:
                raise InvalidAccount("changing your own password needs old_password")
        elif old is not None:
            raise InvalidAccount("old_password is only for changing your own password")
        if not isinstance(body["password"], str):
            raise InvalidAccount("password must be text")
        keep = request.cookies.get(SESSION_COOKIE) if is_self and principal.via == "session" else None
        try:
            await self._accounts.set_password(
                name, body["password"], old_password=old if is_self else None, keep_session=keep
            )
        except WrongPassword:
            # The same growing delay as a failed login: this is a password guess too.
            await asyncio.sleep(self._auth.throttle.record_failure(f"user:{name}"))
            raise

    async def delete_user(self, request: web.Request) -> web.Response:
        await self._auth.require(request, *ADMIN)
        name = request.match_info["name"]
        try:
            if not await self._accounts.delete_user(name):
                raise json_error(web.HTTPNotFound, f"no user {name!r}")
        except AccountError as exc:
            raise _account_error(exc) from None
        return web.Response(status=204)

    # -- tokens ---------------------------------------------------------------------------

    async def list_tokens(self, request: web.Request) -> web.Response:
        principal = await self._auth.require(request, *ANY_USER)
        owner = None if principal.role == "admin" else principal.name
        return json_response({"tokens": [t.to_dict() for t in await self._accounts.list_tokens(owner)]})

    async def create_token(self, request: web.Request) -> web.Response:
        principal = await self._auth.require(request, *ANY_USER)
        body = await _read_object(request, frozenset({"name", "owner"}))
        owner = body.get("owner", principal.name if principal.via != "admin-token" else None)
        if owner is None:
            raise json_error(
                web.HTTPUnprocessableEntity, "the admin token is not a user: give the token's owner ('owner')"
            )
        if owner != principal.name and principal.role != "admin":
            raise json_error(web.HTTPForbidden, "only an admin may make a token for another user")
        if not isinstance(owner, str) or await self._accounts.get_user(owner) is None:
            raise json_error(web.HTTPNotFound, f"no user {owner!r}")
        try:
            token, record = await self._accounts.create_token(owner, body.get("name"))
        except AccountError as exc:
            raise _account_error(exc) from None
        # Shown once: only its SHA-256 is stored.
        return json_response({**record.to_dict(), "token": token}, status=201)

    async def revoke_token(self, request: web.Request) -> web.Response:
        principal = await self._auth.require(request, *ANY_USER)
        owner = None if principal.role == "admin" else principal.name
        if not await self._accounts.revoke_token(request.match_info["id"], owner):
            raise json_error(web.HTTPNotFound, f"no token {request.match_info['id']!r} of yours")
        return web.Response(status=204)


def _changes(body: dict[str, Any]) -> UserChanges:
    disabled = body.get("disabled")
    if disabled is not None and not isinstance(disabled, bool):
        raise InvalidAccount("disabled must be true or false")
    return UserChanges(
        display_name=body.get("display_name") or None,
        clear_display_name="display_name" in body and not body["display_name"],
        role=body.get("role"),
        disabled=disabled,
    )
