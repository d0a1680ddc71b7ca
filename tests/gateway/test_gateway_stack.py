"""The gateway as a real process in front of the real services: the public API, end to end."""

from __future__ import annotations

import asyncio
import re
import time
import uuid
from typing import Any

import httpx
import jwt
from cryptography.hazmat.primitives.asymmetric import rsa

from services.gateway.routes import PREFIX, ROUTES
from services.users.tokens import TokenIssuer
from tests.gateway.conftest import RunningGateway, Tokens, bearer
from tests.support.stack import Stack

PASSWORD = "correct-horse-battery"


async def register_and_login(api: httpx.AsyncClient) -> tuple[str, dict[str, str]]:
    tag = uuid.uuid4().hex[:10]
    created = await api.post(
        "/users",
        json={
            "email": f"g{tag}@example.com",
            "username": f"g{tag}",
            "password": PASSWORD,
            "profile": {"first_name": "Gate", "last_name": tag},
        },
    )
    assert created.status_code == 201, created.text
    login = await api.post("/auth/token", data={"username": f"g{tag}", "password": PASSWORD})
    return str(created.json()["id"]), bearer(login)


async def new_product(api: httpx.AsyncClient, tokens: Tokens, stock: int = 10) -> str:
    tag = uuid.uuid4().hex[:10]
    response = await api.post(
        "/products",
        json={
            "sku": f"GW-{tag}",
            "name": f"Gateway {tag}",
            "description": "sold through the gateway",
            "price_cents": 1_250,
            "currency": "USD",
            "stock": stock,
        },
        headers=tokens.bearer("admin"),
    )
    assert response.status_code == 201, response.text
    return str(response.json()["id"])


async def wait_order(api: httpx.AsyncClient, order_id: str, auth: dict[str, str]) -> dict[str, Any]:
    """The order once its saga has ended (the order is CONFIRMED a moment before the notice goes out)."""
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        saga = (await api.get(f"/orders/{order_id}/saga", headers=auth)).json()
        if saga.get("status") in ("completed", "compensated", "compensation_failed"):
            break
        await asyncio.sleep(0.2)
    order: dict[str, Any] = (await api.get(f"/orders/{order_id}", headers=auth)).json()
    return order


async def test_a_customer_orders_through_the_gateway_and_nobody_else_sees_it(
    api: httpx.AsyncClient, tokens: Tokens
) -> None:
    user_id, auth = await register_and_login(api)
    card = await api.post(
        "/payment-methods",
        json={"card_number": "4242424242424242", "exp_month": 12, "exp_year": 2035, "cvc": "123"},
        headers=auth,
    )
    assert card.status_code == 201, card.text
    assert "4242424242424242" not in card.text
    product_id = await new_product(api, tokens)
    assert (await api.get(f"/products/{product_id}")).json()["price_cents"] == 1_250

    body = {"items": [{"product_id": product_id, "quantity": 2}], "payment_method_id": card.json()["id"]}
    key = {"Idempotency-Key": uuid.uuid4().hex}
    placed = await api.post("/orders", json=body, headers=auth | key)
    assert placed.status_code == 202, placed.text
    assert placed.json()["status"] == "PENDING"
    again = await api.post("/orders", json=body, headers=auth | key)
    assert again.json()["id"] == placed.json()["id"]

    order_id = placed.json()["id"]
    order = await wait_order(api, order_id, auth)
    assert order["status"] == "CONFIRMED", order
    assert order["user_id"] == user_id and order["total_cents"] == 2_500
    saga = (await api.get(f"/orders/{order_id}/saga", headers=auth)).json()
    assert saga["status"] == "completed"
    mine = (await api.get(f"/users/{user_id}/orders", headers=auth)).json()
    assert [o["id"] for o in mine["items"]] == [order_id]
    assert (await api.get(f"/payments/{order['payment_id']}", headers=auth)).status_code == 200
    assert (await api.get(f"/users/{user_id}", headers=auth)).json()["id"] == user_id

    # Another customer learns nothing, not even that these exist.
    _, other = await register_and_login(api)
    for path in (f"/orders/{order_id}", f"/payments/{order['payment_id']}", f"/users/{user_id}"):
        response = await api.get(path, headers=other)
        assert response.status_code == 404, (path, response.text)
        assert response.headers["content-type"] == "application/problem+json"


