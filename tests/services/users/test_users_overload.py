"""Bounded password hashing: past its slots and queue timeout the service sheds load with a fast 503."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Awaitable

import httpx
import pytest
from argon2 import PasswordHasher
from prometheus_client import REGISTRY
from starlette.responses import Response
from starlette.types import Receive, Scope, Send

from services.users.passwords import HashingOverloaded, Passwords, RequestClock
from services.users.settings import Settings
from tests.services.users.conftest import (
    PASSWORD,
    UsersClientFactory,
    login,
    register,
    stored_users,
    unique_name,
)

# One slot, a 0.1 s queue, and a hash slow enough (~0.3 s on the 2-core VM) that it surely holds
# the slot for longer than the queue timeout.
ONE_SLOT = {
    "password_hash_concurrency": 1,
    "password_hash_queue_timeout_seconds": 0.1,
    "argon2_time_cost": 4,
    "argon2_memory_cost_kib": 65536,
    "argon2_parallelism": 1,
}


async def _timed(request: Awaitable[httpx.Response]) -> tuple[httpx.Response, float]:
    started = time.monotonic()
    response = await request
    return response, time.monotonic() - started


def _shed_total() -> float:
    return REGISTRY.get_sample_value("users_password_hashes_shed_total") or 0.0


def _sign_up(client: httpx.AsyncClient) -> Awaitable[httpx.Response]:
    name = unique_name()
    return client.post(
        "/users", json={"email": f"{name}@example.com", "username": name, "password": PASSWORD}
    )


async def test_sign_ups_past_the_queue_timeout_get_a_fast_503_with_retry_after(
    users_client: UsersClientFactory,
) -> None:
    async with users_client(**ONE_SLOT) as client:
        shed_before = _shed_total()
        answers = await asyncio.gather(*(_timed(_sign_up(client)) for _ in range(4)))
        statuses = sorted(response.status_code for response, _ in answers)
        assert statuses[0] == 201, statuses
        shed = [(response, elapsed) for response, elapsed in answers if response.status_code == 503]
        assert shed, statuses
        for response, elapsed in shed:
            assert response.headers["content-type"] == "application/problem+json"
            assert response.json()["code"] == "overloaded"
            assert int(response.headers["retry-after"]) >= 1
            # Shed after the queue timeout, not after the hashes queued ahead of it.
            assert elapsed < 1.0, elapsed
        assert set(statuses) <= {201, 503}
        assert _shed_total() - shed_before == len(shed)


async def test_logins_are_shed_alike_for_known_and_unknown_names_and_the_service_recovers(
    users_client: UsersClientFactory,
) -> None:
    async with users_client(**ONE_SLOT) as client:
        user = await register(client)
        names = [user["username"], "nobody_here"] * 3
        answers = await asyncio.gather(*(login(client, name) for name in names))
        shed = {name for name, answer in zip(names, answers, strict=True) if answer.status_code == 503}
        # Both kinds are refused: overload must not tell an attacker which accounts exist.
        assert shed == {user["username"], "nobody_here"}, [a.status_code for a in answers]
        # Once the burst is over, the next login is served.
        assert (await login(client, user["username"])).status_code == 200


async def test_a_rehash_that_finds_no_slot_does_not_fail_the_login(
    users_client: UsersClientFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with users_client(argon2_time_cost=1) as client:
        user = await register(client)
        database_url = client.app.state.db.url  # type: ignore[attr-defined]
        [old] = await stored_users(client)
    async with users_client(argon2_time_cost=2, database_url=database_url) as client:
        passwords: Passwords = client.app.state.passwords  # type: ignore[attr-defined]

        async def no_slot(password: str) -> str:
            raise HashingOverloaded(1)

        # The password check found a slot; the upgrade that follows it does not.
        with monkeypatch.context() as patch:
            patch.setattr(passwords, "hash", no_slot)
            assert (await login(client, user["username"])).status_code == 200
        [kept] = await stored_users(client)
        assert kept.password_hash == old.password_hash
        # The next calm login does the upgrade.
        assert (await login(client, user["username"])).status_code == 200
        [upgraded] = await stored_users(client)
        assert "t=2" in upgraded.password_hash


def test_the_shipped_cost_meets_owasp_and_one_slot_per_core() -> None:
    settings = Settings()
    # OWASP Password Storage Cheat Sheet: argon2id with at least 19 MiB, 2 iterations, 1 lane.
    assert settings.argon2_memory_cost_kib >= 19456
    assert settings.argon2_time_cost >= 2
    assert settings.password_hash_concurrency >= 1
    assert settings.password_hash_queue_timeout_seconds < 5.0  # the gateway's users timeout


async def test_hashes_made_with_the_previous_defaults_are_redone_with_the_shipped_ones_on_login(
    users_client: UsersClientFactory,
) -> None:
    # Until this release the service hashed with argon2-cffi's defaults (RFC 9106's second option).
    previous = {"argon2_time_cost": 3, "argon2_memory_cost_kib": 65536, "argon2_parallelism": 4}
    async with users_client(**previous) as client:
        user = await register(client)
        database_url = client.app.state.db.url  # type: ignore[attr-defined]
    shipped = Settings()
    cost = {
        "argon2_time_cost": shipped.argon2_time_cost,
        "argon2_memory_cost_kib": shipped.argon2_memory_cost_kib,
        "argon2_parallelism": shipped.argon2_parallelism,
    }
    async with users_client(**cost, database_url=database_url) as client:
        assert (await login(client, user["username"])).status_code == 200
        [stored] = await stored_users(client)
        expected = (
            f"m={shipped.argon2_memory_cost_kib},t={shipped.argon2_time_cost},p={shipped.argon2_parallelism}"
        )
        assert f"$argon2id$v=19${expected}$" in stored.password_hash
        assert (await login(client, user["username"])).status_code == 200


class HeldHasher(PasswordHasher):
    """argon2id, except that hashing HOLD blocks until released: a slot kept busy on cue."""

    HOLD = "hold the only slot"

    def __init__(self) -> None:
        super().__init__(time_cost=1, memory_cost=64, parallelism=1)
        self.release = threading.Event()

    def hash(self, password: str | bytes, *, salt: bytes | None = None) -> str:
        if password == self.HOLD:
            self.release.wait(timeout=10)
        return super().hash(password, salt=salt)


async def test_the_wait_for_a_slot_counts_from_the_requests_arrival() -> None:
    hasher = HeldHasher()
    passwords = Passwords(hasher, concurrency=1, queue_timeout_seconds=1.0)
    outcome: dict[str, object] = {}

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        await asyncio.sleep(0.8)  # most of the budget goes before the hash (say, a slow lookup)
        started = time.monotonic()
        try:
            await passwords.hash(PASSWORD)
            outcome["result"] = "hashed"
        except HashingOverloaded:
            outcome["result"] = "shed"
        outcome["waited"] = time.monotonic() - started
        await Response(status_code=204)(scope, receive, send)

    holder = asyncio.create_task(passwords.hash(HeldHasher.HOLD))
    try:
        transport = httpx.ASGITransport(app=RequestClock(app))
        async with httpx.AsyncClient(transport=transport, base_url="http://users") as client:
            await client.get("/")
    finally:
        hasher.release.set()
        await holder
    # Refused once the 1 s since its arrival is up (0.2 s of waiting), not after another full second.
    assert outcome["result"] == "shed", outcome
    assert isinstance(outcome["waited"], float)
    assert outcome["waited"] < 0.6, outcome


async def test_a_caller_that_gives_up_keeps_its_slot_until_its_hash_is_done() -> None:
    hasher = HeldHasher()
    passwords = Passwords(hasher, concurrency=1, queue_timeout_seconds=0.1)
    holder = asyncio.create_task(passwords.hash(HeldHasher.HOLD))
    await asyncio.sleep(0.05)  # its hash is running
    holder.cancel()
    with pytest.raises(asyncio.CancelledError):
        await holder
    try:
        # The thread still hashes: the slot is not free for another hash yet.
        with pytest.raises(HashingOverloaded):
            await passwords.hash(PASSWORD)
    finally:
        hasher.release.set()
    await asyncio.sleep(0.05)
    assert await passwords.verify(await passwords.hash(PASSWORD), PASSWORD)


async def test_logins_shed_under_a_crowd_do_not_spend_the_accounts_attempts(
    users_client: UsersClientFactory,
) -> None:
    async with users_client(**ONE_SLOT, login_failure_limit="3/5minutes") as client:
        user = await register(client)
        passwords: Passwords = client.app.state.passwords  # type: ignore[attr-defined]
        # Someone else's sign-up holds the only slot while the customer keeps retrying.
        crowd = asyncio.create_task(passwords.hash("someone-elses-password"))
        await asyncio.sleep(0.01)
        answers = await asyncio.gather(*(login(client, user["username"]) for _ in range(6)))
        await crowd
        assert [answer.status_code for answer in answers] == [503] * 6
        # Six sheds, a budget of three: none of them was an attempt, so the next login is served.
        assert (await login(client, user["username"])).status_code == 200
