"""The JetStream consumer: turns domain events into notices, exactly once per event id.

A durable pull consumer with explicit acks reads `user.created`, `user.updated`,
`payment.refunded` and `stock.low`. Each event is handled in one database transaction that records
its id in `processed_events` together with its effects (contact rows, queued notices); the message
is acknowledged only after that commit. A redelivery (a crash before the ack, a lost ack) finds the
id and is only acknowledged, so nothing is sent twice. The sender delivers the queued notices.

Replicas bind the same durable consumer (`events_durable`), so JetStream hands each message to one
of them rather than to each; the first replica to start creates it, the others find it.

Order confirmation and cancellation notices are not here: the saga's notify step queues them.

A message that fails is redelivered (with a delay when the cause may pass, such as a contact not
known yet) up to `events_max_deliver` times; on its last delivery it is parked in `parked_events`
with the reason, terminated, and the consumer carries on.
"""

from __future__ import annotations

import asyncio
import os
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager, suppress
from typing import Any

import nats.errors
import structlog
from fastapi import FastAPI
from nats.aio.msg import Msg
from nats.js import JetStreamContext
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy
from nats.js.errors import BadRequestError, NotFoundError
from prometheus_client import Counter
from pydantic import BaseModel, ValidationError
from sqlalchemy.exc import IntegrityError
from sqlmodel import select
from sqlmodel.ext.asyncio.session import AsyncSession

from services.kit.app import LifespanHook
from services.kit.db import Database
from services.kit.events import (
    STREAM,
    CloudEvent,
    MalformedEvent,
    close_connection_task,
    connect,
    ensure_stream,
    subject_for,
)
from services.kit.models import utcnow
from services.notifications import domain
from services.notifications.models import MAX_LAST_ERROR, Contact, ParkedEvent, ProcessedEvent
from services.notifications.schemas import NotificationCreate
from services.notifications.sender import Sender
from services.notifications.settings import Settings

log = structlog.get_logger(__name__)

EVENTS = Counter(
    "notifications_events_total",
    "Events consumed by type and outcome (handled, duplicate, retry, parked).",
    ["type", "outcome"],
)

# A notice about the system rather than a person (stock alerts) belongs to this placeholder user
# when the admin's own contact is not known.
OPERATIONS_USER_ID = uuid.UUID(int=0)
# After a pull that found events, the next one waits only this long for more before going idle.
_BUSY_FETCH_SECONDS = 0.05


class ContactUnknown(Exception):
    """The event needs a contact this service has not learned yet: retry after a delay."""


class UserCreated(BaseModel):
    user_id: uuid.UUID
    email: str
    username: str | None = None
    role: str | None = None
    phone: str | None = None


class UserUpdated(BaseModel):
    user_id: uuid.UUID
    changed: dict[str, Any]


class PaymentRefunded(BaseModel):
    payment_id: uuid.UUID
    order_id: uuid.UUID | None = None
    user_id: uuid.UUID
    amount_cents: int
    currency: str | None = None
    refunded_cents: int | None = None


class StockLow(BaseModel):
    product_id: uuid.UUID
    sku: str | None = None
    name: str | None = None
    available: int | None = None
    threshold: int | None = None


Handler = Callable[[AsyncSession, CloudEvent, int], Awaitable[int]]


