"""Authentication, in one place: who is asking (a ``Principal``) and whether they may.

A request is authenticated by, in this order:
1. ``Authorization: Bearer <token>``: an API token (``oc_…``, web.accounts), acting as its
   owner with the owner's role; or the legacy admin token (``ORIGINCAST_ADMIN_TOKEN``),
   an admin principal named ``admin-token`` kept for scripts and bootstrap;
2. the ``origincast_session`` cookie a login set (web.api_session).
Which roles may use which route is in web.permissions (the route × role table), which
calls ``Authenticator.require`` for every route before its handler runs; handlers add the
finer checks (a producer's own streams) with ``Authenticator.principal``.

Session cookies are HttpOnly (no script can read them), SameSite=Lax (not sent with
cross-site POSTs), Path=/, and Secure when the request came over TLS or
``auth.cookie_secure`` says a TLS proxy is in front. On top of SameSite, every
state-changing request (POST, PUT, PATCH, DELETE) authenticated by the cookie must carry
``X-CSRF-Token`` equal to its session's token (compared in constant time) and, when the
browser sent an ``Origin``, come from this site's own origin: a cookie is ambient (the
browser adds it to requests another site makes), a header is not. Bearer requests are
exempt for the same reason: no browser adds them by itself.

Failures slow down: every failed token, publish key or login makes that client
address's next answer slower (0.1 s, 0.2 s, 0.4 s … up to 5 s), and a failed login does
the same for the user name tried, so spreading guesses over many addresses does not
help against one account. After many failures in a short time the address (or the user
name) is refused outright with 429 for a while. API tokens and publish keys are 256-bit
random values that cannot be guessed anyway; passwords and the admin token are chosen by
people, which is what the delay is for. Success clears the record.

The client address is the TCP peer (``request.remote``). Behind a reverse proxy every
client shares the proxy's address; a deployment there should have the proxy rate-limit
too (forwarded headers are not trusted here, since any client can set them).
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Literal
from urllib.parse import urlsplit

from aiohttp import web

from web.accounts import AccountService, Login, Role
from web.config import AuthSettings
from web.errors import json_error

__all__ = [
    "SESSION_COOKIE",
    "Authenticator",
    "FailureThrottle",
    "Principal",
    "bearer_token",
]

SESSION_COOKIE = "origincast_session"
CSRF_HEADER = "X-CSRF-Token"
CSRF_ERROR = "missing or wrong CSRF token"
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
ADMIN_TOKEN_NAME = "admin-token"
_PRINCIPAL = web.RequestKey("origincast_principal", object)
_REALM = 'Bearer realm="origincast"'


@dataclass(slots=True)
class _Failures:
    count: int
    last: float
    locked_until: float = 0.0


class FailureThrottle:
    """Per-address failure counts; bounded, so a flood of addresses cannot grow it forever."""

    def __init__(
        self,
        *,
        base_delay_s: float = 0.1,
        max_delay_s: float = 5.0,
        lockout_after: int = 20,
        lockout_s: float = 60.0,
        forget_after_s: float = 900.0,
        max_addresses: int = 10_000,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.base_delay_s = base_delay_s
        self.max_delay_s = max_delay_s
        self.lockout_after = lockout_after
        self.lockout_s = lockout_s
        self.forget_after_s = forget_after_s
        self.max_addresses = max_addresses
        self._clock = clock
        self._by_address: OrderedDict[str, _Failures] = OrderedDict()

    def _get(self, address: str, now: float) -> _Failures | None:
        f = self._by_address.get(address)
        if f is not None and now - f.last > self.forget_after_s and now >= f.locked_until:
            del self._by_address[address]
            return None
        return f

    def locked_for(self, address: str) -> float:
        """Seconds this address is still refused without checking (0: not locked)."""
        now = self._clock()
        f = self._get(address, now)
        return max(0.0, f.locked_until - now) if f else 0.0

    def record_failure(self, address: str) -> float:
        """Count a failure; returns how long to wait before answering it."""
        now = self._clock()
        f = self._get(address, now)
        if f is None:
            f = _Failures(count=0, last=now)
            self._by_address[address] = f
            while len(self._by_address) > self.max_addresses:
                self._by_address.popitem(last=False)  # the oldest record goes first
        f.count += 1
        f.last = now
        self._by_address.move_to_end(address)
        if f.count >= self.lockout_after:
            f.locked_until = now + self.lockout_s
        return min(self.max_delay_s, self.base_delay_s * 2 ** (f.count - 1))

    def record_success(self, address: str) -> None:
        self._by_address.pop(address, None)


@dataclass(frozen=True, slots=True)
class Principal:
    """Who a request acts as. ``name`` is the user (or ``admin-token``); it is what audit
    trails record."""

    name: str
    role: Role
    via: Literal["session", "api-token", "admin-token"]
    # The session's CSRF token (sessions only): what the page must send back with writes.
    csrf_token: str | None = field(default=None, repr=False)

    def to_dict(self) -> dict[str, object]:
        return {"user": self.name, "role": self.role, "via": self.via}


_ANONYMOUS = object()  # cached "no credentials" (None is "not looked up yet")


def _digest(secret: str) -> bytes:
    return hashlib.sha256(secret.encode("utf-8")).digest()


def bearer_token(request: web.Request) -> str | None:
    """The token of ``Authorization: Bearer <token>`` (scheme case-insensitive, RFC 6750)."""
    header = request.headers.get("Authorization", "")
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        return None
    return token.strip()


def _host_of(netloc: str, scheme: str) -> str:
    """``host[:port]`` in lower case without the scheme's default port."""
    netloc = netloc.strip().lower()
    for default in (":443",) if scheme == "https" else (":80",) if scheme == "http" else ():
        if netloc.endswith(default):
            return netloc[: -len(default)]
    return netloc


