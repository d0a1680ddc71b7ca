"""The inventory FastAPI app."""

from __future__ import annotations

from fastapi import FastAPI

from services.inventory import reconciler_routes
from services.inventory.routes import products_router, reservations_router
from services.inventory.settings import Settings
from services.kit.app import create_service_app


def create_app(settings: Settings | None = None) -> FastAPI:
    return create_service_app(
        settings=settings or Settings(),
        title="ordersaga inventory",
        description="Products, stock levels and all-or-nothing stock reservations for the order saga.",
        routers=[products_router, reservations_router, reconciler_routes.router],
    )