class EventConsumer:
    def __init__(self, db: Database, settings: Settings, sender: Sender) -> None:
        self.db = db
        self.settings = settings
        self.sender = sender
        self.handled = 0
        self.handlers: dict[str, Handler] = {
            "user.created": self._user_created,
            "user.updated": self._user_updated,
            "payment.refunded": self._payment_refunded,
            "stock.low": self._stock_low,
        }
        self._subjects = frozenset(self.subjects)

    @property
    def subjects(self) -> list[str]:
        return [subject_for(event_type) for event_type in self.handlers]

    # -- handling one event --------------------------------------------------------------------

    async def handle(self, event: CloudEvent, stream_seq: int) -> str:
        """Apply an event once: `handled`, `duplicate` or `ignored`. Raises when it should be retried."""
        handler = self.handlers.get(event.type)
        if handler is None:
            return "ignored"
        try:
            async with self.db.session() as session, session.begin():
                session.add(ProcessedEvent(event_id=event.id, type=event.type))
                await session.flush()  # the primary key decides whether we saw this event before
                queued = await handler(session, event, stream_seq)
        except IntegrityError:
            if await self._seen(event.id):
                return "duplicate"
            raise
        if queued:
            self.sender.wake()
        return "handled"

    async def _seen(self, event_id: str) -> bool:
        async with self.db.session() as session:
            return await session.get(ProcessedEvent, event_id) is not None

    def _queue(
        self,
        session: AsyncSession,
        event: CloudEvent,
        contact: Contact,
        template: str,
        data: dict[str, Any],
        order_id: uuid.UUID | None = None,
    ) -> int:
        """Queue a notice by email, and by SMS when the contact has a phone; keys derive from the event."""
        targets = [("email", contact.email)] + ([("sms", contact.phone)] if contact.phone else [])
        for channel, address in targets:
            domain.stage(
                session,
                NotificationCreate(
                    idempotency_key=f"event:{event.id}:{template}:{channel}",
                    user_id=contact.user_id,
                    channel=channel,
                    to=address,
                    template=template,
                    data=data,
                    order_id=order_id,
                ),
            )
        return len(targets)

    async def _user_created(self, session: AsyncSession, event: CloudEvent, seq: int) -> int:
        user = UserCreated.model_validate(event.data)
        contact = await session.get(Contact, user.user_id)
        if contact is None:
            contact = Contact(user_id=user.user_id, email=user.email, stream_seq=seq)
            session.add(contact)
        if seq >= contact.stream_seq:
            contact.email, contact.username, contact.phone, contact.role = (
                user.email,
                user.username,
                user.phone,
                user.role,
            )
            contact.stream_seq, contact.updated_at = seq, utcnow()
        await session.flush()
        data = {"username": user.username, "email": user.email}
        return self._queue(session, event, contact, "welcome", data)

    async def _user_updated(self, session: AsyncSession, event: CloudEvent, seq: int) -> int:
        update = UserUpdated.model_validate(event.data)
        contact = await session.get(Contact, update.user_id)
        if contact is None or seq < contact.stream_seq:
            return 0  # unknown user, or an older change than the one we hold
        for name in ("email", "username", "phone", "role"):
            if name in update.changed:
                setattr(contact, name, update.changed[name])
        contact.stream_seq, contact.updated_at = seq, utcnow()
        return 0

    async def _payment_refunded(self, session: AsyncSession, event: CloudEvent, seq: int) -> int:
        refund = PaymentRefunded.model_validate(event.data)
        contact = await session.get(Contact, refund.user_id)
        if contact is None:
            raise ContactUnknown(f"no contact for user {refund.user_id} yet")
        data = {
            "username": contact.username,
            "payment_id": str(refund.payment_id),
            "order_id": str(refund.order_id) if refund.order_id else None,
            "amount_cents": refund.amount_cents,
            "currency": refund.currency,
        }
        return self._queue(session, event, contact, "refund_receipt", data, order_id=refund.order_id)

    async def _stock_low(self, session: AsyncSession, event: CloudEvent, seq: int) -> int:
        low = StockLow.model_validate(event.data)
        admin_email = self.settings.admin_email.lower()
        admin = (await session.exec(select(Contact).where(Contact.email == admin_email))).first()
        contact = Contact(user_id=admin.user_id if admin else OPERATIONS_USER_ID, email=admin_email)
        return self._queue(session, event, contact, "stock_low", low.model_dump(mode="json"))

    # -- one message: decode, handle, ack / retry / park --------------------------------------

    async def process(self, msg: Msg) -> str:
        if msg.subject not in self._subjects:
            # Only reaches here from a server older than 2.10, which drops `filter_subjects` and
            # delivers the whole stream: acknowledged unread, at no more cost than the ack.
            await msg.ack()
            return "ignored"
        meta = msg.metadata
        deliveries = meta.num_delivered or 1
        event_id: str | None = None
        event_type = "unknown"
        try:
            event = CloudEvent.parse(msg.data)
            event_id, event_type = event.id, event.type
            outcome = await self.handle(event, meta.sequence.stream)
        except Exception as exc:
            reason = f"{type(exc).__name__}: {' '.join(str(exc).split())}"[:MAX_LAST_ERROR]
            bound = log.bind(
                event_id=event_id, type=event_type, seq=meta.sequence.stream, deliveries=deliveries
            )
            if deliveries >= self.settings.events_max_deliver:
                await self._park(msg, event_id, deliveries, reason)
                await msg.term()
                EVENTS.labels(event_type, "parked").inc()
                bound.error("event_parked", reason=reason)
                return "parked"
            # A malformed message is retried at once (it is bound for the park); other causes may pass.
            permanent = isinstance(exc, MalformedEvent | ValidationError)
            delay = 0.0 if permanent else self.settings.events_retry_delay_seconds * deliveries
            await msg.nak(delay=delay or None)
            EVENTS.labels(event_type, "retry").inc()
            bound.warning("event_retry", reason=reason, delay_seconds=delay)
            return "retry"
        self.handled += 1
        if self.settings.events_crash_after and self.handled >= self.settings.events_crash_after:
            log.warning("events_fault_exit_before_ack", event_id=event_id)
            os._exit(70)  # the fault hook: die mid-batch, after the commit and before the ack
        await msg.ack()
        EVENTS.labels(event_type, outcome).inc()
        log.info("event_consumed", event_id=event_id, type=event_type, outcome=outcome)
        return outcome

    async def _park(self, msg: Msg, event_id: str | None, deliveries: int, reason: str) -> None:
        async with self.db.session() as session, session.begin():
            session.add(
                ParkedEvent(
                    event_id=event_id,
                    nats_subject=msg.subject,
                    stream_seq=msg.metadata.sequence.stream,
                    deliveries=deliveries,
                    reason=reason,
                    payload=msg.data.decode("utf-8", errors="replace"),
                )
            )

    # -- the loop -------------------------------------------------------------------------------

    async def ensure_consumer(self, js: JetStreamContext) -> None:
        await ensure_stream(js)
        config = ConsumerConfig(
            durable_name=self.settings.events_durable,
            deliver_policy=DeliverPolicy.ALL,
            ack_policy=AckPolicy.EXPLICIT,
            ack_wait=self.settings.events_ack_wait_seconds,
            max_deliver=self.settings.events_max_deliver,
            filter_subjects=self.subjects,
            max_ack_pending=1000,
        )
        try:
            await js.consumer_info(STREAM, self.settings.events_durable)
            return
        except NotFoundError:
            pass
        with suppress(BadRequestError):  # created concurrently by a replica
            await js.add_consumer(STREAM, config)
            log.info("event_consumer_created", durable=self.settings.events_durable, subjects=self.subjects)

    async def run(self) -> None:
        """Consume until cancelled; connection trouble backs off and starts over."""
        backoff = 0.2
        while True:
            nc = None
            try:
                nc = await connect(self.settings.nats_url, name="notifications-consumer")
                js = nc.jetstream()
                await self.ensure_consumer(js)
                subscription = await js.pull_subscribe_bind(self.settings.events_durable, stream=STREAM)
                backoff = 0.2
                idle = True
                while True:
                    # Idle: a pull of one, which returns as soon as an event comes (a pull of a batch
                    # would wait out its timeout for the rest). Busy: a batch of what is there now.
                    batch, timeout = (
                        (1, self.settings.events_fetch_timeout_seconds)
                        if idle
                        else (self.settings.events_batch_size, _BUSY_FETCH_SECONDS)
                    )
                    try:
                        messages = await subscription.fetch(batch, timeout=timeout)
                    except nats.errors.TimeoutError:
                        idle = True
                        continue  # nothing pending, or NATS is reconnecting
                    idle = False
                    for message in messages:
                        await self.process(message)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.warning("event_consumer_backoff", error=f"{type(exc).__name__}: {exc}", delay=backoff)
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 10.0)
            finally:
                await close_connection_task(None, nc)


def consumer_hook(consumer: EventConsumer, settings: Settings) -> LifespanHook:
    @asynccontextmanager
    async def hook(_: FastAPI) -> AsyncIterator[None]:
        if not (settings.nats_url and settings.events_enabled):
            yield
            return
        task = asyncio.create_task(consumer.run(), name="notifications-events")
        try:
            yield
        finally:
            task.cancel()
            with suppress(asyncio.CancelledError):
                await task

    return hook
