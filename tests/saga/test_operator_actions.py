"""What an operator does to a saga from the Temporal Web UI or CLI never strands an order.

Each test acts as an operator would, with the `temporal` CLI against a real dev server (the Web UI's
"Request Cancellation", "Terminate" and "Reset" buttons send the same requests), on a stack whose
worker reaches every service through a fault-injecting proxy, so that a call can be held in flight
at the exact step being tested. The reconciler runs with its shipped sweep interval (30 s).
"""

from __future__ import annotations

import asyncio
import subprocess
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from typing import Any

import pytest
from temporalio.client import Client, WorkflowExecutionStatus

from services.kit.temporal import TemporalSettings, connect
from services.registry import DATA_SERVICES
from tests.saga.conftest import history_recorder
from tests.support.driver import Customer, Driver
from tests.support.fault_proxy import FaultProxies, Match
from tests.support.identity import as_admin, as_customer
from tests.support.processes import VENV_BIN
from tests.support.stack import Stack
from workflows.payloads import TASK_QUEUE
from workflows.repair import ReconcileWorkflow

pytestmark = [pytest.mark.slow, pytest.mark.temporal]

REVIEW_PRICE = 60_000  # two of these cross the review threshold (100000 cents)
DECLINED = "4000000000000002"
STOCK = 5
# A compensation refused for longer than this is marked compensation_failed (an operator setting,
# WORKER_COMPENSATION_BUDGET_SECONDS, default 600 s); the sweep interval keeps its default.
COMPENSATION_BUDGET = "8"
RECONCILE_DEFAULT_INTERVAL = 30.0

RESERVE = Match("inventory", "POST", r"/reservations")
RELEASE = Match("inventory", "POST", r"/reservations/[^/]+/release")
COMMIT = Match("inventory", "POST", r"/reservations/[^/]+/commit")
VOID = Match("payments", "POST", r"/authorizations/[^/]+/void")


