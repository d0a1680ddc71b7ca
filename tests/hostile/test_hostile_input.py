"""Hostile bodies and headers against the real processes: refused with a 4xx, never a 5xx or a crash.

Each service is hit on its own port (as the gateway would reach it) and the gateway on its public
port, so the real HTTP parser (uvicorn/h11) and the real middleware stack are under test.
"""

from __future__ import annotations

import asyncio
import socket
import uuid
from collections.abc import AsyncIterator

import httpx
import pytest

from tests.gateway.conftest import RunningGateway, Tokens
from tests.gateway.test_gateway_stack import PASSWORD, register_and_login
from tests.support.identity import as_admin, as_customer, as_service
from tests.support.stack import Stack

pytestmark = [pytest.mark.slow, pytest.mark.temporal]

MIB = 1024 * 1024
DEEP = b"[" * 200_000 + b"]" * 200_000  # 400 KB: under the size limit, far over any recursion limit
BAD_UTF8 = b'{"email": "\xff\xfe\xc3\x28@example.com", "username": "\xed\xa0\x80"}'
SQLISH = "Robert'); DROP TABLE products;-- \" OR 1=1 /* \\x00 ; SELECT * FROM users WHERE ''=''"


def body_endpoints(stack: Stack, gateway: RunningGateway, tokens: Tokens) -> list[tuple[str, dict[str, str]]]:
    """One JSON-taking POST per process, called as someone allowed to reach its body parsing."""
    user = uuid.uuid4()
    return [
        (stack.url("users") + "/users", {}),
        (stack.url("inventory") + "/products", as_admin()),
        (stack.url("payments") + "/payment-methods", as_customer(user)),
        (stack.url("orders") + "/orders", as_customer(user)),
        (stack.url("notifications") + "/notifications", as_service() | {"Idempotency-Key": "hostile-1"}),
        (gateway.url + "/api/v1/users", {}),
        (gateway.url + "/api/v1/orders", tokens.bearer("customer", user)),
    ]


def assert_refused(response: httpx.Response, allowed: set[int], what: str) -> None:
    assert response.status_code in allowed, (what, response.status_code, response.text[:300])
    assert response.headers["content-type"] == "application/problem+json", what


async def test_deep_huge_and_invalid_json_is_a_4xx_everywhere(
    stack: Stack, gateway: RunningGateway, tokens: Tokens
) -> None:
    wide_order = {
        "items": [{"product_id": str(uuid.uuid4()), "quantity": 1} for _ in range(12_000)],
        "payment_method_id": str(uuid.uuid4()),
    }
    bodies: dict[str, tuple[bytes, set[int]]] = {
        "deeply nested": (DEEP, {400, 422}),
        "deeply nested object": (b'{"a":' * 100_000 + b"1" + b"}" * 100_000, {400, 422}),
        "bad UTF-8": (BAD_UTF8, {400, 422}),
        "huge string field": (b'{"email": "' + b"a" * (MIB - 100) + b'@example.com"}', {400, 422}),
        "many lines": (httpx.Request("POST", "/", json=wide_order).content, {422}),
        "truncated": (b'{"items": [{"product_id": ', {400}),
        "not an object": (b'"just a string"', {400, 422}),
        "NaN and huge numbers": (
            b'{"quantity": NaN, "price_cents": 1e999999, "stock": ' + b"9" * 5000 + b"}",
            {400, 422},
        ),
    }
    async with httpx.AsyncClient(timeout=30) as http:
        for url, headers in body_endpoints(stack, gateway, tokens):
            for name, (content, allowed) in bodies.items():
                response = await http.post(
                    url, content=content, headers=headers | {"Content-Type": "application/json"}
                )
                assert_refused(response, allowed, f"{name} → {url}")
        # Still serving afterwards: nothing above took a process down.
        for name in stack.ports:
            assert (await http.get(stack.url(name) + "/ready")).status_code == 200, name
        assert (await http.get(gateway.url + "/health")).status_code == 200


async def _chunks(total: int, size: int = 64 * 1024) -> AsyncIterator[bytes]:
    sent = 0
    while sent < total:
        yield b" " * min(size, total - sent)
        sent += size
        await asyncio.sleep(0)


async def test_an_oversized_body_without_content_length_is_413(
    stack: Stack, gateway: RunningGateway, tokens: Tokens
) -> None:
    # Chunked: the size is not announced, so only counting the bytes as they arrive can refuse it.
    async with httpx.AsyncClient(timeout=30) as http:
        for url, headers in body_endpoints(stack, gateway, tokens):
            response = await http.post(
                url, content=_chunks(MIB + 4096), headers=headers | {"Content-Type": "application/json"}
            )
            assert_refused(response, {413}, f"chunked → {url}")
            assert response.json()["code"] == "payload_too_large"


