"""The orders service app: its routes, and the saga port that POST /orders starts sagas through."""

from __future__ import annotations

from fastapi import FastAPI

from services.kit.app import create_service_app
from services.orders import reconciler_routes, routes, saga_routes
from services.orders.saga import NoSaga, SagaPort
from services.orders.settings import Settings
from services.orders.sweeper import saga_sweeper
from services.orders.temporal_saga import TemporalSaga

DESCRIPTION = (
    "Orders as an append-only event log with a read model. POST /orders records a PENDING order and "
    "starts its saga; the saga drives it through /internal/orders/{id}/commands."
)


def create_app(settings: Settings | None = None, saga: SagaPort | None = None) -> FastAPI:
    settings = settings or Settings()
    temporal = saga is None and settings.saga_engine == "temporal"
    app = create_service_app(
        settings=settings,
        title="ordersaga orders",
        description=DESCRIPTION,
        routers=[routes.router, routes.internal_router, saga_routes.router, reconciler_routes.router],
        hooks=[saga_sweeper] if temporal else [],
    )
    app.state.saga = saga or (
        TemporalSaga(
            rpc_timeout=settings.temporal_rpc_timeout_seconds,
            update_timeout=settings.temporal_update_timeout_seconds,
        )
        if temporal
        else NoSaga()
    )
    return app
