"""Rate limiting with `limits`: per client and route class, in memory or shared through Redis.

The client is the user id when the caller has a valid token, otherwise the peer IP. The answer
carries the IETF draft headers (`RateLimit-Policy: 120;w=60`, `RateLimit: limit=120, remaining=3,
reset=37`), and a refusal is 429 with `Retry-After`.

In memory, the counts live in `SweptMemoryStorage`: limits' own storage, sweeping out expired
counters at most once a second. Upstream starts a sweep over every client's counter whenever the
previous one has finished, which under steady traffic means after every request, so a hit's cost
grows with the number of clients: 24 µs with one, 1 ms with 10 000 (benchmarks/rate_limits.py).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

import structlog
from limits import RateLimitItem, parse_many
from limits.aio.storage import MemoryStorage, Storage
from limits.aio.strategies import (
    FixedWindowRateLimiter,
    MovingWindowRateLimiter,
    RateLimiter,
    SlidingWindowCounterRateLimiter,
)
from limits.storage import storage_from_string

log = structlog.get_logger(__name__)

_STRATEGIES: dict[str, type[RateLimiter]] = {
    "fixed-window": FixedWindowRateLimiter,
    "moving-window": MovingWindowRateLimiter,
    "sliding-window-counter": SlidingWindowCounterRateLimiter,
}


@dataclass(frozen=True)
class Decision:
    allowed: bool
    limit: int
    remaining: int
    reset_seconds: int
    window_seconds: int

    def headers(self) -> dict[str, str]:
        headers = {
            "RateLimit-Policy": f"{self.limit};w={self.window_seconds}",
            "RateLimit": f"limit={self.limit}, remaining={self.remaining}, reset={self.reset_seconds}",
        }
        if not self.allowed:
            headers["Retry-After"] = str(max(1, self.reset_seconds))
        return headers


class SweptMemoryStorage(MemoryStorage):
    """limits' async in-memory storage with its sweep of expired counters throttled.

    A sweep only bounds memory: an expired counter is also dropped when it is next read, so the
    counts are the same as upstream's.
    """

    STORAGE_SCHEME = ["async+swept-memory"]
    SWEEP_INTERVAL_SECONDS = 1.0

    def __init__(self, uri: str | None = None, wrap_exceptions: bool = False, **options: str) -> None:
        self._last_sweep = float("-inf")
        self.sweeps = 0
        super().__init__(uri, wrap_exceptions=wrap_exceptions, **options)

    # Upstream's (name-mangled) hook, which its incr, decr and acquire_entry await on every hit.
    async def _MemoryStorage__schedule_expiry(self) -> None:
        now = time.monotonic()
        if now - self._last_sweep < self.SWEEP_INTERVAL_SECONDS:
            return
        self._last_sweep = now
        self.sweeps += 1
        await super()._MemoryStorage__schedule_expiry()  # type: ignore[misc]


def storage_uri(redis_url: str) -> str:
    if not redis_url:
        return "async+swept-memory://"
    scheme, sep, rest = redis_url.partition("://")
    return f"async+{scheme}{sep}{rest}"


class RateLimits:
    """Named policies (`auth`, `anon`, `user`), each one or more `limits` items."""

    def __init__(
        self, policies: dict[str, str], *, redis_url: str = "", strategy: str = "fixed-window"
    ) -> None:
        self.policies: dict[str, list[RateLimitItem]] = {
            name: parse_many(text) for name, text in policies.items()
        }
        options: dict[str, float | str | bool] = {}
        if redis_url:
            # redis-py rather than coredis: one Redis client library in the project.
            options["implementation"] = "redispy"
        storage = storage_from_string(storage_uri(redis_url), **options)
        assert isinstance(storage, Storage)
        self.storage: Storage = storage
        if strategy not in _STRATEGIES:
            raise ValueError(f"unknown rate-limit strategy {strategy!r}; one of {sorted(_STRATEGIES)}")
        self.limiter = _STRATEGIES[strategy](storage)

    async def hit(self, policy: str, client: str) -> Decision | None:
        """Count one request; None when the storage is down (fail open: Redis must not take us down)."""
        items = self.policies[policy]
        try:
            tightest: Decision | None = None
            for item in items:
                allowed = await self.limiter.hit(item, policy, client)
                stats = await self.limiter.get_window_stats(item, policy, client)
                decision = Decision(
                    allowed=allowed,
                    limit=item.amount,
                    remaining=max(0, stats.remaining),
                    reset_seconds=max(0, math.ceil(stats.reset_time - time.time())),
                    window_seconds=item.get_expiry(),
                )
                if not allowed:
                    return decision
                if tightest is None or decision.remaining < tightest.remaining:
                    tightest = decision
            return tightest
        except Exception as exc:  # any storage error: count nothing, let the request through
            log.warning("rate_limit_storage_error", error=str(exc))
            return None

    async def check(self) -> bool:
        try:
            return bool(await self.storage.check())
        except Exception:
            return False
