"""Transactional outbox: a service records its domain events in the same transaction as the change.

The relay (`services.kit.relay`) publishes rows to NATS JetStream as CloudEvents; a row is marked
published only after JetStream acknowledged it, and its id is the event id and the JetStream message id.

A transaction's events are written in one INSERT just before it commits (Core, not the ORM's unit of
work: the row is never read back or changed in that transaction, so it needs no identity).

The relay sleeps until there is work: the commit of a transaction that staged an event calls the
callbacks registered for its engine (`on_outbox_commit`), in this process, so the relay of the
process that wrote the row publishes it at once. A slow safety poll covers what no signal reaches
(rows of a replica that died before its relay ran, a failed pass).
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy import JSON, Column, Engine, Index, event, insert
from sqlalchemy.ext.asyncio import AsyncEngine
from sqlalchemy.orm import Session, SessionTransaction
from sqlmodel import Field, SQLModel
from sqlmodel.ext.asyncio.session import AsyncSession

from services.kit.models import UTCDateTime, new_id, utcnow

MAX_LAST_ERROR = 500
_STAGED = "ordersaga_outbox_staged"  # in Session.info: the rows this transaction staged
_WRITTEN = "ordersaga_outbox_written"  # in Session.info: written, the relay to wake on commit
_ON_COMMIT: dict[Engine, list[Callable[[], None]]] = {}


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


@dataclass(frozen=True, slots=True)
class StagedEvent:
    """An event staged in a transaction: the outbox row it becomes when that transaction commits.

    A plain record, not an `OutboxEvent`: building a table model costs ~15 times more (the ORM's
    instrumented state), and the row is written by one Core INSERT without being read back.
    """

    source: str
    type: str
    subject: str | None
    data: dict[str, Any]
    id: uuid.UUID = field(default_factory=new_id)
    created_at: datetime = field(default_factory=utcnow)

    def row(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "source": self.source,
            "type": self.type,
            "subject": self.subject,
            "data": self.data,
            "created_at": self.created_at,
            "published_at": None,
            "attempts": 0,
            "last_error": None,
        }


def add_event(
    session: AsyncSession, *, source: str, type: str, data: dict[str, Any], subject: str | None = None
) -> StagedEvent:
    """Stage a domain event in the caller's transaction; it is written and published only if that
    commits. The returned event carries the id it will be published under."""
    staged = StagedEvent(source=source, type=type, subject=subject, data=data)
    session.info.setdefault(_STAGED, []).append(staged)
    return staged


def on_outbox_commit(engine: AsyncEngine, callback: Callable[[], None]) -> Callable[[], None]:
    """Call `callback` after each commit on `engine` that staged an event; returns the unsubscribe."""
    callbacks = _ON_COMMIT.setdefault(engine.sync_engine, [])
    callbacks.append(callback)

    def unsubscribe() -> None:
        if callback in callbacks:
            callbacks.remove(callback)
        if not callbacks:
            _ON_COMMIT.pop(engine.sync_engine, None)

    return unsubscribe


_TABLE = OutboxEvent.__table__  # type: ignore[attr-defined]
_INSERT = insert(_TABLE)


@event.listens_for(Session, "before_commit")
def _write_staged(session: Session) -> None:
    staged: list[StagedEvent] | None = session.info.pop(_STAGED, None)
    if staged:
        session.connection().execute(_INSERT, [event.row() for event in staged])
        session.info[_WRITTEN] = True


@event.listens_for(Session, "after_commit")
def _after_commit(session: Session) -> None:
    if session.info.pop(_WRITTEN, False):
        for callback in list(_ON_COMMIT.get(session.bind, ())):  # type: ignore[arg-type]
            callback()


@event.listens_for(Session, "after_transaction_end")
def _after_transaction_end(session: Session, transaction: SessionTransaction) -> None:
    if transaction.parent is None:
        # Rolled back, or closed without touching the database: nothing staged carries over to the
        # session's next transaction, and there is no one to wake.
        session.info.pop(_STAGED, None)
        session.info.pop(_WRITTEN, None)
