"""The cancel and review updates, their validators, and a Temporal cancellation, on stand-ins."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from temporalio.client import Client, WorkflowFailureError, WorkflowHandle, WorkflowUpdateFailedError
from temporalio.exceptions import ApplicationError, CancelledError

from tests.workflows.standins import StandIns, order_input, saga, step, steps, view_when
from workflows.contract import (
    AbandonCompensations,
    CancelRequest,
    OrderResult,
    RetryCompensations,
    ReviewDecision,
    SagaView,
)
from workflows.order import OrderWorkflow

pytestmark = pytest.mark.asyncio(loop_scope="module")

# 2 x 60 000 cents: above the shipped review threshold (100 000).
REVIEWED_QUANTITY = 2
REVIEWED = {"unit_price_cents": 60_000}


async def refused(update: Any) -> ApplicationError:
    """The validator's refusal: the update is rejected before it reaches the history."""
    with pytest.raises(WorkflowUpdateFailedError) as caught:
        await update
    cause = caught.value.cause
    assert isinstance(cause, ApplicationError)
    return cause


async def awaiting_review(handle: WorkflowHandle[Any, Any]) -> SagaView:
    return await view_when(handle, lambda v: v.order_status == "AWAITING_REVIEW")


@pytest.mark.parametrize(
    ("approve", "status", "reason"),
    [(True, "CONFIRMED", None), (False, "CANCELLED", "review_rejected")],
    ids=["approved", "rejected"],
)
async def test_an_order_above_the_threshold_waits_for_its_review(
    dev_client: Client, approve: bool, status: str, reason: str | None
) -> None:
    services = StandIns(**REVIEWED)
    record = "review_approved" if approve else "review_rejected"
    async with saga(dev_client, services, order_input(REVIEWED_QUANTITY), record=record) as handle:
        view = await awaiting_review(handle)
        assert steps(view)["authorize_payment"] == "done", "the money is held before anyone reviews"
        assert (steps(view)["review"], steps(view)["capture_payment"]) == ("running", "pending")
        assert "capture_payment" not in services.calls
        answer = await handle.execute_update(OrderWorkflow.review, ReviewDecision(approve, "alice"))
        assert answer == ("approved" if approve else "rejected")
        second = await refused(handle.execute_update(OrderWorkflow.review, ReviewDecision(True)))
        assert second.type == "illegal_transition"
        result: OrderResult = await handle.result()
        view = await handle.query(OrderWorkflow.status)

    assert (result.status, result.cancel_reason) == (status, reason)
    assert "await_review" in services.calls
    if approve:
        assert steps(view)["review"] == "done"
        assert services.calls.index("capture_payment") > services.calls.index("await_review")
    else:
        assert (step(view, "review").status, step(view, "review").error) == ("failed", "review_rejected")
        assert "capture_payment" not in services.calls
        assert services.calls[-4:-1] == ["void_payment", "release_stock", "cancel_order"]


async def test_a_review_before_the_order_awaits_one_is_refused(dev_client: Client) -> None:
    services = StandIns(**REVIEWED)
    services.hold("reserve_stock")
    async with saga(dev_client, services, order_input(REVIEWED_QUANTITY)) as handle:
        await asyncio.wait_for(services.reached["reserve_stock"].wait(), 30)
        early = await refused(handle.execute_update(OrderWorkflow.review, ReviewDecision(True)))
        assert early.type == "illegal_transition"
        services.release("reserve_stock")
        await awaiting_review(handle)
        await handle.execute_update(OrderWorkflow.review, ReviewDecision(True))
        assert (await handle.result()).status == "CONFIRMED"


async def test_a_cancel_during_a_step_interrupts_it_and_compensates(dev_client: Client) -> None:
    services = StandIns()
    services.hold("reserve_stock")
    services.hold("release_stock")
    async with saga(dev_client, services) as handle:
        await asyncio.wait_for(services.reached["reserve_stock"].wait(), 30)
        answer = await handle.execute_update(OrderWorkflow.cancel, CancelRequest("customer"))
        assert answer == "PENDING"
        view = await view_when(handle, lambda v: v.status == "compensating")
        again = await refused(handle.execute_update(OrderWorkflow.cancel, CancelRequest("customer")))
        assert (again.type, again.message) == ("illegal_transition", "the order is already cancelled")
        services.release("release_stock")
        result: OrderResult = await handle.result()
        view = await handle.query(OrderWorkflow.status)

    assert (result.status, result.cancel_reason) == ("CANCELLED", "customer_cancelled")
    reserve = step(view, "reserve_stock")
    assert (reserve.status, reserve.error) == ("failed", "customer_cancelled")
    assert reserve.compensation is not None and reserve.compensation.status == "done"
    assert "authorize_payment" not in services.calls
    assert view.status == "compensated"


