"""An inventory client per test, on a fresh migrated database of the test's backend."""

from __future__ import annotations

from collections.abc import AsyncIterator

import httpx
import pytest

from tests.conftest import ServiceClientFactory


@pytest.fixture
async def inventory(service_client: ServiceClientFactory) -> AsyncIterator[httpx.AsyncClient]:
    async with service_client("inventory") as client:
        yield client
