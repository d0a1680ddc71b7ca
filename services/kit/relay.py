"""The outbox relay: publishes a service's pending outbox rows to JetStream, in order, at least once.

A row is marked published only after JetStream acknowledged it. If the relay dies in between, the
row is published again on restart, with the same `Nats-Msg-Id`, and the stream drops the copy
(duplicate window). While NATS is away the relay backs off and the rows simply wait in the table.

Replicas on one PostgreSQL database share the work: each selects its batch `FOR UPDATE SKIP LOCKED`
and holds those row locks while it publishes and marks the batch, so another replica takes the next
rows instead of publishing the same ones again. On SQLite (one process, a single writer) no lock is
held across the publishes, which would block the service's own writes.

The relay wakes on work, not on a clock: a commit in this process that staged an event signals it
(`services.kit.outbox.on_outbox_commit`), so the process that wrote a row publishes it. Passes are
at least `outbox_min_interval_seconds` apart, so that under load one pass carries the events of
several commits instead of one each. `outbox_poll_interval_seconds` is the slow safety poll for rows
no signal announced: a replica on the same PostgreSQL database that died before its relay ran, or
rows left behind by a failed pass.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager, suppress
from datetime import UTC, datetime
from typing import Any, cast

import structlog
from nats.aio.client import Client as NatsClient
from nats.js import JetStreamContext
from prometheus_client import Counter
from sqlalchemy import Row, bindparam, func, update
from sqlmodel import select
from sqlmodel.ext.asyncio.session import AsyncSession
from sqlmodel.sql.expression import Select

from services.kit.business import OUTBOX_LAG, OUTBOX_UNPUBLISHED
from services.kit.db import Database
from services.kit.events import (
    CloudEvent,
    close_connection_task,
    connect,
    ensure_stream,
    event_source,
    subject_for,
)
from services.kit.models import utcnow
from services.kit.outbox import MAX_LAST_ERROR, OutboxEvent, on_outbox_commit
from services.kit.settings import ServiceSettings

log = structlog.get_logger(__name__)

MSG_ID_HEADER = "Nats-Msg-Id"
_INITIAL_BACKOFF = 0.2

OUTBOX_PUBLISHED = Counter(
    "ordersaga_outbox_published_total",
    "Outbox rows this process published and JetStream acknowledged as new.",
    ["service"],
)
# A copy JetStream dropped by its message id: a relay died between ack and mark, or two relays
# published one row. With row locks on PostgreSQL only the first should happen.
OUTBOX_DUPLICATES = Counter(
    "ordersaga_outbox_duplicates_total",
    "Outbox rows this process published that JetStream had already (dropped by Nats-Msg-Id).",
    ["service"],
)


class NatsUnavailable(Exception):
    """Not connected right now; publishing would only queue in the client's buffer."""


# Rows, not `OutboxEvent` instances: the relay only reads them, and the ORM's identity and state
# for each would cost more than the publish's own encoding.
_TABLE = OutboxEvent.__table__  # type: ignore[attr-defined]
_WAITING = select(func.count(), func.min(_TABLE.c.created_at)).where(_TABLE.c.published_at.is_(None))
_MARK_PUBLISHED = (
    update(_TABLE)
    .where(_TABLE.c.id.in_(bindparam("ids", expanding=True)), _TABLE.c.published_at.is_(None))
    .values(published_at=bindparam("now"), attempts=_TABLE.c.attempts + 1, last_error=None)
)
_MARK_FAILED = (
    update(_TABLE)
    .where(_TABLE.c.id == bindparam("row_id"))
    .values(attempts=_TABLE.c.attempts + 1, last_error=bindparam("error"))
)