def same_origin(origin: str, host: str) -> bool:
    """Whether a browser's ``Origin`` names the site the request was sent to (``Host``).
    The scheme is left out: behind a TLS proxy we see http while the browser says https."""
    parts = urlsplit(origin)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        return False  # "null" (a sandboxed frame, a file) is never us
    ours = host.strip().lower()
    theirs = _host_of(parts.netloc, parts.scheme)
    return theirs in (ours, _host_of(ours, "http"), _host_of(ours, "https"))


def csrf_ok(request: web.Request, expected: str | None) -> bool:
    """The CSRF rule for a cookie-authenticated write (see the module doc)."""
    origin = request.headers.get("Origin")
    if origin is not None and not same_origin(origin, request.host):
        return False
    sent = request.headers.get(CSRF_HEADER)
    if not sent or not expected:
        return False
    return hmac.compare_digest(_digest(sent), _digest(expected))


class Authenticator:
    """Resolves and checks credentials; raises aiohttp HTTP errors with a JSON body."""

    def __init__(
        self,
        admin_token: str | None,
        accounts: AccountService | None = None,
        settings: AuthSettings | None = None,
        throttle: FailureThrottle | None = None,
    ) -> None:
        # Keep only the digest: the token itself need not stay in memory or in a repr.
        self._admin_digest = _digest(admin_token) if admin_token else None
        self.accounts = accounts
        self.settings = settings or AuthSettings()
        self.throttle = throttle or FailureThrottle(
            base_delay_s=self.settings.failure_base_delay_s,
            max_delay_s=self.settings.failure_max_delay_s,
            lockout_after=self.settings.lockout_after,
        )

    def _address(self, request: web.Request) -> str:
        return request.remote or "unknown"

    async def _fail(self, request: web.Request, message: str, *, realm: str) -> web.HTTPException:
        delay = self.throttle.record_failure(self._address(request))
        await asyncio.sleep(delay)
        return json_error(
            web.HTTPUnauthorized, message, headers={"WWW-Authenticate": f'Bearer realm="{realm}"'}
        )

    def _check_lockout(self, request: web.Request, *keys: str) -> None:
        locked = max(self.throttle.locked_for(k) for k in (self._address(request), *keys))
        if locked > 0:
            raise json_error(
                web.HTTPTooManyRequests,
                "too many failed authentication attempts; try again later",
                headers={"Retry-After": str(int(locked) + 1)},
            )

    # -- who is asking ---------------------------------------------------------------------

    async def identify(self, request: web.Request) -> Principal | None:
        """The request's principal, or None without credentials. A wrong Bearer token is
        401 (a script must hear that its token is bad); a stale or unknown session cookie
        is just no login (a page must still show what anyone may see). Looked up once per
        request."""
        cached = request.get(_PRINCIPAL)
        if cached is not None:
            return None if cached is _ANONYMOUS else cached
        found = await self._resolve(request)
        request[_PRINCIPAL] = found if found is not None else _ANONYMOUS
        return found

    def principal(self, request: web.Request) -> Principal | None:
        """The principal ``identify`` or ``require`` found for this request (no lookup)."""
        cached = request.get(_PRINCIPAL)
        return cached if isinstance(cached, Principal) else None

    async def _resolve(self, request: web.Request) -> Principal | None:
        token = bearer_token(request)
        if token is None:
            session_id = request.cookies.get(SESSION_COOKIE)
            if not session_id or self.accounts is None:
                return None
            active = await self.accounts.session(session_id)
            if active is None:
                return None
            return Principal(active.user.name, active.user.role, "session", active.csrf_token)
        self._check_lockout(request)
        if token.startswith("oc_") and self.accounts is not None:
            found = await self.accounts.token_user(token)
            if found is None:
                raise await self._fail(request, "unknown or revoked API token", realm="origincast")
            self.throttle.record_success(self._address(request))
            return Principal(found[0].name, found[0].role, "api-token")
        if self._admin_digest is not None and hmac.compare_digest(_digest(token), self._admin_digest):
            self.throttle.record_success(self._address(request))
            return Principal(ADMIN_TOKEN_NAME, "admin", "admin-token")
        raise await self._fail(
            request, "wrong token: not a valid API token or admin token", realm="origincast"
        )

    async def require(self, request: web.Request, *roles: Role) -> Principal:
        """The principal, if it has one of ``roles`` (any role when none are given):
        401 without valid credentials, 403 with the wrong role or, for a cookie-authenticated
        write, without the right CSRF token."""
        principal = await self.identify(request)
        if principal is None:
            raise json_error(
                web.HTTPUnauthorized,
                "log in first (POST /api/v1/session) or send Authorization: Bearer <API token>",
                headers={"WWW-Authenticate": _REALM},
            )
        if principal.via == "session" and request.method not in SAFE_METHODS:
            self.check_csrf(request, principal)
        if roles and principal.role not in roles:
            raise json_error(
                web.HTTPForbidden,
                f"this needs the role {' or '.join(roles)}; {principal.name} is {principal.role}",
            )
        return principal

    async def require_admin(self, request: web.Request) -> Principal:
        return await self.require(request, "admin")

    def check_csrf(self, request: web.Request, principal: Principal) -> None:
        if not csrf_ok(request, principal.csrf_token):
            raise json_error(web.HTTPForbidden, CSRF_ERROR)

    # -- logging in ------------------------------------------------------------------------

    async def login(self, request: web.Request, name: str, password: str) -> Login:
        """A new session for a right name and password; 401 (after the growing delay) for a
        wrong one, 429 while the address or the name is locked out."""
        if self.accounts is None:
            raise json_error(web.HTTPServiceUnavailable, "accounts are not available on this server")
        name_key = f"user:{name.strip().lower()[:64]}"
        self._check_lockout(request, name_key)
        user = await self.accounts.verify_login(name, password)
        if user is None:
            delay = max(
                self.throttle.record_failure(self._address(request)), self.throttle.record_failure(name_key)
            )
            await asyncio.sleep(delay)
            raise json_error(
                web.HTTPUnauthorized, "wrong user name or password", headers={"WWW-Authenticate": _REALM}
            )
        self.throttle.record_success(self._address(request))
        self.throttle.record_success(name_key)
        return await self.accounts.login(user)

    def set_session_cookie(self, request: web.Request, response: web.StreamResponse, session_id: str) -> None:
        response.set_cookie(
            SESSION_COOKIE,
            session_id,
            max_age=int(self.settings.session_absolute_s),
            path="/",
            httponly=True,
            samesite="Lax",
            secure=request.secure or self.settings.cookie_secure,
        )

    def clear_session_cookie(self, request: web.Request, response: web.StreamResponse) -> None:
        response.del_cookie(
            SESSION_COOKIE,
            path="/",
            httponly=True,
            samesite="Lax",
            secure=request.secure or self.settings.cookie_secure,
        )

    # -- publish keys ----------------------------------------------------------------------

    async def require_publish_key(
        self, request: web.Request, verify: Callable[[str], Awaitable[bool]]
    ) -> None:
        """Allow the request only with ``Authorization: Bearer <the stream's publish key>``.

        ``verify(key)`` checks a key against the registry (a constant-time digest compare).
        """
        self._check_lockout(request)
        key = bearer_token(request)
        if key is None:
            raise await self._fail(request, "missing Authorization: Bearer <publish key>", realm="whip")
        if not await verify(key):
            # An unknown stream gets the same words: probing must not confirm an unlisted name.
            message = "wrong publish key for this stream, or no such stream"
            raise await self._fail(request, message, realm="whip")
        self.throttle.record_success(self._address(request))
