"""The public endpoints' per-address token bucket (web.rate_limit), on a hand-moved clock."""

from __future__ import annotations

import pytest

from web.rate_limit import RateLimiter


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_a_burst_then_the_refill_rate_per_address() -> None:
    clock = Clock()
    limiter = RateLimiter(burst=3, per_second=0.5, clock=clock)
    assert [limiter.take("a") for _ in range(3)] == [0, 0, 0]
    assert limiter.take("a") == pytest.approx(2.0)  # one token in 2 s
    assert limiter.take("b") == 0  # another address has its own bucket
    clock.now += 1.0
    assert limiter.take("a") == pytest.approx(1.0)  # a refused request spends nothing
    clock.now += 1.0
    assert limiter.take("a") == 0
    clock.now += 3600
    assert [limiter.take("a") for _ in range(4)][:3] == [0, 0, 0]  # refilled to the burst, not beyond


def test_costly_requests_and_the_bound_on_addresses() -> None:
    clock = Clock()
    limiter = RateLimiter(burst=10, per_second=1, max_addresses=3, clock=clock)
    assert limiter.take("a", 10) == 0
    assert limiter.take("a", 10) == pytest.approx(10.0)
    assert limiter.take("x", 50) == 0  # a cost above the burst costs the whole burst
    for address in ("b", "c", "d"):
        limiter.take(address)
    assert len(limiter) == 3  # "a" and "x" forgotten, least recently seen first
    assert limiter.take("a", 10) == 0  # a forgotten address starts with a full bucket


def test_nonsense_settings_are_refused() -> None:
    with pytest.raises(ValueError):
        RateLimiter(burst=0)
    with pytest.raises(ValueError):
        RateLimiter(per_second=-1)


def test_a_zero_rate_is_off() -> None:
    """For a server behind a proxy that limits instead (every customer has its address)."""
    limiter = RateLimiter(burst=1, per_second=0)
    assert all(limiter.take("proxy") == 0 for _ in range(1000))
