"""Every path of the saga view, and each step's failure with its compensations, on stand-ins."""

from __future__ import annotations

import pytest
from temporalio.client import Client

from tests.workflows.standins import FOREVER, StandIns, order_input, saga, step, steps
from workflows.contract import STEP_NAMES, OrderResult, SagaPolicy, SagaView
from workflows.order import OrderWorkflow

pytestmark = pytest.mark.asyncio(loop_scope="module")

HAPPY_CALLS = [
    "create_order",
    "validate_user",
    "reserve_stock",
    "authorize_payment",
    "capture_payment",
    "commit_stock",
    "confirm_order",
    "notify_customer",
]


async def run(
    client: Client, services: StandIns, quantity: int = 2, record: str | None = None
) -> tuple[OrderResult, SagaView]:
    async with saga(client, services, order_input(quantity), record=record) as handle:
        result: OrderResult = await handle.result()
        view: SagaView = await handle.query(OrderWorkflow.status)
    return result, view


@pytest.mark.parametrize("local", [False, True], ids=["regular", "local-activities"])
async def test_an_order_below_the_threshold_is_confirmed_without_review(
    dev_client: Client, local: bool
) -> None:
    services = StandIns(policy=SagaPolicy(local_activities=local))
    result, view = await run(dev_client, services, record="success_local" if local else "success")

    assert (result.status, result.cancel_reason, result.total_cents) == ("CONFIRMED", None, 5_000)
    assert result.payment_id is not None
    assert services.calls == HAPPY_CALLS, "typed order activities; the one order_command is not called"
    assert (view.status, view.order_status, view.cancel_reason) == ("completed", "CONFIRMED", None)
    assert [s.name for s in view.steps] == list(STEP_NAMES)
    assert steps(view) == {name: "done" for name in STEP_NAMES} | {"review": "skipped"}
    assert all(s.started_at and s.finished_at for s in view.steps if s.status == "done")
    assert services.notices[0].template == "order_confirmed"


# The failing call, the reason the order is cancelled with, and the compensations, newest first.
FAILURES = [
    pytest.param(
        "create_order", "upstream_rejected", "internal_error", ["cancel_order"],
        id="create_order",
    ),
    pytest.param(
        "validate_user", "user_invalid", "user_invalid", ["cancel_order"], id="validate_user"
    ),
    pytest.param(
        "reserve_stock", "out_of_stock", "out_of_stock", ["release_stock", "cancel_order"],
        id="reserve_stock",
    ),
    pytest.param(
        "authorize_payment", "payment_declined", "payment_declined",
        ["void_payment", "release_stock", "cancel_order"],
        id="authorize_payment",
    ),
    pytest.param(
        "capture_payment", "payment_failed", "payment_failed",
        ["refund_capture", "void_payment", "release_stock", "cancel_order"],
        id="capture_payment",
    ),
]  # fmt: skip


COMPENSATIONS = {"cancel_order", "release_stock", "void_payment", "refund_capture"}


@pytest.mark.parametrize(("call", "refusal", "reason", "compensations"), FAILURES)
async def test_a_refused_step_is_compensated_newest_first(
    dev_client: Client, call: str, refusal: str, reason: str, compensations: list[str]
) -> None:
    services = StandIns(refusals={call: refusal})
    result, view = await run(dev_client, services, record=f"{call}_refused")

    assert (result.status, result.cancel_reason, result.payment_id) == ("CANCELLED", reason, None)
    assert [c for c in services.calls if c in COMPENSATIONS] == compensations
    assert "commit_stock" not in services.calls and "confirm_order" not in services.calls
    assert (view.status, view.order_status, view.cancel_reason) == ("compensated", "CANCELLED", reason)
    failed = step(view, call)  # each refused call is its step's activity
    assert failed.status == "failed", "the failing step stays failed even though it was compensated"
    assert failed.error is not None and failed.error.startswith(refusal)
    assert failed.compensation is None or failed.compensation.status == "done"
    ran = STEP_NAMES[: STEP_NAMES.index(failed.name)]
    for s in view.steps:
        if s.name == failed.name:
            continue
        if s.compensation is not None:
            assert (s.status, s.compensation.status) == ("compensated", "done"), s
        elif s.name in ran and s.name != "review":
            assert s.status == "done", s  # nothing to undo (validate_user)
        elif s.name == "notify_customer":
            assert s.status == "done"
        else:
            assert s.status == "skipped", s
    assert services.notices[0].template == "order_cancelled"
    assert services.notices[0].data["reason"] == reason
    assert services.cancel_reasons == [reason], "the order is cancelled with the saga's reason"


async def test_a_payment_outage_within_the_budget_is_retried_and_shows_its_attempts(
    dev_client: Client,
) -> None:
    policy = SagaPolicy(payment_initial_interval_seconds=0.05)
    services = StandIns(policy=policy, outages={"authorize_payment": 2})
    result, view = await run(dev_client, services)

    assert result.status == "CONFIRMED"
    assert services.count("authorize_payment") == 3
    assert (step(view, "authorize_payment").status, step(view, "authorize_payment").attempts) == ("done", 3)


async def test_a_payment_outage_past_its_attempts_cancels_as_payment_failed(dev_client: Client) -> None:
    policy = SagaPolicy(payment_initial_interval_seconds=0.05, payment_max_attempts=3)
    services = StandIns(policy=policy, outages={"authorize_payment": FOREVER})
    result, view = await run(dev_client, services)

    assert (result.status, result.cancel_reason) == ("CANCELLED", "payment_failed")
    assert services.count("authorize_payment") == 3
    authorize = step(view, "authorize_payment")
    assert (authorize.status, authorize.attempts) == ("failed", 3)
    assert authorize.error is not None and authorize.error.startswith("upstream_unavailable")
    assert view.status == "compensated"


async def test_the_pivot_is_retried_until_it_confirms(dev_client: Client) -> None:
    services = StandIns(outages={"confirm_order": 2})
    result, view = await run(dev_client, services, record="pivot_retried")

    assert result.status == "CONFIRMED"
    assert services.count("confirm_order") == 3
    assert (step(view, "confirm_order").status, step(view, "confirm_order").attempts) == ("done", 3)
    assert not COMPENSATIONS & set(services.calls)


async def test_a_failed_notice_leaves_the_order_confirmed(dev_client: Client) -> None:
    services = StandIns(refusals={"notify_customer": "upstream_rejected"})
    result, view = await run(dev_client, services)

    assert result.status == "CONFIRMED"
    assert (view.status, step(view, "notify_customer").status) == ("completed", "failed")
    assert not COMPENSATIONS & set(services.calls)


async def test_a_cancelled_order_of_an_unknown_customer_is_told_nowhere(dev_client: Client) -> None:
    services = StandIns(refusals={"validate_user": "user_invalid", "lookup_contact": "user_invalid"})
    result, view = await run(dev_client, services)

    assert result.cancel_reason == "user_invalid"
    assert services.calls[-2:] == ["lookup_contact", "notify_customer"]
    assert services.notices[0].contact.email is None
    assert step(view, "notify_customer").status == "done"
