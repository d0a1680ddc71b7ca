"""The app factory every service uses: errors, middleware, health, readiness, metrics, migrations."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import AbstractAsyncContextManager, AsyncExitStack, asynccontextmanager, suppress
from typing import Any

import structlog
import uvicorn
from fastapi import APIRouter, FastAPI
from fastapi.responses import JSONResponse

from services.kit.db import Database
from services.kit.errors import (
    PROBLEM_JSON,
    RETRY_AFTER_SECONDS,
    install_problem_handlers,
    problem_response,
)
from services.kit.logging import configure_logging
from services.kit.metrics import metrics_endpoint
from services.kit.middleware import BodySizeLimitMiddleware, RequestContextMiddleware
from services.kit.migrations import upgrade
from services.kit.relay import run_relay
from services.kit.settings import ServiceSettings
from services.kit.tracing import instrument_app, setup_tracing, shutdown_tracing

# A background part of a service (a sender loop, a sweeper, an outbox relay) that lives with the app.
LifespanHook = Callable[[FastAPI], AbstractAsyncContextManager[None]]

log = structlog.get_logger(__name__)

# Under the gateway's 5 s upstream timeout and its 2 s readiness probe.
READY_TIMEOUT_SECONDS = 1.5

PROBLEM_SCHEMA: dict[str, Any] = {
    "title": "Problem",
    "type": "object",
    "description": "RFC 9457 problem details.",
    "required": ["type", "title", "status", "detail", "code"],
    "properties": {
        "type": {"type": "string"},
        "title": {"type": "string"},
        "status": {"type": "integer"},
        "detail": {"type": "string"},
        "code": {"type": "string"},
        "instance": {"type": "string"},
    },
}


def create_service_app(
    *,
    settings: ServiceSettings,
    title: str,
    routers: Sequence[APIRouter],
    description: str = "",
    hooks: Sequence[LifespanHook] = (),
    database: Database | None = None,
) -> FastAPI:
    service = settings.service_name
    tracing = setup_tracing(service)
    db = database or Database(settings.resolved_database_url())

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        configure_logging(settings.log_level, service=service)
        if settings.auto_migrate:
            await upgrade(service, db.url)
        async with AsyncExitStack() as stack:
            for hook in hooks:
                await stack.enter_async_context(hook(app))
            if settings.nats_url:
                # Without NATS the relay is off and outbox rows wait; they are published once it is set.
                app.state.relay = await stack.enter_async_context(run_relay(db, settings))
            log.info("service_started", service=service)
            yield
        await db.dispose()
        if tracing:
            shutdown_tracing()

    app = FastAPI(title=title, description=description, version="0.1.0", lifespan=lifespan)
    app.state.settings = settings
    app.state.db = db
    install_problem_handlers(app)
    app.add_middleware(BodySizeLimitMiddleware, max_bytes=settings.max_body_bytes)
    app.add_middleware(RequestContextMiddleware, service=service)

    @app.get("/health", tags=["ops"], summary="Liveness")
    async def health() -> dict[str, str]:
        return {"status": "ok", "service": service}

    @app.get("/ready", tags=["ops"], summary="Readiness: the database answers")
    async def ready() -> JSONResponse:
        try:
            # Bounded even for a server that accepts connections and then says nothing.
            await asyncio.wait_for(db.ping(), READY_TIMEOUT_SECONDS)
        except Exception as exc:  # any driver error means not ready
            log.warning("not_ready", error=f"{type(exc).__name__}: {exc}")
            return problem_response(
                503,
                "not_ready",
                "The database is not reachable.",
                headers={"Retry-After": str(RETRY_AFTER_SECONDS)},
            )
        return JSONResponse({"status": "ready", "service": service})

    app.add_route("/metrics", metrics_endpoint, include_in_schema=False)
    for router in routers:
        app.include_router(router)
    _add_problem_schema(app)
    instrument_app(app, db.engine)
    return app


def _add_problem_schema(app: FastAPI) -> None:
    original = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema:
            return app.openapi_schema
        schema = original()
        schema.setdefault("components", {}).setdefault("schemas", {})["Problem"] = PROBLEM_SCHEMA
        app.openapi_schema = schema
        return schema

    app.openapi = openapi  # type: ignore[method-assign]


class QuietServer(uvicorn.Server):
    """uvicorn's server, waking once a second instead of ten times, and at once when told to exit.

    Stock uvicorn ticks every 0.1 s to refresh the Date header and look for a shutdown request:
    at idle, that tick was the largest wake-up of a service left once the polls were gone. Setting
    `should_exit` (a signal handler, or an owner stopping it) wakes the loop at once.
    """

    _exit_requested: asyncio.Event | None = None
    _loop: asyncio.AbstractEventLoop | None = None
    _should_exit = False

    @property
    def should_exit(self) -> bool:
        return self._should_exit

    @should_exit.setter
    def should_exit(self, value: bool) -> None:
        self._should_exit = value
        if value and self._loop is not None and self._exit_requested is not None:
            with suppress(RuntimeError):  # the loop is closed already
                self._loop.call_soon_threadsafe(self._exit_requested.set)

    async def main_loop(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._exit_requested = asyncio.Event()
        # on_tick(0) refreshes the Date header (every tick whose counter is a multiple of ten).
        while not await self.on_tick(0):
            with suppress(TimeoutError):
                await asyncio.wait_for(self._exit_requested.wait(), 1.0)


def serve(app: FastAPI, **options: Any) -> None:
    """Run `app` as `uvicorn.run(app, **options)` would, on the quiet server."""
    QuietServer(uvicorn.Config(app, **options)).run()


__all__ = ["PROBLEM_JSON", "LifespanHook", "QuietServer", "create_service_app", "serve"]
