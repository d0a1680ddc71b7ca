"""The payments service app."""

from __future__ import annotations

from fastapi import FastAPI

from services.kit.app import create_service_app
from services.payments.charges import METHOD_TOKENS_CACHED, MethodTokens
from services.payments.provider import CardProvider
from services.payments.routes import ROUTERS
from services.payments.settings import Settings

DESCRIPTION = """Payment methods (tokenised cards), idempotent charges and refunds for the order saga,
and the card-network simulator (the only simulated part of ordersaga)."""


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or Settings()
    app = create_service_app(
        settings=settings, title="ordersaga payments", description=DESCRIPTION, routers=list(ROUTERS)
    )
    app.state.provider = CardProvider(
        app.state.db,
        vault_secret=settings.vault_secret,
        latency_ms=settings.provider_latency_ms,
        failure_rate=settings.provider_failure_rate,
    )
    app.state.method_tokens = MethodTokens(maxsize=METHOD_TOKENS_CACHED)
    return app
