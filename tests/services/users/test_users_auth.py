"""POST /auth/token, the JWKS, the signing key's persistence, and `tokens.verify_token`."""

from __future__ import annotations

import stat
import time
import uuid

import httpx
import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import rsa

from services.users.tokens import (
    KEY_FILE_NAME,
    InvalidToken,
    TokenIssuer,
    jwk_thumbprint,
    load_private_key,
    verify_token,
)
from tests.services.users.conftest import (
    PASSWORD,
    UsersClientFactory,
    login,
    register,
    stored_users,
)
from tests.support.identity import as_customer

# RFC 7638, section 3.1: the example key and its thumbprint.
RFC7638_N = (
    "0vx7agoebGcQSuuPiLJXZptN9nndrQmbXEps2aiAFbWhM78LhWx4cbbfAAtVT86zwu1RK7aPFFxuhDR1L6tSoc_BJECPebWKRXjBZCiFV"
    "4n3oknjhMstn64tZ_2W-5JsGY4Hc5n9yBXArwl93lqt7_RN5w6Cf0h4QyQ5v-65YGjQR0_FDW2QvzqY368QQMicAtaSqzs8KJZgnYb9c7d0"
    "zgdAZHzu6qMQvRL5hajrn1n91CbOpbISD08qNLyrdkt-bFTWhAI4vMQFh6WeZu0fM4lFd2NcRwr3XPksINHaQ-G_xBniIqbw0Ls1jF44-csF"
    "Cur-kEgU8awapJzKnqDKgw"
)
RFC7638_THUMBPRINT = "NzbLsXh8uDCcd-6MNwXF4W_7noWXFZAfHkxZsRGC9Xs"


async def _jwks(client: httpx.AsyncClient) -> dict[str, object]:
    response = await client.get("/.well-known/jwks.json")
    assert response.status_code == 200
    body: dict[str, object] = response.json()
    return body


async def test_login_by_email_and_by_username(users_client: UsersClientFactory) -> None:
    async with users_client() as client:
        user = await register(client, email="Grace@Example.com", username="grace")
        for name in ("grace", "grace@example.com", "GRACE@EXAMPLE.COM"):
            response = await login(client, name)
            assert response.status_code == 200, (name, response.text)
            body = response.json()
            assert body["token_type"] == "bearer"
            assert body["expires_in"] == 900
            assert response.headers["cache-control"] == "no-store"
            claims = verify_token(body["access_token"], await _jwks(client))
            assert str(claims.user_id) == user["id"]
            assert claims.role == "customer"


async def test_token_verifies_with_pyjwt_against_the_jwks(users_client: UsersClientFactory) -> None:
    async with users_client(token_ttl_seconds=600) as client:
        user = await register(client)
        token = (await login(client, user["username"])).json()["access_token"]
        jwks = await _jwks(client)
        keys = jwks["keys"]
        assert isinstance(keys, list)
        assert len(keys) == 1
        assert {"kty", "n", "e", "kid", "alg", "use"} <= set(keys[0])
        assert (keys[0]["kty"], keys[0]["alg"], keys[0]["use"]) == ("RSA", "RS256", "sig")
        assert "d" not in keys[0]  # never the private part
        header = jwt.get_unverified_header(token)
        assert header["alg"] == "RS256"
        assert header["kid"] == keys[0]["kid"]
        public = jwt.PyJWKSet.from_dict(jwks)[header["kid"]]
        assert keys[0]["kid"] == jwk_thumbprint(public.key)
        claims = jwt.decode(
            token, public.key, algorithms=["RS256"], audience="ordersaga-api", issuer="ordersaga"
        )
        assert claims["sub"] == user["id"]
        assert claims["role"] == "customer"
        assert claims["exp"] - claims["iat"] == 600
        assert abs(claims["iat"] - time.time()) < 60
        with pytest.raises(jwt.InvalidAudienceError):
            jwt.decode(token, public.key, algorithms=["RS256"], audience="someone-else")


