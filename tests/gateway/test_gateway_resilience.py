"""How the gateway contains an upstream's trouble: shed requests relayed as they are, one breaker
per route group, POSTs retried only where the service honours `Idempotency-Key`, and bulkheads
(each upstream its own connections, a bounded wait for one).

The upstreams are stand-ins: real HTTP servers (aiohttp, on a port of their own) in this process,
scripted per test, since the real services cannot be made to fail a given way on demand."""

from __future__ import annotations

import asyncio
import re
import time
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager

import httpx
from aiohttp import web
from cryptography.hazmat.primitives.asymmetric import rsa

from services.users.tokens import TokenIssuer
from tests.gateway.conftest import in_process_gateway
from tests.support.processes import free_port

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

KEY = TokenIssuer(rsa.generate_private_key(public_exponent=65537, key_size=2048), 900)


def customer() -> dict[str, str]:
    return {"Authorization": f"Bearer {KEY.issue(uuid.uuid4(), 'customer').access_token}"}


class StandIn:
    """An upstream on its own port; counts what it was asked, `METHOD /path`, and answers `handler`."""

    def __init__(self, handler: Handler) -> None:
        self.handler = handler
        self.calls: Counter[str] = Counter()
        self.url = ""

    async def _serve(self, request: web.Request) -> web.StreamResponse:
        if request.path == "/.well-known/jwks.json":  # the users service's key set, for the tokens
            return web.json_response(KEY.jwks())
        self.calls[f"{request.method} {request.path}"] += 1
        return await self.handler(request)

    @asynccontextmanager
    async def running(self) -> AsyncIterator[StandIn]:
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self._serve)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        port = free_port()
        await web.TCPSite(runner, "127.0.0.1", port).start()
        self.url = f"http://127.0.0.1:{port}"
        try:
            yield self
        finally:
            await runner.cleanup()


def metric(text: str, name: str, **labels: str) -> float | None:
    """A sample's value from the gateway's /metrics, whatever the order of its labels."""
    for line in text.splitlines():
        found = re.fullmatch(rf"{name}\{{(.*)\}} (\S+)", line)
        if found and dict(re.findall(r'(\w+)="([^"]*)"', found[1])) == labels:
            return float(found[2])
    return None


async def ok(request: web.Request) -> web.Response:
    return web.json_response({"path": request.path}, status=202 if request.method == "POST" else 200)


async def test_a_shed_request_is_relayed_once_and_does_not_open_the_breaker() -> None:
    async def shedding(request: web.Request) -> web.Response:
        if request.path.endswith("/shed"):
            return web.json_response({"code": "overloaded"}, status=503, headers={"Retry-After": "7"})
        if request.path.endswith("/bad-gateway"):
            return web.json_response({"code": "broken"}, status=502)
        return await ok(request)

    async with (
        StandIn(shedding).running() as inventory,
        in_process_gateway(
            inventory_url=inventory.url, breaker_threshold=3, inventory_retries=2, retry_backoff_seconds=0
        ) as gw,
    ):
        for _ in range(4):  # more than the breaker's threshold
            shed = await gw.get("/api/v1/products/shed")
            assert shed.status_code == 503
            assert shed.headers["retry-after"] == "7"  # the service's own answer, as it is
            assert shed.json() == {"code": "overloaded"}
        assert inventory.calls["GET /products/shed"] == 4  # not retried: the client was asked back later
        assert (await gw.get("/api/v1/products/fine")).status_code == 200  # the breaker stayed closed

        # A 502 is retried, and each attempt counts: three open the breaker.
        assert (await gw.get("/api/v1/products/bad-gateway")).status_code == 502
        assert inventory.calls["GET /products/bad-gateway"] == 3
        refused = await gw.get("/api/v1/products/fine")
        assert refused.status_code == 503 and refused.json()["code"] == "upstream_unavailable"


async def test_a_failing_saga_view_opens_its_own_breaker_and_orders_are_still_placed() -> None:
    async def saga_broken(request: web.Request) -> web.Response:
        if request.path.endswith("/saga"):
            return web.json_response({"detail": "temporal is away"}, status=500)
        return await ok(request)

    async with (
        StandIn(saga_broken).running() as orders,
        in_process_gateway(
            users_url=orders.url, orders_url=orders.url, breaker_threshold=3, breaker_cooldown_seconds=30
        ) as gw,
    ):
        auth = customer()
        saga = f"/api/v1/orders/{uuid.uuid4()}/saga"
        for _ in range(3):
            assert (await gw.get(saga, headers=auth)).status_code == 500
        refused = await gw.get(saga, headers=auth)
        assert refused.status_code == 503 and refused.json()["code"] == "upstream_unavailable"
        assert sum(n for call, n in orders.calls.items() if call.endswith("/saga")) == 3

        placed = await gw.post("/api/v1/orders", json={}, headers=auth | {"Idempotency-Key": "k-1"})
        assert placed.status_code == 202
        assert orders.calls["POST /orders"] == 1
        assert (await gw.get(f"/api/v1/orders/{uuid.uuid4()}", headers=auth)).status_code == 200

        metrics = (await gw.get("/metrics")).text
        assert metric(metrics, "gateway_circuit_breaker_state", upstream="orders", group="saga") == 2
        assert metric(metrics, "gateway_circuit_breaker_state", upstream="orders", group="create") == 0
        ready_breakers = (await gw.get("/ready")).json()["breakers"]
        assert ready_breakers["orders"]["saga"] == "opened"
        assert ready_breakers["orders"]["create"] == "closed"


