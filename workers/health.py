"""The worker's small HTTP side: /health, /ready and /metrics, for probes and Prometheus."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager, suppress

import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from services.kit.app import QuietServer
from services.kit.metrics import metrics_endpoint


class WorkerState:
    """Ready once the worker polls its task queue; not ready while it drains on shutdown."""

    def __init__(self) -> None:
        self.polling = False


def health_app(state: WorkerState) -> Starlette:
    async def health(_: Request) -> Response:
        return JSONResponse({"status": "ok", "service": "worker"})

    async def ready(_: Request) -> Response:
        if not state.polling:
            return JSONResponse({"status": "not_ready", "service": "worker"}, status_code=503)
        return JSONResponse({"status": "ready", "service": "worker"})

    return Starlette(
        routes=[Route("/health", health), Route("/ready", ready), Route("/metrics", metrics_endpoint)]
    )


@asynccontextmanager
async def serving_health(state: WorkerState, host: str, port: int | None) -> AsyncIterator[None]:
    if port is None:
        yield
        return
    config = uvicorn.Config(health_app(state), host=host, port=port, log_config=None, access_log=False)
    server = QuietServer(config)  # ticks once a second, not ten times
    task = asyncio.create_task(server.serve(), name="worker-health")
    try:
        yield
    finally:
        server.should_exit = True
        with suppress(asyncio.CancelledError):
            await task
