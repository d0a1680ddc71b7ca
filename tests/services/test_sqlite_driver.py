"""The SQLite dialect of services/kit/sqlite_driver.py: SQLAlchemy's results, one thread hop a statement."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiosqlite
import pytest
from sqlalchemy import text
from sqlalchemy.exc import IntegrityError

from services.kit.db import Database
from services.kit.sqlite_driver import DRIVER


@pytest.fixture
async def database(tmp_path: Path) -> AsyncIterator[Database]:
    db = Database(f"sqlite+aiosqlite:///{tmp_path / 'driver.db'}")
    async with db.engine.begin() as conn:
        await conn.execute(text("CREATE TABLE item (id INTEGER PRIMARY KEY, name TEXT UNIQUE NOT NULL)"))
    yield db
    await db.dispose()


@pytest.fixture
def hops(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Every call handed to aiosqlite's thread, by the name of what it ran."""
    calls: list[str] = []
    original = aiosqlite.Connection._execute

    async def counted(self: aiosqlite.Connection, fn: Any, *args: Any, **kwargs: Any) -> Any:
        calls.append(getattr(fn, "__name__", repr(fn)))
        return await original(self, fn, *args, **kwargs)

    monkeypatch.setattr(aiosqlite.Connection, "_execute", counted)
    return calls


async def test_sqlite_urls_use_the_one_hop_dialect(database: Database) -> None:
    assert database.engine.dialect.driver == DRIVER
    assert database.url.startswith("sqlite+aiosqlite:")  # what migrations and tools are given


async def test_a_statement_is_one_hand_over_to_the_driver_thread(database: Database, hops: list[str]) -> None:
    async with database.engine.connect() as conn:
        await conn.execute(text("SELECT 1"))  # the pool's first checkout out of the way
        hops.clear()
        inserted = await conn.execute(text("INSERT INTO item (name) VALUES ('a') RETURNING id, name"))
        read = await conn.execute(text("SELECT name FROM item WHERE id = :id"), {"id": 1})
        assert hops == ["_run", "_run"]
        assert inserted.all() == [(1, "a")]
        assert read.scalar_one() == "a"


async def test_rowcount_lastrowid_and_executemany_are_the_drivers(database: Database) -> None:
    async with database.engine.begin() as conn:
        many = await conn.execute(
            text("INSERT INTO item (name) VALUES (:name)"), [{"name": "x"}, {"name": "y"}]
        )
        assert many.rowcount == 2
        one = await conn.execute(text("INSERT INTO item (name) VALUES ('z')"))
        assert one.lastrowid == 3
        updated = await conn.execute(text("UPDATE item SET name = name || '!' WHERE id < 3"))
        assert updated.rowcount == 2
    async with database.engine.connect() as conn:
        names = (await conn.execute(text("SELECT name FROM item ORDER BY id"))).scalars().all()
    assert names == ["x!", "y!", "z"]


async def test_errors_keep_their_dbapi_class_and_roll_back(database: Database) -> None:
    async def insert_twice() -> None:
        async with database.engine.begin() as conn:
            await conn.execute(text("INSERT INTO item (name) VALUES ('dup')"))
            await conn.execute(text("INSERT INTO item (name) VALUES ('dup')"))

    with pytest.raises(IntegrityError):
        await insert_twice()
    async with database.engine.connect() as conn:
        assert (await conn.execute(text("SELECT count(*) FROM item"))).scalar_one() == 0


async def test_streamed_results_still_work(database: Database) -> None:
    async with database.engine.begin() as conn:
        await conn.execute(
            text("INSERT INTO item (name) VALUES (:name)"), [{"name": f"n{i}"} for i in range(5)]
        )
    async with database.engine.connect() as conn:
        result = await conn.stream(text("SELECT name FROM item ORDER BY id"))
        assert [row[0] async for row in result] == ["n0", "n1", "n2", "n3", "n4"]
