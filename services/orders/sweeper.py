"""Starts the saga of any accepted order whose start was lost (a crash or an outage after the commit)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager, suppress
from datetime import timedelta

import structlog
from fastapi import FastAPI

from services.kit.db import Database
from services.orders.saga import SagaPort, pending_saga_starts, start_saga

log = structlog.get_logger(__name__)


async def sweep_once(db: Database, saga: SagaPort, *, grace: timedelta, batch: int = 100) -> int:
    """Start every saga still missing after `grace`; returns how many were started now."""
    async with db.session() as session:
        missing = await pending_saga_starts(session, older_than=grace, limit=batch)
    started = 0
    for order in missing:
        async with db.session() as session:
            started += await start_saga(session, saga, order)
    if missing:
        log.info("saga_sweep", missing=len(missing), started=started)
    return started


@asynccontextmanager
async def saga_sweeper(app: FastAPI) -> AsyncIterator[None]:
    settings = app.state.settings
    interval: float = settings.saga_sweep_interval_seconds
    # The request that accepted an order starts its saga itself; only older ones are the sweeper's.
    grace = timedelta(seconds=settings.saga_start_grace_seconds)

    async def loop() -> None:
        while True:
            try:
                await sweep_once(app.state.db, app.state.saga, grace=grace)
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
