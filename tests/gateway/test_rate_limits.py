"""The gateway's in-memory rate-limit storage: limits' own, with its sweep of expired counters
throttled, so that a hit costs the same with ten thousand clients as with one."""

from __future__ import annotations

import asyncio

from limits import parse
from limits.aio.strategies import FixedWindowRateLimiter

from services.gateway.ratelimit import RateLimits, SweptMemoryStorage


async def test_counts_are_limits_own_and_a_sweep_runs_at_most_once_an_interval() -> None:
    storage = SweptMemoryStorage()
    storage.SWEEP_INTERVAL_SECONDS = 0.5
    limiter = FixedWindowRateLimiter(storage)
    per_second = parse("3/second")
    for n in range(40):
        assert await limiter.hit(per_second, "anon", f"198.51.100.{n}")
        await asyncio.sleep(0)
    assert [await limiter.hit(per_second, "anon", "192.0.2.1") for _ in range(4)] == [True] * 3 + [False]
    assert storage.sweeps == 1  # the first hit's; upstream would have swept after every one

    await asyncio.sleep(1.1)  # every window above has ended
    assert await limiter.hit(per_second, "anon", "192.0.2.1")  # a fresh window, and a sweep is due
    await asyncio.sleep(0.05)
    assert storage.sweeps == 2
    # The sweep is upstream's own, run through the override: the expired counters are gone.
    assert [key for key in storage.storage if "198.51.100." in key] == []


async def test_the_gateway_counts_in_the_swept_storage_by_default() -> None:
    limits = RateLimits({"anon": "2/minute"})
    assert isinstance(limits.storage, SweptMemoryStorage)
    decisions = [await limits.hit("anon", "203.0.113.9") for _ in range(3)]
    assert [d.allowed for d in decisions if d] == [True, True, False]
    assert decisions[0] is not None and decisions[0].remaining == 1
