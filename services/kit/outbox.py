"""Transactional outbox: a service records its domain events in the same transaction as the change.

The relay (`services.kit.relay`) publishes rows to NATS JetStream as CloudEvents; a row is marked
published only after JetStream acknowledged it, and its id is the event id and the JetStream message id.
"""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

from sqlalchemy import JSON, Column, Index
from sqlmodel import Field, SQLModel
from sqlmodel.ext.asyncio.session import AsyncSession

from services.kit.models import UTCDateTime, new_id, utcnow

MAX_LAST_ERROR = 500


class OutboxEvent(SQLModel, table=True):
    __tablename__ = "outbox"
    __table_args__ = (Index("ix_outbox_unpublished", "published_at", "created_at"),)

    id: uuid.UUID = Field(default_factory=new_id, primary_key=True)
    source: str = Field(max_length=64)
    type: str = Field(max_length=128)
    subject: str | None = Field(default=None, max_length=128)
    data: dict[str, Any] = Field(sa_column=Column(JSON, nullable=False))
    created_at: datetime = Field(default_factory=utcnow, sa_type=UTCDateTime, nullable=False)
    published_at: datetime | None = Field(default=None, sa_type=UTCDateTime)
    attempts: int = Field(default=0)
    # Why the last publish failed (NATS away, timeout); cleared once JetStream acknowledged the row.
    last_error: str | None = Field(default=None, max_length=MAX_LAST_ERROR)


def add_event(
    session: AsyncSession, *, source: str, type: str, data: dict[str, Any], subject: str | None = None
) -> OutboxEvent:
    """Stage a domain event in the caller's transaction; it is published only if that commits."""
    event = OutboxEvent(source=source, type=type, subject=subject, data=data)
    session.add(event)
    return event
