"""Access tokens as every service checks them: the claims, `verify_token`, and a cached JWKS.

The users service signs and issues (services/users/tokens.py) and serves its public keys at
`JWKS_PATH`; the gateway verifies with `JwksCache`. Both sides take issuer, audience, algorithm and
required claims from here, so a token is checked the same way everywhere and no service imports
another for it.

A token carries `ver`, its user's token version when it was issued. The signature cannot say
whether the user has since changed their password or role or been deleted; the gateway compares
`ver` with the users service's current value for that (services/gateway/auth.py), and drops what
it remembers when the users service announces a change on `REVOKED_SUBJECT`.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from dataclasses import dataclass
from typing import Any, Literal

import httpx
import jwt
import structlog
from cachetools import TLRUCache

from services.kit.transport import Addresses, first_reachable

ISSUER = "ordersaga"
AUDIENCE = "ordersaga-api"
ALGORITHM = "RS256"

TokenRole = Literal["customer", "admin"]
TOKEN_ROLES: tuple[TokenRole, ...] = ("customer", "admin")
REQUIRED_CLAIMS = ["sub", "role", "iss", "aud", "iat", "exp"]

# NATS subject on which the users service announces a user whose tokens changed (core NATS).
REVOKED_SUBJECT = "ordersaga.internal.tokens-revoked"

log = structlog.get_logger(__name__)


class InvalidToken(Exception):
    """The token is malformed, expired, signed by an unknown key, or carries unexpected claims."""


@dataclass(frozen=True)
class Claims:
    user_id: uuid.UUID
    role: TokenRole
    issued_at: int
    expires_at: int
    # None for a token without `ver`: issued before token versions existed, or minted directly with
    # the signing key (which can put any `ver` in a token anyway).
    token_version: int | None = None


def verify_token(token: str, jwks: dict[str, Any] | jwt.PyJWKSet, *, leeway_seconds: int = 30) -> Claims:
    """Check signature (key chosen by `kid`), algorithm, issuer, audience, expiry and claim shapes."""
    try:
        key_set = jwks if isinstance(jwks, jwt.PyJWKSet) else jwt.PyJWKSet.from_dict(jwks)
        header = jwt.get_unverified_header(token)
        kid = header.get("kid")
        if header.get("alg") != ALGORITHM or not isinstance(kid, str):
            raise InvalidToken("unexpected token header")
        try:
            key = key_set[kid]
        except KeyError:
            raise InvalidToken("unknown signing key") from None
        payload = jwt.decode(
            token,
            key.key,
            algorithms=[ALGORITHM],
            audience=AUDIENCE,
            issuer=ISSUER,
            leeway=leeway_seconds,
            options={"require": REQUIRED_CLAIMS},
        )
    except jwt.PyJWTError as exc:
        raise InvalidToken(str(exc)) from exc
    role = payload["role"]
    if role not in TOKEN_ROLES:
        raise InvalidToken("unexpected role")
    try:
        user_id = uuid.UUID(str(payload["sub"]))
    except ValueError:
        raise InvalidToken("the subject is not a user id") from None
    version = payload.get("ver")
    # bool is an int to Python, not a version.
    if version is not None and (type(version) is not int or version < 0):
        raise InvalidToken("unexpected token version")
    return Claims(
        user_id=user_id,
        role=role,
        issued_at=int(payload["iat"]),
        expires_at=int(payload["exp"]),
        token_version=version,
    )


JWKS_PATH = "/.well-known/jwks.json"


class JwksUnavailable(Exception):
    """The users service could not be asked for its keys and none are cached."""


class JwksCache:
    def __init__(
        self,
        client: httpx.AsyncClient,
        users_url: str,
        *,
        max_age: float,
        min_refresh: float,
        verified_tokens: int = 10_000,
    ) -> None:
        self._client = client
        # One address, or several comma-separated (replicas): spread, and a refused one skipped.
        self._users = Addresses.parse(users_url)
        self._max_age = max_age
        self._min_refresh = min_refresh
        self._document: dict[str, Any] | None = None
        self._key_set: jwt.PyJWKSet | None = None
        self._kids: frozenset[str] = frozenset()
        self._fetched_at = 0.0
        self._last_forced = float("-inf")
        self._lock = asyncio.Lock()
        # token → (claims, kid), each kept until the token's own expiry, the least recent dropped first.
        self._verified: TLRUCache[str, tuple[Claims, str]] | None = (
            TLRUCache(verified_tokens, ttu=lambda _, entry, __: entry[0].expires_at, timer=time.time)
            if verified_tokens > 0
            else None
        )

    @property
    def document(self) -> dict[str, Any] | None:
        return self._document

    async def _refresh(self, *, force: bool) -> None:
        async with self._lock:
            now = time.monotonic()
            # Another request may have refreshed while this one waited for the lock.
            if not force and self._document is not None and now - self._fetched_at < self._max_age:
                return
            if force:
                # Only refetches for unknown key ids are rate-limited: those are what a caller controls.
                if now - self._last_forced < self._min_refresh and self._document is not None:
                    return
                self._last_forced = now
            try:
                response = await first_reachable(
                    self._users, lambda base: self._client.get(base + JWKS_PATH, timeout=5.0)
                )
                response.raise_for_status()
                document = response.json()
                key_set = jwt.PyJWKSet.from_dict(document)
            except (httpx.HTTPError, ValueError, jwt.PyJWTError) as exc:
                log.warning("jwks_fetch_failed", urls=list(self._users.urls), error=str(exc))
                if self._document is None:
                    raise JwksUnavailable(str(exc)) from exc
                return  # keep serving the keys we have
            self._document = document
            self._key_set = key_set
            self._kids = frozenset(str(key.get("kid")) for key in document.get("keys", []))
            self._fetched_at = time.monotonic()
            log.info("jwks_refreshed", kids=sorted(self._kids))

    async def get(self) -> dict[str, Any]:
        if self._document is None or time.monotonic() - self._fetched_at >= self._max_age:
            await self._refresh(force=False)
        assert self._document is not None
        return self._document

    async def key_set_for(self, kid: str) -> jwt.PyJWKSet:
        await self.get()
        if kid not in self._kids:
            await self._refresh(force=True)  # a rotated key; rate-limited inside
        assert self._key_set is not None
        return self._key_set

    async def verify(self, token: str) -> Claims:
        remembered = self._verified.get(token) if self._verified is not None else None
        if remembered is not None:
            await self.get()  # the key set is still refreshed on schedule
            if remembered[1] in self._kids:
                return remembered[0]
        try:
            kid = jwt.get_unverified_header(token).get("kid")
        except jwt.PyJWTError as exc:
            raise InvalidToken(str(exc)) from exc
        if not isinstance(kid, str):
            raise InvalidToken("the token has no key id")
        claims = verify_token(token, await self.key_set_for(kid))
        if self._verified is not None:
            self._verified[token] = (claims, kid)
        return claims
