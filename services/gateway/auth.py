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

import httpx
import nats
import nats.errors
import structlog
from cachetools import LRUCache, TTLCache
from nats.aio.client import Client as NatsClient
from nats.aio.msg import Msg

from services.kit.events import close_connection_task
from services.kit.identity import identity_headers
from services.kit.tokens import (
    REVOKED_SUBJECT,
    Claims,
    InvalidToken,
)
from services.kit.transport import Addresses, first_reachable

log = structlog.get_logger(__name__)


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
        self._users = Addresses.parse(users_url)  # replicas: spread, a refused one skipped
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
            path = _VERSION_PATH.format(user_id=user_id)
            answer = await first_reachable(
                self._users,
                lambda base: self._client.get(base + path, headers=self._headers, timeout=5.0),
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
