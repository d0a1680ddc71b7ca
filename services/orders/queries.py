"""The read side: pages of a user's orders (newest first), of every order with filters (the admin
listing, newest first), of an order's events (version order), and the unfinished orders the saga
reconciler looks at (oldest change first)."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime

from sqlmodel import col, select
from sqlmodel.ext.asyncio.session import AsyncSession

from services.kit.errors import Problem
from services.kit.keyset import after, cursor_for, split_page
from services.kit.pagination import PageParams, decode_cursor, encode_cursor
from services.orders.domain import OrderStatus
from services.orders.models import Order, OrderEvent

UNFINISHED = (OrderStatus.PENDING.value, OrderStatus.AWAITING_REVIEW.value)


def _invalid_cursor() -> Problem:
    return Problem(422, "invalid_cursor", "The cursor cannot be read.")


async def user_orders_page(
    session: AsyncSession, user_id: uuid.UUID, page: PageParams
) -> tuple[list[Order], str | None]:
    statement = select(Order).where(Order.user_id == user_id)
    if page.cursor is not None:
        statement = statement.where(after(col(Order.created_at), col(Order.id), page.cursor, descending=True))
    statement = statement.order_by(col(Order.created_at).desc(), col(Order.id).desc()).limit(page.limit + 1)
    return split_page(list((await session.exec(statement)).all()), page.limit)


async def order_events_page(
    session: AsyncSession, order_id: uuid.UUID, page: PageParams
) -> tuple[list[OrderEvent], str | None]:
    statement = select(OrderEvent).where(OrderEvent.order_id == order_id)
    if page.cursor is not None:
        (raw_version,) = decode_cursor(page.cursor, 1)
        if not raw_version.isdigit() or len(raw_version) > 10:
            raise _invalid_cursor()
        statement = statement.where(col(OrderEvent.version) > int(raw_version))
    statement = statement.order_by(col(OrderEvent.version)).limit(page.limit + 1)
    rows = list((await session.exec(statement)).all())
    if len(rows) <= page.limit:
        return rows, None
    rows = rows[: page.limit]
    return rows, encode_cursor(rows[-1].version)


async def unfinished_orders(
    session: AsyncSession, changed_before: datetime, limit: int, cursor: str | None = None
) -> tuple[list[Order], str | None]:
    """Orders not final yet whose saga was started and that have not changed since `changed_before`.

    Oldest change first, in pages over (updated_at, id); an order whose saga start is still pending
    is the start sweeper's, not here.
    """
    statement = select(Order).where(
        col(Order.status).in_(UNFINISHED),
        col(Order.saga_started_at).is_not(None),
        col(Order.updated_at) <= changed_before,
    )
    if cursor is not None:
        statement = statement.where(after(col(Order.updated_at), col(Order.id), cursor, descending=False))
    statement = statement.order_by(col(Order.updated_at), col(Order.id)).limit(limit + 1)
    rows = list((await session.exec(statement)).all())
    if len(rows) <= limit:
        return rows, None
    page = rows[:limit]
    return page, cursor_for(page[-1].updated_at, page[-1].id)


@dataclass(frozen=True)
class OrderFilters:
    """The admin listing's filters; each one given narrows the list (statuses: any of them)."""

    statuses: tuple[str, ...] = ()
    reason: str | None = None
    customer_id: uuid.UUID | None = None
    created_after: datetime | None = None
    created_before: datetime | None = None


async def orders_page(
    session: AsyncSession, filters: OrderFilters, limit: int, cursor: str | None = None
) -> tuple[list[Order], str | None]:
    """Every customer's orders, newest first, in keyset pages over (created_at, id).

    The indexes ix_orders_created and ix_orders_status_created serve the unfiltered and the
    by-status lists (the console's review queue) without a sort; a customer's list uses
    ix_orders_user_created.
    """
    statement = select(Order)
    if filters.statuses:
        statement = statement.where(col(Order.status).in_(filters.statuses))
    if filters.reason is not None:
        statement = statement.where(col(Order.cancel_reason) == filters.reason)
    if filters.customer_id is not None:
        statement = statement.where(col(Order.user_id) == filters.customer_id)
    if filters.created_after is not None:
        statement = statement.where(col(Order.created_at) > filters.created_after)
    if filters.created_before is not None:
        statement = statement.where(col(Order.created_at) < filters.created_before)
    if cursor is not None:
        statement = statement.where(after(col(Order.created_at), col(Order.id), cursor, descending=True))
    statement = statement.order_by(col(Order.created_at).desc(), col(Order.id).desc()).limit(limit + 1)
    return split_page(list((await session.exec(statement)).all()), limit)
