"""Per-account login throttling, on top of the gateway's per-IP limit.

Every password attempt on an account (a login, or the `current_password` of a change) takes one
hit of the account's budget (`USERS_LOGIN_FAILURE_LIMIT`, e.g. 10 in any 5 minutes) before the
password is checked, so parallel guesses cannot overshoot it; a right password gives the budget
back. Once it is spent, every attempt on that account is 429 with Retry-After until the oldest
failure leaves the window, whichever IP it comes from and whether or not the password is right:
letting a right password through would tell the guesser it was right. An attempt that gets no
verdict (shed with 503 while hashing is overloaded) keeps its hit: an overload must not become a
way to try more passwords. So do right ones still in flight, which only a client logging in to
one account many times at once would notice.

That is the trade-off: anyone can lock an account out of logging in for one window by failing on
purpose (its existing tokens keep working). The window is short so the lock-out is short, and the
gateway's per-IP limit bounds how fast one client can keep it locked.

The counts are kept in memory, or in Redis when `REDIS_URL` is set so that every replica shares
them. If Redis cannot be reached, attempts are counted in this process's memory instead (not
shared, so each replica allows the budget once): logins keep working and stay throttled, neither
failing open nor closed. The outage is logged once (`login_throttle_storage_down`, a warning, and
`login_throttle_storage_restored` when it ends), `users_login_throttle_storage_available` is 0
meanwhile and `users_login_throttle_fallbacks_total` counts the attempts counted locally. Redis is
retried every `RECHECK_SECONDS`, so an unanswering server does not slow every login down.
"""

from __future__ import annotations

import math
import time

import structlog
from limits import RateLimitItem, parse
from limits.aio.storage import MemoryStorage, Storage
from limits.aio.strategies import MovingWindowRateLimiter
from limits.storage import storage_from_string
from prometheus_client import Counter, Gauge

from services.kit.errors import Problem

log = structlog.get_logger(__name__)

NAMESPACE = "login-failures"

FALLBACKS = Counter(
    "users_login_throttle_fallbacks_total",
    "Login attempts counted in process memory because the shared throttle storage failed.",
)
THROTTLED = Counter("users_login_throttled_total", "Password attempts refused by the per-account limit.")
STORAGE_AVAILABLE = Gauge(
    "users_login_throttle_storage_available", "1 while the shared throttle storage (Redis) answers."
)


def _storage_uri(redis_url: str) -> str:
    scheme, sep, rest = redis_url.partition("://")
    return f"async+{scheme}{sep}{rest}"


class LoginThrottle:
    RECHECK_SECONDS = 5.0

    def __init__(self, limit: str, *, redis_url: str = "") -> None:
        self.item: RateLimitItem = parse(limit)
        self._local = MovingWindowRateLimiter(MemoryStorage())
        self._shared: MovingWindowRateLimiter | None = None
        self._down = False
        self._retry_at = 0.0
        if redis_url:
            # redis-py rather than coredis, as the gateway: one Redis client library in the project.
            storage = storage_from_string(_storage_uri(redis_url), implementation="redispy")
            assert isinstance(storage, Storage)
            self._shared = MovingWindowRateLimiter(storage)
            STORAGE_AVAILABLE.set(1)

    async def attempt(self, account: str) -> None:
        """Take one attempt from `account`'s budget; 429 `too_many_attempts` if none is left."""
        if self._shared is not None and time.monotonic() >= self._retry_at:
            try:
                allowed = await self._shared.hit(self.item, NAMESPACE, account)
            except Exception as exc:  # whatever the Redis client raises: count here instead
                self._storage_down(exc)
            else:
                if self._down:
                    self._down = False
                    STORAGE_AVAILABLE.set(1)
                    log.info("login_throttle_storage_restored")
                if not allowed:
                    await self._refuse(self._shared, account)
                return
        if self._shared is not None:
            FALLBACKS.inc()
        if not await self._local.hit(self.item, NAMESPACE, account):
            await self._refuse(self._local, account)

    def _storage_down(self, exc: Exception) -> None:
        self._retry_at = time.monotonic() + self.RECHECK_SECONDS
        STORAGE_AVAILABLE.set(0)
        if not self._down:
            self._down = True
            log.warning(
                "login_throttle_storage_down",
                error=f"{type(exc).__name__}: {exc}",
                fallback="per-process memory",
            )

    async def succeeded(self, account: str) -> None:
        """A right password: the failures before it no longer count against the account."""
        await self._local.clear(self.item, NAMESPACE, account)
        if self._shared is not None and not self._down:
            try:
                await self._shared.clear(self.item, NAMESPACE, account)
            except Exception as exc:
                self._storage_down(exc)

    async def _refuse(self, limiter: MovingWindowRateLimiter, account: str) -> None:
        try:
            stats = await limiter.get_window_stats(self.item, NAMESPACE, account)
            retry_after = max(1, math.ceil(stats.reset_time - time.time()))
        except Exception:
            retry_after = self.item.get_expiry()
        THROTTLED.inc()
        log.warning("login_throttled", account=account, retry_after=retry_after)
        raise Problem(
            429,
            "too_many_attempts",
            "Too many failed password attempts on this account; try again later.",
            headers={"Retry-After": str(retry_after)},
        )
