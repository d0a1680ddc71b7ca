"""A crowd of sign-ups and logins through the gateway, with the shipped argon2 cost and concurrency.

What a user saw before hashing was bounded: 25 customers signing up and logging in at once on a
2-core machine got 504s from the gateway, then the users breaker opened for everyone.
"""

from __future__ import annotations

import asyncio
import re
import time
import uuid
from collections.abc import Awaitable

import httpx
import pytest

from services.gateway.settings import Settings as GatewaySettings
from tests.load.conftest import UsersBehindGateway, client_of

pytestmark = pytest.mark.slow

PASSWORD = "correct horse battery staple"
CROWD = 25
# Far past what two cores hash in the short queue timeout (about 50 hashes a second at best), and
# within the gateway's bulkhead to users (100 connections), so that it is the users service that sheds.
STAMPEDE = 90
LOGINS_EACH = 5  # under the per-account login budget (USERS_LOGIN_FAILURE_LIMIT, 10 in 5 minutes)
USERS_TIMEOUT = GatewaySettings().users_timeout  # the gateway's per-attempt limit on the users service


async def timed(request: Awaitable[httpx.Response]) -> tuple[httpx.Response, float]:
    started = time.monotonic()
    response = await request
    return response, time.monotonic() - started


def sign_up(api: httpx.AsyncClient, name: str) -> Awaitable[httpx.Response]:
    return api.post("/users", json={"email": f"{name}@example.com", "username": name, "password": PASSWORD})


def log_in(api: httpx.AsyncClient, name: str) -> Awaitable[httpx.Response]:
    return api.post("/auth/token", data={"username": name, "password": PASSWORD})


def names(prefix: str, count: int) -> list[str]:
    run = uuid.uuid4().hex[:6]
    return [f"{prefix}_{run}_{n}" for n in range(count)]


async def users_breaker_states(gateway_url: str) -> list[float]:
    """The state of each of the gateway's breakers in front of users (one per route group)."""
    async with httpx.AsyncClient(timeout=10) as client:
        metrics = (await client.get(gateway_url + "/metrics")).text
    pattern = r'^gateway_circuit_breaker_state\{[^}]*upstream="users"[^}]*\} (\S+)$'
    states = [float(value) for value in re.findall(pattern, metrics, re.MULTILINE)]
    assert states, "the gateway exports no breaker state for users"
    return states


async def test_25_sign_ups_then_25_logins_at_once_all_succeed_and_others_still_get_in(
    shipped: UsersBehindGateway,
) -> None:
    async with client_of(shipped) as api:
        [bystander] = names("bystander", 1)
        assert (await sign_up(api, bystander)).status_code == 201
        crowd = names("crowd", CROWD)

        signed_up = await asyncio.gather(*(timed(sign_up(api, name)) for name in crowd))
        assert [r.status_code for r, _ in signed_up] == [201] * CROWD, [r.text for r, _ in signed_up]

        async def bystander_login() -> tuple[httpx.Response, float]:
            await asyncio.sleep(0.05)  # arrives while the crowd's hashes are queued
            return await timed(log_in(api, bystander))

        *logged_in, (other, other_seconds) = await asyncio.gather(
            *(timed(log_in(api, name)) for name in crowd), bystander_login()
        )
        assert [r.status_code for r, _ in logged_in] == [200] * CROWD, [r.text for r, _ in logged_in]
        assert all(r.json()["token_type"] == "bearer" for r, _ in logged_in)
        assert other.status_code == 200, other.text
        assert other_seconds < USERS_TIMEOUT, other_seconds
        slowest = max(seconds for _, seconds in [*signed_up, *logged_in])
        assert slowest < USERS_TIMEOUT, slowest
        assert set(await users_breaker_states(shipped.gateway_url)) == {0.0}


async def test_past_capacity_logins_are_shed_fast_with_retry_after_and_the_breaker_stays_closed(
    short_queue: UsersBehindGateway,
) -> None:
    async with client_of(short_queue) as api:
        # Many customers, a few logins each: the per-account login throttle is not tested here.
        customers = names("stampede", STAMPEDE // LOGINS_EACH)
        [latecomer] = names("latecomer", 1)
        for name in [*customers, latecomer]:  # one by one: the short queue would shed a crowd of them
            assert (await sign_up(api, name)).status_code == 201

        answers = await asyncio.gather(
            *(timed(log_in(api, name)) for _ in range(LOGINS_EACH) for name in customers)
        )

        statuses = sorted({r.status_code for r, _ in answers})
        assert set(statuses) <= {200, 503}, statuses  # no 504: nobody waited out the gateway
        shed = [(r, seconds) for r, seconds in answers if r.status_code == 503]
        assert shed, "the stampede was all served: it did not push past capacity"
        assert any(r.status_code == 200 for r, _ in answers)
        for response, seconds in shed:
            body = response.json()
            # The service's own refusal, relayed, not the gateway's open circuit or its bulkhead.
            assert body["code"] == "overloaded", body
            assert int(response.headers["retry-after"]) >= 1
            assert seconds < 0.8 * USERS_TIMEOUT, seconds

        # Shedding is the users service working as meant: no breaker in front of it may open.
        assert set(await users_breaker_states(short_queue.gateway_url)) == {0.0}
        after = await log_in(api, latecomer)
        assert after.status_code == 200, after.text
