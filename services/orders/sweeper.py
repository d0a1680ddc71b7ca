"""Starts the saga of any accepted order whose start was lost (a crash or an outage after the commit).

Every orders replica runs a sweeper. On PostgreSQL a sweep claims its batch `FOR UPDATE SKIP LOCKED`
and records each start in that same transaction, so two replicas never start the same lost saga:
the second skips the rows the first holds, and once the first commits they are no longer missing.
On SQLite (one process) the rows are read without a lock, so no write lock is held across the
Temporal calls.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager, suppress
from datetime import timedelta

import structlog
from fastapi import FastAPI
from prometheus_client import Counter
from sqlmodel.ext.asyncio.session import AsyncSession

from services.kit.db import Database
from services.orders.saga import OrderStart, SagaPort, pending_saga_starts, start_saga

log = structlog.get_logger(__name__)

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


@asynccontextmanager
async def saga_sweeper(app: FastAPI) -> AsyncIterator[None]:
    settings = app.state.settings
    interval: float = settings.saga_sweep_interval_seconds
    batch: int = settings.saga_sweep_batch_size
    # The request that accepted an order starts its saga itself; only older ones are the sweeper's.
    grace = timedelta(seconds=settings.saga_start_grace_seconds)

    async def loop() -> None:
        while True:
            try:
                await sweep_once(app.state.db, app.state.saga, grace=grace, batch=batch)
            except Exception:  # the next sweep tries again; the orders are safe in the database
                log.exception("saga_sweep_failed")
            await asyncio.sleep(interval)

    task = asyncio.create_task(loop(), name="saga-sweeper")
    try:
        yield
    finally:
        task.cancel()
        with suppress(asyncio.CancelledError):
            await task
