"""A new worker version rolls out beside the old one: pinned sagas finish where they started.

Worker A runs today's code; worker B runs a copy of it with one more command in the saga (a 321 ms
timer before the confirmation), so B is a new version by its build id (the workflow sources' hash)
and would break any saga started on A if that saga moved to it. Both are real worker processes on
one task queue; `ordersaga deploy` routes new sagas between them.
"""

from __future__ import annotations

import asyncio
import shutil
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from temporalio.api.enums.v1 import EventType
from temporalio.client import Client, WorkflowExecutionStatus

from tests.rollout.versions import current_build_id, deploy, make_current, ordersaga
from tests.support.driver import Customer, Driver
from tests.support.processes import VENV_BIN, ManagedProcess, free_port, http_ok
from tests.support.stack import Stack
from workers.settings import WORKFLOWS_PACKAGE, workflow_code_build_id
from workflows.payloads import workflow_id_for

pytestmark = [pytest.mark.slow, pytest.mark.temporal]

REVIEW_PRICE = 60_000  # two of them pass the stack's review threshold of 100 000
PINNED_SAGAS = 5
MARKER_MS = 321  # B's extra timer, recognisable in a history
CONFIRM = '        await self._step("confirm_order", pivot, interruptible=False)\n'
FIRST_STEP = '            await self._step("create_order",'


def workflows_copy(root: Path, anchor: str, insert: str) -> Path:
    """A copy of the workflows package with `insert` placed before `anchor` in order.py."""
    target = root / "workflows"
    shutil.copytree(WORKFLOWS_PACKAGE, target, ignore=shutil.ignore_patterns("__pycache__"))
    source = (target / "order.py").read_text()
    assert source.count(anchor) == 1, f"anchor not unique in order.py: {anchor!r}"
    (target / "order.py").write_text(source.replace(anchor, insert + anchor))
    return root


@dataclass
class Versions:
    a: str
    b: str
    a_worker: ManagedProcess
    b_worker: ManagedProcess
    b_code: Path


@pytest.fixture
def versions(stack: Stack, tmp_path: Path) -> Iterator[Versions]:
    """Worker A (today's code, its own build id) in place of the stack's worker, and B beside it."""
    before = current_build_id(stack)
    build_a = f"a-{uuid.uuid4().hex[:8]}"
    b_code = workflows_copy(
        tmp_path / "b", CONFIRM, f"        await workflow.sleep(timedelta(milliseconds={MARKER_MS}))\n"
    )
    build_b = workflow_code_build_id(b_code / "workflows")
    assert build_b != workflow_code_build_id(), "a change of workflow code is a new version"

    stack.processes["worker"].stop()
    template = stack.worker_process()
    a_env = template.env | {"WORKER_BUILD_ID": build_a, "WORKER_PROMOTE": "always"}
    a_worker = ManagedProcess("worker-a", template.argv, tmp_path / "worker-a.log", a_env, template.ready)
    b_port = free_port()
    b_env = template.env | {
        "PYTHONPATH": str(b_code),
        "WORKER_PROMOTE": "never",
        "WORKER_METRICS_PORT": str(b_port),
        "WORKER_RECONCILE_INTERVAL_SECONDS": "0",
    }
    # -P: B's copy of the workflows package must win over the checkout in the working directory.
    b_argv = [sys.executable, "-P", "-c", "import asyncio, workers.main as m; asyncio.run(m.serve())"]
    b_worker = ManagedProcess(
        "worker-b", b_argv, tmp_path / "worker-b.log", b_env, http_ok(f"http://127.0.0.1:{b_port}/ready")
    )
    try:
        a_worker.start(timeout=60)
        assert current_build_id(stack) == build_a, "WORKER_PROMOTE=always makes A current"
        yield Versions(build_a, build_b, a_worker, b_worker, b_code)
    finally:
        b_worker.stop()
        a_worker.stop()
        stack.processes["worker"] = stack.worker_process().start(timeout=60)
        if before:
            make_current(stack, before)


@pytest.fixture
async def temporal(stack: Stack) -> Client:
    return await Client.connect(stack.temporal_address)


async def build_id_of(client: Client, order_id: str) -> str:
    described = await client.get_workflow_handle(workflow_id_for(order_id)).describe()
    return described.raw_description.workflow_execution_info.versioning_info.deployment_version.build_id


