"""Alembic, run programmatically: one migration tree per service, one version table per service."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from importlib import resources
from typing import Any

from alembic import command, context
from alembic.config import Config
from sqlalchemy import MetaData, pool
from sqlalchemy.engine import Connection
from sqlalchemy.ext.asyncio import create_async_engine

from services.kit.settings import normalise_database_url


def alembic_config(service: str, url: str) -> Config:
    config = Config()
    location = resources.files(f"services.{service}") / "migrations"
    config.set_main_option("script_location", str(location))
    config.set_main_option("sqlalchemy.url", normalise_database_url(url))
    config.attributes["service"] = service
    return config


async def upgrade(service: str, url: str, revision: str = "head") -> None:
    await _migrate(service, url, command.upgrade, revision)


async def downgrade(service: str, url: str, revision: str = "base") -> None:
    await _migrate(service, url, command.downgrade, revision)


async def _migrate(service: str, url: str, step: Callable[[Config, str], None], revision: str) -> None:
    config = alembic_config(service, url)
    engine = create_async_engine(normalise_database_url(url), poolclass=pool.NullPool)

    def run(connection: Connection) -> None:
        config.attributes["connection"] = connection
        step(config, revision)

    try:
        async with engine.begin() as connection:
            await connection.run_sync(run)
    finally:
        await engine.dispose()


def run_env(target_metadata: MetaData) -> None:
    """Body of every service's `migrations/env.py`."""
    config = context.config
    service = config.attributes.get("service", "service")
    options: dict[str, Any] = {
        "target_metadata": target_metadata,
        "version_table": f"alembic_version_{service}",
        "render_as_batch": True,  # SQLite can only ALTER through table copies
        "compare_type": True,
    }
    connection = config.attributes.get("connection")
    if connection is not None:
        _run_on(connection, options)
        return
    if context.is_offline_mode():
        context.configure(url=config.get_main_option("sqlalchemy.url"), literal_binds=True, **options)
        with context.begin_transaction():
            context.run_migrations()
        return

    async def _online() -> None:
        url = config.get_main_option("sqlalchemy.url") or ""
        engine = create_async_engine(url, poolclass=pool.NullPool)
        async with engine.begin() as conn:
            await conn.run_sync(_run_on, options)
        await engine.dispose()

    asyncio.run(_online())


def _run_on(connection: Connection, options: dict[str, Any]) -> None:
    context.configure(connection=connection, **options)
    with context.begin_transaction():
        context.run_migrations()
