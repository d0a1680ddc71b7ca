"""Revision 0003 (`send_started_at`) goes down and up again without losing a notification."""

from __future__ import annotations

from typing import Any

from sqlalchemy import inspect, pool, text
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from services.kit.migrations import downgrade, upgrade
from services.kit.settings import normalise_database_url
from tests.services.notifications.helpers import MANUAL, queue
from tests.support.identity import as_service


async def columns_and_indexes(engine: AsyncEngine) -> tuple[set[str], set[str], set[str]]:
    async with engine.connect() as connection:

        def read(sync: Any) -> tuple[set[str], set[str], set[str]]:
            inspector = inspect(sync)
            columns = {c["name"] for c in inspector.get_columns("notifications")}
            indexes = {str(i["name"]) for i in inspector.get_indexes("notifications")}
            uniques = {str(u["name"]) for u in inspector.get_unique_constraints("notifications")}
            return columns, indexes, uniques

        return await connection.run_sync(read)


async def test_0003_downgrades_and_upgrades_keeping_rows(service_client, fresh_database) -> None:
    url = await fresh_database("notifications")
    async with service_client("notifications", database_url=url, **MANUAL) as client:
        created = await queue(client)
    engine = create_async_engine(normalise_database_url(url), poolclass=pool.NullPool)
    try:
        columns, indexes, uniques = await columns_and_indexes(engine)
        assert "send_started_at" in columns

        await downgrade("notifications", url, "0002")
        down_columns, down_indexes, down_uniques = await columns_and_indexes(engine)
        assert down_columns == columns - {"send_started_at"}
        assert (down_indexes, down_uniques) == (indexes, uniques)  # the table rebuild kept them

        await upgrade("notifications", url)
        assert await columns_and_indexes(engine) == (columns, indexes, uniques)
        async with engine.connect() as connection:
            rows = (await connection.execute(text("SELECT status, send_started_at FROM notifications"))).all()
        assert [tuple(r) for r in rows] == [("queued", None)]
    finally:
        await engine.dispose()
    async with service_client("notifications", database_url=url, **MANUAL) as client:
        assert (await client.get(f"/notifications/{created['id']}", headers=as_service())).status_code == 200
