"""Who the caller is: the RS256 access token, checked against the users service's JWKS.

The key set is cached. A token whose `kid` is not in the cache triggers a refetch (a rotated key),
at most once per `jwks_min_refresh_seconds`, so a flood of tokens with made-up key ids cannot turn
into a flood of JWKS requests. Verification itself is `services.users.tokens.verify_token`, the one
place where issuer, audience, algorithm and claims are checked.

Verified tokens are remembered until they expire, because checking an RS256 signature costs about
0.18 ms against 3 µs for the lookup (benchmarks/token_verification.py), a fifth of what the gateway
spends on a request, and a client sends the same token with every call. A remembered token still
needs its key: once the key leaves the users service's key set, its tokens are refused like any
other.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import httpx
import jwt
import structlog
from cachetools import TLRUCache

from services.users.tokens import Claims, InvalidToken, verify_token

log = structlog.get_logger(__name__)

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
        self._url = users_url.rstrip("/") + JWKS_PATH
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
                response = await self._client.get(self._url, timeout=5.0)
                response.raise_for_status()
                document = response.json()
                key_set = jwt.PyJWKSet.from_dict(document)
            except (httpx.HTTPError, ValueError, jwt.PyJWTError) as exc:
                log.warning("jwks_fetch_failed", url=self._url, error=str(exc))
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


def bearer_token(authorization: str | None) -> str | None:
    """The token of an `Authorization: Bearer ...` header; "" for another or malformed scheme."""
    if authorization is None:
        return None
    scheme, _, token = authorization.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        return ""
    return token.strip()
