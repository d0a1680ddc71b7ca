"""The users service's side of account security: the current password for a password or email
change, token versions (what the gateway checks `ver` against), and per-account login throttling,
shared through a real Redis and held per process while Redis is away."""

from __future__ import annotations

import asyncio
import shutil
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import rsa
from prometheus_client import REGISTRY
from structlog.testing import capture_logs

from services.users.tokens import InvalidToken, TokenIssuer, verify_token
from tests.services.users.conftest import PASSWORD, UsersClientFactory, login, register
from tests.support.identity import as_admin, as_customer, as_service
from tests.support.nats import NatsServer
from tests.support.processes import ManagedProcess, free_port, tcp_open

NEW_PASSWORD = "an entirely new passphrase"


async def _put(client: httpx.AsyncClient, user_id: str, body: dict[str, Any], headers: dict[str, str]) -> Any:
    return await client.put(f"/users/{user_id}", json=body, headers=headers)


async def _token_version(client: httpx.AsyncClient, user_id: str) -> dict[str, Any]:
    response = await client.get(f"/internal/users/{user_id}/token-version", headers=as_service())
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


async def test_own_password_or_email_change_needs_the_current_password(
    users_client: UsersClientFactory,
) -> None:
    async with users_client() as client:
        user = await register(client)
        me = as_customer(user["id"])
        changes = [{"password": NEW_PASSWORD}, {"email": "moved@example.com"}]
        for change in changes:
            missing = await _put(client, user["id"], {"version": 1, **change}, me)
            assert missing.status_code == 422, missing.text
            assert missing.headers["content-type"].startswith("application/problem+json")
            assert missing.json()["code"] == "current_password_required"
            wrong = await _put(
                client, user["id"], {"version": 1, **change, "current_password": "not it at all"}, me
            )
            assert wrong.status_code == 403, wrong.text
            assert wrong.json()["code"] == "current_password_wrong"
            assert "not it at all" not in wrong.text
        # Nothing was written by any of them.
        assert (await client.get(f"/users/{user['id']}", headers=me)).json() == user
        assert (await login(client, user["username"])).status_code == 200
        # A profile change needs no password; a right one lets the password change through.
        bio = await _put(client, user["id"], {"version": 1, "profile": {"bio": "hi"}}, me)
        assert bio.status_code == 200, bio.text
        right = await _put(
            client, user["id"], {"version": 2, "password": NEW_PASSWORD, "current_password": PASSWORD}, me
        )
        assert right.status_code == 200, right.text
        assert (await login(client, user["username"], NEW_PASSWORD)).status_code == 200
        assert (await login(client, user["username"])).status_code == 401


async def test_an_admin_resets_another_user_without_their_password_but_not_their_own(
    users_client: UsersClientFactory,
) -> None:
    async with users_client() as client:
        user = await register(client)
        admin_id = str(uuid.uuid4())
        reset = await _put(client, user["id"], {"version": 1, "password": NEW_PASSWORD}, as_admin(admin_id))
        assert reset.status_code == 200, reset.text
        assert (await login(client, user["username"], NEW_PASSWORD)).status_code == 200
        # The same admin changing their own account proves it like anyone (here: the account is
        # `user`'s, acting as an admin whose id it is).
        own = await _put(client, user["id"], {"version": 2, "email": "x@example.com"}, as_admin(user["id"]))
        assert own.status_code == 422
        assert own.json()["code"] == "current_password_required"


async def test_password_role_change_and_deletion_bump_the_token_version(
    users_client: UsersClientFactory,
) -> None:
    async with users_client() as client:
        user = await register(client)
        me = as_customer(user["id"])
        token = (await login(client, user["username"])).json()["access_token"]
        assert jwt.decode(token, options={"verify_signature": False})["ver"] == 0
        assert await _token_version(client, user["id"]) == {
            "user_id": user["id"],
            "token_version": 0,
            "active": True,
        }
        # Profile and email changes keep earlier tokens valid.
        await _put(client, user["id"], {"version": 1, "profile": {"bio": "x"}}, me)
        await _put(
            client, user["id"], {"version": 2, "email": "e2@example.com", "current_password": PASSWORD}, me
        )
        assert (await _token_version(client, user["id"]))["token_version"] == 0
        await _put(
            client, user["id"], {"version": 3, "password": NEW_PASSWORD, "current_password": PASSWORD}, me
        )
        assert (await _token_version(client, user["id"]))["token_version"] == 1
        fresh = (await login(client, user["username"], NEW_PASSWORD)).json()["access_token"]
        assert jwt.decode(fresh, options={"verify_signature": False})["ver"] == 1
        await _put(client, user["id"], {"version": 4, "role": "admin"}, as_admin())
        assert (await _token_version(client, user["id"]))["token_version"] == 2
        assert (await client.delete(f"/users/{user['id']}", headers=me)).status_code == 204
        assert await _token_version(client, user["id"]) == {
            "user_id": user["id"],
            "token_version": 3,
            "active": False,
        }
        # Internal only, and an unknown id is a 404.
        path = f"/internal/users/{user['id']}/token-version"
        assert (await client.get(path)).status_code == 401
        assert (await client.get(path, headers=as_admin())).status_code == 403
        unknown = await client.get(f"/internal/users/{uuid.uuid4()}/token-version", headers=as_service())
        assert unknown.status_code == 404


