"""The background sender: claims due notifications with a lease, delivers them, and retries with backoff.

Two sender replicas never send one notification twice while a send fits in the lease: a notification is
claimed by a conditional UPDATE that only one of them can win, and it is finished only by the holder of
that claim (its `claim_token`). If a sender dies mid-send, the lease expires and another one retries it,
so delivery is at least once in that rare case and exactly once otherwise.
"""

from __future__ import annotations

import asyncio
import random
import uuid
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager, suppress
from datetime import datetime, timedelta
from typing import Any

import structlog
from fastapi import FastAPI
from sqlalchemy import or_, update
from sqlmodel import col, select

from services.kit.app import LifespanHook
from services.kit.business import NOTIFICATION_DELIVERIES
from services.kit.db import Database
from services.kit.models import utcnow
from services.kit.outbox import add_event
from services.notifications.channels import Channel, OutboundMessage
from services.notifications.models import (
    MAX_LAST_ERROR,
    STATUS_FAILED,
    STATUS_QUEUED,
    STATUS_SENT,
    Notification,
)
from services.notifications.settings import Settings
from services.notifications.templates import render

log = structlog.get_logger(__name__)

DELIVERIES = NOTIFICATION_DELIVERIES  # by channel and status (sent, retry, failed)


def retry_delay(attempts: int, settings: Settings, rng: random.Random) -> float:
    """Exponential backoff after the `attempts`-th failure, capped, with equal jitter (half fixed)."""
    ceiling = min(
        settings.retry_max_seconds,
        settings.retry_base_seconds * settings.retry_factor ** max(attempts - 1, 0),
    )
    return rng.uniform(ceiling / 2, ceiling)


