"""The 24 h review timeout is a durable timer; the time-skipping test server makes it pass at once."""

from __future__ import annotations

import os
import uuid

import pytest
from temporalio.testing import WorkflowEnvironment

from tests.saga.conftest import HISTORIES
from tests.support.driver import Driver
from tests.support.identity import INTERNAL_TOKEN
from tests.support.processes import VENV_BIN
from tests.support.stack import Stack
from workers.main import running_worker
from workers.settings import WorkerSettings
from workflows.order import OrderWorkflow
from workflows.payloads import OrderInput, OrderLine, OrderResult, workflow_id_for

pytestmark = [pytest.mark.slow, pytest.mark.temporal]


async def test_unreviewed_order_times_out_after_24_hours_and_compensates(
    driver: Driver, stack: Stack
) -> None:
    customer = await driver.customer()
    product = await driver.product(stock=3, price_cents=60_000)
    settings = WorkerSettings(
        internal_token=INTERNAL_TOKEN,
        users_url=stack.url("users"),
        inventory_url=stack.url("inventory"),
        payments_url=stack.url("payments"),
        orders_url=stack.url("orders"),
        notifications_url=stack.url("notifications"),
        review_timeout_seconds=24 * 3600,
    )
    order_id = str(uuid.uuid4())
    await driver.record_order(order_id, customer, [(product, 2)])
    async with (
        await WorkflowEnvironment.start_time_skipping(
            test_server_existing_path=str(VENV_BIN / "temporal-test-server")
        ) as env,
        running_worker(env.client, settings, task_queue="orders-timeskip"),
    ):
        # The order is written without a saga, so no other server runs one for it.
        # Started without search attributes (the test server cannot define custom ones), the saga
        # keeps none up to date.
        result: OrderResult = await env.client.execute_workflow(
            OrderWorkflow.run,
            OrderInput(order_id, customer.user_id, customer.payment_method_id, [OrderLine(product, 2)]),
            id=workflow_id_for(order_id),
            task_queue="orders-timeskip",
        )
        handle = env.client.get_workflow_handle(workflow_id_for(order_id))
        view = await handle.query(OrderWorkflow.status)
        if os.environ.get("ORDERSAGA_RECORD_HISTORIES"):
            (HISTORIES / "review_timeout.json").write_text((await handle.fetch_history()).to_json())

    assert (result.status, result.cancel_reason) == ("CANCELLED", "review_timeout")
    review = next(step for step in view.steps if step.name == "review")
    assert review.status == "failed"
    assert review.error == "review_timeout"
    order = await driver.order(order_id)
    assert (order["status"], order["cancel_reason"]) == ("CANCELLED", "review_timeout")
    await driver.assert_invariants(order, {product: 3})
    assert [p["status"] for p in await driver.payments_of(order_id)] == ["voided"], "the hold was let go"
