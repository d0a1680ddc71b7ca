"""services/kit/tokens.py: a token the users service issued verifies with the kit alone, and the
JWKS cache goes on to the next users replica when one refuses the connection."""

from __future__ import annotations

import uuid

import httpx
import pytest
from cryptography.hazmat.primitives.asymmetric import rsa

from services.kit.tokens import JWKS_PATH, InvalidToken, JwksCache, JwksUnavailable
from services.users.tokens import TokenIssuer


@pytest.fixture(scope="module")
def issuer() -> TokenIssuer:
    return TokenIssuer(rsa.generate_private_key(public_exponent=65537, key_size=2048), ttl_seconds=600)


def users_replicas(issuer: TokenIssuer, down: set[str], asked: list[str]) -> httpx.AsyncClient:
    def handler(request: httpx.Request) -> httpx.Response:
        asked.append(request.url.host)
        if request.url.host in down:
            raise httpx.ConnectError("connection refused", request=request)
        assert request.url.path == JWKS_PATH
        return httpx.Response(200, json=issuer.jwks())

    return httpx.AsyncClient(transport=httpx.MockTransport(handler))


async def test_a_refused_users_replica_is_passed_over_for_the_next(issuer: TokenIssuer) -> None:
    user = uuid.uuid4()
    token = issuer.issue(user, "customer", token_version=3).access_token
    asked: list[str] = []
    async with users_replicas(issuer, {"users-a"}, asked) as client:
        cache = JwksCache(client, "http://users-a,http://users-b", max_age=300, min_refresh=5)
        claims = await cache.verify(token)
    assert (claims.user_id, claims.role, claims.token_version) == (user, "customer", 3)
    assert asked[-1] == "users-b"


async def test_no_users_replica_answering_and_no_keys_cached_is_unavailable(issuer: TokenIssuer) -> None:
    token = issuer.issue(uuid.uuid4(), "admin").access_token
    async with users_replicas(issuer, {"users-a", "users-b"}, []) as client:
        cache = JwksCache(client, "http://users-a,http://users-b", max_age=300, min_refresh=5)
        with pytest.raises(JwksUnavailable):
            await cache.verify(token)


async def test_a_token_of_another_key_is_refused(issuer: TokenIssuer) -> None:
    stranger = TokenIssuer(rsa.generate_private_key(public_exponent=65537, key_size=2048), 600)
    token = stranger.issue(uuid.uuid4(), "admin").access_token
    async with users_replicas(issuer, set(), []) as client:
        cache = JwksCache(client, "http://users", max_age=300, min_refresh=5)
        with pytest.raises(InvalidToken):
            await cache.verify(token)
