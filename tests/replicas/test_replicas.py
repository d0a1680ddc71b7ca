"""Every background job with three replicas of its service on one PostgreSQL database.

The claims (RELIABILITY.md, "Replicas on one database"): each outbox row is published once and
every relay replica publishes some; each lost saga start is made once, by some replica, and every
replica makes some; each event becomes one notice, sent once, and every notifications replica
sends some.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections import Counter
from collections.abc import Awaitable, Callable, Iterator

import httpx
import nats
import pytest
from temporalio.client import Client

from ordersaga.smtp_sink import SmtpSink, start_smtp_sink
from services.kit.events import STREAM, CloudEvent, subject_for
from services.kit.models import utcnow
from tests.replicas.conftest import ReplicasFactory, per_replica, scalar
from tests.support.identity import as_customer
from tests.support.nats import NatsServer
from tests.support.processes import free_port
from tests.support.temporal import dev_server

pytestmark = [pytest.mark.slow, pytest.mark.postgres]

# Small batches and fast polls, so that three replicas all get a share within seconds.
FAST_RELAY = {
    "OUTBOX_POLL_INTERVAL_SECONDS": "0.1",
    "OUTBOX_BATCH_SIZE": "10",
    "OUTBOX_BACKOFF_MAX_SECONDS": "1",
}


def prefixed(service: str, env: dict[str, str]) -> dict[str, str]:
    return {f"{service.upper()}_{key}": value for key, value in env.items()}


def order_body() -> dict[str, object]:
    return {
        "items": [{"product_id": str(uuid.uuid4()), "quantity": 1}],
        "payment_method_id": str(uuid.uuid4()),
    }


async def place_orders(urls: list[str], count: int, concurrency: int = 16) -> list[str]:
    """POST /orders `count` times, round robin over the replicas, `concurrency` at a time."""
    gate = asyncio.Semaphore(concurrency)

    async def place(client: httpx.AsyncClient, i: int) -> str:
        async with gate:
            response = await client.post(
                urls[i % len(urls)] + "/orders", json=order_body(), headers=as_customer(uuid.uuid4())
            )
        assert response.status_code == 202, response.text
        return str(response.json()["id"])

    async with httpx.AsyncClient(timeout=30) as client:
        return list(await asyncio.gather(*(place(client, i) for i in range(count))))


async def eventually(check: Callable[[], Awaitable[bool]], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not await check():
        assert time.monotonic() < deadline, f"{what} after {timeout}s"
        await asyncio.sleep(0.3)


async def stream_messages(nats_url: str, subjects: str) -> int:
    nc = await nats.connect(nats_url)
    try:
        info = await nc.jetstream().stream_info(STREAM, subjects_filter=subjects)
        return sum((info.state.subjects or {}).values())
    finally:
        await nc.close()


# ---- the outbox relay ------------------------------------------------------------------------


async def test_three_relays_publish_each_outbox_row_once_and_share_the_work(
    replicas: ReplicasFactory, nats_server: NatsServer
) -> None:
    orders = replicas("orders")
    env = {"NATS_URL": nats_server.url, **prefixed("orders", {"SAGA_ENGINE": "none", **FAST_RELAY})}
    urls = orders.start(env)

    placed = await place_orders(urls, 300)  # writes go through all three while all three relay
    rows = await scalar(orders.database_url, "select count(*) from outbox")
    assert rows >= len(placed) == 300

    async def drained() -> bool:
        sql = "select count(*) from outbox where published_at is null"
        return await scalar(orders.database_url, sql) == 0

    await eventually(drained, 60, "outbox rows still unpublished")
    await asyncio.sleep(1.0)  # a late duplicate publish would show in the counters now

    published = await per_replica(urls, "ordersaga_outbox_published_total", service="orders")
    duplicates = await per_replica(urls, "ordersaga_outbox_duplicates_total", service="orders")
    print(f"relay: {rows} rows, published per replica {published}, duplicates {duplicates}")
    assert sum(published) == rows, orders.logs()  # each row published once ...
    assert sum(duplicates) == 0  # ... and no replica sent a copy JetStream had to drop
    assert await stream_messages(nats_server.url, "ordersaga.orders.>") == rows
    assert all(count > 0 for count in published), f"a relay replica starved: {published}"


# ---- the saga sweeper ------------------------------------------------------------------------


@pytest.fixture(scope="module")
def temporal_address(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    process, address = dev_server(tmp_path_factory.mktemp("temporal"))
    process.start(timeout=60)
    yield address
    process.stop()


async def workflow_ids(address: str) -> Counter[str]:
    """Every OrderWorkflow execution Temporal knows of, counted by workflow id."""
    client = await Client.connect(address)
    ids: Counter[str] = Counter()
    async for execution in client.list_workflows("WorkflowType = 'OrderWorkflow'"):
        ids[execution.id] += 1
    return ids


# Long variants (ORDERSAGA_TEST_FULL=1): the relay test above is the family's gating run.
@pytest.mark.full
async def test_three_sweepers_start_each_lost_saga_exactly_once(
    replicas: ReplicasFactory, temporal_address: str
) -> None:
    orders = replicas("orders")
    sweeping = prefixed(
        "orders",
        {"SAGA_START_GRACE_SECONDS": "0", "SAGA_SWEEP_INTERVAL_SECONDS": "0.2", "SAGA_SWEEP_BATCH_SIZE": "5"},
    )
    urls = orders.start({"TEMPORAL_ADDRESS": temporal_address, **sweeping})
    # The accepting replica's Temporal is a closed port: every start it tries is lost, as in an
    # outage right after the commit. Its own sweeper stays asleep for the test.
    lossy = {
        "TEMPORAL_ADDRESS": f"127.0.0.1:{free_port()}",
        **prefixed("orders", {"SAGA_SWEEP_INTERVAL_SECONDS": "3600", "TEMPORAL_RPC_TIMEOUT_SECONDS": "0.5"}),
    }
    [accepting] = orders.start(lossy, count=1, name="accepting")

    placed = await place_orders([accepting], 90)

    async def all_started() -> bool:
        sql = "select count(*) from orders where saga_started_at is null"
        return await scalar(orders.database_url, sql) == 0

    await eventually(all_started, 60, "orders still wait for their saga")
    expected = {f"order-{order_id}" for order_id in placed}

    async def all_listed() -> bool:
        return set(await workflow_ids(temporal_address)) >= expected

    await eventually(all_listed, 20, "workflows not listed yet")
    await asyncio.sleep(1.0)

    executions = await workflow_ids(temporal_address)
    starts = await per_replica(urls, "ordersaga_saga_sweeper_starts_total", outcome="started")
    print(f"sweeper: {len(placed)} lost starts, started per replica {starts}")
    assert {wid: executions[wid] for wid in expected} == dict.fromkeys(expected, 1)  # one saga each
    assert sum(starts) == len(placed), orders.logs()  # no replica started one another had started
    assert all(count > 0 for count in starts), f"a sweeper replica starved: {starts}"


# ---- the notifications consumer and sender ---------------------------------------------------


@pytest.fixture
def smtp_sink(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SmtpSink]:
    sink = start_smtp_sink(tmp_path_factory.mktemp("smtp") / "mail", port=free_port())
    yield sink
    sink.stop()


async def publish_user_created(nats_url: str, count: int) -> list[str]:
    """`count` user.created events, as the users service's relay publishes them; their emails."""
    nc = await nats.connect(nats_url)
    emails = []
    try:
        js = nc.jetstream()
        for i in range(count):
            user_id = uuid.uuid4()
            email = f"replica-{i}-{user_id.hex[:8]}@example.com"
            event = CloudEvent(
                id=str(uuid.uuid4()),
                source="/ordersaga/users",
                type="user.created",
                time=utcnow(),
                subject=str(user_id),
                data={"user_id": str(user_id), "email": email, "username": f"replica{i}", "role": "customer"},
            )
            await js.publish(subject_for(event.type), event.to_json(), headers={"Nats-Msg-Id": event.id})
            emails.append(email)
    finally:
        await nc.close()
    return emails


