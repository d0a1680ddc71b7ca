"""The public route table: the public API of the README, under `/api/v1`, and nothing else.

Every path here is the owning service's own path, so the upstream path is the public path without
the prefix. Saga-only endpoints (reservations, charges, refunds, internal order commands) are absent
on purpose: the gateway answers 404 for them, whatever the caller's role.

Each route belongs to a group, the unit of its upstream's circuit breaker: routes that fail
together for one reason share one (the orders service's saga views all ask Temporal, its reads
ask PostgreSQL), so a failing saga view does not refuse the placing of orders.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Literal

PREFIX = "/api/v1"

# anyone: no token needed (a valid token is still verified and used for rate limiting);
# user: a valid token; admin: a valid token with the admin role (the services check it again).
Access = Literal["anyone", "user", "admin"]
# Which rate-limit policy applies: `auth` for register and login (per IP), `default` for the rest.
RouteClass = Literal["auth", "default"]


@dataclass(frozen=True)
class PublicRoute:
    method: str
    path: str  # the service's path template, e.g. /orders/{order_id}
    upstream: str
    access: Access
    group: str  # the circuit breaker's unit within the upstream (see the module's docstring)
    route_class: RouteClass = "default"
    # The service makes a repeated `Idempotency-Key` harmless, so the gateway may retry a POST.
    honours_idempotency_key: bool = False
    # A long-lived answer (Server-Sent Events): relayed as it comes, on connections of its own,
    # without the upstream's read timeout, and released when the client leaves (proxy.py).
    stream: bool = False

    @property
    def public_path(self) -> str:
        return PREFIX + self.path


ROUTES: tuple[PublicRoute, ...] = (
    PublicRoute("POST", "/users", "users", "anyone", "auth", "auth"),
    PublicRoute("POST", "/auth/token", "users", "anyone", "auth", "auth"),
    PublicRoute("GET", "/users/{user_id}", "users", "user", "accounts"),
    PublicRoute("PUT", "/users/{user_id}", "users", "user", "accounts"),
    PublicRoute("DELETE", "/users/{user_id}", "users", "user", "accounts"),
    PublicRoute("GET", "/products", "inventory", "anyone", "reads"),
    PublicRoute("GET", "/products/{product_id}", "inventory", "anyone", "reads"),
    PublicRoute("POST", "/products", "inventory", "admin", "writes"),
    PublicRoute("PUT", "/products/{product_id}/stock", "inventory", "admin", "writes"),
    PublicRoute("GET", "/products/{product_id}/availability", "inventory", "anyone", "reads"),
    PublicRoute("POST", "/payment-methods", "payments", "user", "methods"),
    PublicRoute("GET", "/users/{user_id}/payment-methods", "payments", "user", "methods"),
    PublicRoute("GET", "/payments/{payment_id}", "payments", "user", "reads"),
    PublicRoute("POST", "/orders", "orders", "user", "create", honours_idempotency_key=True),
    PublicRoute("GET", "/orders", "orders", "admin", "reads"),
    PublicRoute("GET", "/orders/{order_id}", "orders", "user", "reads"),
    PublicRoute("GET", "/orders/{order_id}/saga", "orders", "user", "saga"),
    PublicRoute("GET", "/orders/{order_id}/saga/stream", "orders", "user", "saga", stream=True),
    PublicRoute("GET", "/orders/{order_id}/events", "orders", "user", "reads"),
    PublicRoute("POST", "/orders/{order_id}/cancel", "orders", "user", "commands"),
    PublicRoute("POST", "/orders/{order_id}/review", "orders", "admin", "commands"),
    PublicRoute("POST", "/orders/{order_id}/compensations/retry", "orders", "admin", "commands"),
    PublicRoute("PUT", "/orders/{order_id}/status", "orders", "admin", "commands"),
    PublicRoute("GET", "/users/{user_id}/orders", "orders", "user", "reads"),
    PublicRoute("GET", "/users/{user_id}/notifications", "notifications", "user", "reads"),
)


def breaker_groups(routes: tuple[PublicRoute, ...] = ROUTES) -> list[tuple[str, str]]:
    """Every (upstream, group) of the table, once, in table order."""
    return list(dict.fromkeys((route.upstream, route.group) for route in routes))


_PARAMETER = re.compile(r"{(\w+)}")


@dataclass(frozen=True)
class PathTemplate:
    """One public path and the routes under it; `path` is what logs, metrics and spans are labelled by."""

    path: str  # the public template, e.g. /api/v1/orders/{order_id}
    methods: dict[str, PublicRoute]
    pattern: re.Pattern[str] = field(repr=False)

    @property
    def allow(self) -> str:
        methods = list(self.methods)
        return ", ".join([*methods, "HEAD"] if "GET" in methods else methods)


@dataclass(frozen=True)
class RouteMatch:
    template: PathTemplate
    route: PublicRoute | None  # None: the path exists, the method does not (405)
    params: dict[str, str]


def _pattern(template: str) -> re.Pattern[str]:
    # split() alternates literal text and parameter names: /users/, user_id, /orders
    parts = _PARAMETER.split(template)
    regex = "".join(re.escape(part) if n % 2 == 0 else f"(?P<{part}>[^/]+)" for n, part in enumerate(parts))
    return re.compile(regex + r"\Z")


class RouteTable:
    """Matches a request's (decoded) path and method against the public table.

    A parameter is one path segment, as in Starlette; HEAD is served by the GET route.
    """

    def __init__(self, routes: tuple[PublicRoute, ...] = ROUTES) -> None:
        self.templates: list[PathTemplate] = []
        table: dict[str, dict[str, PublicRoute]] = {}
        for route in routes:
            table.setdefault(route.path, {})[route.method] = route
        for path, methods in table.items():
            self.templates.append(PathTemplate(PREFIX + path, methods, _pattern(PREFIX + path)))
        self._literal = {t.path: t for t in self.templates if "{" not in t.path}

    def match(self, method: str, path: str) -> RouteMatch | None:
        template = self._literal.get(path)
        params: dict[str, str] = {}
        if template is None:
            for candidate in self.templates:
                found = candidate.pattern.match(path)
                if found is not None:
                    template, params = candidate, found.groupdict()
                    break
            else:
                return None
        route = template.methods.get("GET" if method == "HEAD" else method)
        return RouteMatch(template, route, params)
