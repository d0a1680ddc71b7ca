"""Fresh databases for tests: a migrated template per service, copied for every test.

SQLite templates are files copied per test; PostgreSQL templates are databases cloned with
`CREATE DATABASE ... TEMPLATE`, which is much faster than migrating each time. Even a clone costs
0.5 to 2 s on a busy 2-core machine (and each one left behind slows the session's end), so a test's
database goes back to a pool once the test is done: emptied with one TRUNCATE, it is handed to the
next test of the same service, and only a database that no longer looks like its template (another
schema version, other tables, a connection still open) is dropped instead.
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


# The tables a reset leaves alone: each service's schema version (`alembic_version_<service>`),
# which the pool compares with the template's instead.
_VERSION_TABLE_PREFIX = "alembic_version"


class PostgresDatabases:
    def __init__(self, admin_url: str) -> None:
        self.admin_url = admin_url
        self.run_id = uuid.uuid4().hex[:8]
        self.templates: dict[str, str] = {}
        self.created: list[str] = []
        self._shapes: dict[str, tuple[frozenset[str], str]] = {}
        self._pool: dict[str, list[str]] = {}

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

    async def lend(self, service: str) -> str:
        """A database like a fresh clone of the template: an emptied one from the pool, or a new one.
        Give it back with `give_back` when the test is done."""
        pooled = self._pool.get(service)
        if pooled:
            return _with_database(self.admin_url, pooled.pop())
        return await self.fresh(service)

    async def give_back(self, service: str, url: str) -> None:
        name = url.rpartition("/")[2]
        try:
            emptied = await self._empty_if_unchanged(service, url)
        except (OSError, asyncpg.PostgresError):
            emptied = False
        if emptied:
            self._pool.setdefault(service, []).append(name)
        else:
            await self.drop(url)

    async def _shape(self, conn: asyncpg.Connection) -> tuple[frozenset[str], str]:
        tables = await conn.fetch("SELECT tablename FROM pg_tables WHERE schemaname = 'public'")
        names = frozenset(str(row["tablename"]) for row in tables)
        versions = [
            await conn.fetchval(f"SELECT string_agg(version_num, ',') FROM \"{name}\"")
            for name in sorted(names)
            if name.startswith(_VERSION_TABLE_PREFIX)
        ]
        return names, ";".join(str(version) for version in versions)

    async def _still_connected(self, conn: asyncpg.Connection) -> bool:
        # A backend that was just closed leaves pg_stat_activity a moment later.
        for _ in range(10):
            others = await conn.fetchval(
                "SELECT count(*) FROM pg_stat_activity"
                " WHERE datname = current_database() AND pid <> pg_backend_pid()"
            )
            if not others:
                return False
            await asyncio.sleep(0.05)
        return True

    async def _empty_if_unchanged(self, service: str, url: str) -> bool:
        if service not in self._shapes:
            template_url = _with_database(self.admin_url, self.templates[service])
            template = await asyncpg.connect(template_url, timeout=10)
            try:
                self._shapes[service] = await self._shape(template)
            finally:
                await template.close()
        conn = await asyncpg.connect(url, timeout=10)
        try:
            if await self._still_connected(conn) or await self._shape(conn) != self._shapes[service]:
                return False
            tables, _ = self._shapes[service]
            emptied = sorted(table for table in tables if not table.startswith(_VERSION_TABLE_PREFIX))
            if emptied:
                await conn.execute("SET lock_timeout = '2s'")
                quoted = ", ".join(f'"{table}"' for table in emptied)
                await conn.execute(f"TRUNCATE {quoted} RESTART IDENTITY CASCADE")
            return True
        finally:
            await conn.close()

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
