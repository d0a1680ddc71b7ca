"""The notifications table: one row per accepted notice, which is also its delivery job."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

from sqlalchemy import JSON, Column, Index, Text, UniqueConstraint
from sqlmodel import Field, SQLModel

from services.kit.models import UTCDateTime, new_id, utcnow

MAX_IDEMPOTENCY_KEY = 200
MAX_RECIPIENT = 320
MAX_LAST_ERROR = 500

STATUS_QUEUED = "queued"
STATUS_SENT = "sent"
STATUS_FAILED = "failed"
# Final: a send was started and its outcome never recorded (the sender died mid-send, or the channel
# lost the connection after handing the message over). Never re-sent, so delivery stays at most once.
STATUS_UNKNOWN = "unknown"


class Notification(SQLModel, table=True):
    __tablename__ = "notifications"
    __table_args__ = (
        # Decides idempotency: a repeated key loses the insert race instead of being checked first.
        UniqueConstraint("idempotency_key", name="uq_notifications_idempotency_key"),
        # What the sender polls: queued rows whose next attempt is due.
        Index("ix_notifications_due", "status", "next_attempt_at"),
        Index("ix_notifications_user_created", "user_id", "created_at", "id"),
    )

    id: uuid.UUID = Field(default_factory=new_id, primary_key=True)
    idempotency_key: str = Field(max_length=MAX_IDEMPOTENCY_KEY)
    # sha256 of the canonical request, so a reused key with another body is recognised.
    request_hash: str = Field(max_length=64)
    user_id: uuid.UUID
    channel: str = Field(max_length=16)
    # `to` is a reserved word in SQL, hence the column name.
    recipient: str = Field(max_length=MAX_RECIPIENT)
    template: str = Field(max_length=32)
    data: dict[str, Any] = Field(sa_column=Column(JSON, nullable=False))
    order_id: uuid.UUID | None = Field(default=None)
    status: str = Field(default=STATUS_QUEUED, max_length=16)
    attempts: int = Field(default=0)
    last_error: str | None = Field(default=None, max_length=MAX_LAST_ERROR)
    next_attempt_at: datetime = Field(default_factory=utcnow, sa_type=UTCDateTime, nullable=False)
    # The lease of the sender working on it; the token proves the lease is still ours when finishing.
    claimed_until: datetime | None = Field(default=None, sa_type=UTCDateTime)
    claim_token: uuid.UUID | None = Field(default=None)
    # Set by the claim holder just before it hands the message to the channel, cleared with the
    # outcome: a row found with it set and its lease expired had a send whose result is unknown.
    send_started_at: datetime | None = Field(default=None, sa_type=UTCDateTime)
    created_at: datetime = Field(default_factory=utcnow, sa_type=UTCDateTime, nullable=False)
    sent_at: datetime | None = Field(default=None, sa_type=UTCDateTime)


class Contact(SQLModel, table=True):
    """Where to reach a user, fed by `user.created`/`user.updated` events: this service's own copy.

    `stream_seq` is the JetStream sequence of the event that last wrote the row, so an older event
    redelivered late never overwrites a newer address.
    """

    __tablename__ = "contacts"
    __table_args__ = (Index("ix_contacts_email", "email"),)

    user_id: uuid.UUID = Field(primary_key=True)
    email: str = Field(max_length=MAX_RECIPIENT)
    username: str | None = Field(default=None, max_length=64)
    phone: str | None = Field(default=None, max_length=32)
    role: str | None = Field(default=None, max_length=16)
    stream_seq: int = Field(default=0)
    updated_at: datetime = Field(default_factory=utcnow, sa_type=UTCDateTime, nullable=False)


class ProcessedEvent(SQLModel, table=True):
    """Events already handled, by CloudEvent id: a redelivery finds its row and is only acknowledged."""

    __tablename__ = "processed_events"

    event_id: str = Field(primary_key=True, max_length=128)
    type: str = Field(max_length=128)
    processed_at: datetime = Field(default_factory=utcnow, sa_type=UTCDateTime, nullable=False)


class ParkedEvent(SQLModel, table=True):
    """A message the consumer gave up on (malformed, or still failing after its last delivery)."""

    __tablename__ = "parked_events"

    id: uuid.UUID = Field(default_factory=new_id, primary_key=True)
    event_id: str | None = Field(default=None, max_length=128)
    nats_subject: str = Field(max_length=256)
    stream_seq: int
    deliveries: int
    reason: str = Field(max_length=MAX_LAST_ERROR)
    # The raw message, decoded leniently, so an operator can inspect and republish it.
    payload: str = Field(sa_column=Column(Text, nullable=False))
    parked_at: datetime = Field(default_factory=utcnow, sa_type=UTCDateTime, nullable=False)
