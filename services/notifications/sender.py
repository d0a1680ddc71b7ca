"""The background sender: claims due notifications with a lease, delivers them, and retries with backoff.

Delivery is at most once, even across crashes:
- A notification is claimed by a conditional UPDATE that only one sender can win (on PostgreSQL, by
  locking the next due row `FOR UPDATE SKIP LOCKED` and leasing it in that transaction, so replicas
  take different rows), and it is finished only by the holder of that claim (its `claim_token`).
- Just before handing the message to the channel, the holder records `send_started_at` under the
  same claim (if its claim is gone, it does not send); a notice whose message renders is claimed and
  marked in one UPDATE when it comes from SQLite's due query or was just accepted by this process
  (handed over by the route as written, so it is not read first). The outcome update clears it.
- A row found with `send_started_at` set and its lease expired had a send whose result was never
  recorded: its sender died (or was cancelled) between starting the send and recording it. Whether
  the provider took the message cannot be known, so it is not re-sent: it becomes `unknown`, final,
  with the event `notification.unknown`. Likewise when the channel itself raises
  `DeliveryOutcomeUnknown` (a connection lost while the SMTP server answered DATA).
- Any other exception from the channel means "not delivered": retried with backoff, `failed` after
  `max_attempts`.

So a crash in the window between the send and its record (or an SMTP answer lost after DATA) gives
`unknown`, never a duplicate; otherwise a notification ends `sent` or `failed`. A late outcome of a
sender whose lease was taken over is dropped (the log says `notification_lease_lost`). On shutdown
the sender finishes the delivery in hand (up to `shutdown_grace_seconds`), so that a restart does not
leave `unknown` rows behind.
"""

from __future__ import annotations

import asyncio
import random
import uuid
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager, suppress
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import structlog
from fastapi import FastAPI
from sqlalchemy import ColumnElement, bindparam, or_, select, update

from services.kit.app import LifespanHook
from services.kit.business import NOTIFICATION_DELIVERIES
from services.kit.db import Database
from services.kit.models import utcnow
from services.kit.outbox import add_event
from services.notifications.channels import Channel, DeliveryOutcomeUnknown, OutboundMessage
from services.notifications.models import (
    MAX_LAST_ERROR,
    STATUS_FAILED,
    STATUS_QUEUED,
    STATUS_SENT,
    STATUS_UNKNOWN,
    Notification,
)
from services.notifications.settings import Settings
from services.notifications.templates import render

log = structlog.get_logger(__name__)

DELIVERIES = NOTIFICATION_DELIVERIES  # by channel and status (sent, retry, failed, unknown)


@dataclass(frozen=True, slots=True)
class Job:
    """What the sender needs of a notification to deliver it, as read (or as written by the route)."""

    id: uuid.UUID
    user_id: uuid.UUID
    channel: str
    recipient: str
    template: str
    data: dict[str, Any]
    order_id: uuid.UUID | None
    attempts: int
    send_started_at: datetime | None

    @classmethod
    def of(cls, row: Mapping[Any, Any]) -> Job:
        return cls(**{name: row[name] for name in _JOB_FIELDS})


