"""Rate limiting with `limits`: per client and named policy, in memory or shared through Redis.

The client is the user id when the caller has a valid token, otherwise the peer IP. The policies
are named after their settings (`auth`, `anon`, `user`), and answers carry the fields of the IETF
draft draft-ietf-httpapi-ratelimit-headers-09 (March 2025; -10 keeps the syntax):
`RateLimit-Policy: "user";q=1200;w=60` for the caller's policy and `RateLimit: "user";r=1197;t=37`
for where the caller stands in it (`r` requests remaining, `t` seconds until the window resets).
A policy of several limits (`10/second;300/minute`) lists each, as `"user-1"`, `"user-2"`; the
`RateLimit` item is the one closest to refusing. A refusal is 429 with `Retry-After`.

Redis away (configured, but down or unreachable): the gateway does not fail open. Each process
counts in its own memory instead, with the same policies: a client is held to at most the limit
per replica rather than not at all. The first failure of an outage is logged as a WARNING
(`rate_limit_storage_down`) and sets `gateway_rate_limit_storage_available` to 0; while it lasts,
Redis is tried again at most every `recheck_seconds`, so requests do not each wait on it; when it
answers again the gateway logs `rate_limit_storage_restored`, goes back to it and sets the gauge 1.
Counts made in memory during the outage are not carried over.

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
from prometheus_client import Gauge

log = structlog.get_logger(__name__)

STORAGE_AVAILABLE = Gauge(
    "gateway_rate_limit_storage_available",
    "1 while the rate-limit storage answers; 0 while Redis is away and each process counts in memory.",
)
# A Redis that hangs must not hold up every request for long: past this, the hit counts in memory.
REDIS_SOCKET_TIMEOUT_SECONDS = 0.25

_STRATEGIES: dict[str, type[RateLimiter]] = {
    "fixed-window": FixedWindowRateLimiter,
    "moving-window": MovingWindowRateLimiter,
    "sliding-window-counter": SlidingWindowCounterRateLimiter,
}


@dataclass(frozen=True)
class Quota:
    """One limit of a policy, as `RateLimit-Policy` names it."""

    name: str
    item: RateLimitItem

    @property
    def field(self) -> str:
        return f'"{self.name}";q={self.item.amount};w={self.item.get_expiry()}'


@dataclass(frozen=True)
class Decision:
    allowed: bool
    quota: Quota  # the limit that refused, or the one closest to refusing
    quotas: tuple[Quota, ...]  # all of the policy's
    remaining: int
    reset_seconds: int

    def headers(self) -> dict[str, str]:
        headers = {
            "RateLimit-Policy": ", ".join(quota.field for quota in self.quotas),
            "RateLimit": f'"{self.quota.name}";r={self.remaining};t={self.reset_seconds}',
        }
        if not self.allowed:
            headers["Retry-After"] = str(max(1, self.reset_seconds))
        return headers


def quotas(name: str, text: str) -> tuple[Quota, ...]:
    items = parse_many(text)
    if len(items) == 1:
        return (Quota(name, items[0]),)
    return tuple(Quota(f"{name}-{n}", item) for n, item in enumerate(items, start=1))


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
        self,
        policies: dict[str, str],
        *,
        redis_url: str = "",
        strategy: str = "fixed-window",
        recheck_seconds: float = 5.0,
    ) -> None:
        self.policies: dict[str, tuple[Quota, ...]] = {
            name: quotas(name, text) for name, text in policies.items()
        }
        if strategy not in _STRATEGIES:
            raise ValueError(f"unknown rate-limit strategy {strategy!r}; one of {sorted(_STRATEGIES)}")
        options: dict[str, float | str | bool] = {}
        if redis_url:
            # redis-py rather than coredis: one Redis client library in the project.
            options["implementation"] = "redispy"
            options["socket_connect_timeout"] = REDIS_SOCKET_TIMEOUT_SECONDS
            options["socket_timeout"] = REDIS_SOCKET_TIMEOUT_SECONDS
        storage = storage_from_string(storage_uri(redis_url), **options)
        assert isinstance(storage, Storage)
        self.storage: Storage = storage
        self.limiter = _STRATEGIES[strategy](storage)
        # Where hits are counted while Redis is away; None without Redis (memory is the storage).
        self.fallback: RateLimiter | None = _STRATEGIES[strategy](SweptMemoryStorage()) if redis_url else None
        self.recheck_seconds = recheck_seconds
        self.storage_down_since: float | None = None
        self._next_try = 0.0
        STORAGE_AVAILABLE.set(1)

    async def hit(self, policy: str, client: str) -> Decision | None:
        """Count one request against the policy's limits; the decision of the tightest."""
        if self.fallback is None:
            return await self._hit(self.limiter, policy, client)
        if self.storage_down_since is not None and time.monotonic() < self._next_try:
            return await self._hit(self.fallback, policy, client)
        try:
            decision = await self._hit(self.limiter, policy, client)
        except Exception as exc:  # any storage error: count in memory, never let everyone through
            self._storage_failed(exc)
            return await self._hit(self.fallback, policy, client)
        if self.storage_down_since is not None:
            log.warning(
                "rate_limit_storage_restored",
                down_seconds=round(time.monotonic() - self.storage_down_since, 1),
            )
            self.storage_down_since = None
            STORAGE_AVAILABLE.set(1)
        return decision

    def _storage_failed(self, exc: Exception) -> None:
        now = time.monotonic()
        self._next_try = now + self.recheck_seconds
        if self.storage_down_since is None:
            self.storage_down_since = now
            STORAGE_AVAILABLE.set(0)
            log.warning(
                "rate_limit_storage_down",
                error=str(exc) or type(exc).__name__,
                fallback="per-process memory",
                retry_seconds=self.recheck_seconds,
            )

    async def _hit(self, limiter: RateLimiter, policy: str, client: str) -> Decision | None:
        tightest: Decision | None = None
        policy_quotas = self.policies[policy]
        for quota in policy_quotas:
            allowed = await limiter.hit(quota.item, policy, client)
            stats = await limiter.get_window_stats(quota.item, policy, client)
            decision = Decision(
                allowed=allowed,
                quota=quota,
                quotas=policy_quotas,
                remaining=max(0, stats.remaining),
                reset_seconds=max(0, math.ceil(stats.reset_time - time.time())),
            )
            if not allowed:
                return decision
            if tightest is None or decision.remaining < tightest.remaining:
                tightest = decision
        return tightest

    async def check(self) -> bool:
        try:
            return bool(await self.storage.check())
        except Exception:
            return False
