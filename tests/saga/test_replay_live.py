"""`ordersaga replay` fetches histories from a live server, by workflow id or by visibility query."""

from __future__ import annotations

import asyncio
import os
import subprocess

import pytest

from tests.support.driver import Driver
from tests.support.processes import VENV_BIN
from tests.support.stack import Stack

pytestmark = [pytest.mark.slow, pytest.mark.temporal]


def replay(stack: Stack, *args: str) -> subprocess.CompletedProcess[str]:
    env = os.environ | {"TEMPORAL_ADDRESS": stack.temporal_address}
    return subprocess.run(
        [str(VENV_BIN / "ordersaga"), "replay", *args], capture_output=True, text=True, timeout=120, env=env
    )


async def test_replay_by_workflow_id_and_by_query(driver: Driver, stack: Stack) -> None:
    customer = await driver.customer()
    product = await driver.product()
    accepted = (await driver.place_order(customer, [(product, 1)])).json()
    await driver.wait_final(accepted["id"])

    by_id = await asyncio.to_thread(replay, stack, "--workflow-id", accepted["workflow_id"])
    assert by_id.returncode == 0, by_id.stdout + by_id.stderr
    assert f"ok  workflow {accepted['workflow_id']}" in by_id.stdout

    query = f'CustomerId="{customer.user_id}"'
    for _ in range(50):  # visibility catches up shortly after the workflow closes
        by_query = await asyncio.to_thread(replay, stack, "--query", query)
        if accepted["workflow_id"] in by_query.stdout:
            break
        await asyncio.sleep(0.2)
    assert by_query.returncode == 0, by_query.stdout + by_query.stderr
    assert "1 replayed ok, 0 failed" in by_query.stdout


def test_unknown_workflow_id_is_an_error_not_a_pass(stack: Stack) -> None:
    result = replay(stack, "--workflow-id", "order-does-not-exist")
    assert result.returncode == 2
    assert result.stdout.startswith("error")
    assert "Traceback" not in result.stderr