@pytest.mark.full
async def test_three_notification_replicas_send_each_notice_once(
    replicas: ReplicasFactory, nats_server: NatsServer, smtp_sink: SmtpSink
) -> None:
    notifications = replicas("notifications")
    env = {
        "NATS_URL": nats_server.url,
        **prefixed(
            "notifications",
            {
                "EMAIL_BACKEND": "smtp",
                "SMTP_PORT": str(smtp_sink.port),
                "POLL_INTERVAL_SECONDS": "0.2",
                "EVENTS_FETCH_TIMEOUT_SECONDS": "0.5",
                "EVENTS_BATCH_SIZE": "5",
                "BATCH_SIZE": "5",
                **FAST_RELAY,
            },
        ),
    }
    urls = notifications.start(env)
    emails = await publish_user_created(nats_server.url, 90)

    def received() -> Counter[str]:
        return Counter(str(m.get("To", "")).lower() for m in smtp_sink.messages())

    async def all_received() -> bool:
        return all(received()[email] >= 1 for email in emails)

    await eventually(all_received, 60, "welcome mails still missing")
    await asyncio.sleep(2.0)  # a second send of any notice would arrive now

    mails = received()
    sent = await per_replica(urls, "ordersaga_notification_deliveries_total", channel="email", status="sent")
    handled = await per_replica(urls, "notifications_events_total", type="user.created", outcome="handled")
    print(f"notifications: {len(emails)} events, handled per replica {handled}, sent per replica {sent}")
    assert {email: mails[email] for email in emails} == dict.fromkeys(emails, 1)  # each once
    assert sum(handled) == len(emails)  # one shared durable consumer: each event handled by one
    rows = await scalar(notifications.database_url, "select count(*) from notifications")
    assert rows == len(emails)
    assert sum(sent) == len(emails)
    assert all(count > 0 for count in sent), f"a sender replica starved: {sent}"
    assert all(count > 0 for count in handled), f"a consumer replica starved: {handled}"