async def test_calls_without_a_valid_token_are_refused(api: httpx.AsyncClient, tokens: Tokens) -> None:
    order = f"/orders/{uuid.uuid4()}"
    anonymous = await api.get(order)
    assert anonymous.status_code == 401
    assert anonymous.json()["code"] == "unauthenticated"
    assert anonymous.headers["www-authenticate"] == "Bearer"
    assert (await api.post("/orders", json={})).status_code == 401

    valid = tokens.bearer("customer")["Authorization"].removeprefix("Bearer ")
    header, payload, signature = valid.split(".")
    tampered = jwt.encode(
        {**jwt.decode(valid, options={"verify_signature": False}), "role": "admin"},
        "not-the-key-but-long-enough-for-hs256!",
        algorithm="HS256",
        headers={"kid": jwt.get_unverified_header(valid)["kid"]},
    )
    stranger = TokenIssuer(rsa.generate_private_key(public_exponent=65537, key_size=2048), 900)
    same_kid = TokenIssuer(rsa.generate_private_key(public_exponent=65537, key_size=2048), 900)
    same_kid.kid = tokens.issuer.kid  # a forger who copies the real key id
    refused = {
        "garbage": "Bearer not.a.jwt",
        "wrong scheme": f"Basic {valid}",
        "bad signature": f"Bearer {header}.{payload}.{signature[::-1]}",
        "alg switched to HS256": f"Bearer {tampered}",
        "expired": tokens.bearer("customer", now=int(time.time()) - 3600)["Authorization"],
        "another key": f"Bearer {stranger.issue(uuid.uuid4(), 'admin').access_token}",
        "another key, real kid": f"Bearer {same_kid.issue(uuid.uuid4(), 'admin').access_token}",
    }
    for case, authorization in refused.items():
        response = await api.get(order, headers={"Authorization": authorization})
        assert response.status_code == 401, (case, response.text)
        assert response.json()["code"] == "invalid_token", case
    # A bad token is refused even where no token is needed: it is never silently ignored.
    assert (await api.get("/products", headers={"Authorization": "Bearer junk"})).status_code == 401


async def test_customers_get_403_on_admin_routes(api: httpx.AsyncClient, tokens: Tokens) -> None:
    customer = tokens.bearer("customer")
    some = uuid.uuid4()
    calls = [
        (
            "POST",
            "/products",
            {"sku": "X", "name": "x", "description": "", "price_cents": 1, "currency": "USD", "stock": 1},
        ),
        ("PUT", f"/products/{some}/stock", {"stock": 5}),
        ("POST", f"/orders/{some}/review", {"approve": True}),
        ("POST", f"/orders/{some}/compensations/retry", None),
        ("PUT", f"/orders/{some}/status", {"status": "SHIPPED"}),
    ]
    for method, path, body in calls:
        response = await api.request(method, path, json=body, headers=customer)
        assert response.status_code == 403, (method, path, response.text)
        assert response.json()["code"] == "forbidden"


async def test_saga_only_and_unknown_endpoints_are_not_routed(api: httpx.AsyncClient, tokens: Tokens) -> None:
    admin = tokens.bearer("admin")
    some = uuid.uuid4()
    hidden = [
        ("POST", "/reservations"),
        ("GET", f"/reservations/{some}"),
        ("POST", f"/reservations/{some}/release"),
        ("POST", f"/reservations/{some}/commit"),
        ("POST", "/charges"),
        ("POST", "/charges/some-key/refund"),
        ("POST", "/authorizations"),
        ("POST", "/authorizations/some-key/capture"),
        ("POST", "/authorizations/some-key/void"),
        ("GET", f"/payments/{some}/transactions"),
        ("GET", f"/orders/{some}/payments"),
        ("POST", f"/internal/orders/{some}/commands"),
        ("GET", "/internal/orders/unfinished"),
        ("GET", f"/internal/users/{some}"),
        ("POST", "/notifications"),
        ("GET", f"/notifications/{some}"),
        ("GET", "/health"),
        ("GET", f"/users/{some}%2F..%2F..%2Finternal%2Fusers%2F{some}"),
        ("GET", "/users/.."),
    ]
    for method, path in hidden:
        response = await api.request(method, path, json={}, headers=admin)
        assert response.status_code == 404, (method, path, response.text)
        assert response.headers["content-type"] == "application/problem+json"
    wrong_method = await api.delete("/products", headers=admin)
    assert wrong_method.status_code == 405
    assert wrong_method.json()["code"] == "method_not_allowed"