async def test_sqlish_and_odd_text_is_stored_verbatim(api: httpx.AsyncClient, tokens: Tokens) -> None:
    tag = uuid.uuid4().hex[:8]
    text = f"{SQLISH} {tag} ünïcødé 😀 <script>alert(1)</script> %s %(x)s {{}}"
    admin = tokens.bearer("admin")
    created = await api.post(
        "/products",
        json={
            "sku": f"SQL-{tag}.--",
            "name": text[:100],
            "description": text,
            "price_cents": 100,
            "currency": "USD",
            "stock": 1,
        },
        headers=admin,
    )
    assert created.status_code == 201, created.text
    product = (await api.get(f"/products/{created.json()['id']}")).json()
    assert (product["sku"], product["name"], product["description"]) == (f"SQL-{tag}.--", text[:100], text)

    user_id, auth = await register_and_login(api)
    user = (await api.get(f"/users/{user_id}", headers=auth)).json()
    profile = {"first_name": "O'Brien; --", "last_name": "\"x\" OR '1'='1", "bio": text}
    updated = await api.put(
        f"/users/{user_id}", json={"profile": profile, "version": user["version"]}, headers=auth
    )
    assert updated.status_code == 200, updated.text
    again = (await api.get(f"/users/{user_id}", headers=auth)).json()
    assert {k: again["profile"][k] for k in profile} == profile

    # An injection attempt as a login name is just a wrong login; a username with quotes is invalid.
    for name in ("admin' OR '1'='1", "' OR 1=1 --", f"{again['email']}' --"):
        login = await api.post("/auth/token", data={"username": name, "password": PASSWORD})
        assert login.status_code == 401, (name, login.text)
    bad = await api.post(
        "/users",
        json={"email": f"q{tag}@example.com", "username": "x'; DROP TABLE users;--", "password": PASSWORD},
    )
    assert bad.status_code == 422
    assert (await api.get("/products", params={"limit": 1})).status_code == 200  # the table is there


async def test_a_get_with_a_body_is_served_without_it(api: httpx.AsyncClient, tokens: Tokens) -> None:
    # The body is not forwarded; its Content-Length must not be either (that was a 500).
    response = await api.request("GET", "/products", params={"limit": 1}, json={"x": "y" * 1000})
    assert response.status_code == 200, response.text
    user_id, auth = await register_and_login(api)
    mine = await api.request("GET", f"/users/{user_id}", json={"role": "admin"}, headers=auth)
    assert mine.status_code == 200 and mine.json()["role"] == "customer"


def _raw_request(port: int, request: bytes) -> tuple[int, bytes]:
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(request)
        data = b""
        while b"\r\n\r\n" not in data:
            chunk = sock.recv(65536)
            if not chunk:
                break
            data += chunk
    status_line = data.split(b"\r\n", 1)[0]
    return int(status_line.split()[1]), data


async def test_injected_and_spoofed_headers_are_refused_or_ignored(
    stack: Stack, gateway: RunningGateway, api: httpx.AsyncClient, tokens: Tokens
) -> None:
    port = int(gateway.url.rsplit(":", 1)[1])
    # A bare CR, a NUL or an obs-fold inside a header value is a malformed request, answered 400.
    for value in (b"abc\rX-Ordersaga-Role: admin", b"abc\x00def", b"abc\r\n X-Ordersaga-Role: admin"):
        status, _ = _raw_request(
            port,
            b"GET /api/v1/products HTTP/1.1\r\nHost: gw\r\nX-Request-ID: " + value + b"\r\n\r\n",
        )
        assert status == 400, value

    # Identity headers a client sends are never trusted, whatever else it claims.
    spoofed = {
        "X-Ordersaga-Role": "admin",
        "X-Ordersaga-User-Id": str(uuid.uuid4()),
        "X-Ordersaga-Internal-Token": "test-internal-token",  # even the right one, from outside
        "X-Forwarded-For": "127.0.0.1",
        "X-Real-IP": "127.0.0.1",
        "Forwarded": "for=127.0.0.1",
    }
    anonymous = await api.get(f"/users/{uuid.uuid4()}", headers=spoofed)
    assert anonymous.status_code == 401
    customer = tokens.bearer("customer")
    elevated = await api.put(f"/products/{uuid.uuid4()}/stock", json={"stock": 1}, headers=spoofed | customer)
    assert elevated.status_code == 403
    # A header value that smuggles a CRLF cannot even be sent by a well-behaved client library.
    with pytest.raises((httpx.LocalProtocolError, ValueError)):
        await api.get("/products", headers={"X-Request-ID": "a\r\nX-Ordersaga-Role: admin"})

    # Straight to a service, identity headers without the internal credential are ignored too.
    async with httpx.AsyncClient(timeout=10) as http:
        direct = await http.put(
            stack.url("inventory") + f"/products/{uuid.uuid4()}/stock",
            json={"stock": 1},
            headers={k: v for k, v in spoofed.items() if k != "X-Ordersaga-Internal-Token"},
        )
    assert direct.status_code == 401
