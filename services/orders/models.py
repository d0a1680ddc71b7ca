"""Tables: the order's append-only event log (the truth), the `orders` projection folded from it, the
record of applied commands, and when each order's saga was first known to run.

The log and the command record do not reference the projection by foreign key, so that the projection
can be dropped and rebuilt from the events (`ordersaga orders rebuild`)."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

from sqlalchemy import JSON, BigInteger, Index, UniqueConstraint
from sqlmodel import Field, SQLModel

from services.kit.models import UTCDateTime, new_id, utcnow


class Order(SQLModel, table=True):
    """The projection: the state the event log adds up to (`OrderState`), moved in the same
    transaction as each event by `services.orders.projection`, and what every read uses."""

    __tablename__ = "orders"
    __table_args__ = (
        UniqueConstraint("user_id", "idempotency_key", name="uq_orders_user_idempotency_key"),
        Index("ix_orders_user_created", "user_id", "created_at", "id"),
        Index("ix_orders_saga_pending", "saga_started_at", "created_at"),
        # The admin listing (GET /orders), newest first: all orders, and by status.
        Index("ix_orders_created", "created_at", "id"),
        Index("ix_orders_status_created", "status", "created_at", "id"),
    )

    id: uuid.UUID = Field(default_factory=new_id, primary_key=True)
    user_id: uuid.UUID = Field(nullable=False)
    status: str = Field(max_length=32)
    # [{product_id, quantity, unit_price_cents|null}]
    items: list[dict[str, Any]] = Field(sa_type=JSON, nullable=False)
    payment_method_id: uuid.UUID = Field(nullable=False)
    total_cents: int | None = Field(default=None, sa_type=BigInteger)
    currency: str | None = Field(default=None, max_length=3)
    payment_id: uuid.UUID | None = Field(default=None)
    cancel_reason: str | None = Field(default=None, max_length=32)
    version: int = Field(nullable=False)
    created_at: datetime = Field(default_factory=utcnow, sa_type=UTCDateTime, nullable=False)
    updated_at: datetime = Field(default_factory=utcnow, sa_type=UTCDateTime, nullable=False)
    saga_started_at: datetime | None = Field(default=None, sa_type=UTCDateTime)
    idempotency_key: str | None = Field(default=None, max_length=200)
    request_hash: str | None = Field(default=None, max_length=64)


class OrderEvent(SQLModel, table=True):
    """Append-only; (order_id, version) is unique so that two writers cannot both extend a version."""

    __tablename__ = "order_events"
    __table_args__ = (UniqueConstraint("order_id", "version", name="uq_order_events_order_version"),)

    id: uuid.UUID = Field(default_factory=new_id, primary_key=True)
    order_id: uuid.UUID = Field(nullable=False)
    version: int = Field(nullable=False)
    type: str = Field(max_length=64)
    data: dict[str, Any] = Field(sa_type=JSON, nullable=False)
    occurred_at: datetime = Field(default_factory=utcnow, sa_type=UTCDateTime, nullable=False)
    # Null for changes that did not come through a saga command (POST /orders, admin status).
    command_id: str | None = Field(default=None, max_length=200)


class OrderCommand(SQLModel, table=True):
    """A saga command already applied, so that a retried activity does not apply it twice."""

    __tablename__ = "order_commands"

    command_id: str = Field(primary_key=True, max_length=200)
    order_id: uuid.UUID = Field(nullable=False)
    type: str = Field(max_length=32)
    version: int = Field(nullable=False)


class OrderSagaStart(SQLModel, table=True):
    """When the order's saga was first known to run: the start sweeper's bookkeeping, not an event of
    the order (it changes neither its status nor its version); the projection's `saga_started_at`."""

    __tablename__ = "order_saga_starts"

    order_id: uuid.UUID = Field(primary_key=True)
    started_at: datetime = Field(sa_type=UTCDateTime, nullable=False)