async def test_openapi_documents_exactly_what_is_routed(gateway: RunningGateway) -> None:
    async with httpx.AsyncClient(base_url=gateway.url, timeout=60) as client:
        document = (await client.get("/openapi.json")).json()
        documented = {(method.upper(), path) for path, item in document["paths"].items() for method in item}
        routed = {(route.method, route.public_path) for route in ROUTES}
        assert documented == routed | {("GET", "/.well-known/jwks.json")}
        order = document["paths"][f"{PREFIX}/orders"]["post"]
        assert order["requestBody"]["content"]["application/json"]["schema"]["$ref"].endswith("/PlaceOrderIn")
        assert "PlaceOrderIn" in document["components"]["schemas"]
        assert "swagger" in (await client.get("/docs")).text.lower()


async def test_ops_endpoints_and_jwks(gateway: RunningGateway, stack: Stack) -> None:
    async with httpx.AsyncClient(base_url=gateway.url, timeout=30) as client:
        ready = await client.get("/ready")
        assert ready.status_code == 200, ready.text
        assert set(ready.json()["upstreams"].values()) == {"ready"}
        theirs = httpx.get(stack.url("users") + "/.well-known/jwks.json").json()
        assert (await client.get("/.well-known/jwks.json")).json() == theirs
        await client.get("/api/v1/products", headers={"X-Request-ID": "trace-gw-1"})
        metrics = (await client.get("/metrics")).text
        assert re.search(
            r"gateway_upstream_requests_total\{"
            r'method="GET",route="/api/v1/products",status="200",upstream="inventory"\} \d',
            metrics,
        )
        assert 'gateway_circuit_breaker_state{group="reads",upstream="orders"} 0.0' in metrics


async def test_a_dead_upstream_fails_fast_and_recovers(
    api: httpx.AsyncClient, gateway: RunningGateway, stack: Stack, tokens: Tokens
) -> None:
    auth = tokens.bearer("customer")
    product = f"/products/{uuid.uuid4()}"
    assert (await api.get(product)).status_code == 404  # inventory answers: a 4xx is no failure
    stack.processes["inventory"].kill()
    try:
        codes = [(await api.get(product)).status_code for _ in range(3)]
        assert set(codes) <= {502, 503}, codes
        started = time.monotonic()
        refused = await api.get(product)
        assert time.monotonic() - started < 0.5  # no connection attempt, no timeout
        assert refused.status_code == 503
        assert refused.json()["code"] == "upstream_unavailable"
        assert 1 <= int(refused.headers["retry-after"]) <= 2
        metrics = httpx.get(gateway.url + "/metrics").text
        assert 'gateway_circuit_breaker_state{group="reads",upstream="inventory"} 2.0' in metrics
        # The other upstreams keep answering.
        assert (await api.get(f"/orders/{uuid.uuid4()}", headers=auth)).status_code == 404
    finally:
        stack.restart("inventory")
    deadline = time.monotonic() + 15
    while (status := (await api.get(product)).status_code) != 404 and time.monotonic() < deadline:
        await asyncio.sleep(0.3)
    assert status == 404
    metrics = httpx.get(gateway.url + "/metrics").text
    assert 'gateway_circuit_breaker_state{group="reads",upstream="inventory"} 0.0' in metrics