async def recorded(client: Client, order_id: str) -> tuple[list[int], set[str]]:
    """From the saga's history: its timers (ms), and the build ids that completed its workflow tasks."""
    history = await client.get_workflow_handle(workflow_id_for(order_id)).fetch_history()
    timers, builds = [], set()
    for event in history.events:
        if event.event_type == EventType.EVENT_TYPE_TIMER_STARTED:
            timers.append(event.timer_started_event_attributes.start_to_fire_timeout.ToMilliseconds())
        elif event.event_type == EventType.EVENT_TYPE_WORKFLOW_TASK_COMPLETED:
            builds.add(event.workflow_task_completed_event_attributes.deployment_version.build_id)
    return timers, builds


async def place(driver: Driver, customer: Customer, product: str, quantity: int = 1) -> str:
    accepted = await driver.place_order(customer, [(product, quantity)])
    assert accepted.status_code == 202, accepted.text
    return str(accepted.json()["id"])


async def assert_confirmed_once(driver: Driver, order_id: str, amount_cents: int) -> None:
    order, _ = await driver.wait_final(order_id, timeout=90)
    assert order["status"] == "CONFIRMED", order
    payments = await driver.payments_of(order_id)
    assert [(p["status"], p["amount_cents"]) for p in payments] == [("captured", amount_cents)]


