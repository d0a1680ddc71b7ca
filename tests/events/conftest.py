"""Events end to end: a real nats-server, a real SMTP server (aiosmtpd) and the stack wired to both."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Iterator
from email.message import Message

import nats
import pytest

from ordersaga.smtp_sink import SmtpSink, start_smtp_sink
from services.kit.events import STREAM
from services.registry import DATA_SERVICES
from tests.support.driver import Driver
from tests.support.nats import NatsServer
from tests.support.processes import free_port
from tests.support.stack import Stack, driving, running_stack

# Fast polling and short redelivery bounds, so crash and poison paths finish in seconds.
EVENTS_ENV = {
    **{f"{name.upper()}_OUTBOX_POLL_INTERVAL_SECONDS": "0.1" for name in DATA_SERVICES},
    **{f"{name.upper()}_OUTBOX_BACKOFF_MAX_SECONDS": "1" for name in DATA_SERVICES},
    "NOTIFICATIONS_EMAIL_BACKEND": "smtp",
    "NOTIFICATIONS_EVENTS_ACK_WAIT_SECONDS": "3",
    "NOTIFICATIONS_EVENTS_MAX_DELIVER": "3",
    "NOTIFICATIONS_EVENTS_RETRY_DELAY_SECONDS": "0.3",
    "NOTIFICATIONS_EVENTS_FETCH_TIMEOUT_SECONDS": "0.5",
}


@pytest.fixture(scope="session")
def nats_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NatsServer]:
    server = NatsServer(tmp_path_factory.mktemp("nats")).start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def smtp_sink(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SmtpSink]:
    sink = start_smtp_sink(tmp_path_factory.mktemp("smtp") / "mail", port=free_port())
    yield sink
    sink.stop()


@pytest.fixture(scope="session")
def events_stack(
    tmp_path_factory: pytest.TempPathFactory, nats_server: NatsServer, smtp_sink: SmtpSink
) -> Iterator[Stack]:
    env = {**EVENTS_ENV, "NATS_URL": nats_server.url, "NOTIFICATIONS_SMTP_PORT": str(smtp_sink.port)}
    with running_stack(tmp_path_factory.mktemp("events-stack"), env) as running:
        yield running


@pytest.fixture
async def events_driver(events_stack: Stack) -> AsyncIterator[Driver]:
    async with driving(events_stack) as client:
        yield client


def mails_to(sink: SmtpSink, address: str) -> list[Message]:
    return [m for m in sink.messages() if str(m.get("To", "")).lower() == address.lower()]


async def wait_for_mails(
    sink: SmtpSink, addresses: list[str], per_address: int = 1, timeout: float = 30.0, settle: float = 1.5
) -> dict[str, list[Message]]:
    """Wait until every address got `per_address` mails, then a little longer to catch any duplicate."""
    deadline = time.monotonic() + timeout
    wanted = {address.lower() for address in addresses}

    def by_address() -> dict[str, list[Message]]:
        found: dict[str, list[Message]] = {address: [] for address in wanted}
        for message in sink.messages():
            to = str(message.get("To", "")).lower()
            if to in found:
                found[to].append(message)
        return found

    found = by_address()
    while any(len(m) < per_address for m in found.values()):
        if time.monotonic() > deadline:
            missing = sorted(a for a, m in found.items() if len(m) < per_address)
            raise AssertionError(
                f"{len(missing)} addresses still wait for mail after {timeout}s: {missing[:5]}"
            )
        await asyncio.sleep(0.2)
        found = by_address()
    await asyncio.sleep(settle)
    return by_address()


async def stream_count(nats_url: str, subject: str) -> int:
    """How many messages the stream holds on one subject."""
    nc = await nats.connect(nats_url)
    try:
        info = await nc.jetstream().stream_info(STREAM, subjects_filter=subject)
        return int((info.state.subjects or {}).get(subject, 0))
    finally:
        await nc.close()
