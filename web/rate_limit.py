"""A per-client-address rate limit for the public endpoints (the trust page's answer and
the evidence bundle): no login guards them, and an uncached answer costs the server
most of a second, so one address may not make it build them in a loop.

A token bucket per address: ``burst`` requests at once, refilled at ``per_second``;
a request costs ``cost`` tokens (a bundle, which carries the files' bytes, costs more).
Beyond it: 429 with Retry-After (whole seconds until the request would pass) and a JSON
error. Generous on purpose: customers behind one carrier NAT or shop Wi-Fi share an
address, and a page load makes one request. The client address is the TCP peer, as for
web.auth's failure throttle (forwarded headers are not trusted: any client sets them).
Bounded: the least recently seen addresses are forgotten beyond ``max_addresses``
(a forgotten address starts again with a full bucket).
"""

from __future__ import annotations

import math
import time
from collections import OrderedDict
from collections.abc import Callable

from aiohttp import web

from web.errors import json_error

DEFAULT_BURST = 120.0
DEFAULT_PER_SECOND = 2.0
DEFAULT_MAX_ADDRESSES = 50_000


class RateLimiter:
    def __init__(
        self,
        *,
        burst: float = DEFAULT_BURST,
        per_second: float = DEFAULT_PER_SECOND,
        max_addresses: int = DEFAULT_MAX_ADDRESSES,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if burst < 1 or per_second < 0:
            raise ValueError("burst must be at least 1 and per_second 0 (off) or more")
        self.burst = burst
        self.per_second = per_second
        self.max_addresses = max_addresses
        self._clock = clock
        self._buckets: OrderedDict[str, tuple[float, float]] = OrderedDict()  # address -> (tokens, at)

    def take(self, address: str, cost: float = 1.0) -> float:
        """Spend ``cost`` tokens of the address's bucket: 0 if they were there, else the
        seconds until they will be (nothing is spent then)."""
        if self.per_second == 0:  # off: a proxy in front limits instead
            return 0.0
        now = self._clock()
        tokens, at = self._buckets.pop(address, (self.burst, now))
        tokens = min(self.burst, tokens + (now - at) * self.per_second)
        cost = min(cost, self.burst)
        wait = 0.0
        if tokens >= cost:
            tokens -= cost
        else:
            wait = (cost - tokens) / self.per_second
        self._buckets[address] = (tokens, now)
        while len(self._buckets) > self.max_addresses:
            self._buckets.popitem(last=False)
        return wait

    def check(self, request: web.Request, cost: float = 1.0) -> None:
        """Raise 429 (Retry-After, JSON error) when the request's address is over its rate."""
        wait = self.take(request.remote or "unknown", cost)
        if wait > 0:
            retry = max(1, math.ceil(wait))
            raise json_error(
                web.HTTPTooManyRequests,
                f"too many requests from this address; try again in {retry} s",
                headers={"Retry-After": str(retry)},
            )

    def __len__(self) -> int:
        return len(self._buckets)


__all__ = ["RateLimiter"]
