"""The gateway's ASGI app: public routes → authenticate → rate-limit → authorise → proxy.

It has no database, so it is assembled from the kit's parts rather than `create_service_app`.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any

import httpx
import structlog
from fastapi import FastAPI
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.responses import HTMLResponse, JSONResponse
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Match, Route
from starlette.types import Scope

from services.gateway.auth import JwksCache, JwksUnavailable, bearer_token
from services.gateway.breaker import Breakers
from services.gateway.openapi import build_openapi
from services.gateway.proxy import Proxy, forwarded_headers
from services.gateway.ratelimit import RateLimits
from services.gateway.routes import PublicRoute, routes_by_path
from services.gateway.settings import Settings, Upstream
from services.kit.errors import Problem, install_problem_handlers, problem_response
from services.kit.identity import identity_headers
from services.kit.logging import configure_logging
from services.kit.metrics import metrics_endpoint
from services.kit.middleware import BodySizeLimitMiddleware, RequestContextMiddleware
from services.kit.tracing import instrument_app, setup_tracing, shutdown_tracing
from services.kit.transport import service_client
from services.users.tokens import Claims, InvalidToken

log = structlog.get_logger(__name__)

_UNAUTHENTICATED = {"WWW-Authenticate": "Bearer"}


class ProxyRoute(Route):
    """A Starlette route that also records itself in the scope, so metrics and logs get its template."""

    def matches(self, scope: Scope) -> tuple[Match, Scope]:
        match, child = super().matches(scope)
        if match is not Match.NONE:
            child["route"] = self
        return match, child


class Gateway:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.upstreams: dict[str, Upstream] = settings.upstreams()
        self.client = service_client(
            httpx.Timeout(5.0, connect=settings.connect_timeout), max_connections=settings.max_connections
        )
        self.jwks = JwksCache(
            self.client,
            self.upstreams["users"].url,
            max_age=settings.jwks_max_age_seconds,
            min_refresh=settings.jwks_min_refresh_seconds,
        )
        self.limits = RateLimits(
            {
                "auth": settings.rate_limit_auth,
                "anon": settings.rate_limit_anon,
                "user": settings.rate_limit_user,
            },
            redis_url=settings.redis_url,
            strategy=settings.rate_limit_strategy,
        )
        self.breakers = Breakers(
            list(self.upstreams),
            threshold=settings.breaker_threshold,
            cooldown_seconds=settings.breaker_cooldown_seconds,
        )
        self.proxy = Proxy(self.client, self.breakers, settings.retry_backoff_seconds)

    async def authenticate(self, request: Request) -> Claims | None:
        token = bearer_token(request.headers.get("authorization"))
        if token is None:
            return None
        if not token:
            detail = "Use `Authorization: Bearer <token>`."
            raise Problem(401, "invalid_token", detail, headers=_UNAUTHENTICATED)
        try:
            return await self.jwks.verify(token)
        except InvalidToken as exc:
            log.info("token_refused", reason=str(exc))
            raise Problem(
                401, "invalid_token", "The access token is invalid or expired.", headers=_UNAUTHENTICATED
            ) from None
        except JwksUnavailable:
            raise Problem(503, "auth_unavailable", "Tokens cannot be checked right now.") from None

    async def handle(self, request: Request, route: PublicRoute) -> Response:
        auth_error: Problem | None = None
        claims: Claims | None = None
        try:
            claims = await self.authenticate(request)
        except Problem as problem:
            auth_error = problem
        peer = request.client.host if request.client else "unknown"
        if route.route_class == "auth":
            policy, client = "auth", peer
        elif claims is not None:
            policy, client = "user", f"user:{claims.user_id}"
        else:
            policy, client = "anon", peer
        decision = await self.limits.hit(policy, client) if self.settings.rate_limit_enabled else None
        limit_headers = decision.headers() if decision else {}
        if decision is not None and not decision.allowed:
            raise Problem(429, "rate_limited", "Too many requests; slow down.", headers=limit_headers)
        if auth_error is not None:
            raise auth_error
        if route.access != "anyone" and claims is None:
            raise Problem(401, "unauthenticated", "Authentication is required.", headers=_UNAUTHENTICATED)
        if route.access == "admin" and (claims is None or claims.role != "admin"):
            raise Problem(403, "forbidden", "This action needs the admin role.")
        identity = (
            identity_headers(self.settings.internal_token, claims.role, claims.user_id) if claims else {}
        )
        response = await self.proxy.forward(
            request,
            route,
            self.upstreams[route.upstream],
            dict(request.path_params),
            {**forwarded_headers(request), **identity},
        )
        response.headers.update(limit_headers)
        return response

    async def ready(self) -> tuple[bool, dict[str, str]]:
        async def probe(upstream: Upstream) -> str:
            try:
                answer = await self.client.get(upstream.url + "/ready", timeout=2.0)
            except httpx.HTTPError as exc:
                return f"unreachable: {type(exc).__name__}"
            return "ready" if answer.status_code == 200 else f"not ready: {answer.status_code}"

        results = await asyncio.gather(*(probe(upstream) for upstream in self.upstreams.values()))
        states = dict(zip(self.upstreams, results, strict=True))
        return all(state == "ready" for state in states.values()), states


def _endpoint(gateway: Gateway, methods: dict[str, PublicRoute]) -> Callable[[Request], Awaitable[Response]]:
    async def endpoint(request: Request) -> Response:
        method = "GET" if request.method == "HEAD" else request.method
        return await gateway.handle(request, methods[method])

    return endpoint


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or Settings()
    tracing = setup_tracing(settings.service_name)
    gateway = Gateway(settings)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        configure_logging(settings.log_level, service=settings.service_name)
        log.info("gateway_started", upstreams={n: u.url for n, u in gateway.upstreams.items()})
        yield
        await gateway.client.aclose()
        if tracing:
            shutdown_tracing()

    app = FastAPI(
        title="ordersaga gateway",
        version="1.0.0",
        lifespan=lifespan,
        openapi_url=None,  # the public document is the merged one below
        docs_url=None,
        redoc_url=None,
    )
    app.state.settings = settings
    app.state.gateway = gateway
    install_problem_handlers(app)
    app.add_middleware(BodySizeLimitMiddleware, max_bytes=settings.max_body_bytes)
    app.add_middleware(RequestContextMiddleware, service=settings.service_name)

    @app.get("/health", include_in_schema=False)
    async def health() -> dict[str, str]:
        return {"status": "ok", "service": settings.service_name}

    @app.get("/ready", include_in_schema=False)
    async def ready() -> JSONResponse:
        ok, upstreams = await gateway.ready()
        breakers = {name: await gateway.breakers.state(name) for name in gateway.upstreams}
        body: dict[str, Any] = {"upstreams": upstreams, "breakers": breakers}
        if not ok:
            return problem_response(503, "not_ready", "An upstream is not ready.", **body)
        return JSONResponse({"status": "ready", "service": settings.service_name, **body})

    @app.get("/.well-known/jwks.json", include_in_schema=False)
    async def jwks() -> JSONResponse:
        try:
            document = await gateway.jwks.get()
        except JwksUnavailable:
            return problem_response(503, "auth_unavailable", "The signing keys are not available.")
        return JSONResponse(document, headers={"Cache-Control": "public, max-age=300"})

    openapi_lock = asyncio.Lock()

    @app.get("/openapi.json", include_in_schema=False)
    async def openapi() -> JSONResponse:
        async with openapi_lock:
            if getattr(app.state, "public_openapi", None) is None:
                # Built once, off the event loop: it imports and instantiates the five service apps.
                app.state.public_openapi = await asyncio.to_thread(build_openapi)
        return JSONResponse(app.state.public_openapi)

    @app.get("/docs", include_in_schema=False)
    async def docs() -> HTMLResponse:
        return get_swagger_ui_html(openapi_url="/openapi.json", title="ordersaga public API")

    app.add_route("/metrics", metrics_endpoint, include_in_schema=False)
    for path, methods in routes_by_path().items():
        app.router.routes.append(
            ProxyRoute(
                "/api/v1" + path,
                _endpoint(gateway, methods),
                methods=list(methods),
                name=f"{next(iter(methods.values())).upstream}:{path}",
            )
        )
    instrument_app(app)
    return app