_JOB_FIELDS = tuple(Job.__dataclass_fields__)


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
        self._stopping = False
        # When the retries this sender scheduled fall due: it sleeps until the first of them (or a
        # wake, or the safety poll) instead of looking on a clock.
        self._retries_due: list[datetime] = []
        # Notices this process just accepted, handed over as written: the loop claims them by id
        # without first reading what is due. A full pass (the due query) still runs for everything
        # else: on a wake without a notice in hand, when a retry falls due, and once per poll interval.
        self._accepted: list[Job] = []
        self._full_pass_wanted = True
        self._next_full_pass = utcnow()

    def wake(self, queued: Mapping[str, Any] | None = None) -> None:
        """A notice was just accepted (`queued`: its row as written): look now instead of at the next poll."""
        if queued is not None and len(self._accepted) < self.settings.batch_size:
            self._accepted.append(Job.of(queued))
        else:  # accepted elsewhere (the event consumer), or more than a batch in hand: the due query finds it
            self._full_pass_wanted = True
        self._wake.set()

    async def close_channels(self) -> None:
        """Close what the channels keep open (the SMTP connection), once the loop is done."""
        for channel in self.channels.values():
            close = getattr(channel, "aclose", None)
            if close is not None:
                with suppress(Exception):  # shutting down: a channel that cannot say goodbye is dropped
                    await close()

    def stop_soon(self) -> None:
        """Claim nothing more; `run` returns once the delivery in hand is recorded."""
        self._stopping = True
        self._wake.set()

    async def send_due_once(self, *, now: datetime | None = None) -> int:
        """Deliver what is due (at `now`, default the clock); returns how many notifications were claimed."""
        now = now or utcnow()
        self._accepted.clear()  # the due query finds them too
        if not self.db.is_sqlite:
            # Replicas on one PostgreSQL database: each claim skips the rows another sender is
            # claiming, so they share the due notices instead of all racing for the same ones.
            # Like the SQLite pass over one snapshot, each notice is tried at most once per call.
            tried: list[uuid.UUID] = []
            claimed = 0
            while claimed < self.settings.batch_size and not self._stopping:
                claim = await self._claim_next(now, exclude=tried)
                if claim is None:
                    break
                claimed += 1
                tried.append(claim[0].id)
                await self._deliver(*claim)
            return claimed
        return await self._send_each(await self._due(now), now)

    async def _send_each(self, jobs: list[Job], now: datetime) -> int:
        """Claim and deliver each of these notices that is still due; how many were claimed."""
        claimed = 0
        for job in jobs:
            if self._stopping:
                break
            if await self._claim_and_send(job, now):
                claimed += 1
                continue
            won = await self._claim(job.id, now)
            if won is None:
                continue  # another sender holds it
            claimed += 1
            await self._deliver(*won)
        return claimed

    async def _claim_and_send(self, notification: Job, now: datetime) -> bool:
        """The usual notice: claim it and record the send's start in one UPDATE, then send.

        Only for a row that can be sent as read (its message renders, no earlier send is pending);
        the WHERE holds the row to what was read (`attempts`, no send started), so winning the claim
        means the copy in hand is current. False: not claimed here, the ordinary claim decides.
        """
        if notification.send_started_at is not None:
            return False
        try:
            message = self._message(notification)
            channel = self.channels[notification.channel]
        except Exception:  # recorded as a failed attempt by the ordinary path
            return False
        token = uuid.uuid4()
        lease = now + timedelta(seconds=self.settings.claim_lease_seconds)
        started = utcnow()
        if lease <= started:
            return False  # a pass that began a lease ago: its claim could not cover a send now
        params = {
            "b_id": notification.id,
            "b_now": now,
            "b_attempts": notification.attempts,
            "b_lease": lease,
            "b_token": token,
            "b_started": started,
        }
        async with self.db.engine.begin() as connection:
            won = (await connection.execute(_CLAIM_AND_MARK, params)).rowcount == 1
        if won:
            await self._send(notification, token, channel, message, self._bound(notification))
        return won

    async def run(self) -> None:
        """Deliver until cancelled or stopped; sleeps until a notice is accepted, a retry this sender
        scheduled falls due, or the safety poll (`poll_interval_seconds`) for what neither covers:
        retries another replica scheduled, leases of a sender that died)."""
        while not self._stopping:
            self._wake.clear()
            now = utcnow()
            retry_due = any(due <= now for due in self._retries_due)
            self._retries_due = [due for due in self._retries_due if due > now]  # this pass takes the rest
            try:
                claimed = await self._pass(now, full=retry_due)
            except Exception:  # the database may be briefly away; keep the loop alive
                log.exception("sender_iteration_failed")
                self._full_pass_wanted = True
                claimed = 0
            if claimed >= self.settings.batch_size or self._stopping:
                continue  # probably more due right away, or time to leave
            if self._accepted:
                continue  # accepted during this pass
            with suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), timeout=self._sleep_seconds())

    async def _pass(self, now: datetime, *, full: bool) -> int:
        """Only the notices in hand, unless a full pass (the due query) is wanted or its time came."""
        accepted, self._accepted = self._accepted, []
        if accepted and not full and not self._full_pass_wanted and now < self._next_full_pass:
            return await self._send_each(accepted, now)
        self._full_pass_wanted = False
        self._next_full_pass = now + timedelta(seconds=self.settings.poll_interval_seconds)
        return await self.send_due_once(now=now)

    def _sleep_seconds(self) -> float:
        wait = self.settings.poll_interval_seconds
        if self._retries_due:
            wait = min(wait, (min(self._retries_due) - utcnow()).total_seconds())
        return max(wait, 0.0)

    async def _due(self, now: datetime) -> list[Job]:
        params = {"b_now": now, "b_limit": self.settings.batch_size}
        async with self.db.engine.begin() as connection:
            return [Job.of(row) for row in (await connection.execute(_DUE, params)).mappings()]

    async def _claim_next(self, now: datetime, *, exclude: list[uuid.UUID]) -> tuple[Job, uuid.UUID] | None:
        """PostgreSQL: claim the next due notification no other sender holds; (the row, token) or None."""
        query = (
            select(_TABLE.c.id)
            .where(_TABLE.c.id.not_in(exclude), *_due_at(now))
            .order_by(_TABLE.c.next_attempt_at)
            .limit(1)
            .with_for_update(skip_locked=True)
        )
        token = uuid.uuid4()
        lease = now + timedelta(seconds=self.settings.claim_lease_seconds)
        async with self.db.engine.begin() as connection:
            notification_id = (await connection.execute(query)).scalar()
            if notification_id is None:
                return None
            # The row lock is held until this commits, and by then the lease makes it not due.
            params = {"b_id": notification_id, "b_lease": lease, "b_token": token}
            claimed = (await connection.execute(_LEASE, params)).mappings().one()
        return Job.of(claimed), token

    async def _claim(self, notification_id: uuid.UUID, now: datetime) -> tuple[Job, uuid.UUID] | None:
        """(the row as claimed, token) if this sender won the claim, returned by the claiming UPDATE."""
        token = uuid.uuid4()
        lease = now + timedelta(seconds=self.settings.claim_lease_seconds)
        # The WHERE repeats the due condition: whoever updates first wins, the other matches no row.
        params = {"b_id": notification_id, "b_now": now, "b_lease": lease, "b_token": token}
        async with self.db.engine.begin() as connection:
            claimed = (await connection.execute(_CLAIM, params)).mappings().first()
        return None if claimed is None else (Job.of(claimed), token)

    async def _deliver(self, notification: Job, token: uuid.UUID) -> None:
        bound = self._bound(notification)
        if notification.send_started_at is not None:
            # A previous holder began sending and never recorded how it ended: it may have been
            # delivered, so sending again could make a duplicate.
            started = notification.send_started_at.isoformat()
            error = (
                f"the sender stopped during the send started at {started}, before recording its outcome; "
                "not re-sent, to keep delivery at most once"
            )
            await self._record_unknown(notification, token, error, bound)
            return
        try:
            message = self._message(notification)
            channel = self.channels[notification.channel]
        except Exception as exc:  # nothing was handed to a channel: an ordinary failed attempt
            await self._record_failure(notification, token, _describe(exc), bound)
            return
        if not await self._mark_send_started(notification, token):
            bound.warning("notification_lease_lost_before_send")
            return
        await self._send(notification, token, channel, message, bound)

    def _bound(self, notification: Job) -> Any:
        return log.bind(
            notification_id=str(notification.id),
            channel=notification.channel,
            template=notification.template,
            attempt=notification.attempts + 1,
        )

    async def _send(
        self,
        notification: Job,
        token: uuid.UUID,
        channel: Channel,
        message: OutboundMessage,
        bound: Any,
    ) -> None:
        """Hand the message to its channel (its send's start is recorded) and record the outcome."""
        try:
            await channel.send(message)
        except DeliveryOutcomeUnknown as exc:
            error = f"outcome unknown, not re-sent, to keep delivery at most once: {_describe(exc)}"
            await self._record_unknown(notification, token, error, bound)
            return
        except Exception as exc:  # any other adapter failure is a failed attempt, retried or final
            await self._record_failure(notification, token, _describe(exc), bound)
            return
        await self._record_sent(notification, token, bound)

    async def _mark_send_started(self, notification: Job, token: uuid.UUID) -> bool:
        """Record that a send begins, only while our claim holds and its lease still runs."""
        params = {"b_id": notification.id, "b_token": token, "b_now": utcnow()}
        async with self.db.engine.begin() as connection:
            return bool((await connection.execute(_MARK_SEND_STARTED, params)).rowcount == 1)

    def _message(self, notification: Job) -> OutboundMessage:
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

    async def _record_sent(self, notification: Job, token: uuid.UUID, bound: Any) -> None:
        sent_at = utcnow()
        values = {
            "status": STATUS_SENT,
            "sent_at": sent_at,
            "attempts": notification.attempts + 1,
            "last_error": None,
            **_RELEASED,
        }
        if await self._finish(
            notification, token, values, "notification.sent", {"sent_at": sent_at.isoformat()}
        ):
            DELIVERIES.labels(notification.channel, "sent").inc()
            bound.info("notification_sent")

    async def _record_unknown(self, notification: Job, token: uuid.UUID, error: str, bound: Any) -> None:
        attempts = notification.attempts + 1
        # `send_started_at` stays: when the send whose outcome is unknown began.
        values: dict[str, Any] = {
            "status": STATUS_UNKNOWN,
            "attempts": attempts,
            "last_error": error[:MAX_LAST_ERROR],
            "claimed_until": None,
            "claim_token": None,
        }
        extra = {"attempts": attempts, "last_error": error[:MAX_LAST_ERROR]}
        if await self._finish(notification, token, values, "notification.unknown", extra):
            DELIVERIES.labels(notification.channel, STATUS_UNKNOWN).inc()
            bound.warning("notification_outcome_unknown", error=error)

    async def _record_failure(self, notification: Job, token: uuid.UUID, error: str, bound: Any) -> None:
        attempts = notification.attempts + 1
        if attempts >= self.settings.max_attempts:
            values: dict[str, Any] = {
                "status": STATUS_FAILED,
                "attempts": attempts,
                "last_error": error,
                **_RELEASED,
            }
            extra = {"attempts": attempts, "last_error": error}
            if await self._finish(notification, token, values, "notification.failed", extra):
                DELIVERIES.labels(notification.channel, "failed").inc()
                bound.warning("notification_failed", error=error)
            return
        delay = retry_delay(attempts, self.settings, self.rng)
        next_attempt_at = utcnow() + timedelta(seconds=delay)
        values = {
            "attempts": attempts,
            "last_error": error,
            "next_attempt_at": next_attempt_at,
            **_RELEASED,
        }
        if await self._finish(notification, token, values, None, {}):
            self._retries_due.append(next_attempt_at)
            DELIVERIES.labels(notification.channel, "retry").inc()
            bound.info("notification_retry_scheduled", error=error, delay_seconds=round(delay, 3))

    async def _finish(
        self,
        notification: Job,
        token: uuid.UUID,
        values: dict[str, Any],
        event_type: str | None,
        event_extra: dict[str, Any],
    ) -> bool:
        """Apply the outcome only if the claim is still ours, with its event in the same transaction."""
        statement = _FINISH.values(**values)
        async with self.db.session() as session, session.begin():
            connection = await session.connection()
            result = await connection.execute(statement, {"b_id": notification.id, "b_token": token})
            if result.rowcount != 1:
                # Another sender took the row over after our lease expired; its record stands.
                log.warning(
                    "notification_lease_lost",
                    notification_id=str(notification.id),
                    dropped_outcome=values.get("status", "retry"),
                )
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


