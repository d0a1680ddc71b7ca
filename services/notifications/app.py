"""The notifications app: routes plus the background sender that lives with it."""

from __future__ import annotations

from fastapi import FastAPI

from services.kit.app import create_service_app
from services.kit.db import Database
from services.notifications import reconciler_routes
from services.notifications.channels import build_channels
from services.notifications.consumer import EventConsumer, consumer_hook
from services.notifications.routes import router
from services.notifications.sender import Sender, sender_hook
from services.notifications.settings import Settings


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or Settings()
    database = Database(settings.resolved_database_url())
    sender = Sender(database, settings, build_channels(settings))
    # Consumes domain events when NATS_URL is set (welcome, refund receipt, stock alert).
    consumer = EventConsumer(database, settings, sender)
    app = create_service_app(
        settings=settings,
        title="ordersaga notifications",
        description="Queues notices idempotently and delivers them by email or SMS, with retries.",
        routers=[router, reconciler_routes.router],
        hooks=[sender_hook(sender, settings), consumer_hook(consumer, settings)],
        database=database,
    )
    app.state.sender = sender
    app.state.consumer = consumer
    return app
