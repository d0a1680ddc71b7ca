"""Telling the gateway at once that a user's tokens were revoked (core NATS, no JetStream).

A password change, a role change and a deletion bump the user's token version. The gateway keeps
users' current versions in memory only while it is subscribed to `REVOKED_SUBJECT`; this module
publishes the user id there twice: before the change is committed, flushed to the server, so the
gateway has dropped its entry (and stops remembering that user's version for a few seconds) before
the change can be seen; and again after the commit, in case the gateway fetched in between.

With `NATS_URL` set, a change that revokes tokens is refused (503 `revocation_unavailable`,
nothing written) while the announcement cannot be delivered to the server: the gateway may still
be subscribed and trusting what it remembers. Without `NATS_URL` nothing is published, and a
gateway without NATS asks on every request.
"""

from __future__ import annotations

import asyncio
import uuid

import nats
import structlog
from nats.aio.client import Client as NatsClient
from prometheus_client import Counter

from services.kit.errors import Problem
from services.kit.events import close_connection_task
from services.kit.tokens import REVOKED_SUBJECT

FLUSH_TIMEOUT_SECONDS = 1

log = structlog.get_logger(__name__)

ANNOUNCE_FAILURES = Counter(
    "users_token_revocation_announce_failures_total",
    "Token revocations that could not be announced on NATS.",
    ["phase"],
)


class Revocations:
    def __init__(self, nats_url: str) -> None:
        self._url = nats_url
        self._nc: NatsClient | None = None
        self._task: asyncio.Task[None] | None = None

    @property
    def enabled(self) -> bool:
        return bool(self._url)

    async def start(self) -> None:
        if self._url:
            # Connected in the background: a NATS that is down must not stop the service starting.
            self._task = asyncio.create_task(self._connect(), name="token-revocations-connect")

    async def _connect(self) -> None:
        async def error(exc: Exception) -> None:
            # Every failed (re)connect attempt lands here; the outage itself is logged once below.
            log.debug("token_revocations_nats_error", error=f"{type(exc).__name__}: {exc}")

        async def disconnected() -> None:
            log.warning("token_revocations_nats_disconnected")

        async def reconnected() -> None:
            log.info("token_revocations_nats_reconnected")

        # The first connect keeps trying too, until a server answers (the task is cancellable).
        self._nc = await nats.connect(
            servers=[u.strip() for u in self._url.split(",") if u.strip()],
            name="users-token-revocations",
            connect_timeout=2,
            reconnect_time_wait=0.5,
            max_reconnect_attempts=-1,
            allow_reconnect=True,
            error_cb=error,
            disconnected_cb=disconnected,
            reconnected_cb=reconnected,
        )

    async def aclose(self) -> None:
        await close_connection_task(self._task, self._nc)

    async def before_commit(self, user_id: uuid.UUID) -> None:
        """Announce a revocation about to be committed; 503 if it does not reach the server."""
        if not self._url:
            return
        try:
            await self._publish(user_id)
        except Exception as exc:
            ANNOUNCE_FAILURES.labels("before_commit").inc()
            error = f"{type(exc).__name__}: {exc}"
            log.warning("token_revocation_unannounced", user_id=str(user_id), error=error)
            raise Problem(
                503,
                "revocation_unavailable",
                "Tokens cannot be revoked right now, so nothing was changed; try again shortly.",
                headers={"Retry-After": "2"},
            ) from None

    async def after_commit(self, user_id: uuid.UUID) -> None:
        """Announce it again once committed; a failure is only logged (the first one got through)."""
        if not self._url:
            return
        try:
            await self._publish(user_id)
        except Exception as exc:
            ANNOUNCE_FAILURES.labels("after_commit").inc()
            log.warning("token_revocation_reannounce_failed", user_id=str(user_id), error=str(exc))

    async def _publish(self, user_id: uuid.UUID) -> None:
        nc = self._nc
        if nc is None or not nc.is_connected:
            raise ConnectionError("not connected to NATS")
        await nc.publish(REVOKED_SUBJECT, str(user_id).encode())
        await nc.flush(timeout=FLUSH_TIMEOUT_SECONDS)