async def test_with_nats_configured_and_away_a_revoking_change_is_refused_and_nothing_written(
    users_client: UsersClientFactory,
) -> None:
    nowhere = f"nats://127.0.0.1:{free_port()}"
    async with users_client(nats_url=nowhere) as client:
        user = await register(client)
        me = as_customer(user["id"])
        body = {"version": 1, "password": NEW_PASSWORD, "current_password": PASSWORD}
        refused = await _put(client, user["id"], body, me)
        assert refused.status_code == 503, refused.text
        assert refused.json()["code"] == "revocation_unavailable"
        assert (await client.delete(f"/users/{user['id']}", headers=me)).status_code == 503
        assert (await client.get(f"/users/{user['id']}", headers=me)).json() == user
        assert (await login(client, user["username"])).status_code == 200
        # A change that revokes nothing does not need NATS.
        assert (
            await _put(client, user["id"], {"version": 1, "profile": {"bio": "b"}}, me)
        ).status_code == 200


async def test_nats_coming_up_after_the_service_lets_revoking_changes_through(
    users_client: UsersClientFactory, tmp_path: Path
) -> None:
    nats = NatsServer(tmp_path / "nats")  # not started yet
    async with users_client(nats_url=nats.url) as client:
        user = await register(client)
        me = as_customer(user["id"])
        body = {"version": 1, "password": NEW_PASSWORD, "current_password": PASSWORD}
        assert (await _put(client, user["id"], body, me)).status_code == 503
        nats.start()
        try:
            deadline = time.monotonic() + 20
            while (changed := await _put(client, user["id"], body, me)).status_code == 503:
                assert time.monotonic() < deadline, "the users service never connected to NATS"
                await asyncio.sleep(0.2)
            assert changed.status_code == 200, changed.text
            assert (await _token_version(client, user["id"]))["token_version"] == 1
        finally:
            nats.stop()


# ---- per-account login throttling


def _client_from(client: httpx.AsyncClient, address: str) -> httpx.AsyncClient:
    """Another client of the same app, seen as coming from `address`."""
    transport = httpx.ASGITransport(app=client.app, client=(address, 40000))  # type: ignore[attr-defined]
    return httpx.AsyncClient(transport=transport, base_url="http://users")


async def test_failed_logins_from_several_addresses_lock_only_that_account(
    users_client: UsersClientFactory,
) -> None:
    async with users_client(login_failure_limit="4/minute") as client:
        victim = await register(client)
        bystander = await register(client)
        addresses = [f"198.51.100.{n}" for n in range(1, 5)]
        answers = []
        for n, address in enumerate(addresses * 2):
            async with _client_from(client, address) as other:
                # Email and username of one account draw on one budget.
                name = victim["email"] if n % 2 else victim["username"]
                answers.append(await login(other, name, f"wrong guess {n}"))
        assert [a.status_code for a in answers] == [401] * 4 + [429] * 4
        refused = answers[-1]
        assert refused.headers["content-type"].startswith("application/problem+json")
        assert refused.json()["code"] == "too_many_attempts"
        assert 1 <= int(refused.headers["Retry-After"]) <= 60
        # The right password is refused too while the budget is spent: a 200 would confirm a guess.
        assert (await login(client, victim["username"])).status_code == 429
        # Another account is not affected, from any of those addresses.
        async with _client_from(client, addresses[0]) as other:
            assert (await login(other, bystander["username"])).status_code == 200


