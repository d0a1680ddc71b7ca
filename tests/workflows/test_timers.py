"""The shipped review timeout (24 h) and compensation budget (10 min), on the time-skipping server."""

from __future__ import annotations

import asyncio
from datetime import timedelta
from typing import Any

import pytest
from temporalio.client import WorkflowHandle, WorkflowUpdateFailedError
from temporalio.exceptions import ApplicationError
from temporalio.testing import WorkflowEnvironment

from tests.workflows.standins import FOREVER, StandIns, order_input, saga, step, steps
from workers.settings import WorkerSettings
from workflows.contract import AbandonCompensations, OrderResult, RetryCompensations, SagaView
from workflows.order import OrderWorkflow

pytestmark = pytest.mark.asyncio(loop_scope="module")


def shipped() -> StandIns:
    """The worker's shipped saga policy (local activities, 24 h review, 10 min compensation budget)."""
    return StandIns(policy=WorkerSettings().saga_policy())


async def skip_until(env: WorkflowEnvironment, handle: WorkflowHandle[Any, Any], status: str) -> SagaView:
    """Skip time a minute at a time until the saga view has `status`."""
    for _ in range(60):
        view: SagaView = await handle.query(OrderWorkflow.status)
        if view.status == status:
            return view
        await env.sleep(timedelta(minutes=1))
        await asyncio.sleep(0.1)  # the worker runs the attempts that came due
    raise AssertionError(f"the saga never reached {status}: {view}")


async def test_an_unreviewed_order_is_cancelled_after_24_hours(skipping_env: WorkflowEnvironment) -> None:
    services = shipped()
    services.unit_price_cents = 60_000
    async with saga(skipping_env.client, services, order_input(2), record="review_timeout") as handle:
        started = await skipping_env.get_current_time()
        result: OrderResult = await handle.result()
        waited = await skipping_env.get_current_time() - started
        view: SagaView = await handle.query(OrderWorkflow.status)

    assert (result.status, result.cancel_reason) == ("CANCELLED", "review_timeout")
    assert timedelta(hours=24) <= waited < timedelta(hours=25)
    assert (step(view, "review").status, step(view, "review").error) == ("failed", "review_timeout")
    assert services.calls[-4:-1] == ["void_payment", "release_stock", "cancel_order"]
    assert "capture_payment" not in services.calls


async def test_a_compensation_failing_past_its_budget_waits_for_an_admin_retry(
    skipping_env: WorkflowEnvironment,
) -> None:
    services = shipped()
    services.refusals["authorize_payment"] = "payment_declined"
    services.outages["release_stock"] = FOREVER
    async with saga(skipping_env.client, services, record="compensation_failed_retried") as handle:
        view = await skip_until(skipping_env, handle, "compensation_failed")
        reserve = step(view, "reserve_stock")
        assert reserve.status == "compensation_failed"
        assert reserve.compensation is not None and reserve.compensation.status == "failed"
        assert reserve.compensation.attempts > 10, "retried with backoff for ten minutes"
        assert reserve.compensation.error is not None
        assert reserve.compensation.error.startswith("upstream_unavailable")
        assert (view.order_status, steps(view)["create_order"]) == ("CANCELLED", "compensated"), "others ran"
        assert "cancel_order" in services.calls
        assert not services.notices or services.notices[0].template == "order_cancelled"

        services.heal("release_stock")
        failed = await handle.execute_update(OrderWorkflow.retry_compensations, RetryCompensations("admin"))
        assert failed == ["reserve_stock"]
        await handle.result()
        view = await handle.query(OrderWorkflow.status)

    assert view.status == "compensated"
    assert steps(view)["reserve_stock"] == "compensated"


async def test_failed_compensations_given_up_end_the_saga_with_them_failed(
    skipping_env: WorkflowEnvironment,
) -> None:
    services = shipped()
    services.refusals["reserve_stock"] = "out_of_stock"
    services.outages["cancel_order"] = FOREVER
    async with saga(skipping_env.client, services) as handle:
        await skip_until(skipping_env, handle, "compensation_failed")
        with pytest.raises(WorkflowUpdateFailedError) as blank:
            await handle.execute_update(OrderWorkflow.abandon_compensations, AbandonCompensations(" "))
        assert isinstance(blank.value.cause, ApplicationError)
        assert blank.value.cause.type == "invalid_request"
        given_up = await handle.execute_update(
            OrderWorkflow.abandon_compensations, AbandonCompensations("order record fixed by hand")
        )
        assert given_up == ["create_order"]
        result: OrderResult = await handle.result()
        view = await handle.query(OrderWorkflow.status)

    assert (result.status, result.cancel_reason) == ("CANCELLED", "out_of_stock")
    assert view.status == "compensation_failed"
    assert steps(view)["create_order"] == "compensation_failed"
    assert step(view, "reserve_stock").compensation.status == "done"
