"""Saga-only endpoints refuse any caller without the internal credential, even on the service's own port.

The list is not written by hand: every route of every service whose dependencies include
`require_service` is found in the apps themselves, so a new saga-only endpoint is covered at once.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Iterable, Iterator
from typing import Any

import httpx
import pytest
from fastapi.dependencies.models import Dependant
from fastapi.routing import APIRoute

from services.kit.identity import identity_headers, require_service
from services.registry import DATA_SERVICES, SERVICES
from tests.support.identity import as_admin, as_customer
from tests.support.stack import Stack

pytestmark = [pytest.mark.slow, pytest.mark.temporal]


def _needs_service(dependant: Dependant) -> bool:
    return any(d.call is require_service or _needs_service(d) for d in dependant.dependencies)


def _api_routes(routes: Iterable[Any], prefix: str = "") -> Iterator[tuple[str, APIRoute]]:
    for route in routes:
        if isinstance(route, APIRoute):
            yield prefix, route
        elif (router := getattr(route, "original_router", None)) is not None:
            # FastAPI keeps included routers as wrappers around the original APIRouter.
            context = getattr(route, "include_context", None)
            yield from _api_routes(router.routes, prefix + (getattr(context, "prefix", "") or ""))


def saga_only_routes(service: str) -> Iterator[tuple[str, str]]:
    spec = SERVICES[service]
    app = spec.create_app(spec.settings(internal_token="unused", saga_engine="none"))
    for prefix, route in _api_routes(app.routes):
        if _needs_service(route.dependant):
            # Any value fits each path parameter: the refusal comes before the lookup.
            path = re.sub(r"\{[^}]+\}", str(uuid.uuid4()), prefix + route.path)
            for method in route.methods or ():
                yield method, path


ALL_SAGA_ONLY = [(service, m, p) for service in DATA_SERVICES for m, p in saga_only_routes(service)]


def test_every_service_has_saga_only_endpoints_to_check() -> None:
    # A guard for the discovery above: if it found nothing, the test below would prove nothing.
    found = {service for service, _, _ in ALL_SAGA_ONLY}
    assert set(DATA_SERVICES) == found, found
    assert len(ALL_SAGA_ONLY) >= 8


async def test_saga_only_endpoints_refuse_callers_without_the_internal_credential(stack: Stack) -> None:
    user = uuid.uuid4()
    callers: dict[str, tuple[dict[str, str], int]] = {
        "no credential": ({}, 401),
        "identity headers without the token": (
            {"X-Ordersaga-Role": "service", "X-Ordersaga-User-Id": str(user)},
            401,
        ),
        "a wrong token": (identity_headers("guessed-internal-token", "service"), 401),
        "an empty token": (identity_headers("", "service"), 401),
        "a customer": (as_customer(user), 403),
        "an admin": (as_admin(user), 403),
    }
    body: dict[str, Any] = {}
    async with httpx.AsyncClient(timeout=10) as http:
        for service, method, path in ALL_SAGA_ONLY:
            for who, (headers, status) in callers.items():
                response = await http.request(
                    method,
                    stack.url(service) + path,
                    json=body,
                    headers=headers | {"Idempotency-Key": uuid.uuid4().hex},
                )
                assert response.status_code == status, (service, method, path, who, response.text)
                assert response.headers["content-type"] == "application/problem+json"
