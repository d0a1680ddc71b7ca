"""The users service app."""

from __future__ import annotations

from fastapi import FastAPI

from services.kit.app import create_service_app
from services.users.bootstrap import users_lifespan
from services.users.passwords import Passwords, RequestClock
from services.users.routes import auth_router, internal_router, users_router
from services.users.settings import Settings
from services.users.throttle import LoginThrottle


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or Settings()
    app = create_service_app(
        settings=settings,
        title="ordersaga users",
        description="Registration, login (RS256 JWTs, JWKS), profiles and the saga's user lookup.",
        routers=[users_router, auth_router, internal_router],
        hooks=[users_lifespan(settings)],
    )
    app.state.passwords = Passwords.from_settings(settings)
    app.add_middleware(RequestClock)
    app.state.login_throttle = LoginThrottle(settings.login_failure_limit, redis_url=settings.redis_url)
    return app