# Long variant (ORDERSAGA_TEST_FULL=1): tests/rollout/test_rollout.py is the family's gating run.
@pytest.mark.full
async def test_pinned_sagas_finish_on_their_version_while_new_ones_run_the_new_code(
    stack: Stack, driver: Driver, versions: Versions, temporal: Client
) -> None:
    customer = await driver.customer()
    reviewed = await driver.product(stock=2 * PINNED_SAGAS, price_cents=REVIEW_PRICE)
    small = await driver.product(stock=100, price_cents=1_000)

    # Five sagas on A, each waiting for a reviewer.
    pinned = [await place(driver, customer, reviewed, 2) for _ in range(PINNED_SAGAS)]
    for order_id in pinned:
        await driver.wait_saga(order_id, lambda v: v["order_status"] == "AWAITING_REVIEW")
        assert await build_id_of(temporal, order_id) == versions.a

    # The deploy gate, with the five running: code that changes what they already did fails it.
    broken = workflows_copy(
        versions.b_code.parent / "broken", FIRST_STEP, "            await workflow.sleep(0.123)\n"
    )
    gate = [sys.executable, "-P", "-m", "ordersaga.cli"]
    failed = ordersaga(stack, "replay", "--against-running", env={"PYTHONPATH": str(broken)}, argv0=gate)
    assert failed.returncode == 1, failed.stdout + failed.stderr
    assert all(f"FAIL  workflow {workflow_id_for(o)}" in failed.stdout for o in pinned), failed.stdout
    passed = ordersaga(
        stack, "replay", "--against-running", env={"PYTHONPATH": str(versions.b_code)}, argv0=gate
    )
    assert passed.returncode == 0, passed.stdout + passed.stderr
    assert all(f"ok  workflow {workflow_id_for(o)}" in passed.stdout for o in pinned), passed.stdout

    # B starts beside A; it takes no saga until it is promoted.
    versions.b_worker.start(timeout=60)
    assert current_build_id(stack) == versions.a, "WORKER_PROMOTE=never leaves routing alone"
    refused = deploy(stack, "drain", versions.a, "--timeout", "0")
    assert refused.returncode == 2, refused.stdout
    assert "new sagas still start on it" in refused.stdout

    # A 50 % ramp: about half of 40 new sagas start on B.
    ramp = deploy(stack, "promote", versions.b, "--ramp", "50")
    assert ramp.returncode == 0, ramp.stdout + ramp.stderr
    assert f"{versions.b} is ramping at 50%" in ramp.stdout
    status = deploy(stack, "status").stdout
    assert any(line.split()[:3] == [versions.b, "ramping", "50%"] for line in status.splitlines()), status
    ramped: list[str] = []
    for _ in range(4):  # in waves of ten, so that the two shared cores keep up
        wave = await asyncio.gather(*(place(driver, customer, small) for _ in range(10)))
        await asyncio.gather(*(assert_confirmed_once(driver, order_id, 1_000) for order_id in wave))
        ramped += wave
    placed_on = [await build_id_of(temporal, order_id) for order_id in ramped]
    on_b = placed_on.count(versions.b)
    assert placed_on.count(versions.a) + on_b == 40
    print(f"\nramp 50 %: {on_b} of 40 new sagas started on B, {40 - on_b} on A")
    assert 10 <= on_b <= 30, f"{on_b} of 40 sagas on B at a 50 % ramp"
    for order_id, build_id in zip(ramped, placed_on, strict=True):
        timers, builds = await recorded(temporal, order_id)
        assert (MARKER_MS in timers) == (build_id == versions.b)
        assert builds == {build_id}

    # B becomes current: every new saga runs B's code, the five stay pinned to A.
    promoted = deploy(stack, "promote", versions.b)
    assert promoted.returncode == 0, promoted.stdout + promoted.stderr
    status = deploy(stack, "status").stdout
    rows = {line.split()[0]: line.split() for line in status.splitlines()[2:] if line.split()}
    assert rows[versions.b][1] == "current", status
    assert rows[versions.a][-2:] == [str(PINNED_SAGAS), str(PINNED_SAGAS)], status  # running, pinned
    later = [await place(driver, customer, small) for _ in range(3)]
    for order_id in later:
        await assert_confirmed_once(driver, order_id, 1_000)
        assert await build_id_of(temporal, order_id) == versions.b
        timers, builds = await recorded(temporal, order_id)
        assert MARKER_MS in timers, "B's command is in the history"
        assert builds == {versions.b}

    # A cannot be drained while sagas are pinned to it.
    early = deploy(stack, "drain", versions.a, "--timeout", "0")
    assert early.returncode == 1, early.stdout
    assert f"{PINNED_SAGAS} pinned workflow(s) still running" in early.stdout

    drain = subprocess.Popen(
        [str(VENV_BIN / "ordersaga"), "deploy", "drain", versions.a, "--timeout", "90", "--poll", "0.3"],
        env=stack.worker_process().env,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert drain.stdout is not None
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.extend(drain.stdout or ()), daemon=True)
    reader.start()
    try:
        for order_id in pinned[:-1]:
            assert (await driver.review(order_id, approve=True)).status_code == 202
        for order_id in pinned[:-1]:
            await driver.wait_final(order_id, timeout=90)
        one_left = f"{versions.a}: 1 pinned workflow(s) still running\n"
        deadline = time.monotonic() + 60
        while one_left not in lines and time.monotonic() < deadline:
            await asyncio.sleep(0.2)
        assert one_left in lines, lines
        await asyncio.sleep(1.0)  # a few more of drain's polls
        assert drain.poll() is None, "drain said empty while a saga was still pinned to A"
        assert (await driver.review(pinned[-1], approve=True)).status_code == 202
        await asyncio.to_thread(drain.wait, timeout=120)
        drained_at = time.time()
        await asyncio.to_thread(reader.join, 10)
        out = "".join(lines)
    finally:
        if drain.poll() is None:
            drain.kill()
    assert drain.returncode == 0, out
    assert out.strip().endswith(f"{versions.a} is drained: no pinned saga left; its workers can be retired")
    last = await temporal.get_workflow_handle(workflow_id_for(pinned[-1])).describe()
    assert last.status == WorkflowExecutionStatus.COMPLETED
    assert last.close_time is not None and last.close_time.timestamp() <= drained_at

    for order_id in pinned:
        await assert_confirmed_once(driver, order_id, 2 * REVIEW_PRICE)
        assert await build_id_of(temporal, order_id) == versions.a, "finished on the version it began on"
        timers, builds = await recorded(temporal, order_id)
        assert MARKER_MS not in timers, "A's plan, without B's command"
        assert builds == {versions.a}, "every workflow task, before and after the promotion, ran on A"
    stock = await driver.availability(reviewed)
    assert (stock["on_hand"], stock["reserved"]) == (0, 0), "committed once"
    stock = await driver.availability(small)
    assert (stock["on_hand"], stock["reserved"]) == (100 - 43, 0)
