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

A valid signature is not enough: a password change, a role change or a deletion revokes the user's
earlier tokens. `TokenVersions` checks a token's `ver` claim against the users service's current
value for that user, remembered only while the revocation announcements are subscribed to.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from typing import Any

import httpx
import jwt
import nats
import nats.errors
import structlog
from cachetools import LRUCache, TLRUCache, TTLCache
from nats.aio.client import Client as NatsClient
from nats.aio.msg import Msg

from services.kit.events import close_connection_task
from services.kit.identity import identity_headers
from services.users.revocations import REVOKED_SUBJECT
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


class TokenVersionUnavailable(Exception):
    """The users service could not say whether the user's tokens were revoked."""


_VERSION_PATH = "/internal/users/{user_id}/token-version"


class TokenVersions:
    """Each user's current token version, which a token's `ver` claim must equal.

    Remembered only while the subscription to the users service's revocation announcements is up:
    an announcement drops the user's entry, and for `QUIET_SECONDS` after it that user's version is
    asked for on every request (the first announcement comes before the change is committed, so a
    version fetched meanwhile may be the old one). Disconnected, or without `NATS_URL`, nothing is
    remembered, announcements may have been missed, and every request asks the users service:
    revocation is immediate either way, NATS only makes it cheap. An entry is asked for again after
    `max_age` seconds, so a connection that is dead but not yet noticed misleads only that long;
    if the users service cannot answer then, the entry is still used while subscribed (no change
    can have been committed unannounced), so a users outage does not stop its users' calls.
    """

    QUIET_SECONDS = 5.0

    def __init__(
        self,
        client: httpx.AsyncClient,
        users_url: str,
        internal_token: str,
        *,
        nats_url: str = "",
        cache_size: int = 10_000,
        max_age: float = 60.0,
    ) -> None:
        self._client = client
        self._url = users_url.rstrip("/") + _VERSION_PATH
        self._headers = identity_headers(internal_token, "service")
        self._nats_url = nats_url
        self._max_age = max_age
        # user → (version, active, fetched at): the least recently used dropped first.
        self._cache: LRUCache[uuid.UUID, tuple[int, bool, float]] | None = (
            LRUCache(cache_size) if cache_size > 0 and nats_url else None
        )
        self._quiet: TTLCache[uuid.UUID, bool] = TTLCache(
            100_000, ttl=self.QUIET_SECONDS, timer=time.monotonic
        )
        self._epoch = 0  # bumped by every announcement: a fetch that overlapped one is not remembered
        self._subscribed = False
        self._nc: NatsClient | None = None
        self._task: asyncio.Task[None] | None = None
        self.fetches = 0

    @property
    def trusted(self) -> bool:
        return self._subscribed and self._cache is not None

    async def start(self) -> None:
        if self._cache is not None:
            self._task = asyncio.create_task(self._subscribe(), name="token-revocations-subscribe")

    async def aclose(self) -> None:
        self._subscribed = False
        await close_connection_task(self._task, self._nc)

    def _forget_all(self, reason: str) -> None:
        self._epoch += 1
        if self._cache is not None:
            self._cache.clear()
        log.info("token_versions_forgotten", reason=reason)

    async def _subscribe(self) -> None:
        async def disconnected() -> None:
            self._subscribed = False
            self._forget_all("nats disconnected")

        async def reconnected() -> None:
            # Announcements sent while we were away are lost: start from nothing, then trust again.
            self._forget_all("nats reconnected")
            self._subscribed = True

        async def closed() -> None:
            self._subscribed = False
            self._forget_all("nats closed")

        async def error(exc: Exception) -> None:
            if isinstance(exc, nats.errors.SlowConsumerError):
                # The client dropped announcements it could not keep up with: any entry may be stale.
                self._forget_all("announcements dropped")
                return
            log.debug("token_revocations_nats_error", error=f"{type(exc).__name__}: {exc}")

        self._nc = await nats.connect(
            servers=[u.strip() for u in self._nats_url.split(",") if u.strip()],
            name="gateway-token-revocations",
            connect_timeout=2,
            reconnect_time_wait=0.5,
            max_reconnect_attempts=-1,
            allow_reconnect=True,
            # A dead connection is noticed within seconds, not the default minutes.
            ping_interval=2,
            max_outstanding_pings=2,
            disconnected_cb=disconnected,
            reconnected_cb=reconnected,
            closed_cb=closed,
            error_cb=error,
        )
        await self._nc.subscribe(REVOKED_SUBJECT, cb=self._revoked)
        await self._nc.flush()
        self._forget_all("nats subscribed")
        self._subscribed = True
        log.info("token_revocations_subscribed")

    async def _revoked(self, msg: Msg) -> None:
        try:
            user_id = uuid.UUID(msg.data.decode())
        except (UnicodeDecodeError, ValueError):
            log.warning("token_revocation_unreadable")
            self._forget_all("unreadable announcement")
            return
        self._epoch += 1
        self._quiet[user_id] = True
        if self._cache is not None:
            self._cache.pop(user_id, None)

    async def current(self, user_id: uuid.UUID) -> tuple[int, bool] | None:
        """(version, active) of the user, None for an unknown one."""
        remembered = self._cache.get(user_id) if self.trusted and self._cache is not None else None
        if remembered is not None and time.monotonic() - remembered[2] < self._max_age:
            return remembered[0], remembered[1]
        epoch = self._epoch
        try:
            found = await self._fetch(user_id)
        except TokenVersionUnavailable:
            # Still subscribed and not dropped by an announcement since: still the current version.
            if remembered is not None and self.trusted and self._cache is not None and user_id in self._cache:
                log.warning("token_version_stale_used", user_id=str(user_id))
                return remembered[0], remembered[1]
            raise
        if (
            found is not None
            and self.trusted
            and self._cache is not None
            and epoch == self._epoch
            and user_id not in self._quiet
        ):
            self._cache[user_id] = (*found, time.monotonic())
        return found

    async def _fetch(self, user_id: uuid.UUID) -> tuple[int, bool] | None:
        self.fetches += 1
        try:
            answer = await self._client.get(
                self._url.format(user_id=user_id), headers=self._headers, timeout=5.0
            )
        except httpx.HTTPError as exc:
            log.warning("token_version_fetch_failed", error=f"{type(exc).__name__}: {exc}")
            raise TokenVersionUnavailable(str(exc)) from exc
        if answer.status_code == 404:
            return None
        if answer.status_code != 200:
            log.warning("token_version_fetch_failed", status=answer.status_code)
            raise TokenVersionUnavailable(f"users service answered {answer.status_code}")
        try:
            body = answer.json()
            return int(body["token_version"]), bool(body["active"])
        except (ValueError, KeyError, TypeError) as exc:
            raise TokenVersionUnavailable("unreadable token version") from exc

    async def check(self, claims: Claims) -> None:
        """InvalidToken if the token's version is no longer its user's (revoked), or the user is gone.

        A token without `ver` is let through: only a token issued before versions existed (it
        expires within the token lifetime) or one minted with the signing key itself lacks it, and
        whoever holds that key can write any `ver` anyway.
        """
        if claims.token_version is None:
            return
        found = await self.current(claims.user_id)
        if found is None or not found[1]:
            raise InvalidToken("the user no longer exists")
        if found[0] != claims.token_version:
            raise InvalidToken("the token was revoked")
