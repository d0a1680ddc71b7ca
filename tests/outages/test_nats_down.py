"""NATS killed (SIGKILL, this module's own server), then started again on the same port and store.

While it is away the orders service keeps accepting orders, even after a restart: their events
wait in its outbox, and its metrics say how many. Once it is back the relay publishes them, and a
durable consumer that read the events before the outage receives every one of the rest exactly once.
"""

from __future__ import annotations

import asyncio
import re
import time
import uuid
from collections import Counter
from collections.abc import Iterator

import httpx
import nats
import pytest
from nats.errors import TimeoutError as NatsTimeout
from nats.js.errors import NotFoundError

from services.kit.events import CloudEvent
from tests.outages.conftest import service_process, timed, wait_until
from tests.support.identity import as_customer
from tests.support.nats import NatsServer
from tests.support.processes import ManagedProcess

CONSUMER = "outage-test"
# How long the events may take to arrive once NATS is back: reconnect (0.5 s) plus relay backoff (≤ 1 s).
CATCH_UP_SECONDS = 15.0


@pytest.fixture(scope="module")
def nats_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NatsServer]:
    server = NatsServer(tmp_path_factory.mktemp("outage-nats")).start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def orders_process(
    nats_server: NatsServer, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[str, ManagedProcess]]:
    env = {
        "NATS_URL": nats_server.url,
        "ORDERS_OUTBOX_POLL_INTERVAL_SECONDS": "0.1",
        "ORDERS_OUTBOX_BACKOFF_MAX_SECONDS": "1",
    }
    process, url = service_process("orders", tmp_path_factory.mktemp("orders-nats-outage"), env)
    process.start(timeout=90)
    yield url, process
    process.stop()


def _place(orders: str, user: str) -> tuple[str, float]:
    body = {
        "items": [{"product_id": str(uuid.uuid4()), "quantity": 1}],
        "payment_method_id": str(uuid.uuid4()),
    }
    answer = timed("POST", f"{orders}/orders", json=body, headers=as_customer(user))
    assert answer.response.status_code == 202, answer.response.text
    return str(answer.response.json()["id"]), answer.seconds


def _unpublished(orders: str) -> float:
    metrics = httpx.get(f"{orders}/metrics", timeout=5).text
    found = re.search(r'^ordersaga_outbox_unpublished_events\{service="orders"\} (\S+)$', metrics, re.M)
    assert found, "the outbox gauge is missing from /metrics"
    return float(found.group(1))


async def _created_events(url: str, want: set[str], timeout: float) -> Counter[str]:
    """order.created events per order id, read by the durable consumer until all of `want` came,
    and a moment longer so that a duplicate would show."""
    seen: Counter[str] = Counter()
    nc = await nats.connect(url)
    try:
        js = nc.jetstream()
        deadline = time.monotonic() + timeout
        while True:
            try:  # the relay creates the stream with its first publish
                subscription = await js.pull_subscribe("ordersaga.orders.>", durable=CONSUMER)
                break
            except NotFoundError:
                assert time.monotonic() < deadline, "the event stream never appeared"
                await asyncio.sleep(0.2)
        settle_until: float | None = None
        while settle_until is None or time.monotonic() < settle_until:
            assert time.monotonic() < deadline, f"still missing after {timeout}s: {want - set(seen)}"
            try:
                messages = await subscription.fetch(20, timeout=0.5)
            except (NatsTimeout, TimeoutError):  # both, depending on when the wait ran out
                messages = []
            for message in messages:
                event = CloudEvent.parse(message.data)
                if event.type == "order.created":
                    seen[str(event.data["order_id"])] += 1
                await message.ack()
            if settle_until is None and want <= set(seen):
                settle_until = time.monotonic() + 1.0
                deadline = max(deadline, settle_until + 1)
    finally:
        await nc.close()
    return seen


async def test_orders_are_accepted_while_nats_is_down_and_their_events_arrive_once_it_is_back(
    nats_server: NatsServer, orders_process: tuple[str, ManagedProcess]
) -> None:
    orders, process = orders_process
    user = str(uuid.uuid4())
    first, _ = _place(orders, user)
    assert await _created_events(nats_server.url, {first}, 30) == Counter({first: 1})

    assert nats_server.process is not None
    nats_server.process.kill()
    during = []
    for _ in range(3):
        order_id, seconds = _place(orders, user)
        assert seconds < 1.0, f"POST /orders took {seconds:.2f}s with NATS down"
        during.append(order_id)
    # The events wait in the outbox, and the service says so.
    wait_until(
        lambda: _unpublished(orders) >= len(during), 10, "the outbox gauge counting the waiting events"
    )
    # Long enough for the relay to fail and back off a few times, not just once.
    await asyncio.sleep(2)
    assert "outbox_relay_backoff" in process.log_path.read_text(), "the relay's retries are not logged"
    # A service (re)started while NATS is away boots and takes orders as well.
    process.stop()
    process.start(timeout=60)
    order_id, seconds = _place(orders, user)
    assert seconds < 1.0, f"POST /orders after a boot took {seconds:.2f}s with NATS down"
    during.append(order_id)
    wait_until(lambda: _unpublished(orders) >= len(during), 10, "the restarted service counting its outbox")

    nats_server.start()
    started = time.monotonic()
    seen = await _created_events(nats_server.url, set(during), CATCH_UP_SECONDS)
    print(f"nats back: {len(during)} waiting events consumed {time.monotonic() - started:.2f}s after restart")
    assert seen == Counter(dict.fromkeys(during, 1)), seen
    wait_until(lambda: _unpublished(orders) == 0, 10, "the outbox drained")