def _pending_rows(batch_size: int, *, lock: bool) -> Select[Any]:
    """The oldest unpublished rows, a batch of them; `lock` skips rows another replica holds."""
    query = (
        select(*_TABLE.columns)
        .where(_TABLE.c.published_at.is_(None))
        .order_by(_TABLE.c.created_at, _TABLE.c.id)
        .limit(batch_size)
    )
    # PostgreSQL: rows another replica holds are skipped, not waited for: it is publishing them.
    return query.with_for_update(skip_locked=True) if lock else query


def to_cloudevent(row: Row[Any]) -> CloudEvent:
    return CloudEvent(
        id=str(row.id),
        source=event_source(row.source),
        type=row.type,
        time=row.created_at,
        subject=row.subject,
        data=row.data,
    )


class OutboxRelay:
    def __init__(self, db: Database, settings: ServiceSettings) -> None:
        self.db = db
        self.settings = settings
        self._nc: NatsClient | None = None
        self._js: JetStreamContext | None = None
        self._wake = asyncio.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        # Built once: a relay makes a pass per commit under load, and building and keying these
        # statements again on each pass cost more than running them.
        self._pending = _pending_rows(settings.outbox_batch_size, lock=not db.is_sqlite)

    def wake(self) -> None:
        """An event was committed: publish now rather than at the next safety poll."""
        loop = self._loop
        if loop is None or loop.is_closed():
            return
        with suppress(RuntimeError):  # the loop is shutting down
            loop.call_soon_threadsafe(self._wake.set)  # a commit may run off the loop's thread

    async def _jetstream(self) -> JetStreamContext:
        if self._nc is None or self._nc.is_closed:
            # The first connect retries until a server answers; unbounded, a relay started while
            # NATS is away would never come round again, and its outbox gauges would freeze at
            # what they said at boot while new rows pile up.
            try:
                self._nc = await asyncio.wait_for(
                    connect(self.settings.nats_url, name=f"{self.settings.service_name}-relay"),
                    self.settings.outbox_publish_timeout_seconds,
                )
            except TimeoutError as err:
                raise NatsUnavailable("no NATS server answered") from err
            self._js = None
        if not self._nc.is_connected:
            raise NatsUnavailable("not connected to NATS")
        if self._js is None:
            js = self._nc.jetstream(timeout=self.settings.outbox_publish_timeout_seconds)
            await ensure_stream(js)
            self._js = js
        return self._js

    async def publish_pending_once(self) -> int:
        """Publish up to one batch, oldest first; stops at the first failure so order is kept."""
        async with self.db.session() as session:
            # sqlmodel types a multi-column select's rows as tuples; they are Rows, read by name.
            rows = cast("list[Row[Any]]", list((await session.exec(self._pending)).all()))
            if self.db.is_sqlite and len(rows) < self.settings.outbox_batch_size:
                # The batch is every pending row: the gauges follow from it, no second query.
                self._observe_lag(len(rows), rows[0].created_at if rows else None)
            else:  # more than a batch, or rows other replicas hold: count them all
                count, oldest = (await session.exec(_WAITING)).one()
                self._observe_lag(int(count or 0), oldest)
            if self.db.is_sqlite:
                await session.commit()  # no write lock across the publishes
            if not rows:
                await session.commit()
                return 0
            js = await self._jetstream()  # NATS away: the rows just wait (closing the session unlocks)
            published: list[Row[Any]] = []
            try:
                await self._publish(js, rows, published)
            except Exception as exc:
                failed = rows[len(published)]
                await self._finish(session, published, failed, exc)
                raise
            await self._finish(session, published, None, None)
        return len(rows)

    async def _publish(self, js: JetStreamContext, rows: list[Row[Any]], published: list[Row[Any]]) -> None:
        """Publish `rows` in order, appending each acknowledged one to `published`."""
        service = self.settings.service_name
        for row in rows:
            ack = await js.publish(
                subject_for(row.type),
                to_cloudevent(row).to_json(),
                timeout=self.settings.outbox_publish_timeout_seconds,
                headers={MSG_ID_HEADER: str(row.id)},
            )
            if self.settings.outbox_crash_after_publish:
                log.warning("outbox_fault_exit_after_publish", event_id=str(row.id))
                os._exit(70)  # the fault hook: die exactly between the ack and the mark
            published.append(row)
            (OUTBOX_DUPLICATES if ack.duplicate else OUTBOX_PUBLISHED).labels(service).inc()
            # Counted by the metrics above; one INFO line per event was a quarter of the stack's lines.
            (log.info if ack.duplicate else log.debug)(
                "outbox_published",
                event_id=str(row.id),
                type=row.type,
                seq=ack.seq,
                duplicate=bool(ack.duplicate),
            )

    async def _finish(
        self,
        session: AsyncSession,
        published: list[Row[Any]],
        failed: Row[Any] | None,
        exc: Exception | None,
    ) -> None:
        """Mark the acknowledged rows in one statement, record the failure, and end the transaction.

        On PostgreSQL this commits the transaction holding the batch's row locks. If the database
        fails here, the rows stay pending and are published again under the same message ids.
        """
        try:
            if published:
                ids = [row.id for row in published]
                await session.exec(_MARK_PUBLISHED, params={"ids": ids, "now": utcnow()})
            if failed is not None and exc is not None:
                error = f"{type(exc).__name__}: {exc}"[:MAX_LAST_ERROR]
                await session.exec(_MARK_FAILED, params={"row_id": failed.id, "error": error})
            await session.commit()
        except Exception:
            if exc is None:
                raise
            # The database may be the thing that is down; the rows wait anyway, and the publish
            # failure is the one to report.
            with suppress(Exception):
                await session.rollback()

    def _observe_lag(self, count: int, oldest: datetime | None) -> None:
        service = self.settings.service_name
        OUTBOX_UNPUBLISHED.labels(service).set(count)
        if oldest is not None and oldest.tzinfo is None:
            oldest = oldest.replace(tzinfo=UTC)  # SQLite hands naive UTC back
        lag = (utcnow() - oldest).total_seconds() if oldest is not None else 0.0
        OUTBOX_LAG.labels(service).set(max(lag, 0.0))

    async def run(self) -> None:
        """Relay until cancelled; any failure (NATS or database away) backs off exponentially."""
        self._loop = asyncio.get_running_loop()
        unsubscribe = on_outbox_commit(self.db.engine, self.wake)
        try:
            await self._run()
        finally:
            unsubscribe()

    async def _run(self) -> None:
        backoff = _INITIAL_BACKOFF
        loop = asyncio.get_running_loop()
        while True:
            # Cleared before the pass: a commit during it makes the next pass follow.
            self._wake.clear()
            started = loop.time()
            try:
                published = await self.publish_pending_once()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.warning("outbox_relay_backoff", error=f"{type(exc).__name__}: {exc}", delay=backoff)
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, self.settings.outbox_backoff_max_seconds)
                continue
            backoff = _INITIAL_BACKOFF
            if published >= self.settings.outbox_batch_size:
                continue  # probably more waiting
            with suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self.settings.outbox_poll_interval_seconds)
            # Woken: let the commits of the next few milliseconds join this pass.
            rest = self.settings.outbox_min_interval_seconds - (loop.time() - started)
            if rest > 0:
                await asyncio.sleep(rest)

    async def close(self) -> None:
        if self._nc is not None and not self._nc.is_closed:
            await close_connection_task(None, self._nc)


@asynccontextmanager
async def run_relay(db: Database, settings: ServiceSettings) -> AsyncIterator[OutboxRelay]:
    """Run the relay beside the app; cancelled cleanly on shutdown."""
    relay = OutboxRelay(db, settings)
    task = asyncio.create_task(relay.run(), name=f"{settings.service_name}-outbox-relay")
    log.info("outbox_relay_started", nats_url=settings.nats_url)
    try:
        yield relay
    finally:
        await close_connection_task(task, None)
        await relay.close()