@pytest.mark.parametrize("password", ["wrong password!", PASSWORD + "x", PASSWORD.upper()])
async def test_wrong_password_is_401(users_client: UsersClientFactory, password: str) -> None:
    async with users_client() as client:
        user = await register(client)
        response = await login(client, user["email"], password)
        assert response.status_code == 401
        assert response.headers["www-authenticate"] == "Bearer"
        assert response.json()["code"] == "invalid_credentials"
        assert password not in response.text


async def test_unknown_user_is_401(users_client: UsersClientFactory) -> None:
    async with users_client() as client:
        for name in ("nobody", "nobody@example.com"):
            response = await login(client, name)
            assert response.status_code == 401
            assert response.json()["code"] == "invalid_credentials"
            assert response.headers["www-authenticate"] == "Bearer"


async def test_deleted_user_cannot_log_in(users_client: UsersClientFactory) -> None:
    async with users_client() as client:
        user = await register(client)
        assert (await login(client, user["username"])).status_code == 200
        deleted = await client.delete(f"/users/{user['id']}", headers=as_customer(user["id"]))
        assert deleted.status_code == 204
        for name in (user["username"], user["email"]):
            response = await login(client, name)
            assert response.status_code == 401
            assert response.json()["code"] == "invalid_credentials"


async def test_login_form_validation(users_client: UsersClientFactory) -> None:
    async with users_client() as client:
        user = await register(client)
        bad_forms = [
            {"username": user["username"]},
            {"password": PASSWORD},
            {"username": "", "password": PASSWORD},
            {"username": "u" * 321, "password": PASSWORD},
            {"username": user["username"], "password": "p" * 129},
            {"username": user["username"], "password": PASSWORD, "grant_type": "client_credentials"},
        ]
        for form in bad_forms:
            response = await client.post("/auth/token", data=form)
            assert response.status_code == 422, form
            assert PASSWORD not in response.text
        as_json = await client.post("/auth/token", json={"username": user["username"], "password": PASSWORD})
        assert as_json.status_code == 422
        with_grant = await client.post(
            "/auth/token", data={"username": user["username"], "password": PASSWORD, "grant_type": "password"}
        )
        assert with_grant.status_code == 200


async def test_login_rehashes_when_the_parameters_changed(users_client: UsersClientFactory) -> None:
    async with users_client(argon2_time_cost=1) as client:
        user = await register(client)
        database_url = client.app.state.db.url  # type: ignore[attr-defined]
        [before] = await stored_users(client)
    async with users_client(argon2_time_cost=2, database_url=database_url) as client:
        assert (await login(client, user["username"])).status_code == 200
        [after] = await stored_users(client)
        assert after.password_hash != before.password_hash
        assert "t=2" in after.password_hash
        assert after.version == before.version  # a rehash is not a change the user made
        assert (await login(client, user["username"])).status_code == 200
        assert (await login(client, user["username"], "wrong password")).status_code == 401


async def test_generated_key_persists_across_restarts(
    service_client: UsersClientFactory, tmp_path: object
) -> None:
    # No USERS_JWT_PRIVATE_KEY: both apps share the test's data dir, so the second finds the first's key.
    async with service_client("users", argon2_memory_cost_kib=64, argon2_parallelism=1) as first:
        user = await register(first)
        token = (await login(first, user["username"])).json()["access_token"]
        first_jwks = await _jwks(first)
        key_file = first.app.state.settings.data_dir / KEY_FILE_NAME  # type: ignore[attr-defined]
        assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
    async with service_client("users", argon2_memory_cost_kib=64, argon2_parallelism=1) as second:
        second_jwks = await _jwks(second)
    assert second_jwks == first_jwks
    assert str(verify_token(token, second_jwks).user_id) == user["id"]
    assert [path.name for path in key_file.parent.iterdir() if "jwt" in path.name] == [KEY_FILE_NAME]


