"""The port through which the orders service drives an order's saga, and the bookkeeping of its start.

An accepted order must always get its saga, even when starting it fails or the process dies right
after the commit: `saga_started_at` stays null until a start succeeded, and a sweeper calls
`pending_saga_starts` / `SagaPort.start` / `mark_saga_started` for whatever was missed.
"""

from __future__ import annotations

import uuid
from contextlib import AbstractAsyncContextManager, nullcontext
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, Protocol

import structlog
from sqlmodel import col, select
from sqlmodel.ext.asyncio.session import AsyncSession

from services.kit.errors import Problem
from services.kit.identity import Identity
from services.kit.models import utcnow
from services.orders.models import Order
from services.orders.projection import OrderRecord, note_saga_started

log = structlog.get_logger(__name__)


@dataclass(frozen=True)
class OrderStartLine:
    product_id: uuid.UUID
    quantity: int


@dataclass(frozen=True)
class OrderStart:
    """What the saga needs to begin: the order as the customer placed it."""

    order_id: uuid.UUID
    user_id: uuid.UUID
    items: tuple[OrderStartLine, ...]
    payment_method_id: uuid.UUID

    @classmethod
    def of(cls, order: Order | OrderRecord) -> OrderStart:
        return cls(
            order_id=order.id,
            user_id=order.user_id,
            items=tuple(
                OrderStartLine(product_id=uuid.UUID(str(line["product_id"])), quantity=int(line["quantity"]))
                for line in order.items
            ),
            payment_method_id=order.payment_method_id,
        )


class SagaPort(Protocol):
    async def start(self, order: OrderStart) -> None:
        """Start the order's saga; starting one that already exists must be harmless."""
        ...

    async def cancel(self, order_id: uuid.UUID, by: Identity) -> None: ...

    async def review(self, order_id: uuid.UUID, approve: bool, by: Identity) -> None: ...

    async def retry_compensations(self, order_id: uuid.UUID, by: Identity) -> None:
        """Run again the compensations of the order's saga that failed (an admin, once the cause is fixed)."""
        ...

    async def describe(self, order_id: uuid.UUID) -> dict[str, Any]: ...


def _unavailable() -> Problem:
    return Problem(503, "saga_unavailable", "No saga engine is configured for this orders service.")


class NoSaga:
    """The default without a saga engine: orders are recorded, nothing else happens."""

    async def start(self, order: OrderStart) -> None:
        return None

    async def cancel(self, order_id: uuid.UUID, by: Identity) -> None:
        raise _unavailable()

    async def review(self, order_id: uuid.UUID, approve: bool, by: Identity) -> None:
        raise _unavailable()

    async def retry_compensations(self, order_id: uuid.UUID, by: Identity) -> None:
        raise _unavailable()

    async def describe(self, order_id: uuid.UUID) -> dict[str, Any]:
        raise _unavailable()


def _transaction(session: AsyncSession) -> AbstractAsyncContextManager[Any]:
    # These run between slow saga calls: hold no transaction (on SQLite, no write lock) across them.
    return nullcontext() if session.in_transaction() else session.begin()


async def pending_saga_starts(
    session: AsyncSession, older_than: timedelta, limit: int, *, claim: bool = False
) -> list[OrderStart]:
    """Orders accepted at least `older_than` ago whose saga start was never confirmed, oldest first.

    Commits (ends) its own transaction unless the caller already holds one. With `claim` (PostgreSQL,
    inside the caller's transaction) the rows are locked `FOR UPDATE SKIP LOCKED`: another sweeper
    replica skips them until that transaction ends, and by then their start is recorded.
    """
    cutoff = utcnow() - older_than
    statement = (
        select(Order)
        .where(col(Order.saga_started_at).is_(None), col(Order.created_at) <= cutoff)
        .order_by(col(Order.created_at), col(Order.id))
        .limit(limit)
    )
    if claim:
        statement = statement.with_for_update(skip_locked=True)
    async with _transaction(session):
        orders = (await session.exec(statement)).all()
        return [OrderStart.of(order) for order in orders]


async def mark_saga_started(session: AsyncSession, order_id: uuid.UUID) -> bool:
    """Record that the saga of `order_id` runs; False when it was already recorded (or no such order).

    Commits its own transaction unless the caller already holds one.
    """
    async with _transaction(session):
        return await note_saga_started(session, order_id, utcnow())


async def start_saga(session: AsyncSession, saga: SagaPort, order: OrderStart) -> bool:
    """Start the saga now; on failure leave it to the sweeper (the order is already safely recorded)."""
    try:
        await saga.start(order)
    except Problem as problem:  # the saga engine is away: expected during an outage, no traceback
        log.warning("saga_start_deferred", order_id=str(order.order_id), reason=problem.detail)
        return False
    except Exception:
        log.exception("saga_start_failed", order_id=str(order.order_id))
        return False
    await mark_saga_started(session, order.order_id)
    return True
