"""Several addresses per service, as `ordersaga up --replicas N` (or a Kubernetes Service) gives them:
calls spread over the replicas, a refused connection goes on to the next address at once (whatever
the method: nothing reached the service), a refusing address is passed over for a while, one
bulkhead per upstream across its addresses, and a single URL works exactly as before.

The replicas are stand-ins (real aiohttp servers on ports of their own, tests/gateway); a dead
replica is a port nothing listens on."""

from __future__ import annotations

import asyncio
import uuid
from collections import Counter

import httpx
import pytest
from aiohttp import web

from activities.http import ServiceCaller
from services.gateway.settings import Settings
from services.kit.transport import Addresses, SpreadTransport, service_client
from tests.gateway.conftest import in_process_gateway
from tests.gateway.test_gateway_resilience import StandIn, customer, ok
from tests.support.identity import INTERNAL_TOKEN
from tests.support.processes import free_port


def dead_address() -> str:
    return f"http://127.0.0.1:{free_port()}"  # nothing listens: connections are refused


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_addresses_take_turns_and_a_refusing_one_waits_at_the_back_for_a_while() -> None:
    clock = Clock()
    addresses = Addresses(["http://a:1", " http://b:2/", "http://c:3"], skip_seconds=2.0, clock=clock)
    assert addresses.urls == ("http://a:1", "http://b:2", "http://c:3")
    firsts = [addresses.order()[0] for _ in range(6)]
    assert firsts == ["http://a:1", "http://b:2", "http://c:3"] * 2

    addresses.refused("http://b:2")
    for _ in range(3):
        assert addresses.order()[-1] == "http://b:2"  # still tried, but only after the others
    clock.now += 2.1
    assert {addresses.order()[0] for _ in range(3)} == set(addresses.urls)  # taken back

    addresses.refused("http://a:1")
    addresses.refused("http://b:2")
    clock.now += 0.5
    addresses.refused("http://c:3")
    # All refused lately: the one that refused longest ago first.
    assert addresses.order()[0] == "http://a:1"


def test_a_single_url_is_used_as_it_is() -> None:
    settings = Settings(inventory_url="http://127.0.0.1:8002/")
    upstream = settings.upstream("inventory")
    assert upstream.url == "http://127.0.0.1:8002"
    assert upstream.urls == ("http://127.0.0.1:8002",)
    assert Addresses.parse("http://127.0.0.1:8002").order() == ["http://127.0.0.1:8002"]
    with pytest.raises(ValueError, match="at least one address"):
        Addresses.parse(" , ")


async def test_the_gateway_spreads_requests_over_the_replicas() -> None:
    async with (
        StandIn(ok).running() as first,
        StandIn(ok).running() as second,
        in_process_gateway(inventory_url=f"{first.url},{second.url}") as gw,
    ):
        for index in range(10):
            assert (await gw.get(f"/api/v1/products/p-{index}")).status_code == 200
        assert sum(first.calls.values()) == 5
        assert sum(second.calls.values()) == 5


async def test_a_refused_replica_is_passed_over_at_once_even_for_a_post_that_is_never_retried() -> None:
    dead = dead_address()
    async with (
        StandIn(ok).running() as users,
        StandIn(ok).running() as payments,
        in_process_gateway(
            users_url=users.url,
            payments_url=f"{dead},{payments.url}",
            payments_retries=0,
            breaker_threshold=2,
        ) as gw,
    ):
        auth = customer()
        for _ in range(6):  # more than the breaker's threshold: a refused replica is no failure
            saved = await gw.post("/api/v1/payment-methods", headers=auth, json={"token": "tok_visa"})
            assert saved.status_code == 202, saved.text
        assert payments.calls["POST /payment-methods"] == 6  # each sent once, to the live replica


async def test_every_replica_refusing_is_answered_502_as_with_one() -> None:
    async with (
        StandIn(ok).running() as users,
        in_process_gateway(
            users_url=users.url, payments_url=f"{dead_address()},{dead_address()}", payments_retries=0
        ) as gw,
    ):
        answer = await gw.post("/api/v1/payment-methods", headers=customer(), json={"token": "tok_visa"})
        assert answer.status_code == 502
        assert answer.json()["code"] == "upstream_unreachable"


async def test_the_replicas_of_an_upstream_share_its_one_bulkhead() -> None:
    release = asyncio.Event()

    async def slow(request: web.Request) -> web.Response:
        await asyncio.wait_for(release.wait(), timeout=10)
        return await ok(request)

    async with (
        StandIn(slow).running() as first,
        StandIn(slow).running() as second,
        in_process_gateway(
            inventory_url=f"{first.url},{second.url}",
            inventory_max_connections=2,
            connection_wait_seconds=0.3,
            inventory_timeout=10,
        ) as gw,
    ):
        stuck = [asyncio.create_task(gw.get(f"/api/v1/products/p-{n}")) for n in range(5)]
        await asyncio.sleep(0.6)  # past the bounded wait: the three over budget were answered
        # Two in flight in all, not two per replica.
        assert sum(first.calls.values()) + sum(second.calls.values()) == 2
        release.set()
        statuses = Counter(response.status_code for response in await asyncio.gather(*stuck))
        assert statuses == {200: 2, 503: 3}


async def test_the_workers_service_calls_spread_and_pass_over_a_dead_replica() -> None:
    async with StandIn(ok).running() as first, StandIn(ok).running() as second:
        async with service_client(httpx.Timeout(5.0)) as client:
            caller = ServiceCaller(client, f"{first.url},{dead_address()},{second.url}", INTERNAL_TOKEN)
            for _ in range(8):
                # A POST with no key: sent to the next replica only because none of it was sent.
                answer = await caller.call("POST", "/holds", json={"order_id": str(uuid.uuid4())})
                assert answer.status_code == 202
        assert first.calls["POST /holds"] + second.calls["POST /holds"] == 8
        assert min(first.calls["POST /holds"], second.calls["POST /holds"]) >= 3


async def test_a_load_client_spreads_over_several_gateways() -> None:
    async with StandIn(ok).running() as first, StandIn(ok).running() as second:
        apis = Addresses.parse(f"{first.url}/api/v1,{dead_address()}/api/v1,{second.url}/api/v1")
        transport = SpreadTransport(apis, httpx.AsyncHTTPTransport())
        async with httpx.AsyncClient(base_url=apis.first, transport=transport) as client:
            for _ in range(6):
                answer = await client.get("/orders/some-id")
                assert answer.status_code == 200
                assert answer.json() == {"path": "/api/v1/orders/some-id"}
        assert first.calls["GET /api/v1/orders/some-id"] + second.calls["GET /api/v1/orders/some-id"] == 6
        assert min(first.calls["GET /api/v1/orders/some-id"], second.calls["GET /api/v1/orders/some-id"]) >= 2