async def test_a_right_password_gives_the_budget_back_and_unknown_logins_are_throttled_alike(
    users_client: UsersClientFactory,
) -> None:
    async with users_client(login_failure_limit="3/minute") as client:
        user = await register(client)
        for _ in range(2):
            assert (await login(client, user["username"], "wrong wrong")).status_code == 401
        assert (await login(client, user["username"])).status_code == 200
        for _ in range(3):
            assert (await login(client, user["username"], "wrong wrong")).status_code == 401
        assert (await login(client, user["username"], "wrong wrong")).status_code == 429
        # An unknown login answers exactly as a known one would: no hint of which accounts exist.
        unknown = [(await login(client, "nobody_here", "guess")).status_code for _ in range(4)]
        assert unknown == [401, 401, 401, 429]


async def test_wrong_current_passwords_draw_on_the_login_budget(users_client: UsersClientFactory) -> None:
    async with users_client(login_failure_limit="3/minute") as client:
        user = await register(client)
        me = as_customer(user["id"])
        body = {"version": 1, "password": NEW_PASSWORD, "current_password": "a wrong one"}
        codes = [(await _put(client, user["id"], body, me)).status_code for _ in range(4)]
        assert codes == [403, 403, 403, 429]
        assert (await login(client, user["username"])).status_code == 429


@pytest.fixture(scope="module")
def redis_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    binary = shutil.which("redis-server")
    if binary is None:
        pytest.skip("redis-server is not installed")
    port = free_port()
    directory = tmp_path_factory.mktemp("redis")
    argv = [binary, "--port", str(port), "--save", "", "--appendonly", "no", "--dir", str(directory)]
    process = ManagedProcess("redis", argv, directory / "redis.log", ready=lambda: tcp_open(port))
    process.start(timeout=20)
    yield f"redis://127.0.0.1:{port}/0"
    process.stop()


@pytest.mark.parametrize("backend", ["sqlite"], indirect=True)
async def test_replicas_share_the_budget_through_redis(
    users_client: UsersClientFactory, redis_url: str, fresh_database: Any
) -> None:
    database = await fresh_database("users")
    settings = {"login_failure_limit": "4/minute", "redis_url": redis_url, "database_url": database}
    async with users_client(**settings) as replica_a, users_client(**settings) as replica_b:
        user = await register(replica_a)
        codes = [
            (await login(replica_a if n % 2 else replica_b, user["username"], "wrong")).status_code
            for n in range(5)
        ]
        assert codes == [401] * 4 + [429]


def _sample(name: str) -> float:
    return REGISTRY.get_sample_value(name) or 0.0


async def test_with_redis_away_logins_stay_throttled_per_process_and_the_outage_is_logged(
    users_client: UsersClientFactory,
) -> None:
    away = f"redis://127.0.0.1:{free_port()}/0"  # nothing listens there
    fallbacks = _sample("users_login_throttle_fallbacks_total")
    async with users_client(login_failure_limit="3/minute", redis_url=away) as client:
        user = await register(client)
        with capture_logs() as logs:
            codes = [(await login(client, user["username"], "wrong")).status_code for _ in range(4)]
            assert (await login(client, user["username"])).status_code == 429
        assert codes == [401, 401, 401, 429]  # neither open nor closed: counted here instead
        metrics = (await client.get("/metrics")).text
    down = [entry for entry in logs if entry["event"] == "login_throttle_storage_down"]
    assert len(down) == 1 and down[0]["log_level"] == "warning"
    assert "users_login_throttle_storage_available 0.0" in metrics
    assert _sample("users_login_throttle_fallbacks_total") - fallbacks == 5


# ---- the `ver` claim, without any app


@pytest.fixture(scope="module")
def issuer() -> TokenIssuer:
    return TokenIssuer(rsa.generate_private_key(public_exponent=65537, key_size=2048), ttl_seconds=900)


def test_the_token_version_travels_in_the_ver_claim(issuer: TokenIssuer) -> None:
    claims = verify_token(issuer.issue(uuid.uuid4(), "customer", token_version=7).access_token, issuer.jwks())
    assert claims.token_version == 7
    # Without one (a token from before versions, or minted with the key): None, which the gateway lets by.
    assert (
        verify_token(issuer.issue(uuid.uuid4(), "customer").access_token, issuer.jwks()).token_version is None
    )


@pytest.mark.parametrize("version", [-1, "3", True, 1.5, [1]])
def test_a_malformed_ver_claim_is_refused(issuer: TokenIssuer, version: object) -> None:
    now = int(time.time())
    claims: dict[str, object] = {"sub": str(uuid.uuid4()), "role": "customer", "iss": "ordersaga"}
    claims |= {"aud": "ordersaga-api", "iat": now, "exp": now + 900, "ver": version}
    token = jwt.encode(claims, issuer._private_key, algorithm="RS256", headers={"kid": issuer.kid})
    with pytest.raises(InvalidToken):
        verify_token(token, issuer.jwks())
