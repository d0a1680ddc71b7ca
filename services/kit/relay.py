"""The outbox relay: publishes a service's pending outbox rows to JetStream, in order, at least once.

A row is marked published only after JetStream acknowledged it. If the relay dies in between, the
row is published again on restart, with the same `Nats-Msg-Id`, and the stream drops the copy
(duplicate window). While NATS is away the relay backs off and the rows simply wait in the table.
Two relay replicas may publish the same row; deduplication makes that harmless too.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager, suppress
from datetime import UTC, datetime

import structlog
from nats.aio.client import Client as NatsClient
from nats.js import JetStreamContext
from sqlalchemy import func, update
from sqlmodel import col, select

from services.kit.business import OUTBOX_LAG, OUTBOX_UNPUBLISHED
from services.kit.db import Database
from services.kit.events import CloudEvent, connect, ensure_stream, event_source, subject_for
from services.kit.models import utcnow
from services.kit.outbox import MAX_LAST_ERROR, OutboxEvent
from services.kit.settings import ServiceSettings

log = structlog.get_logger(__name__)

MSG_ID_HEADER = "Nats-Msg-Id"
_INITIAL_BACKOFF = 0.2


class NatsUnavailable(Exception):
    """Not connected right now; publishing would only queue in the client's buffer."""


def to_cloudevent(row: OutboxEvent) -> CloudEvent:
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
        query = (
            select(OutboxEvent)
            .where(col(OutboxEvent.published_at).is_(None))
            .order_by(col(OutboxEvent.created_at), col(OutboxEvent.id))
            .limit(self.settings.outbox_batch_size)
        )
        waiting = select(func.count(), func.min(OutboxEvent.created_at)).where(
            col(OutboxEvent.published_at).is_(None)
        )
        async with self.db.session() as session:
            count, oldest = (await session.exec(waiting)).one()
            rows = list((await session.exec(query)).all())
            await session.commit()
        self._observe_lag(int(count or 0), oldest)
        if not rows:
            return 0
        js = await self._jetstream()
        for row in rows:
            try:
                ack = await js.publish(
                    subject_for(row.type),
                    to_cloudevent(row).to_json(),
                    timeout=self.settings.outbox_publish_timeout_seconds,
                    headers={MSG_ID_HEADER: str(row.id)},
                )
            except Exception as exc:
                await self._record_failure(row, exc)
                raise
            if self.settings.outbox_crash_after_publish:
                log.warning("outbox_fault_exit_after_publish", event_id=str(row.id))
                os._exit(70)  # the fault hook: die exactly between the ack and the mark
            await self._mark_published(row)
            log.info(
                "outbox_published",
                event_id=str(row.id),
                type=row.type,
                seq=ack.seq,
                duplicate=bool(ack.duplicate),
            )
        return len(rows)

    def _observe_lag(self, count: int, oldest: datetime | None) -> None:
        service = self.settings.service_name
        OUTBOX_UNPUBLISHED.labels(service).set(count)
        if oldest is not None and oldest.tzinfo is None:
            oldest = oldest.replace(tzinfo=UTC)  # SQLite hands naive UTC back
        lag = (utcnow() - oldest).total_seconds() if oldest is not None else 0.0
        OUTBOX_LAG.labels(service).set(max(lag, 0.0))

    async def _mark_published(self, row: OutboxEvent) -> None:
        async with self.db.session() as session, session.begin():
            await session.exec(
                update(OutboxEvent)
                .where(col(OutboxEvent.id) == row.id, col(OutboxEvent.published_at).is_(None))
                .values(published_at=utcnow(), attempts=OutboxEvent.attempts + 1, last_error=None)
            )

    async def _record_failure(self, row: OutboxEvent, exc: Exception) -> None:
        error = f"{type(exc).__name__}: {exc}"[:MAX_LAST_ERROR]
        with suppress(Exception):  # the database may be the thing that is down; the row waits anyway
            async with self.db.session() as session, session.begin():
                await session.exec(
                    update(OutboxEvent)
                    .where(col(OutboxEvent.id) == row.id)
                    .values(attempts=OutboxEvent.attempts + 1, last_error=error)
                )

    async def run(self) -> None:
        """Relay until cancelled; any failure (NATS or database away) backs off exponentially."""
        backoff = _INITIAL_BACKOFF
        while True:
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
            if published < self.settings.outbox_batch_size:
                await asyncio.sleep(self.settings.outbox_poll_interval_seconds)

    async def close(self) -> None:
        if self._nc is not None and not self._nc.is_closed:
            with suppress(Exception):
                await self._nc.close()


@asynccontextmanager
async def run_relay(db: Database, settings: ServiceSettings) -> AsyncIterator[OutboxRelay]:
    """Run the relay beside the app; cancelled cleanly on shutdown."""
    relay = OutboxRelay(db, settings)
    task = asyncio.create_task(relay.run(), name=f"{settings.service_name}-outbox-relay")
    log.info("outbox_relay_started", nats_url=settings.nats_url)
    try:
        yield relay
    finally:
        task.cancel()
        with suppress(asyncio.CancelledError):
            await task
        await relay.close()
