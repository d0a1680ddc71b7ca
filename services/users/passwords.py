"""argon2id password hashing, off the event loop and bounded: hashing is deliberately slow and CPU-bound.

Every hash and verify runs on a dedicated thread pool behind a semaphore of
`password_hash_concurrency` slots. A request that cannot get a slot within
`password_hash_queue_timeout_seconds` of reaching the service (`RequestClock`) is refused with 503
`overloaded` and `Retry-After`, instead of queueing until the gateway's upstream timeout turns it
into a 504 and opens the breaker.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import AsyncIterator, Callable
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from contextvars import ContextVar
from typing import TypeVar

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError
from prometheus_client import Counter
from starlette.types import ASGIApp, Receive, Scope, Send

from services.kit.cpus import available_cpus
from services.kit.errors import Problem
from services.users.settings import (
    ARGON2_MEMORY_COST_KIB,
    ARGON2_PARALLELISM,
    ARGON2_TIME_COST,
    Settings,
)

PASSWORD_MIN = 10
PASSWORD_MAX = 128

DEFAULT_QUEUE_TIMEOUT_SECONDS = 2.0

_T = TypeVar("_T")

SHED = Counter(
    "users_password_hashes_shed_total",
    "Requests answered 503 overloaded: no password-hashing slot within the queue timeout.",
)

_request_arrived: ContextVar[float | None] = ContextVar("password_request_arrived", default=None)


class _Reservation:
    """A slot taken ahead of the hash that will use it (`Passwords.reserved`)."""

    def __init__(self) -> None:
        self.handed_over = False


_reservation: ContextVar[_Reservation | None] = ContextVar("password_slot_reservation", default=None)


class RequestClock:
    """ASGI middleware noting when a request reached the service, so that its wait for a hashing slot
    counts from there: under a crowd, the work before the hash (parsing, the account lookup) waits
    for the CPU too, and the gateway's timeout runs from the start."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        token = _request_arrived.set(time.monotonic())
        try:
            await self.app(scope, receive, send)
        finally:
            _request_arrived.reset(token)


class HashingOverloaded(Problem):
    """Every hashing slot stayed busy for the whole queue timeout: come back shortly."""

    def __init__(self, retry_after: int) -> None:
        super().__init__(
            503,
            "overloaded",
            "Too many password checks at once; try again shortly.",
            headers={"Retry-After": str(retry_after)},
        )


class Passwords:
    def __init__(
        self,
        hasher: PasswordHasher | None = None,
        *,
        concurrency: int | None = None,
        queue_timeout_seconds: float = DEFAULT_QUEUE_TIMEOUT_SECONDS,
    ) -> None:
        self.hasher = hasher or PasswordHasher(
            time_cost=ARGON2_TIME_COST, memory_cost=ARGON2_MEMORY_COST_KIB, parallelism=ARGON2_PARALLELISM
        )
        self.concurrency = max(1, concurrency or available_cpus())
        self.queue_timeout = queue_timeout_seconds
        # Its own pool, so argon2 neither starves nor is starved by other `to_thread` work (the
        # signing key, SQLite); the semaphore keeps the waiting in the event loop, where it can time out.
        self._executor = ThreadPoolExecutor(max_workers=self.concurrency, thread_name_prefix="argon2")
        self._slots = asyncio.Semaphore(self.concurrency)
        self._retry_after = max(1, math.ceil(queue_timeout_seconds))
        self._dummy_hash: str | None = None

    @classmethod
    def from_settings(cls, settings: Settings) -> Passwords:
        return cls(
            PasswordHasher(
                time_cost=settings.argon2_time_cost,
                memory_cost=settings.argon2_memory_cost_kib,
                parallelism=settings.argon2_parallelism,
            ),
            concurrency=settings.password_hash_concurrency,
            queue_timeout_seconds=settings.password_hash_queue_timeout_seconds,
        )

    @asynccontextmanager
    async def reserved(self) -> AsyncIterator[None]:
        """Take a slot now, for the next hash or verify inside the block.

        Login takes its slot before it spends one of the account's attempts: a login shed with 503
        under a crowd must not count against the customer, who was told to come back.
        """
        await self._acquire()
        reservation = _Reservation()
        token = _reservation.set(reservation)
        try:
            yield
        finally:
            _reservation.reset(token)
            if not reservation.handed_over:
                self._slots.release()

    async def _acquire(self) -> None:
        arrived = _request_arrived.get()
        waited = time.monotonic() - arrived if arrived is not None else 0.0
        try:
            # A free slot is taken even when the budget is spent: it is never refused for nothing.
            async with asyncio.timeout(max(0.0, self.queue_timeout - waited)):
                await self._slots.acquire()
        except TimeoutError:
            SHED.inc()
            raise HashingOverloaded(self._retry_after) from None

    async def _run(self, work: Callable[..., _T], *args: str) -> _T:
        reservation = _reservation.get()
        if reservation is not None and not reservation.handed_over:
            reservation.handed_over = True  # this hash runs on the slot reserved for it
        else:
            await self._acquire()
        try:
            running = asyncio.get_running_loop().run_in_executor(self._executor, work, *args)
        except BaseException:
            self._slots.release()
            raise
        # The slot is freed when the thread is, not when the caller stops waiting: a hash cannot be
        # interrupted, and a caller that gives up must not let another hash start on a busy CPU.
        running.add_done_callback(lambda _: self._slots.release())
        return await asyncio.shield(running)

    async def hash(self, password: str) -> str:
        return await self._run(self.hasher.hash, password)

    async def verify(self, password_hash: str, password: str) -> bool:
        return await self._run(self._verify_sync, password_hash, password)

    async def warm_up(self) -> None:
        """Prepare the hash that unknown logins are checked against, so the first one is not slower."""
        if self._dummy_hash is None:
            self._dummy_hash = await self.hash("ordersaga-timing-equaliser")

    async def verify_unknown_user(self, password: str) -> None:
        """Spend the same work as a real check, so response time does not reveal which accounts exist."""
        await self.warm_up()
        assert self._dummy_hash is not None
        await self.verify(self._dummy_hash, password)

    def needs_rehash(self, password_hash: str) -> bool:
        try:
            return self.hasher.check_needs_rehash(password_hash)
        except InvalidHashError:
            return True

    def _verify_sync(self, password_hash: str, password: str) -> bool:
        try:
            return self.hasher.verify(password_hash, password)
        except (VerificationError, InvalidHashError):
            return False