async def test_configured_private_key_is_used(users_client: UsersClientFactory, signing_key_pem: str) -> None:
    async with users_client() as client:
        jwks = await _jwks(client)
        assert jwks["keys"][0]["kid"] == jwk_thumbprint(load_private_key(signing_key_pem).public_key())  # type: ignore[index]
        data_dir = client.app.state.settings.data_dir  # type: ignore[attr-defined]
        assert not (data_dir / KEY_FILE_NAME).exists()


# verify_token, without any app.


@pytest.fixture(scope="module")
def issuer() -> TokenIssuer:
    return TokenIssuer(rsa.generate_private_key(public_exponent=65537, key_size=2048), ttl_seconds=900)


def test_thumbprint_matches_rfc7638_example() -> None:
    n = int.from_bytes(jwt.utils.base64url_decode(RFC7638_N), "big")
    public = rsa.RSAPublicNumbers(e=65537, n=n).public_key()
    assert jwk_thumbprint(public) == RFC7638_THUMBPRINT


def test_verify_token_accepts_a_fresh_token(issuer: TokenIssuer) -> None:
    user_id = uuid.uuid4()
    claims = verify_token(issuer.issue(user_id, "admin").access_token, issuer.jwks())
    assert claims.user_id == user_id
    assert claims.role == "admin"
    assert claims.expires_at - claims.issued_at == 900


def test_verify_token_rejects_expired_tokens(issuer: TokenIssuer) -> None:
    stale = issuer.issue(uuid.uuid4(), "customer", now=int(time.time()) - 3600).access_token
    with pytest.raises(InvalidToken):
        verify_token(stale, issuer.jwks())


def test_verify_token_rejects_a_key_not_in_the_set(issuer: TokenIssuer) -> None:
    other = TokenIssuer(rsa.generate_private_key(public_exponent=65537, key_size=2048), ttl_seconds=900)
    with pytest.raises(InvalidToken):
        verify_token(other.issue(uuid.uuid4(), "customer").access_token, issuer.jwks())


def _forge(issuer: TokenIssuer, **changes: object) -> str:
    """A token signed by the right key with the right kid, but claims altered."""
    now = int(time.time())
    claims = {"sub": str(uuid.uuid4()), "role": "customer", "iss": "ordersaga", "aud": "ordersaga-api"}
    claims |= {"iat": now, "exp": now + 900}
    claims |= changes
    claims = {key: value for key, value in claims.items() if value is not None}
    return jwt.encode(claims, issuer._private_key, algorithm="RS256", headers={"kid": issuer.kid})


@pytest.mark.parametrize(
    "changes",
    [
        {"aud": "other-api"},
        {"iss": "someone-else"},
        {"role": "service"},
        {"role": "root"},
        {"sub": "not-a-uuid"},
        {"exp": None},
        {"sub": None},
        {"role": None},
    ],
)
def test_verify_token_rejects_wrong_claims(issuer: TokenIssuer, changes: dict[str, object]) -> None:
    with pytest.raises(InvalidToken):
        verify_token(_forge(issuer, **changes), issuer.jwks())


def test_verify_token_rejects_tampering_and_garbage(issuer: TokenIssuer) -> None:
    token = issuer.issue(uuid.uuid4(), "customer").access_token
    header, payload, signature = token.split(".")
    flipped = signature[:-2] + ("AA" if signature[-2:] != "AA" else "BB")
    unsigned = jwt.encode({"sub": str(uuid.uuid4()), "role": "admin"}, key=None, algorithm="none")
    hs256 = jwt.encode(
        {"sub": str(uuid.uuid4())},
        "secret-that-is-long-enough-for-hs256!",
        algorithm="HS256",
        headers={"kid": issuer.kid},
    )
    for bad in (f"{header}.{payload}.{flipped}", unsigned, hs256, "not.a.token", ""):
        with pytest.raises(InvalidToken):
            verify_token(bad, issuer.jwks())
    with pytest.raises(InvalidToken):
        verify_token(token, {"keys": []})
