"""Fresh databases for tests: a migrated template per service, copied for every test.

SQLite templates are files copied per test; PostgreSQL templates are databases cloned with
`CREATE DATABASE ... TEMPLATE`, which is much faster than migrating each time.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import threading
import uuid
from pathlib import Path
from typing import Any

import asyncpg

from services.kit.migrations import upgrade

DEFAULT_POSTGRES_URL = "postgresql://postgres@127.0.0.1:5432/postgres"


def postgres_admin_url() -> str:
    return os.environ.get("ORDERSAGA_TEST_POSTGRES_URL", DEFAULT_POSTGRES_URL)


def postgres_reachable(url: str) -> str | None:
    """None when reachable, else the reason."""

    async def probe() -> None:
        conn = await asyncpg.connect(url, timeout=5)
        await conn.close()

    try:
        run_in_thread(probe())
    except Exception as exc:
        return f"{type(exc).__name__}: {exc}"
    return None


def run_in_thread(coro: Any) -> Any:
    """Run a coroutine to completion from sync code, even while a test's event loop is running."""
    outcome: dict[str, Any] = {}

    def target() -> None:
        try:
            outcome["value"] = asyncio.run(coro)
        except BaseException as exc:
            outcome["error"] = exc

    thread = threading.Thread(target=target)
    thread.start()
    thread.join()
    if "error" in outcome:
        raise outcome["error"]
    return outcome.get("value")


def _with_database(url: str, database: str) -> str:
    base, _, _ = url.rpartition("/")
    return f"{base}/{database}"


class PostgresDatabases:
    def __init__(self, admin_url: str) -> None:
        self.admin_url = admin_url
        self.run_id = uuid.uuid4().hex[:8]
        self.templates: dict[str, str] = {}
        self.created: list[str] = []

    async def _admin(self, sql: str) -> None:
        conn = await asyncpg.connect(self.admin_url, timeout=10)
        try:
            await conn.execute(sql)
        finally:
            await conn.close()

    async def template(self, service: str) -> str:
        if service not in self.templates:
            name = f"ordersaga_tpl_{service}_{self.run_id}"
            await self._admin(f'CREATE DATABASE "{name}"')
            self.created.append(name)
            await upgrade(service, _with_database(self.admin_url, name))
            self.templates[service] = name
        return self.templates[service]

    async def fresh(self, service: str) -> str:
        template = await self.template(service)
        name = f"ordersaga_test_{service}_{uuid.uuid4().hex[:10]}"
        await self._admin(f'CREATE DATABASE "{name}" TEMPLATE "{template}"')
        self.created.append(name)
        return _with_database(self.admin_url, name)

    async def drop(self, url: str) -> None:
        name = url.rpartition("/")[2]
        await self._admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')

    def drop_all(self) -> None:
        async def run() -> None:
            for name in reversed(self.created):
                await self._admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')

        run_in_thread(run())


class SqliteDatabases:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.templates: dict[str, Path] = {}

    async def template(self, service: str) -> Path:
        if service not in self.templates:
            path = self.root / f"template-{service}.db"
            await upgrade(service, f"sqlite+aiosqlite:///{path}")
            self.templates[service] = path
        return self.templates[service]

    async def fresh(self, service: str, directory: Path) -> str:
        template = await self.template(service)
        target = directory / f"{service}-{uuid.uuid4().hex[:8]}.db"
        shutil.copyfile(template, target)
        return f"sqlite+aiosqlite:///{target}"