@dataclass
class OperatedStack:
    stack: Stack
    proxies: FaultProxies

    def temporal(self, *args: str) -> str:
        """The `temporal` CLI, as an operator runs it."""
        result = subprocess.run(
            [str(VENV_BIN / "temporal"), *args[:2], "--address", self.stack.temporal_address, *args[2:]],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert result.returncode == 0, result.stdout + result.stderr
        return result.stdout


@pytest.fixture(scope="module")
def operated(tmp_path_factory: pytest.TempPathFactory) -> Iterator[OperatedStack]:
    stack = Stack(tmp_path_factory.mktemp("operated-stack"))
    proxies = FaultProxies({name: stack.url(name) for name in DATA_SERVICES}).start()
    stack.worker_env = proxies.worker_env() | {"WORKER_COMPENSATION_BUDGET_SECONDS": COMPENSATION_BUDGET}
    try:
        stack.start()
        yield OperatedStack(stack, proxies)
    finally:
        stack.stop()
        proxies.stop()


@pytest.fixture
async def driver(operated: OperatedStack) -> AsyncIterator[Driver]:
    operated.proxies.reset()
    client = Driver({name: operated.stack.url(name) for name in DATA_SERVICES})
    try:
        yield client
    finally:
        await client.close()
        operated.proxies.reset()


@pytest.fixture
async def temporal_client(operated: OperatedStack) -> Client:
    return await connect(TemporalSettings(address=operated.stack.temporal_address))


@pytest.fixture
def record(operated: OperatedStack) -> Callable[..., None]:
    return history_recorder(operated.stack.temporal_address)


def statuses(view: dict[str, Any]) -> dict[str, str]:
    return {step["name"]: step["status"] for step in view["steps"]}


def steps(view: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {step["name"]: step for step in view["steps"]}


async def workflow_status(client: Client, workflow_id: str) -> WorkflowExecutionStatus | None:
    return (await client.get_workflow_handle(workflow_id).describe()).status


async def wait_workflow_closed(
    client: Client, workflow_id: str, timeout: float = 30
) -> WorkflowExecutionStatus:
    async with asyncio.timeout(timeout):
        while (status := await workflow_status(client, workflow_id)) is WorkflowExecutionStatus.RUNNING:
            await asyncio.sleep(0.2)
    assert status is not None
    return status


async def in_review(driver: Driver, customer: Customer, product: str) -> str:
    accepted = await driver.place_order(customer, [(product, 2)])
    assert accepted.status_code == 202, accepted.text
    order_id: str = accepted.json()["id"]
    await driver.wait_saga(order_id, lambda v: v["order_status"] == "AWAITING_REVIEW")
    return order_id


async def event_types(driver: Driver, order_id: str) -> list[str]:
    response = await driver.http.get(driver.urls["orders"] + f"/orders/{order_id}/events", headers=as_admin())
    assert response.status_code == 200, response.text
    return [event["type"] for event in response.json()["items"]]


async def saga_notices(
    driver: Driver, customer: Customer, order_id: str, *, timeout: float = 15.0
) -> list[str]:
    """The order's final notice(s). They arrive after the order is final (the notifications service
    reacts to the order's event), so wait for the first, then a moment more for any duplicate."""

    async def listed() -> list[str]:
        return [
            n["template"]
            for n in await driver.notifications_of(customer.user_id)
            if n["order_id"] == order_id and n["template"] in ("order_confirmed", "order_cancelled")
        ]

    deadline = asyncio.get_running_loop().time() + timeout
    notices = await listed()
    while not notices and asyncio.get_running_loop().time() < deadline:
        await asyncio.sleep(0.25)
        notices = await listed()
    await asyncio.sleep(1.0)
    return await listed()


# ---- Cancel ("Request Cancellation", `temporal workflow cancel`) ---------------------------------


async def test_cancel_in_review_compensates_and_closes_as_canceled(
    operated: OperatedStack, driver: Driver, temporal_client: Client, record: Callable[..., None]
) -> None:
    customer = await driver.customer()
    product = await driver.product(stock=STOCK, price_cents=REVIEW_PRICE)
    order_id = await in_review(driver, customer, product)
    held = await driver.payments_of(order_id)
    assert [p["status"] for p in held] == ["authorized"], "the review waits on an authorised payment"

    operated.temporal("workflow", "cancel", "--workflow-id", f"order-{order_id}")

    order, view = await driver.wait_final(order_id)
    assert (order["status"], order["cancel_reason"]) == ("CANCELLED", "operator_cancelled")
    assert view["status"] == "compensated"
    assert statuses(view) == {
        "create_order": "compensated",
        "validate_user": "done",
        "reserve_stock": "compensated",
        "authorize_payment": "compensated",
        "review": "failed",
        "capture_payment": "skipped",
        "confirm_order": "skipped",
        "notify_customer": "done",
    }
    assert steps(view)["review"]["error"] == "operator_cancelled"
    assert order["payment_id"] == held[0]["id"], "the order names its (voided) authorisation"
    assert [p["status"] for p in await driver.payments_of(order_id)] == ["voided"]
    await driver.assert_invariants(order, {product: STOCK})
    assert await saga_notices(driver, customer, order_id) == ["order_cancelled"]
    status = await wait_workflow_closed(temporal_client, f"order-{order_id}")
    assert status is WorkflowExecutionStatus.CANCELED
    record(order_id, "operator_cancelled_in_review")


async def test_cancel_during_reserve_stock_releases_what_the_late_call_held(
    operated: OperatedStack, driver: Driver, temporal_client: Client
) -> None:
    customer = await driver.customer()
    product = await driver.product(stock=STOCK)
    reserve = operated.proxies.arm(RESERVE).hold()
    accepted = await driver.place_order(customer, [(product, 2)])
    order_id = accepted.json()["id"]
    await reserve.wait_held()

    operated.temporal("workflow", "cancel", "--workflow-id", f"order-{order_id}")
    order, view = await driver.wait_final(order_id)
    reserve.release()  # the reservation the saga gave up on arrives after its release

    assert (order["status"], order["cancel_reason"]) == ("CANCELLED", "operator_cancelled")
    assert statuses(view)["reserve_stock"] == "failed"
    assert steps(view)["reserve_stock"]["error"] == "operator_cancelled"
    assert steps(view)["reserve_stock"]["compensation"]["status"] == "done"
    assert statuses(view)["authorize_payment"] == "skipped"
    await reserve.wait_forwarded_after_hold()
    await driver.assert_invariants(order, {product: STOCK})
    assert await driver.payments_of(order_id) == []
    assert (
        await wait_workflow_closed(temporal_client, f"order-{order_id}") is WorkflowExecutionStatus.CANCELED
    )


async def test_cancel_once_the_pivot_started_lets_the_saga_confirm(
    operated: OperatedStack, driver: Driver, temporal_client: Client, record: Callable[..., None]
) -> None:
    customer = await driver.customer()
    product = await driver.product(stock=STOCK)
    commit = operated.proxies.arm(COMMIT).hold()
    accepted = await driver.place_order(customer, [(product, 2)])
    order_id = accepted.json()["id"]
    await commit.wait_held()

    operated.temporal("workflow", "cancel", "--workflow-id", f"order-{order_id}")
    await asyncio.sleep(1)  # the cancellation reaches the workflow while its pivot is in flight
    commit.release()

    order, view = await driver.wait_final(order_id)
    assert order["status"] == "CONFIRMED"
    assert view["status"] == "completed", view
    assert statuses(view)["capture_payment"] == "done"
    await driver.assert_invariants(order, {product: STOCK})
    assert await saga_notices(driver, customer, order_id) == ["order_confirmed"]
    assert (
        await wait_workflow_closed(temporal_client, f"order-{order_id}") is WorkflowExecutionStatus.COMPLETED
    )
    record(order_id, "operator_cancelled_in_pivot")


# ---- Terminate: the reconciler repairs within two sweeps -----------------------------------------


async def test_terminated_sagas_are_repaired_within_two_sweeps(
    operated: OperatedStack, driver: Driver, temporal_client: Client, record: Callable[..., None]
) -> None:
    customer = await driver.customer()
    reviewed = await driver.product(stock=STOCK, price_cents=REVIEW_PRICE)
    plain = await driver.product(stock=STOCK)

    in_review_id = await in_review(driver, customer, reviewed)
    commit = operated.proxies.arm(COMMIT).hold()
    accepted = await driver.place_order(customer, [(plain, 2)])
    in_pivot_id = accepted.json()["id"]
    await commit.wait_held()  # captured, and the pivot (commit stock, confirm) has begun

    for order_id in (in_review_id, in_pivot_id):
        operated.temporal("workflow", "terminate", "--workflow-id", f"order-{order_id}", "--reason", "test")
    terminated_at = asyncio.get_running_loop().time()
    commit.release()
    for order_id in (in_review_id, in_pivot_id):
        status = await workflow_status(temporal_client, f"order-{order_id}")
        assert status is WorkflowExecutionStatus.TERMINATED

    # Two sweeps of the shipped interval, and the few seconds a repair takes.
    deadline = 2 * RECONCILE_DEFAULT_INTERVAL + 15
    rolled_back = await wait_order_final(driver, in_review_id, deadline)
    rolled_forward = await wait_order_final(driver, in_pivot_id, deadline)
    elapsed = asyncio.get_running_loop().time() - terminated_at
    assert elapsed < deadline

    assert (rolled_back["status"], rolled_back["cancel_reason"]) == ("CANCELLED", "saga_terminated")
    await driver.assert_invariants(rolled_back, {reviewed: STOCK})
    assert [p["status"] for p in await driver.payments_of(in_review_id) if p["order_id"]] == ["voided"]
    assert rolled_forward["status"] == "CONFIRMED"
    await driver.assert_invariants(rolled_forward, {plain: STOCK})
    assert await saga_notices(driver, customer, in_review_id) == ["order_cancelled"]

    # The repairs are workflows of their own, visible in the Web UI, run once.
    for order_id in (in_review_id, in_pivot_id):
        repair = temporal_client.get_workflow_handle(f"repair-{order_id}")
        await repair.result()
        assert (await repair.describe()).status is WorkflowExecutionStatus.COMPLETED
    record(in_review_id, "terminated_in_review")
    record(in_review_id, "terminated_repaired", workflow_id=f"repair-{in_review_id}")
    record(in_pivot_id, "terminated_rolled_forward", workflow_id=f"repair-{in_pivot_id}")


async def wait_order_final(driver: Driver, order_id: str, timeout: float) -> dict[str, Any]:
    async with asyncio.timeout(timeout):
        while (order := await driver.order(order_id))["status"] not in ("CONFIRMED", "CANCELLED"):
            await asyncio.sleep(0.5)
    return order


# ---- Reset: the re-run reuses every idempotency key -------------------------------------------


async def test_reset_of_a_confirmed_saga_does_nothing_twice(
    operated: OperatedStack, driver: Driver, temporal_client: Client, record: Callable[..., None]
) -> None:
    customer = await driver.customer()
    product = await driver.product(stock=STOCK)
    accepted = await driver.place_order(customer, [(product, 2)])
    order_id = accepted.json()["id"]
    first, _ = await driver.wait_final(order_id)
    assert first["status"] == "CONFIRMED"
    first_run = (await temporal_client.get_workflow_handle(f"order-{order_id}").describe()).run_id

    operated.temporal(
        "workflow",
        "reset",
        "--workflow-id",
        f"order-{order_id}",
        "--type",
        "FirstWorkflowTask",
        "--reason",
        "test",
    )
    handle = temporal_client.get_workflow_handle(f"order-{order_id}")
    await handle.result()
    assert (await handle.describe()).run_id != first_run, "the reset started a new run"

    order = await driver.order(order_id)
    assert order["status"] == "CONFIRMED"
    await driver.assert_invariants(order, {product: STOCK})
    payments = await driver.payments_of(order_id)
    assert [p["status"] for p in payments] == ["captured"], "authorised and captured once"
    assert (await event_types(driver, order_id)).count("order.confirmed") == 1
    notices = [n for n in await driver.notifications_of(customer.user_id) if n["order_id"] == order_id]
    assert [n["template"] for n in notices] == ["order_confirmed"], "mailed once"
    record(order_id, "reset_confirmed")


# ---- Authorise before review ----------------------------------------------------------------


async def test_unusable_cards_never_hold_stock_for_review(
    driver: Driver, record: Callable[..., None]
) -> None:
    owner = await driver.customer()
    declined = await driver.customer(card=DECLINED)
    product = await driver.product(stock=STOCK, price_cents=REVIEW_PRICE)

    foreign = await driver.place_order(declined, [(product, 2)], payment_method_id=owner.payment_method_id)
    refused = await driver.place_order(declined, [(product, 2)])
    cases = {foreign.json()["id"]: "invalid_payment_method", refused.json()["id"]: "payment_declined"}

    for order_id, reason in cases.items():
        order, view = await driver.wait_final(order_id)
        assert (order["status"], order["cancel_reason"]) == ("CANCELLED", reason)
        assert statuses(view)["authorize_payment"] == "failed"
        assert statuses(view)["review"] == "skipped"
        assert statuses(view)["capture_payment"] == "skipped"
        assert "order.awaiting_review" not in await event_types(driver, order_id)
        assert not [
            p for p in await driver.payments_of(order_id) if p["status"] in ("authorized", "captured")
        ]
        await driver.assert_invariants(order, {product: STOCK})
    record(foreign.json()["id"], "authorize_invalid_method")


# ---- A compensation that keeps failing ------------------------------------------------------


async def test_a_failing_compensation_blocks_no_other_and_an_admin_retry_finishes_it(
    operated: OperatedStack, driver: Driver, temporal_client: Client, record: Callable[..., None]
) -> None:
    customer = await driver.customer(card=DECLINED)
    product = await driver.product(stock=STOCK)
    release = operated.proxies.arm(RELEASE).fail_with(503, "inventory_down", times=1_000_000)
    accepted = await driver.place_order(customer, [(product, 2)])
    order_id = accepted.json()["id"]

    view = await driver.wait_saga(order_id, lambda v: v["status"] == "compensation_failed", timeout=90)
    reserve = steps(view)["reserve_stock"]
    assert reserve["status"] == "compensation_failed"
    assert reserve["compensation"]["status"] == "failed"
    assert "inventory_down" in reserve["compensation"]["error"]
    assert reserve["compensation"]["attempts"] >= 2
    # The others ran: the authorisation's void, and the order's cancellation, after the failed one.
    assert steps(view)["authorize_payment"]["compensation"]["status"] == "done"
    assert steps(view)["create_order"]["compensation"]["status"] == "done"
    order = await driver.order(order_id)
    assert (order["status"], order["cancel_reason"]) == ("CANCELLED", "payment_declined")
    assert (await driver.availability(product))["reserved"] == 2, "the hold is still there to release"
    assert "compensation_failed" in operated.stack.processes["worker"].log_path.read_text()
    handle = temporal_client.get_workflow_handle(f"order-{order_id}")
    assert await workflow_status(temporal_client, f"order-{order_id}") is WorkflowExecutionStatus.RUNNING

    retry_url = driver.urls["orders"] + f"/orders/{order_id}/compensations/retry"
    assert (await driver.http.post(retry_url, headers=as_customer(customer.user_id))).status_code == 403

    operated.proxies.reset()  # the cause is fixed
    retried = await driver.http.post(retry_url, headers=as_admin())
    assert retried.status_code == 202, retried.text
    order, view = await driver.wait_final(order_id)
    assert view["status"] == "compensated"
    assert steps(view)["reserve_stock"]["compensation"]["status"] == "done"
    await handle.result()
    await driver.assert_invariants(order, {product: STOCK})
    again = await driver.http.post(retry_url, headers=as_admin())
    assert again.status_code == 409, again.text
    assert release.injected >= 2
    record(order_id, "compensation_failed_retried")


async def test_an_operator_can_give_up_on_a_failed_compensation_with_a_reason(
    operated: OperatedStack, driver: Driver, temporal_client: Client, record: Callable[..., None]
) -> None:
    customer = await driver.customer(card=DECLINED)
    product = await driver.product(stock=STOCK)
    operated.proxies.arm(RELEASE).fail_with(503, "inventory_down", times=1_000_000)
    accepted = await driver.place_order(customer, [(product, 2)])
    order_id = accepted.json()["id"]
    await driver.wait_saga(order_id, lambda v: v["status"] == "compensation_failed", timeout=90)

    operated.temporal(
        "workflow",
        "update",
        "execute",
        "--workflow-id",
        f"order-{order_id}",
        "--name",
        "abandon_compensations",
        "--input",
        '{"reason": "stock released by hand"}',
    )
    await temporal_client.get_workflow_handle(f"order-{order_id}").result()
    view = await driver.saga(order_id)
    assert view["status"] == "compensation_failed", "the view still tells that it never ran"
    record(order_id, "compensation_failed")


# Long variant (ORDERSAGA_TEST_FULL=1): the repair of terminated sagas above runs by default.
@pytest.mark.full
async def test_two_reconcilers_at_once_and_a_worker_killed_mid_repair_repair_once(
    operated: OperatedStack, driver: Driver, temporal_client: Client
) -> None:
    customer = await driver.customer()
    product = await driver.product(stock=STOCK, price_cents=REVIEW_PRICE)
    order_id = await in_review(driver, customer, product)
    operated.temporal("workflow", "terminate", "--workflow-id", f"order-{order_id}", "--reason", "test")
    void = operated.proxies.arm(VOID).hold()

    # Two sweeps at once, as two reconcilers (or an operator's "Trigger" beside the schedule's) start them.
    sweeps = [
        await temporal_client.start_workflow(
            ReconcileWorkflow.run, 0.0, id=f"reconcile-test-{side}-{order_id}", task_queue=TASK_QUEUE
        )
        for side in ("a", "b")
    ]
    started = [await sweep.result() for sweep in sweeps]
    assert sum(order_id in orders for orders in started) == 1, started

    await void.wait_held()  # the repair is voiding the hold: the worker dies mid-repair
    operated.stack.processes["worker"].kill()
    void.release()
    await asyncio.to_thread(operated.stack.restart, "worker")

    repair = temporal_client.get_workflow_handle(f"repair-{order_id}")
    await repair.result()
    order = await driver.order(order_id)
    assert (order["status"], order["cancel_reason"]) == ("CANCELLED", "saga_terminated")
    await driver.assert_invariants(order, {product: STOCK})
    runs = [w async for w in temporal_client.list_workflows(f'WorkflowId = "repair-{order_id}"')]
    assert len(runs) == 1, "one repair"
    assert await saga_notices(driver, customer, order_id) == ["order_cancelled"]
    assert (await event_types(driver, order_id)).count("order.cancelled") == 1
