"""One async engine and session factory per service: SQLite (aiosqlite) by default, PostgreSQL by URL."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Annotated, Any

from fastapi import Depends, Request
from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict
from sqlalchemy import event, text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import DisconnectionError
from sqlalchemy.ext.asyncio import AsyncEngine, async_sessionmaker, create_async_engine
from sqlalchemy.pool import PoolResetState
from sqlmodel.ext.asyncio.session import AsyncSession

from services.kit.sqlite_driver import one_hop


class DatabaseTimeouts(BaseSettings):
    """How long a request may wait on a PostgreSQL that is down or stuck (`ORDERSAGA_DB_*`).

    Each is under the gateway's 5 s upstream timeout, so a caller gets this service's 503 with
    Retry-After rather than the gateway's 504 while the database is away.
    """

    model_config = SettingsConfigDict(env_prefix="ORDERSAGA_DB_", extra="ignore")

    # The worst case is a server that froze with our connections open: the checkout ping waits the
    # connect bound, then opening a fresh connection waits it again, about 2 s before the 503.
    # Opening a connection (TCP and the startup handshake), and the checkout ping of a pooled one:
    # a stopped server refuses at once.
    connect_timeout_seconds: float = Field(default=1.0, gt=0)
    # Waiting for a pooled connection when all are busy (SQLAlchemy's default is 30 s). A burst
    # queues here (50 reservations racing for one product wait behind 30 connections), so it gets
    # longer than a sign of trouble would, and still ends in a 503 before the gateway's 5 s.
    pool_timeout_seconds: float = Field(default=3.0, gt=0)
    # One statement: the server cancels it (statement_timeout), and the client gives up a moment
    # later on its own, for a server that no longer answers at all. Every query of these services
    # is a point read or a short page: taking seconds means the database is in trouble.
    statement_timeout_seconds: float = Field(default=2.0, gt=0)
    # SQLite only: how long a writer queues for the single write lock before "database is locked"
    # (then a 503). Not an outage but ordinary contention, so it keeps its long default.
    sqlite_busy_timeout_seconds: float = Field(default=30.0, gt=0)


class Database:
    def __init__(self, url: str, *, echo: bool = False, timeouts: DatabaseTimeouts | None = None) -> None:
        self.url = url
        parsed = make_url(url)
        self.is_sqlite = parsed.get_backend_name() == "sqlite"
        is_asyncpg = parsed.get_driver_name() == "asyncpg"
        self.timeouts = timeouts or DatabaseTimeouts()
        kwargs: dict[str, Any] = {"echo": echo}
        if self.is_sqlite:
            if parsed.database and parsed.database != ":memory:":
                Path(parsed.database).parent.mkdir(parents=True, exist_ok=True)
            # An embedded file has no connection to lose: a missing file or a failing disk errors at
            # once (503). This is only how long a writer queues for SQLite's single write lock.
            kwargs["connect_args"] = {"timeout": self.timeouts.sqlite_busy_timeout_seconds}
        else:
            kwargs.update(pool_size=10, max_overflow=20, pool_timeout=self.timeouts.pool_timeout_seconds)
            if is_asyncpg:
                statement = self.timeouts.statement_timeout_seconds
                kwargs["connect_args"] = {
                    "timeout": self.timeouts.connect_timeout_seconds,
                    "command_timeout": statement + 0.25,
                    "server_settings": {"statement_timeout": str(int(statement * 1000))},
                }
            else:
                kwargs["pool_pre_ping"] = True
        # SQLite goes through services/kit/sqlite_driver.py: one thread hop per statement.
        self.engine: AsyncEngine = create_async_engine(one_hop(parsed), pool_reset_on_return=None, **kwargs)
        _reset_only_when_needed(self.engine)
        if self.is_sqlite:
            _configure_sqlite(
                self.engine, busy_timeout_ms=int(self.timeouts.sqlite_busy_timeout_seconds * 1000)
            )
        elif is_asyncpg:
            _ping_on_checkout(self.engine, timeout=self.timeouts.connect_timeout_seconds)
        self.sessionmaker = async_sessionmaker(self.engine, class_=AsyncSession, expire_on_commit=False)

    def session(self) -> AsyncSession:
        return self.sessionmaker()

    async def ping(self) -> None:
        async with self.engine.connect() as conn:
            await conn.execute(text("SELECT 1"))

    async def dispose(self) -> None:
        await self.engine.dispose()


def _reset_only_when_needed(engine: AsyncEngine) -> None:
    """Roll a returned connection back only if its transaction was not already ended.

    The pool's default rolls back every connection it gets back, though a session that committed
    or rolled back has nothing left to undo: a round trip per request (a thread hand-over on
    SQLite, a network one on PostgreSQL) for nothing. A connection given back in the middle of a
    transaction (a cancelled request) is still rolled back. SQLAlchemy's documented recipe for a
    custom reset on return.
    """

    @event.listens_for(engine.sync_engine, "reset")
    def _reset(dbapi_conn: Any, _record: Any, reset_state: PoolResetState) -> None:
        if not reset_state.terminate_only and not reset_state.transaction_was_reset:
            dbapi_conn.rollback()


def _ping_on_checkout(engine: AsyncEngine, *, timeout: float) -> None:
    """SQLAlchemy's `pool_pre_ping`, with its own short timeout and without its slow way out.

    A pooled connection may be dead (the server restarted) or hang (the server froze). The stock
    pre-ping waits the whole statement timeout and then closes the connection gracefully, which
    SQLAlchemy's asyncpg adapter gives a fixed 2 s: 4.3 s measured before a frozen server's 503.
    This ping waits `timeout`, aborts the connection at once, and raises DisconnectionError, on
    which the pool discards it and opens a fresh one (SQLAlchemy's pessimistic-disconnect recipe).
    """

    @event.listens_for(engine.sync_engine, "checkout")
    def _ping(dbapi_conn: Any, _record: Any, _proxy: Any) -> None:
        try:
            dbapi_conn.run_async(lambda conn: conn.fetchval("SELECT 1", timeout=timeout))
        except Exception as exc:
            dbapi_conn.driver_connection.terminate()
            raise DisconnectionError(f"the pooled connection did not answer: {type(exc).__name__}") from exc


def _configure_sqlite(engine: AsyncEngine, *, busy_timeout_ms: int) -> None:
    """SQLite needs BEGIN IMMEDIATE so that concurrent writers queue on the lock instead of failing.

    A deferred transaction that reads and then writes cannot wait for the write lock (SQLITE_BUSY at
    once), which would turn a conditional update race into a 500. This is SQLAlchemy's documented
    recipe for taking over transaction control from the pysqlite driver.
    """
    sync_engine = engine.sync_engine

    @event.listens_for(sync_engine, "connect")
    def _on_connect(dbapi_conn: Any, _record: Any) -> None:
        dbapi_conn.isolation_level = None
        cursor = dbapi_conn.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.execute(f"PRAGMA busy_timeout={busy_timeout_ms}")
        cursor.close()

    @event.listens_for(sync_engine, "begin")
    def _on_begin(conn: Any) -> None:
        conn.exec_driver_sql("BEGIN IMMEDIATE")


async def get_session(request: Request) -> AsyncIterator[AsyncSession]:
    database: Database = request.app.state.db
    async with database.session() as session:
        yield session


SessionDep = Annotated[AsyncSession, Depends(get_session)]
