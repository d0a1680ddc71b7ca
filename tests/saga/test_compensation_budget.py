"""The shipped compensation budget (10 minutes) is a durable retry; the time-skipping server lets it run out.

The operator-action tests shorten it, as an operator may (WORKER_COMPENSATION_BUDGET_SECONDS); this
one runs the default, against the real services, with the release of stock refused for good.
"""

from __future__ import annotations

import asyncio
import uuid
from datetime import timedelta

import pytest
from temporalio.testing import WorkflowEnvironment

from services.registry import DATA_SERVICES
from tests.support.driver import Driver
from tests.support.fault_proxy import FaultProxies, Match
from tests.support.identity import INTERNAL_TOKEN
from tests.support.processes import VENV_BIN
from tests.support.stack import Stack
from workers.main import running_worker
from workers.settings import WorkerSettings
from workflows.order import OrderWorkflow
from workflows.payloads import OrderInput, OrderLine, RetryCompensations, SagaView, workflow_id_for

pytestmark = [pytest.mark.slow, pytest.mark.temporal]

DECLINED = "4000000000000002"
TASK_QUEUE = "orders-compensation-budget"


async def test_a_compensation_refused_past_the_default_budget_waits_for_a_retry(
    driver: Driver, stack: Stack
) -> None:
    customer = await driver.customer(card=DECLINED)
    product = await driver.product(stock=3)
    proxies = FaultProxies({name: stack.url(name) for name in DATA_SERVICES}).start()
    release = proxies.arm(Match("inventory", "POST", r"/reservations/[^/]+/release"))
    release.fail_with(503, "inventory_down", times=1_000_000)
    settings = WorkerSettings(
        internal_token=INTERNAL_TOKEN,
        **{f"{name}_url": proxies.url(name) for name in DATA_SERVICES},
        reconcile_interval_seconds=0,  # the test server has no schedules
    )
    assert settings.compensation_budget_seconds == 600, "the shipped default"
    order_id = str(uuid.uuid4())
    await driver.record_order(order_id, customer, [(product, 2)])
    try:
        async with (
            await WorkflowEnvironment.start_time_skipping(
                test_server_existing_path=str(VENV_BIN / "temporal-test-server")
            ) as env,
            running_worker(env.client, settings, task_queue=TASK_QUEUE),
        ):
            handle = await env.client.start_workflow(
                OrderWorkflow.run,
                OrderInput(order_id, customer.user_id, customer.payment_method_id, [OrderLine(product, 2)]),
                id=workflow_id_for(order_id),
                task_queue=TASK_QUEUE,
            )
            view = await _wait_view(env, handle, lambda v: v.status == "compensation_failed")
            release_step = next(step for step in view.steps if step.name == "reserve_stock")
            assert release_step.compensation is not None
            assert release_step.compensation.status == "failed"
            assert release_step.compensation.attempts > 10, "retried with backoff for ten minutes"
            assert (await driver.order(order_id))["status"] == "CANCELLED", "the others ran"
            assert (await driver.availability(product))["reserved"] == 2

            proxies.reset()
            await handle.execute_update(OrderWorkflow.retry_compensations, RetryCompensations("test"))
            await handle.result()
            view = await handle.query(OrderWorkflow.status)
    finally:
        proxies.stop()
    assert view.status == "compensated"
    order = await driver.order(order_id)
    await driver.assert_invariants(order, {product: 3})


async def _wait_view(env: WorkflowEnvironment, handle: object, done: object) -> SagaView:
    """Skip time a minute at a time until the saga view satisfies `done`."""
    for _ in range(60):
        view: SagaView = await handle.query(OrderWorkflow.status)  # type: ignore[attr-defined]
        if done(view):  # type: ignore[operator]
            return view
        await env.sleep(timedelta(minutes=1))
        await asyncio.sleep(0.2)  # the worker runs the attempts that came due
    raise AssertionError(f"the saga view never got there: {view}")