_TABLE = Notification.__table__  # type: ignore[attr-defined]
_JOB_COLUMNS = tuple(_TABLE.c[name] for name in _JOB_FIELDS)


def _due_at(now: Any) -> tuple[ColumnElement[bool], ...]:
    """A queued notice whose attempt is due at `now` and that no running lease holds."""
    return (
        _TABLE.c.status == STATUS_QUEUED,
        _TABLE.c.next_attempt_at <= now,
        or_(_TABLE.c.claimed_until.is_(None), _TABLE.c.claimed_until <= now),
    )


# The sender's statements, built once (Core, parameters bound per call): no statement construction
# or ORM unit of work per notice, and a claim answers with the row it claimed (RETURNING).
_NOW = bindparam("b_now", type_=_TABLE.c.next_attempt_at.type)
_DUE = (
    select(*_JOB_COLUMNS).where(*_due_at(_NOW)).order_by(_TABLE.c.next_attempt_at).limit(bindparam("b_limit"))
)
_CLAIM_AND_MARK = (
    update(_TABLE)
    .where(_TABLE.c.id == bindparam("b_id"), *_due_at(_NOW))
    .where(_TABLE.c.attempts == bindparam("b_attempts"), _TABLE.c.send_started_at.is_(None))
    .values(
        claimed_until=bindparam("b_lease"),
        claim_token=bindparam("b_token"),
        send_started_at=bindparam("b_started"),
    )
)
_CLAIM = (
    update(_TABLE)
    .where(_TABLE.c.id == bindparam("b_id"), *_due_at(_NOW))
    .values(claimed_until=bindparam("b_lease"), claim_token=bindparam("b_token"))
    .returning(*_JOB_COLUMNS)
)
_LEASE = (
    update(_TABLE)
    .where(_TABLE.c.id == bindparam("b_id"))
    .values(claimed_until=bindparam("b_lease"), claim_token=bindparam("b_token"))
    .returning(*_JOB_COLUMNS)
)
_MARK_SEND_STARTED = (
    update(_TABLE)
    .where(_TABLE.c.id == bindparam("b_id"), _TABLE.c.claim_token == bindparam("b_token"))
    .where(_TABLE.c.status == STATUS_QUEUED, _TABLE.c.claimed_until > _NOW)
    .values(send_started_at=_NOW)
)
_FINISH = update(_TABLE).where(_TABLE.c.id == bindparam("b_id"), _TABLE.c.claim_token == bindparam("b_token"))


# An outcome ends the claim and the send in progress.
_RELEASED: dict[str, Any] = {"claimed_until": None, "claim_token": None, "send_started_at": None}


def _describe(exc: Exception) -> str:
    return f"{type(exc).__name__}: {exc}"[:MAX_LAST_ERROR]


def sender_hook(sender: Sender, settings: Settings) -> LifespanHook:
    """The lifespan hook running the sender loop while the app lives.

    On shutdown the loop is first asked to stop, so the delivery in hand is recorded instead of left
    `unknown`; it is cancelled only if that takes longer than `shutdown_grace_seconds`.
    """

    @asynccontextmanager
    async def hook(_: FastAPI) -> AsyncIterator[None]:
        if not settings.sender_enabled:
            yield
            return
        task = asyncio.create_task(sender.run(), name="notifications-sender")
        try:
            yield
        finally:
            sender.stop_soon()
            # Past the grace, wait_for cancels the loop: a send cut short then ends `unknown`.
            with suppress(TimeoutError, asyncio.CancelledError):
                await asyncio.wait_for(task, timeout=settings.shutdown_grace_seconds)
            await sender.close_channels()

    return hook
