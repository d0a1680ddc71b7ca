"""The public route table: exactly DESIGN.md's table, under `/api/v1`, and nothing else.

Every path here is the owning service's own path, so the upstream path is the public path without
the prefix. Saga-only endpoints (reservations, charges, refunds, internal order commands) are absent
on purpose: the gateway answers 404 for them, whatever the caller's role.
"""

from __future__ import annotations

from dataclasses import dataclass
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
    route_class: RouteClass = "default"

    @property
    def public_path(self) -> str:
        return PREFIX + self.path


ROUTES: tuple[PublicRoute, ...] = (
    PublicRoute("POST", "/users", "users", "anyone", "auth"),
    PublicRoute("POST", "/auth/token", "users", "anyone", "auth"),
    PublicRoute("GET", "/users/{user_id}", "users", "user"),
    PublicRoute("PUT", "/users/{user_id}", "users", "user"),
    PublicRoute("DELETE", "/users/{user_id}", "users", "user"),
    PublicRoute("GET", "/products", "inventory", "anyone"),
    PublicRoute("GET", "/products/{product_id}", "inventory", "anyone"),
    PublicRoute("POST", "/products", "inventory", "admin"),
    PublicRoute("PUT", "/products/{product_id}/stock", "inventory", "admin"),
    PublicRoute("GET", "/products/{product_id}/availability", "inventory", "anyone"),
    PublicRoute("POST", "/payment-methods", "payments", "user"),
    PublicRoute("GET", "/users/{user_id}/payment-methods", "payments", "user"),
    PublicRoute("GET", "/payments/{payment_id}", "payments", "user"),
    PublicRoute("POST", "/orders", "orders", "user"),
    PublicRoute("GET", "/orders/{order_id}", "orders", "user"),
    PublicRoute("GET", "/orders/{order_id}/saga", "orders", "user"),
    PublicRoute("GET", "/orders/{order_id}/events", "orders", "user"),
    PublicRoute("POST", "/orders/{order_id}/cancel", "orders", "user"),
    PublicRoute("POST", "/orders/{order_id}/review", "orders", "admin"),
    PublicRoute("PUT", "/orders/{order_id}/status", "orders", "admin"),
    PublicRoute("GET", "/users/{user_id}/orders", "orders", "user"),
    PublicRoute("GET", "/users/{user_id}/notifications", "notifications", "user"),
)


def routes_by_path() -> dict[str, dict[str, PublicRoute]]:
    """Path template → method → route, in table order (one Starlette route per path)."""
    table: dict[str, dict[str, PublicRoute]] = {}
    for route in ROUTES:
        table.setdefault(route.path, {})[route.method] = route
    return table
