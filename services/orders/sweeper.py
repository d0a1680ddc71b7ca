"""Starts the saga of any accepted order whose start was lost (a crash or an outage after the commit).

Every orders replica runs a sweeper. On PostgreSQL a sweep claims its batch `FOR UPDATE SKIP LOCKED`
and records each start in that same transaction, so two replicas never start the same lost saga:
the second skips the rows the first holds, and once the first commits they are no longer missing.
On SQLite (one process) the rows are read without a lock, so no write lock is held across the
Temporal calls.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager, suppress
from datetime import timedelta
from typing import Any

import structlog
from fastapi import FastAPI
from prometheus_client import Counter
from sqlmodel.ext.asyncio.session import AsyncSession

from services.kit.db import Database
from services.orders.saga import OrderStart, SagaPort, pending_saga_starts, start_saga

log = structlog.get_logger(__name__)

# A failed start's order is swept this long after its grace ends, so that it is surely older.
_GRACE_MARGIN_SECONDS = 0.5

# `started`: this replica's start call succeeded; `deferred`: the saga engine was away, retried later.
SWEEPER_STARTS = Counter(
    "ordersaga_saga_sweeper_starts_total",
    "Saga starts the sweeper of this process attempted for orders whose start was lost, by outcome.",
    ["outcome"],
)


async def sweep_once(db: Database, saga: SagaPort, *, grace: timedelta, batch: int = 100) -> int:
    """Start every saga still missing after `grace`; returns how many were started now."""
    if db.is_sqlite:
        async with db.session() as session:
            missing = await pending_saga_starts(session, older_than=grace, limit=batch)
        started = 0
        for order in missing:
            async with db.session() as session:
                started += await _start(session, saga, order)
    else:
        async with db.session() as session, session.begin():
            missing = await pending_saga_starts(session, older_than=grace, limit=batch, claim=True)
            started = 0
            for order in missing:
                started += await _start(session, saga, order)
    if missing:
        log.info("saga_sweep", missing=len(missing), started=started)
    return started


async def _start(session: AsyncSession, saga: SagaPort, order: OrderStart) -> int:
    ok = await start_saga(session, saga, order)
    SWEEPER_STARTS.labels("started" if ok else "deferred").inc()
    return int(ok)


class _WatchedSaga:
    """The app's saga port, telling the sweeper when a start fails: that order is the sweeper's work."""

    def __init__(self, inner: SagaPort, on_lost: Callable[[], None]) -> None:
        self._inner = inner
        self._on_lost = on_lost

    async def start(self, order: OrderStart) -> None:
        try:
            await self._inner.start(order)
        except BaseException:
            self._on_lost()
            raise

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)


@asynccontextmanager
async def saga_sweeper(app: FastAPI) -> AsyncIterator[None]:
    """Sweep at start-up, after each failed start once its grace has passed, and on a slow safety
    poll (`saga_sweep_interval_seconds`) for starts lost where no signal reaches (a replica that
    crashed between its commit and its start call)."""
    settings = app.state.settings
    interval: float = settings.saga_sweep_interval_seconds
    batch: int = settings.saga_sweep_batch_size
    # The request that accepted an order starts its saga itself; only older ones are the sweeper's.
    grace = timedelta(seconds=settings.saga_start_grace_seconds)
    lost = asyncio.Event()
    app.state.saga = _WatchedSaga(app.state.saga, lost.set)

    async def sweep() -> None:
        try:
            await sweep_once(app.state.db, app.state.saga, grace=grace, batch=batch)
        except Exception:  # the next sweep tries again; the orders are safe in the database
            log.exception("saga_sweep_failed")

    async def loop_() -> None:
        await sweep()
        while True:
            with suppress(TimeoutError):
                await asyncio.wait_for(lost.wait(), interval)
            if lost.is_set():
                # A start failed just now: that order becomes the sweeper's once its grace is over.
                lost.clear()
                await asyncio.sleep(grace.total_seconds() + _GRACE_MARGIN_SECONDS)
            await sweep()

    task = asyncio.create_task(loop_(), name="saga-sweeper")
    try:
        yield
    finally:
        task.cancel()
        with suppress(asyncio.CancelledError):
            await task
        app.state.saga = app.state.saga._inner
