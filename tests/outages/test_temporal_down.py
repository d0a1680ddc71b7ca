"""Temporal frozen (SIGSTOP on the dev server of this module's own stack), then thawed.

While it is away an order is still accepted at once (202: the order and its outbox event are
committed; the orders service's sweeper starts the saga later), the saga view is a bounded 503
with Retry-After, and an orders service (re)started meanwhile boots and accepts orders too. Once
Temporal answers again every accepted order's saga runs to CONFIRMED, with one payment each.
"""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest

from tests.outages.conftest import GATEWAY_TIMEOUT_SECONDS, Timed, assert_unavailable, timed
from tests.support.driver import Customer, Driver
from tests.support.identity import as_admin, as_customer
from tests.support.stack import Stack, driving, running_stack

# The sweeper takes an unstarted order once it is this old (the production default is 5 s).
OUTAGE_ENV = {"ORDERS_SAGA_START_GRACE_SECONDS": "1"}


@pytest.fixture(scope="module")
def temporal_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    with running_stack(tmp_path_factory.mktemp("temporal-outage"), OUTAGE_ENV) as stack:
        yield stack


async def _place(driver: Driver, customer: Customer, product: str, key: str) -> tuple[str, float]:
    started = time.monotonic()
    response = await driver.place_order(customer, [(product, 1)], key=key)
    seconds = time.monotonic() - started
    assert response.status_code == 202, response.text
    body = response.json()
    assert body["workflow_id"] == f"order-{body['id']}"
    return str(body["id"]), seconds


def _saga_view(stack: Stack, order_id: str) -> Timed:
    return timed("GET", f"{stack.url('orders')}/orders/{order_id}/saga", headers=as_admin())


# Long variant (ORDERSAGA_TEST_FULL=1): Temporal killed and restarted (below) runs by default.
@pytest.mark.full
async def test_orders_are_accepted_while_temporal_is_frozen_and_their_sagas_run_once_it_is_back(
    temporal_stack: Stack,
) -> None:
    stack = temporal_stack
    assert stack.temporal is not None
    async with driving(stack) as driver:
        customer = await driver.customer()
        products = [await driver.product(stock=5) for _ in range(4)]
        warm, _ = await _place(driver, customer, products[0], "warm")
        order, _ = await driver.wait_final(warm)
        assert order["status"] == "CONFIRMED"  # the orders service holds a live Temporal client now
        stock_before = {p: (await driver.availability(p))["on_hand"] for p in products[1:]}

        stack.temporal.pause()
        try:
            during, seconds = await _place(driver, customer, products[1], "during")
            assert seconds < GATEWAY_TIMEOUT_SECONDS, f"POST /orders took {seconds:.2f}s"
            # The next order does not wait for Temporal again: the first found it away just now.
            next_one, next_seconds = await _place(driver, customer, products[3], "next")
            assert next_seconds < 1.0, f"the next POST /orders took {next_seconds:.2f}s"
            assert (await driver.order(during))["status"] == "PENDING"
            answer = _saga_view(stack, during)
            assert_unavailable(answer, "saga_unavailable", GATEWAY_TIMEOUT_SECONDS)
            print(
                f"temporal frozen: POST /orders 202 in {seconds:.2f}s, the next in {next_seconds:.2f}s, "
                f"saga view 503 in {answer.seconds:.2f}s"
            )
            # An update (here a cancel) waits for the workflow's handler: bounded by its own deadline.
            cancel = timed(
                "POST", f"{stack.url('orders')}/orders/{during}/cancel", headers=as_customer(customer.user_id)
            )
            assert_unavailable(cancel, "saga_unavailable", GATEWAY_TIMEOUT_SECONDS)
            print(f"temporal frozen: cancel 503 in {cancel.seconds:.2f}s")

            # A service that starts while Temporal is away boots, and accepts orders as well.
            stack.restart("orders")
            after_boot, seconds = await _place(driver, customer, products[2], "after-boot")
            assert seconds < GATEWAY_TIMEOUT_SECONDS, f"POST /orders after a boot took {seconds:.2f}s"
            answer = _saga_view(stack, after_boot)
            assert_unavailable(answer, "saga_unavailable", GATEWAY_TIMEOUT_SECONDS)
            print(f"after a boot: POST /orders 202 in {seconds:.2f}s, saga view 503 in {answer.seconds:.2f}s")
        finally:
            stack.temporal.resume()

        # Nothing lost: each accepted order gets its saga from the sweeper, and exactly one payment.
        for order_id, product in ((during, products[1]), (after_boot, products[2]), (next_one, products[3])):
            order, view = await driver.wait_final(order_id, timeout=90)
            assert (order["status"], view["status"]) == ("CONFIRMED", "completed"), (order, view)
            await driver.assert_invariants(order, {product: stock_before[product]})
        # The same keys again are the same orders, not new ones.
        assert (await _place(driver, customer, products[1], "during"))[0] == during


async def test_orders_are_accepted_while_temporal_is_killed_and_their_sagas_run_once_it_restarts(
    temporal_stack: Stack,
) -> None:
    """A stopped server refuses connections, and the SDK retries those for seconds past its
    per-attempt `rpc_timeout`: only the orders service's own deadline keeps the answers bounded."""
    stack = temporal_stack
    temporal = stack.temporal
    assert temporal is not None
    async with driving(stack) as driver:
        customer = await driver.customer()
        product = await driver.product(stock=5)
        warm, _ = await _place(driver, customer, product, "warm-before-kill")
        await driver.wait_final(warm)  # the orders service holds a connected client when it dies
        on_hand = (await driver.availability(product))["on_hand"]

        temporal.kill()
        try:
            order_id, seconds = await _place(driver, customer, product, "while-killed")
            assert seconds < GATEWAY_TIMEOUT_SECONDS, f"POST /orders took {seconds:.2f}s"
            answer = _saga_view(stack, order_id)
            assert_unavailable(answer, "saga_unavailable", GATEWAY_TIMEOUT_SECONDS)
            print(
                f"temporal killed: POST /orders 202 in {seconds:.2f}s, saga view 503 in {answer.seconds:.2f}s"
            )
        finally:
            temporal.start(timeout=60)  # the same port and database file: the same server, restarted

        order, view = await driver.wait_final(order_id, timeout=90)
        assert (order["status"], view["status"]) == ("CONFIRMED", "completed"), (order, view)
        await driver.assert_invariants(order, {product: on_hand})