async def test_a_cancel_during_review_ends_the_wait(dev_client: Client) -> None:
    services = StandIns(**REVIEWED)
    order = order_input(REVIEWED_QUANTITY)
    async with saga(dev_client, services, order, record="customer_cancelled_in_review") as handle:
        await awaiting_review(handle)
        assert await handle.execute_update(OrderWorkflow.cancel, CancelRequest()) == "AWAITING_REVIEW"
        result: OrderResult = await handle.result()
        view = await handle.query(OrderWorkflow.status)

    assert (result.status, result.cancel_reason) == ("CANCELLED", "customer_cancelled")
    assert (step(view, "review").status, step(view, "review").error) == ("failed", "customer_cancelled")
    assert services.calls[-4:-1] == ["void_payment", "release_stock", "cancel_order"]


async def test_a_cancel_once_the_pivot_started_is_refused_and_the_order_confirms(dev_client: Client) -> None:
    services = StandIns()
    services.hold("commit_stock")
    async with saga(dev_client, services) as handle:
        await asyncio.wait_for(services.reached["commit_stock"].wait(), 30)
        late = await refused(handle.execute_update(OrderWorkflow.cancel, CancelRequest()))
        assert (late.type, late.message) == ("illegal_transition", "the order is already confirmed")
        services.release("commit_stock")
        assert (await handle.result()).status == "CONFIRMED"
        after = await handle.query(OrderWorkflow.status)
    assert after.status == "completed"


async def test_a_temporal_cancellation_in_review_compensates_and_closes_as_cancelled(
    dev_client: Client,
) -> None:
    services = StandIns(**REVIEWED)
    order = order_input(REVIEWED_QUANTITY)
    async with saga(dev_client, services, order, record="operator_cancelled_in_review") as handle:
        await awaiting_review(handle)
        await handle.cancel()
        with pytest.raises(WorkflowFailureError) as closed:
            await handle.result()
        view = await handle.query(OrderWorkflow.status)

    assert isinstance(closed.value.cause, CancelledError), "the workflow closes as Canceled"
    assert (view.order_status, view.cancel_reason, view.status) == (
        "CANCELLED",
        "operator_cancelled",
        "compensated",
    )
    assert services.calls[-4:-1] == ["void_payment", "release_stock", "cancel_order"]
    assert services.notices[0].data["reason"] == "operator_cancelled"


async def test_a_temporal_cancellation_during_the_pivot_lets_the_order_confirm(dev_client: Client) -> None:
    services = StandIns()
    services.hold("commit_stock")
    async with saga(dev_client, services) as handle:
        await asyncio.wait_for(services.reached["commit_stock"].wait(), 30)
        await handle.cancel()
        await asyncio.sleep(0.5)  # the cancellation reaches the workflow while the pivot runs
        services.release("commit_stock")
        result: OrderResult = await handle.result()

    assert (result.status, result.cancel_reason) == ("CONFIRMED", None)
    assert "cancel_order" not in services.calls


async def test_compensation_updates_are_refused_while_nothing_failed(dev_client: Client) -> None:
    services = StandIns()
    services.hold("reserve_stock")
    async with saga(dev_client, services) as handle:
        await asyncio.wait_for(services.reached["reserve_stock"].wait(), 30)
        retry = await refused(handle.execute_update(OrderWorkflow.retry_compensations, RetryCompensations()))
        abandon = await refused(
            handle.execute_update(OrderWorkflow.abandon_compensations, AbandonCompensations("why"))
        )
        services.release("reserve_stock")
        assert (await handle.result()).status == "CONFIRMED"
    assert (retry.type, abandon.type) == ("illegal_transition", "illegal_transition")
