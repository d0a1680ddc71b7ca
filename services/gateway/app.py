"""The gateway's ASGI app: public routes → authenticate → rate-limit → authorise → proxy.

Public routes (`/api/v1/...`) are served by `Gateway.serve` straight on ASGI; FastAPI serves the
operational endpoints (health, readiness, metrics, JWKS, the merged OpenAPI and its docs). The
hot path has no framework layers of its own: per request they cost more CPU than the proxying
(benchmarks/README.md, "Gateway overhead"). Both sit behind the kit's request-context and
body-size middleware, so logs, RED metrics, request ids and the 1 MiB limit are the same for both.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any, cast

import httpx
import structlog
from fastapi import FastAPI
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.responses import HTMLResponse, JSONResponse
from starlette.requests import ClientDisconnect
from starlette.types import ASGIApp, Receive, Scope, Send
from uvicorn.middleware.proxy_headers import ProxyHeadersMiddleware

from services.gateway.auth import TokenVersions, TokenVersionUnavailable, bearer_token
from services.gateway.breaker import Breakers
from services.gateway.openapi import build_openapi
from services.gateway.proxy import ClientRequest, Proxy, RelayInterrupted, stream_budget
from services.gateway.ratelimit import RateLimits
from services.gateway.routes import PREFIX, RouteTable, breaker_groups
from services.gateway.settings import Settings, Upstream
from services.gateway.web import install_web
from services.gateway.web.demo import install_demo_controls
from services.kit.errors import (
    BodyTooLarge,
    Problem,
    install_problem_handlers,
    internal_error,
    problem_answer,
    problem_response,
    too_large,
)
from services.kit.identity import identity_headers
from services.kit.logging import configure_logging
from services.kit.metrics import metrics_endpoint
from services.kit.middleware import BodySizeLimitMiddleware, RequestContextMiddleware
from services.kit.tokens import Claims, InvalidToken, JwksCache, JwksUnavailable
from services.kit.tracing import setup_tracing, shutdown_tracing, traced_asgi
from services.kit.transport import Addresses, ServicePool, first_reachable, service_client

log = structlog.get_logger(__name__)

_UNAUTHENTICATED = {"WWW-Authenticate": "Bearer"}


class Gateway:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.upstreams: dict[str, Upstream] = settings.upstreams()
        self.routes = RouteTable()
        self.pool = ServicePool(
            settings.max_connections,
            {name: u.max_connections for name, u in self.upstreams.items()}
            | {stream_budget(name): u.max_streams for name, u in self.upstreams.items()},
        )
        # The gateway's own calls (JWKS, readiness) go over the proxy's pool, with httpx's API.
        self.client = service_client(httpx.Timeout(5.0, connect=settings.connect_timeout), pool=self.pool)
        # The gateway's own calls to the users service spread over its replicas, as proxied ones do.
        users = ",".join(_addresses(self.upstreams["users"]))
        self.jwks = JwksCache(
            self.client,
            users,
            max_age=settings.jwks_max_age_seconds,
            min_refresh=settings.jwks_min_refresh_seconds,
            verified_tokens=settings.verified_token_cache_size,
        )
        self.token_versions = TokenVersions(
            self.client,
            users,
            settings.internal_token,
            nats_url=settings.nats_url,
            cache_size=settings.token_version_cache_size,
            max_age=settings.token_version_max_age_seconds,
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
            breaker_groups(),
            threshold=settings.breaker_threshold,
            cooldown_seconds=settings.breaker_cooldown_seconds,
        )
        self.proxy = Proxy(
            self.pool,
            self.breakers,
            self.upstreams.values(),
            backoff_seconds=settings.retry_backoff_seconds,
            connect_timeout=settings.connect_timeout,
            connection_wait=settings.connection_wait_seconds,
        )

    async def aclose(self) -> None:
        await self.token_versions.aclose()
        await self.client.aclose()  # and with it the pool

    async def authenticate(self, authorization: str | None) -> Claims | None:
        token = bearer_token(authorization)
        if token is None:
            return None
        if not token:
            detail = "Use `Authorization: Bearer <token>`."
            raise Problem(401, "invalid_token", detail, headers=_UNAUTHENTICATED)
        try:
            claims = await self.jwks.verify(token)
            await self.token_versions.check(claims)  # a revoked token has a valid signature too
            return claims
        except InvalidToken as exc:
            log.info("token_refused", reason=str(exc))
            raise Problem(
                401, "invalid_token", "The access token is invalid or expired.", headers=_UNAUTHENTICATED
            ) from None
        except (JwksUnavailable, TokenVersionUnavailable):
            raise Problem(503, "auth_unavailable", "Tokens cannot be checked right now.") from None

    async def serve(self, scope: Scope, receive: Receive, send: Send) -> None:
        """One public request, answered by the upstream or with problem+json."""
        try:
            await self._serve(scope, receive, send)
            return
        except Problem as raised:
            problem = raised
        except BodyTooLarge as exc:
            problem = too_large(exc)
        except (RelayInterrupted, ClientDisconnect):
            raise  # a head already went out, or nobody is listening: only dropping the connection is left
        except Exception:
            log.exception("unhandled_error", path=scope["path"])
            problem = internal_error()
        await problem_answer(problem, scope["path"])(scope, receive, send)

    async def _serve(self, scope: Scope, receive: Receive, send: Send) -> None:
        matched = self.routes.match(scope["method"], scope["path"])
        if matched is None:
            raise Problem(404, "not_found", "No such route.")
        scope["route"] = matched.template  # labels the access log and the RED metrics
        route = matched.route
        if route is None:
            raise Problem(
                405, "method_not_allowed", "Method Not Allowed", headers={"Allow": matched.template.allow}
            )
        request = ClientRequest.from_scope(scope)
        auth_error: Problem | None = None
        claims: Claims | None = None
        try:
            claims = await self.authenticate(request.authorization)
        except Problem as problem:
            auth_error = problem
        client = scope.get("client")
        peer = client[0] if client else "unknown"
        if route.route_class == "auth":
            policy, caller = "auth", peer
        elif claims is not None:
            policy, caller = "user", f"user:{claims.user_id}"
        else:
            policy, caller = "anon", peer
        decision = await self.limits.hit(policy, caller) if self.settings.rate_limit_enabled else None
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
        await self.proxy.forward(
            scope,
            receive,
            send,
            request,
            route,
            self.upstreams[route.upstream],
            matched.params,
            identity=list(identity.items()),
            answer_headers=[(k.lower().encode(), v.encode("latin-1")) for k, v in limit_headers.items()],
        )

    async def ready(self) -> tuple[bool, dict[str, str]]:
        async def probe(upstream: Upstream) -> str:
            # Ready when one of its replicas is: a refused address is passed over for the next.
            addresses = Addresses(_addresses(upstream))
            try:
                answer = await first_reachable(
                    addresses, lambda base: self.client.get(base + "/ready", timeout=2.0)
                )
            except httpx.HTTPError as exc:
                return f"unreachable: {type(exc).__name__}"
            return "ready" if answer.status_code == 200 else f"not ready: {answer.status_code}"

        results = await asyncio.gather(*(probe(upstream) for upstream in self.upstreams.values()))
        states = dict(zip(self.upstreams, results, strict=True))
        return all(state == "ready" for state in states.values()), states


def _addresses(upstream: Upstream) -> tuple[str, ...]:
    """Every address of an upstream (its replicas); the one URL when only it is configured."""
    return upstream.urls or (upstream.url,)


class GatewayApp:
    """The process's ASGI app: `/api/v1/...` to the gateway's own path, the rest to FastAPI."""

    def __init__(self, gateway: Gateway, ops: FastAPI) -> None:
        self.gateway = gateway
        self.ops = ops
        settings = gateway.settings
        app: ASGIApp = BodySizeLimitMiddleware(self._dispatch, max_bytes=settings.max_body_bytes)
        app = RequestContextMiddleware(app, service=settings.service_name)
        if settings.trusted_proxies:
            # Behind an ingress: the client's address is what the trusted proxies say it is.
            # (uvicorn types ASGI more narrowly than Starlette; the protocol is the same)
            app = cast(
                ASGIApp, ProxyHeadersMiddleware(cast(Any, app), trusted_hosts=settings.trusted_proxies)
            )
        self._app = traced_asgi(app, self._span_details)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await self._app(scope, receive, send)

    async def _dispatch(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["path"].startswith(PREFIX + "/"):
            await self.gateway.serve(scope, receive, send)
        else:
            await self.ops(scope, receive, send)

    def _span_details(self, scope: Scope) -> tuple[str, dict[str, str]]:
        """Server spans are named by route template, not by path: ids would make every name unique."""
        method, path = scope.get("method", "HTTP"), scope.get("path", "")
        matched = self.gateway.routes.match(method, path) if path.startswith(PREFIX + "/") else None
        template = matched.template.path if matched else path
        return f"{method} {template}", {"http.route": template}


def create_app(settings: Settings | None = None) -> GatewayApp:
    settings = settings or Settings()
    tracing = setup_tracing(settings.service_name)
    gateway = Gateway(settings)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        configure_logging(settings.log_level, service=settings.service_name)
        log.info("gateway_started", upstreams={n: u.url for n, u in gateway.upstreams.items()})
        await gateway.token_versions.start()
        yield
        await gateway.aclose()
        if tracing:
            shutdown_tracing()

    ops = FastAPI(
        title="ordersaga gateway",
        version="1.0.0",
        lifespan=lifespan,
        openapi_url=None,  # the public document is the merged one below
        docs_url=None,
        redoc_url=None,
    )
    ops.state.settings = settings
    install_problem_handlers(ops)

    @ops.get("/health", include_in_schema=False)
    async def health() -> dict[str, str]:
        return {"status": "ok", "service": settings.service_name}

    @ops.get("/ready", include_in_schema=False)
    async def ready() -> JSONResponse:
        ok, upstreams = await gateway.ready()
        breakers = await gateway.breakers.states()
        body: dict[str, Any] = {"upstreams": upstreams, "breakers": breakers}
        if not ok:
            return problem_response(503, "not_ready", "An upstream is not ready.", **body)
        return JSONResponse({"status": "ready", "service": settings.service_name, **body})

    @ops.get("/.well-known/jwks.json", include_in_schema=False)
    async def jwks() -> JSONResponse:
        try:
            document = await gateway.jwks.get()
        except JwksUnavailable:
            return problem_response(503, "auth_unavailable", "The signing keys are not available.")
        return JSONResponse(document, headers={"Cache-Control": "public, max-age=300"})

    openapi_lock = asyncio.Lock()

    @ops.get("/openapi.json", include_in_schema=False)
    async def openapi() -> JSONResponse:
        async with openapi_lock:
            if getattr(ops.state, "public_openapi", None) is None:
                # Built once, off the event loop: it imports and instantiates the five service apps.
                ops.state.public_openapi = await asyncio.to_thread(build_openapi)
        return JSONResponse(ops.state.public_openapi)

    @ops.get("/docs", include_in_schema=False)
    async def docs() -> HTMLResponse:
        return get_swagger_ui_html(openapi_url="/openapi.json", title="ordersaga public API")

    ops.add_route("/metrics", metrics_endpoint, include_in_schema=False)
    # The web pages at `/` (shop, orders, console) and, under `ordersaga up` only, its demo controls.
    install_web(ops, settings)
    install_demo_controls(ops, gateway)
    return GatewayApp(gateway, ops)
