"""Idle means idle: the outbox relay sleeps on its slow safety poll, and a commit that staged an event
wakes it, so that event is published within a second. A real nats-server and a real SQLite file."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import nats
import pytest
from sqlalchemy import insert

from services.kit.db import Database
from services.kit.models import utcnow
from services.kit.outbox import OutboxEvent, add_event
from services.kit.relay import run_relay
from services.kit.settings import ServiceSettings
from tests.support.nats import NatsServer

SUBJECT = "ordersaga.idletests.>"  # subject_for("idletest.<action>")


@pytest.fixture(scope="module")
def nats_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NatsServer]:
    server = NatsServer(tmp_path_factory.mktemp("nats")).start()
    yield server
    server.stop()


@pytest.fixture
async def database(tmp_path: Path) -> AsyncIterator[Database]:
    db = Database(f"sqlite+aiosqlite:///{tmp_path / 'idle.db'}")
    async with db.engine.begin() as conn:
        await conn.run_sync(OutboxEvent.metadata.create_all, tables=[OutboxEvent.__table__])  # type: ignore[list-item]
    yield db
    await db.dispose()


async def _arrival(queue: asyncio.Queue[str], event_id: str, timeout: float) -> float | None:
    """Seconds until the message of `event_id` arrived, or None if it did not within `timeout`."""
    started = time.monotonic()
    deadline = started + timeout
    while (left := deadline - time.monotonic()) > 0:
        try:
            body = await asyncio.wait_for(queue.get(), left)
        except TimeoutError:
            return None
        if event_id in body:
            return time.monotonic() - started
    return None


async def test_an_event_committed_at_idle_is_published_within_a_second(
    nats_server: NatsServer, database: Database
) -> None:
    settings = ServiceSettings(service_name="idletest", nats_url=nats_server.url)
    # The shipped safety poll is seconds: an arrival within one second is the signal's doing.
    assert settings.outbox_poll_interval_seconds >= 5
    received: asyncio.Queue[str] = asyncio.Queue()
    nc = await nats.connect(nats_server.url)

    async def on_message(msg: nats.aio.msg.Msg) -> None:
        await received.put(msg.data.decode())

    await nc.subscribe(SUBJECT, cb=on_message)
    try:
        async with run_relay(database, settings):
            await asyncio.sleep(1.5)  # the relay's first pass found nothing: it is idle now

            async with database.session() as session, session.begin():
                staged = add_event(session, source="idletest", type="idletest.signalled", data={"n": 1})
            waited = await _arrival(received, str(staged.id), timeout=1.0)
            assert waited is not None, "an event committed at idle was not published within a second"

            # A row written past `add_event` (as by a replica whose relay died) raises no signal:
            # it waits for the safety poll, which proves the arrival above was not a poll's.
            silent = uuid.uuid4()
            async with database.session() as session, session.begin():
                row = {"id": silent, "source": "idletest", "type": "idletest.silent", "data": {}}
                await session.exec(insert(OutboxEvent).values(**row, created_at=utcnow(), attempts=0))
            assert await _arrival(received, str(silent), timeout=1.5) is None
            late = await _arrival(received, str(silent), timeout=settings.outbox_poll_interval_seconds + 5)
            assert late is not None, "the safety poll did not publish the row no signal announced"
    finally:
        await nc.close()
