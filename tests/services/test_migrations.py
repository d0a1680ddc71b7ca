"""Each service's migrations build exactly the tables its models declare, on both backends."""

from __future__ import annotations

import importlib
from typing import Any

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import inspect, pool
from sqlalchemy.ext.asyncio import create_async_engine

from services.kit.migrations import downgrade, upgrade
from services.kit.settings import normalise_database_url
from services.registry import DATA_SERVICES


def service_metadata(service: str) -> Any:
    """The metadata the service's migrations/env.py hands to Alembic."""
    env = importlib.import_module(f"services.{service}.models")
    from services.kit.models import service_metadata as slice_of
    from services.kit.outbox import OutboxEvent

    models = [obj for obj in vars(env).values() if getattr(obj, "__table__", None) is not None]
    models = [m for m in models if m.__module__ == env.__name__] + [OutboxEvent]
    return slice_of(*models)


@pytest.mark.parametrize("service", DATA_SERVICES)
async def test_migrations_match_models(service: str, fresh_database: Any) -> None:
    url = await fresh_database(service)
    engine = create_async_engine(normalise_database_url(url), poolclass=pool.NullPool)
    metadata = service_metadata(service)
    try:
        async with engine.connect() as connection:
            diff = await connection.run_sync(
                lambda sync: compare_metadata(
                    MigrationContext.configure(sync, opts={"compare_type": False}), metadata
                )
            )
    finally:
        await engine.dispose()
    diff = [d for d in diff if not (d[0] == "remove_table" and d[1].name.startswith("alembic_version"))]
    assert diff == [], f"{service}: migrations and models differ: {diff}"


@pytest.mark.parametrize("service", DATA_SERVICES)
async def test_migrations_downgrade_to_base_and_up_again(service: str, fresh_database: Any) -> None:
    url = await fresh_database(service)
    await downgrade(service, url)
    engine = create_async_engine(normalise_database_url(url), poolclass=pool.NullPool)
    try:
        async with engine.connect() as connection:
            tables = await connection.run_sync(lambda sync: inspect(sync).get_table_names())
    finally:
        await engine.dispose()
    assert [t for t in tables if not t.startswith("alembic_version")] == []
    await upgrade(service, url)