async def test_a_post_is_retried_only_where_the_service_honours_idempotency_keys() -> None:
    """Each first call fails, by connection reset or by 502; only POST /orders with a key is sent again."""

    async def fails_first(request: web.Request) -> web.StreamResponse:
        if (await request.read()) != b'{"n":1}':  # a retry must resend the body whole
            return web.json_response({"code": "body_lost"}, status=400)
        first = calls_so_far(request) == 1
        if first and request.headers.get("X-Fail") == "reset":
            assert request.transport is not None
            request.transport.abort()  # the connection drops before any answer
            return web.Response()
        if first:
            return web.json_response({"code": "bad_gateway"}, status=502)
        return web.json_response({"ok": True}, status=201)

    stand_in = StandIn(fails_first)

    def calls_so_far(request: web.Request) -> int:
        return stand_in.calls[f"{request.method} {request.path}"]

    async with (
        stand_in.running() as upstream,
        in_process_gateway(
            users_url=upstream.url,
            payments_url=upstream.url,
            orders_url=upstream.url,
            breaker_threshold=50,
            retry_backoff_seconds=0,
        ) as gw,
    ):
        auth = customer()
        for failure, failed_status in (("502", 502), ("reset", 502)):
            upstream.calls.clear()
            headers = auth | {"Idempotency-Key": f"key-{failure}", "X-Fail": failure}
            card = await gw.post("/api/v1/payment-methods", content=b'{"n":1}', headers=headers)
            assert card.status_code == failed_status, failure
            assert upstream.calls["POST /payment-methods"] == 1, failure  # a key does not make it safe
            cancel = await gw.post(f"/api/v1/orders/o-{failure}/cancel", content=b'{"n":1}', headers=headers)
            assert (
                cancel.status_code == failed_status
                and upstream.calls[f"POST /orders/o-{failure}/cancel"] == 1
            )
            unkeyed = await gw.post("/api/v1/orders", content=b'{"n":1}', headers=auth | {"X-Fail": failure})
            assert unkeyed.status_code == failed_status and upstream.calls["POST /orders"] == 1
            upstream.calls.clear()
            order = await gw.post("/api/v1/orders", content=b'{"n":1}', headers=headers)
            assert order.status_code == 201, failure  # sent again with the same key, and placed
            assert upstream.calls["POST /orders"] == 2, failure


async def test_a_saturated_upstream_answers_503_at_once_and_does_not_slow_the_others() -> None:
    release = asyncio.Event()

    async def slow(request: web.Request) -> web.Response:
        await asyncio.wait_for(release.wait(), timeout=10)
        return await ok(request)

    async with (
        StandIn(slow).running() as inventory,
        StandIn(ok).running() as notifications,
        in_process_gateway(
            users_url=notifications.url,
            inventory_url=inventory.url,
            notifications_url=notifications.url,
            inventory_max_connections=2,
            connection_wait_seconds=0.3,
            inventory_timeout=10,
        ) as gw,
    ):

        async def timed(call: Awaitable[httpx.Response]) -> tuple[httpx.Response, float]:
            started = time.monotonic()
            response = await call
            return response, time.monotonic() - started

        stuck = [asyncio.create_task(timed(gw.get(f"/api/v1/products/p-{n}"))) for n in range(5)]
        await asyncio.sleep(0.1)
        metrics = (await gw.get("/metrics")).text
        assert metric(metrics, "gateway_upstream_active_requests", upstream="inventory") == 2
        assert metric(metrics, "gateway_upstream_active_requests", upstream="notifications") == 0

        # The inventory's budget is taken; the notifications service's own connections are free.
        auth = customer()
        for _ in range(5):
            answer, took = await timed(gw.get("/api/v1/users/me/notifications", headers=auth))
            assert answer.status_code == 200 and took < 0.25, took

        over = [await task for task in stuck[2:]]
        for response, took in over:
            assert response.status_code == 503
            assert response.headers["content-type"] == "application/problem+json"
            assert response.json()["code"] == "upstream_busy"
            assert response.headers["retry-after"] == "1"
            assert 0.3 <= took < 1.5, took  # the bounded wait, not the upstream's 10 s timeout
        assert sum(inventory.calls.values()) == 2
        release.set()
        assert [response.status_code for response, _ in [await task for task in stuck[:2]]] == [200, 200]
        metrics = (await gw.get("/metrics")).text
        assert metric(metrics, "gateway_upstream_active_requests", upstream="inventory") == 0
