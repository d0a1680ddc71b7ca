"""A saga started on the previous release, waiting for review when the new worker rolls out, finishes right.

`v1-worker.tar.gz` is the worker as it was released before authorisations (review first, then one
charge): `git archive --format=tar.gz -o tests/rollout/v1-worker.tar.gz 4aba779 workflows activities
workers`. It runs against today's services, as an old worker does during a rolling deployment.
"""

from __future__ import annotations

import sys
import tarfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.rollout.versions import current_build_id, make_current
from tests.support.driver import Driver
from tests.support.identity import as_admin
from tests.support.processes import ManagedProcess
from tests.support.stack import Stack

pytestmark = [pytest.mark.slow, pytest.mark.temporal]

V1_WORKER = Path(__file__).parent / "v1-worker.tar.gz"
REVIEW_PRICE = 60_000
STOCK = 5


@pytest.fixture
def v1_worker(stack: Stack, tmp_path: Path) -> Iterator[ManagedProcess]:
    """The old worker in place of the stack's own; the stack gets a new-code worker back afterwards.

    v1 predates Worker Versioning: it polls unversioned, so new sagas go to it only while the
    deployment has no current version. The new worker, finding none, makes its version current.
    """
    with tarfile.open(V1_WORKER) as archive:
        archive.extractall(tmp_path / "v1", filter="data")
    current = stack.worker_process()
    # -P: the old packages must win over the checkout in the working directory.
    argv = [sys.executable, "-P", "-c", "import asyncio, workers.main as m; asyncio.run(m.serve())"]
    env = current.env | {"PYTHONPATH": str(tmp_path / "v1")}
    old = ManagedProcess("worker-v1", argv, tmp_path / "worker-v1.log", env, ready=current.ready)
    stack.processes["worker"].stop()
    before = current_build_id(stack)
    make_current(stack, "")
    try:
        yield old.start(timeout=60)
    finally:
        old.stop()
        if not stack.processes["worker"].running:
            stack.processes["worker"] = stack.worker_process().start(timeout=60)
        if before and current_build_id(stack) != before:
            make_current(stack, before)


async def test_saga_in_review_on_the_old_code_confirms_on_the_new_worker(
    stack: Stack, driver: Driver, v1_worker: ManagedProcess
) -> None:
    customer = await driver.customer()
    product = await driver.product(stock=STOCK, price_cents=REVIEW_PRICE)
    accepted = await driver.place_order(customer, [(product, 2)])
    order_id = accepted.json()["id"]
    await driver.wait_saga(order_id, lambda v: v["order_status"] == "AWAITING_REVIEW")
    assert await driver.payments_of(order_id) == [], "the old plan reviews before it charges"
    assert "worker_started" in v1_worker.log_path.read_text()

    # The rollout: the old worker stops, the new one takes over the saga waiting for review (an
    # unversioned saga follows the current version).
    v1_worker.stop()
    stack.processes["worker"] = stack.worker_process().start(timeout=60)
    assert current_build_id(stack) is not None, "the first versioned worker makes itself current"
    assert (await driver.review(order_id, approve=True)).status_code == 202

    order, view = await driver.wait_final(order_id)
    assert order["status"] == "CONFIRMED"
    payments = await driver.payments_of(order_id)
    assert [(p["status"], p["amount_cents"]) for p in payments] == [("captured", 2 * REVIEW_PRICE)]
    assert order["payment_id"] == payments[0]["id"]
    stock = await driver.availability(product)
    assert (stock["on_hand"], stock["reserved"]) == (STOCK - 2, 0), "committed once"
    steps = {step["name"]: step["status"] for step in view["steps"]}
    assert (steps["authorize_payment"], steps["review"], steps["capture_payment"]) == (
        "skipped",
        "done",
        "done",
    )
    events = await driver.http.get(driver.urls["orders"] + f"/orders/{order_id}/events", headers=as_admin())
    assert [e["type"] for e in events.json()["items"]].count("order.confirmed") == 1

    # Orders placed after the rollout hold the money before anyone reviews them.
    later = await driver.place_order(customer, [(product, 2)])
    later_id = later.json()["id"]
    await driver.wait_saga(later_id, lambda v: v["order_status"] == "AWAITING_REVIEW")
    assert [p["status"] for p in await driver.payments_of(later_id)] == ["authorized"]
    assert (await driver.review(later_id, approve=False)).status_code == 202
    rejected, _ = await driver.wait_final(later_id)
    await driver.assert_invariants(rejected, {product: STOCK - 2})
