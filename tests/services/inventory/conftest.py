"""An inventory client per test, on a fresh migrated database of the test's backend."""

from __future__ import annotations

from collections.abc import AsyncIterator

import httpx
import pytest

from tests.conftest import ServiceClientFactory


@pytest.fixture(autouse=True)
def _postgres_resolved_before_the_loop(backend: str, request: pytest.FixtureRequest) -> None:
    """Work around the shared harness: `fresh_database` resolves the session-scoped
    `postgres_databases` fixture lazily, from inside the running event loop, where its
    `asyncio.run()` probe fails and every PostgreSQL test is skipped. Resolving it here, in a
    synchronous fixture, sets it up before the loop runs."""
    if backend == "postgres":
        request.getfixturevalue("postgres_databases")


@pytest.fixture
async def inventory(service_client: ServiceClientFactory) -> AsyncIterator[httpx.AsyncClient]:
    async with service_client("inventory") as client:
        yield client
