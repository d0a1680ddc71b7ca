"""The reconciler tidies the loose ends a closed saga leaves on a final order (the chaos findings).

Real processes (`tests/support/stack.py`: the five services, a worker, a Temporal dev server, NATS),
the worker reaching every service through a fault-injecting proxy. Each test builds the state a
chaos run found, then runs a reconciler sweep (`ReconcileWorkflow`, as its Schedule starts it) and
checks what a customer and the stock would show.
"""

from __future__ import annotations

import asyncio
import signal
import subprocess
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from typing import Any

import pytest
from temporalio.client import Client, WorkflowExecutionStatus

from services.kit.temporal import TemporalSettings, connect
from services.registry import DATA_SERVICES
from tests.saga.conftest import history_recorder
from tests.support.driver import Customer, Driver
from tests.support.fault_proxy import FaultProxies, Match
from tests.support.identity import as_service
from tests.support.processes import VENV_BIN
from tests.support.stack import Stack
from workflows.payloads import TASK_QUEUE
from workflows.repair import ReconcileWorkflow

pytestmark = [pytest.mark.slow, pytest.mark.temporal]

STOCK = 5
VALIDATE_USER = Match("users", "GET", r"/internal/users/[^/]+")


@dataclass
class ProxiedStack:
    stack: Stack
    proxies: FaultProxies

    def temporal(self, *args: str) -> None:
        """The `temporal` CLI, as an operator runs it."""
        result = subprocess.run(
            [str(VENV_BIN / "temporal"), *args[:2], "--address", self.stack.temporal_address, *args[2:]],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert result.returncode == 0, result.stdout + result.stderr


@pytest.fixture(scope="module")
def proxied(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ProxiedStack]:
    stack = Stack(tmp_path_factory.mktemp("loose-ends-stack"))
    proxies = FaultProxies({name: stack.url(name) for name in DATA_SERVICES}).start()
    stack.worker_env = proxies.worker_env()
    try:
        stack.start()
        yield ProxiedStack(stack, proxies)
    finally:
        stack.stop()
        proxies.stop()


@pytest.fixture
async def driver(proxied: ProxiedStack) -> AsyncIterator[Driver]:
    proxied.proxies.reset()
    client = Driver({name: proxied.stack.url(name) for name in DATA_SERVICES})
    try:
        yield client
    finally:
        await client.close()
        proxied.proxies.reset()


@pytest.fixture
async def temporal_client(proxied: ProxiedStack) -> Client:
    return await connect(TemporalSettings(address=proxied.stack.temporal_address))


async def sweep(client: Client, workflow_id: str | None = None) -> list[str]:
    """One reconciler sweep over every order (older than 0 s), as the Schedule's are."""
    result: list[str] = await client.execute_workflow(
        ReconcileWorkflow.run, 0.0, id=workflow_id or f"reconcile-test-{uuid.uuid4()}", task_queue=TASK_QUEUE
    )
    return result


async def wait_closed(client: Client, workflow_id: str, timeout: float = 60) -> WorkflowExecutionStatus:
    handle = client.get_workflow_handle(workflow_id)
    async with asyncio.timeout(timeout):
        while (status := (await handle.describe()).status) is WorkflowExecutionStatus.RUNNING:
            await asyncio.sleep(0.2)
    assert status is not None
    return status


def notices_to(customer: Customer) -> Match:
    return Match("notifications", "POST", r"/notifications", {"user_id": customer.user_id})


async def outcome_notices(driver: Driver, customer: Customer, order_id: str) -> list[tuple[str, str]]:
    return sorted(
        (n["template"], n["channel"])
        for n in await driver.notifications_of(customer.user_id)
        if n["order_id"] == order_id and n["template"] in ("order_confirmed", "order_cancelled")
    )


async def test_a_reservation_made_by_a_lost_attempt_of_a_closed_saga_is_released(
    proxied: ProxiedStack, driver: Driver, temporal_client: Client
) -> None:
    """Finding 1: the saga closed with its order cancelled, unwound from before its reserve step,
    while a reserve attempt it never recorded had reached inventory. Built here as: the saga stopped
    before its reserve step, the order cancelled by the saga's own command, the lost reservation
    made afterwards (no release ran, so nothing refuses it)."""
    customer = await driver.customer()
    product = await driver.product(stock=STOCK)
    validate = proxied.proxies.arm(VALIDATE_USER).hold()
    accepted = await driver.place_order(customer, [(product, 2)])
    assert accepted.status_code == 202, accepted.text
    order_id = accepted.json()["id"]
    await validate.wait_held()
    proxied.temporal("workflow", "terminate", "--workflow-id", f"order-{order_id}", "--reason", "test")
    validate.release()
    cancelled = await driver.http.post(
        proxied.stack.url("orders") + f"/internal/orders/{order_id}/commands",
        json={"command_id": f"test-{order_id}", "type": "cancel", "reason": "operator_cancelled"},
        headers=as_service(),
    )
    assert cancelled.status_code == 200, cancelled.text
    lost = await driver.http.post(
        proxied.stack.url("inventory") + "/reservations",
        json={"order_id": order_id, "lines": [{"product_id": product, "quantity": 2}]},
        headers=as_service(),
    )
    assert lost.status_code == 201, lost.text
    assert (await driver.availability(product))["reserved"] == 2

    sweep_id = f"reconcile-test-{uuid.uuid4()}"
    await sweep(temporal_client, sweep_id)
    order = await driver.order(order_id)
    assert (order["status"], order["cancel_reason"]) == ("CANCELLED", "operator_cancelled")
    await driver.assert_invariants(order, {product: STOCK})
    reservation = await driver.http.get(
        proxied.stack.url("inventory") + f"/reservations/{order_id}", headers=as_service()
    )
    assert reservation.json()["status"] == "released", reservation.text
    # The customer was never told either; the sweep sends the cancellation once.
    assert await outcome_notices(driver, customer, order_id) == [("order_cancelled", "email")]
    # The sweep's history (behind workflow.patched("reconcile-loose-ends")) for the replay corpus.
    history_recorder(proxied.stack.temporal_address)(order_id, "reconcile_loose_ends", workflow_id=sweep_id)


async def test_a_saga_terminated_before_its_notice_gets_the_notice_once(
    proxied: ProxiedStack, driver: Driver, temporal_client: Client
) -> None:
    customer = await driver.customer()
    product = await driver.product(stock=STOCK)
    # The notice is refused until the saga is gone: final status recorded, customer not yet told.
    refused = proxied.proxies.arm(notices_to(customer)).fail_with(503, "unavailable", times=10_000)
    accepted = await driver.place_order(customer, [(product, 2)])
    order_id = accepted.json()["id"]
    await refused.wait_hits()
    order = await driver.order(order_id)
    assert order["status"] == "CONFIRMED", order
    proxied.temporal("workflow", "terminate", "--workflow-id", f"order-{order_id}", "--reason", "test")
    proxied.proxies.reset()
    assert await outcome_notices(driver, customer, order_id) == []

    await sweep(temporal_client)
    assert await outcome_notices(driver, customer, order_id) == [("order_confirmed", "email")]
    # Another sweep, and the orders service's own notice key, keep it at one.
    await sweep(temporal_client)
    assert await outcome_notices(driver, customer, order_id) == [("order_confirmed", "email")]
    await driver.assert_invariants(await driver.order(order_id), {product: STOCK})


async def test_a_running_saga_is_left_to_send_its_own_notice(
    proxied: ProxiedStack, driver: Driver, temporal_client: Client
) -> None:
    customer = await driver.customer()
    product = await driver.product(stock=STOCK)
    refused = proxied.proxies.arm(notices_to(customer)).fail_with(503, "unavailable", times=10_000)
    accepted = await driver.place_order(customer, [(product, 1)])
    order_id = accepted.json()["id"]
    await refused.wait_hits()
    assert (await driver.order(order_id))["status"] == "CONFIRMED"

    await sweep(temporal_client)  # the saga is still retrying its notice: not the reconciler's
    seen: list[Any] = proxied.proxies.seen(notices_to(customer))
    assert seen and all(s.injected for s in seen), "only the saga tried to send the notice, and was refused"
    proxied.proxies.reset()
    status = await wait_closed(temporal_client, f"order-{order_id}", timeout=90)
    assert status is WorkflowExecutionStatus.COMPLETED
    assert await outcome_notices(driver, customer, order_id) == [("order_confirmed", "email")]


async def test_a_saga_terminated_before_its_first_workflow_task_is_repaired(
    proxied: ProxiedStack, driver: Driver, temporal_client: Client
) -> None:
    """Found by the PostgreSQL gating run: the operator's terminate came before any worker had
    picked up the saga's first task, so the repair's query of the closed saga can never be answered
    ("closed before WorkflowTaskStarted"); the repair rolls back what nothing did and cancels."""
    customer = await driver.customer()
    product = await driver.product(stock=STOCK)
    worker = proxied.stack.processes["worker"]
    worker.signal(signal.SIGSTOP)  # the first workflow task is scheduled, never started
    try:
        accepted = await driver.place_order(customer, [(product, 2)])
        assert accepted.status_code == 202, accepted.text
        order_id = accepted.json()["id"]
        proxied.temporal("workflow", "terminate", "--workflow-id", f"order-{order_id}", "--reason", "test")
    finally:
        worker.signal(signal.SIGCONT)
    assert (await driver.order(order_id))["status"] == "PENDING"

    assert order_id in await sweep(temporal_client)
    await asyncio.wait_for(temporal_client.get_workflow_handle(f"repair-{order_id}").result(), 120)
    order = await driver.order(order_id)
    assert (order["status"], order["cancel_reason"]) == ("CANCELLED", "saga_terminated")
    await driver.assert_invariants(order, {product: STOCK})