class Sender:
    def __init__(
        self,
        db: Database,
        settings: Settings,
        channels: Mapping[str, Channel],
        *,
        rng: random.Random | None = None,
    ) -> None:
        self.db = db
        self.settings = settings
        self.channels = dict(channels)
        self.rng = rng or random.Random()
        self._wake = asyncio.Event()

    def wake(self) -> None:
        """A notice was just accepted: look now instead of at the next poll."""
        self._wake.set()

    async def send_due_once(self, *, now: datetime | None = None) -> int:
        """Deliver what is due (at `now`, default the clock); returns how many notifications were claimed."""
        now = now or utcnow()
        claimed = 0
        for notification_id in await self._due_ids(now):
            token = await self._claim(notification_id, now)
            if token is None:
                continue  # another sender holds it
            claimed += 1
            await self._deliver(notification_id, token)
        return claimed

    async def run(self) -> None:
        """Poll forever (until cancelled), waking early when a notice is accepted."""
        while True:
            self._wake.clear()
            try:
                claimed = await self.send_due_once()
            except Exception:  # the database may be briefly away; keep the loop alive
                log.exception("sender_iteration_failed")
                claimed = 0
            if claimed >= self.settings.batch_size:
                continue  # probably more due right away
            with suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), timeout=self.settings.poll_interval_seconds)

    async def _due_ids(self, now: datetime) -> list[uuid.UUID]:
        query = (
            select(Notification.id)
            .where(Notification.status == STATUS_QUEUED, col(Notification.next_attempt_at) <= now)
            .where(or_(col(Notification.claimed_until).is_(None), col(Notification.claimed_until) <= now))
            .order_by(col(Notification.next_attempt_at))
            .limit(self.settings.batch_size)
        )
        async with self.db.session() as session, session.begin():
            return list((await session.exec(query)).all())

    async def _claim(self, notification_id: uuid.UUID, now: datetime) -> uuid.UUID | None:
        token = uuid.uuid4()
        lease = now + timedelta(seconds=self.settings.claim_lease_seconds)
        # The WHERE repeats the due condition: whoever updates first wins, the other matches no row.
        statement = (
            update(Notification)
            .where(col(Notification.id) == notification_id, col(Notification.status) == STATUS_QUEUED)
            .where(col(Notification.next_attempt_at) <= now)
            .where(or_(col(Notification.claimed_until).is_(None), col(Notification.claimed_until) <= now))
            .values(claimed_until=lease, claim_token=token)
        )
        async with self.db.session() as session, session.begin():
            result = await session.exec(statement)
            return token if result.rowcount == 1 else None

    async def _deliver(self, notification_id: uuid.UUID, token: uuid.UUID) -> None:
        async with self.db.session() as session:
            notification = await session.get(Notification, notification_id)
            await session.commit()
        if notification is None:
            return
        bound = log.bind(
            notification_id=str(notification.id),
            channel=notification.channel,
            template=notification.template,
            attempt=notification.attempts + 1,
        )
        try:
            message = self._message(notification)
            channel = self.channels[notification.channel]
            await channel.send(message)
        except Exception as exc:  # any adapter failure is a failed attempt, retried or final
            error = f"{type(exc).__name__}: {exc}"[:MAX_LAST_ERROR]
            await self._record_failure(notification, token, error, bound)
            return
        await self._record_sent(notification, token, bound)

    def _message(self, notification: Notification) -> OutboundMessage:
        order_id = str(notification.order_id) if notification.order_id else None
        rendered = render(notification.template, notification.data, order_id=order_id)
        return OutboundMessage(
            message_id=str(notification.id),
            channel=notification.channel,
            to=notification.recipient,
            subject=rendered.subject,
            body=rendered.body,
            template=notification.template,
            user_id=str(notification.user_id),
            order_id=order_id,
        )

    async def _record_sent(self, notification: Notification, token: uuid.UUID, bound: Any) -> None:
        sent_at = utcnow()
        values = {
            "status": STATUS_SENT,
            "sent_at": sent_at,
            "attempts": notification.attempts + 1,
            "last_error": None,
            "claimed_until": None,
            "claim_token": None,
        }
        if await self._finish(
            notification, token, values, "notification.sent", {"sent_at": sent_at.isoformat()}
        ):
            DELIVERIES.labels(notification.channel, "sent").inc()
            bound.info("notification_sent")

    async def _record_failure(
        self, notification: Notification, token: uuid.UUID, error: str, bound: Any
    ) -> None:
        attempts = notification.attempts + 1
        if attempts >= self.settings.max_attempts:
            values: dict[str, Any] = {
                "status": STATUS_FAILED,
                "attempts": attempts,
                "last_error": error,
                "claimed_until": None,
                "claim_token": None,
            }
            extra = {"attempts": attempts, "last_error": error}
            if await self._finish(notification, token, values, "notification.failed", extra):
                DELIVERIES.labels(notification.channel, "failed").inc()
                bound.warning("notification_failed", error=error)
            return
        delay = retry_delay(attempts, self.settings, self.rng)
        values = {
            "attempts": attempts,
            "last_error": error,
            "next_attempt_at": utcnow() + timedelta(seconds=delay),
            "claimed_until": None,
            "claim_token": None,
        }
        if await self._finish(notification, token, values, None, {}):
            DELIVERIES.labels(notification.channel, "retry").inc()
            bound.info("notification_retry_scheduled", error=error, delay_seconds=round(delay, 3))

    async def _finish(
        self,
        notification: Notification,
        token: uuid.UUID,
        values: dict[str, Any],
        event_type: str | None,
        event_extra: dict[str, Any],
    ) -> bool:
        """Apply the outcome only if the claim is still ours, with its event in the same transaction."""
        statement = (
            update(Notification)
            .where(col(Notification.id) == notification.id, col(Notification.claim_token) == token)
            .values(**values)
        )
        async with self.db.session() as session, session.begin():
            result = await session.exec(statement)
            if result.rowcount != 1:
                log.warning("notification_lease_lost", notification_id=str(notification.id))
                return False
            if event_type is not None:
                add_event(
                    session,
                    source="notifications",
                    type=event_type,
                    subject=str(notification.id),
                    data={
                        "notification_id": str(notification.id),
                        "user_id": str(notification.user_id),
                        "channel": notification.channel,
                        "template": notification.template,
                        "order_id": str(notification.order_id) if notification.order_id else None,
                        **event_extra,
                    },
                )
        return True


def sender_hook(sender: Sender, settings: Settings) -> LifespanHook:
    """The lifespan hook running the sender loop while the app lives, cancelled cleanly on shutdown."""

    @asynccontextmanager
    async def hook(_: FastAPI) -> AsyncIterator[None]:
        if not settings.sender_enabled:
            yield
            return
        task = asyncio.create_task(sender.run(), name="notifications-sender")
        try:
            yield
        finally:
            task.cancel()
            with suppress(asyncio.CancelledError):
                await task

    return hook
