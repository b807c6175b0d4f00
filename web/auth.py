"""Authentication, in one place: the admin API token and streams' publish keys.

Secrets are compared in constant time (``hmac.compare_digest`` on SHA-256 digests, so
the lengths match too). Every failure from a client address makes that address's next
answer slower (0.1 s, 0.2 s, 0.4 s … up to 5 s), and after many failures in a short
time the address is refused outright with 429 for a while. Publish keys are 256-bit
random tokens and cannot be guessed anyway; the admin token is chosen by an operator
and may be weaker, which is what the delay is for. Successful authentication clears an
address's record.

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
from dataclasses import dataclass

import orjson
from aiohttp import web


def json_error(
    kind: type[web.HTTPException], message: str, *, headers: dict[str, str] | None = None
) -> web.HTTPException:
    """An HTTP error with the JSON body every endpoint of ours answers with:
    ``{"error": "message"}``. (Here because authentication is its first user; it can move
    to its own module when more than the stream endpoints use it.)"""
    return kind(
        text=orjson.dumps({"error": message}).decode(), content_type="application/json", headers=headers
    )


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


def _digest(secret: str) -> bytes:
    return hashlib.sha256(secret.encode("utf-8")).digest()


def bearer_token(request: web.Request) -> str | None:
    """The token of ``Authorization: Bearer <token>`` (scheme case-insensitive, RFC 6750)."""
    header = request.headers.get("Authorization", "")
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        return None
    return token.strip()


class Authenticator:
    """Checks admin tokens and publish keys; raises aiohttp HTTP errors with a JSON body."""

    def __init__(self, admin_token: str | None, throttle: FailureThrottle | None = None) -> None:
        # Keep only the digest: the token itself need not stay in memory or in a repr.
        self._admin_digest = _digest(admin_token) if admin_token else None
        self.throttle = throttle or FailureThrottle()

    def _address(self, request: web.Request) -> str:
        return request.remote or "unknown"

    async def _fail(self, request: web.Request, message: str, *, realm: str) -> web.HTTPException:
        delay = self.throttle.record_failure(self._address(request))
        await asyncio.sleep(delay)
        return json_error(
            web.HTTPUnauthorized, message, headers={"WWW-Authenticate": f'Bearer realm="{realm}"'}
        )

    def _check_lockout(self, request: web.Request) -> None:
        locked = self.throttle.locked_for(self._address(request))
        if locked > 0:
            raise json_error(
                web.HTTPTooManyRequests,
                "too many failed authentication attempts; try again later",
                headers={"Retry-After": str(int(locked) + 1)},
            )

    async def require_admin(self, request: web.Request) -> None:
        """Allow the request only with ``Authorization: Bearer <ORIGINCAST_ADMIN_TOKEN>``."""
        self._check_lockout(request)
        if self._admin_digest is None:
            # No token configured: writes are off, which is safer than open.
            raise json_error(
                web.HTTPForbidden, "the admin API is disabled: set ORIGINCAST_ADMIN_TOKEN to enable it"
            )
        token = bearer_token(request)
        if token is None:
            raise await self._fail(request, "missing Authorization: Bearer <admin token>", realm="origincast")
        if not hmac.compare_digest(_digest(token), self._admin_digest):
            raise await self._fail(request, "wrong admin token", realm="origincast")
        self.throttle.record_success(self._address(request))

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
            raise await self._fail(request, "wrong publish key for this stream", realm="whip")
        self.throttle.record_success(self._address(request))
