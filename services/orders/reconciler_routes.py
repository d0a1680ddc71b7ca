"""The saga reconciler's view of final orders: what it checks for loose ends left by a closed saga.

A saga can close with its order final and something left undone: a reservation still held (a lost
reserve attempt met a cancel) or no outcome notice (terminated between the final status and the
notice, or the notice's budget ran out). The reconciler lists recent final orders here and asks
inventory and notifications about them.
"""

from __future__ import annotations

import uuid
from datetime import datetime, timedelta
from typing import Annotated

from fastapi import APIRouter, Query
from pydantic import BaseModel
from sqlmodel import col, select

from services.kit.db import SessionDep
from services.kit.errors import Problem, problem_responses
from services.kit.identity import ServiceDep
from services.kit.keyset import after, cursor_for
from services.kit.models import utcnow
from services.orders.domain import OrderStatus
from services.orders.models import Order

FINAL = (
    OrderStatus.CONFIRMED.value,
    OrderStatus.SHIPPED.value,
    OrderStatus.DELIVERED.value,
    OrderStatus.CANCELLED.value,
)

router = APIRouter(tags=["internal"])


class FinalOrderOut(BaseModel):
    id: uuid.UUID
    user_id: uuid.UUID
    status: OrderStatus
    cancel_reason: str | None
    total_cents: int | None
    currency: str | None
    updated_at: datetime


class FinalOrdersOut(BaseModel):
    items: list[FinalOrderOut]
    next_cursor: str | None = None


@router.get(
    "/internal/orders/final",
    response_model=FinalOrdersOut,
    summary="Final orders last changed within a window, oldest change first (reconciler)",
    responses=problem_responses(401, 403, 422),
)
async def list_final_orders(
    _: ServiceDep,
    session: SessionDep,
    older_than_seconds: Annotated[
        float, Query(ge=0, le=10**8, allow_inf_nan=False, description="Unchanged for at least this long.")
    ] = 0,
    within_seconds: Annotated[
        float, Query(gt=0, le=10**8, allow_inf_nan=False, description="Changed at most this long ago.")
    ] = 86_400,
    limit: Annotated[int, Query(ge=1, le=500, description="At most this many orders.")] = 100,
    cursor: Annotated[str | None, Query(max_length=500, description="The page before's next_cursor.")] = None,
) -> FinalOrdersOut:
    if within_seconds <= older_than_seconds:
        raise Problem(422, "invalid_window", "within_seconds must be more than older_than_seconds.")
    now = utcnow()
    statement = select(Order).where(
        col(Order.status).in_(FINAL),
        col(Order.updated_at) <= now - timedelta(seconds=older_than_seconds),
        col(Order.updated_at) > now - timedelta(seconds=within_seconds),
    )
    if cursor is not None:
        statement = statement.where(after(col(Order.updated_at), col(Order.id), cursor, descending=False))
    statement = statement.order_by(col(Order.updated_at), col(Order.id)).limit(limit + 1)
    async with session.begin():
        rows = list((await session.exec(statement)).all())
    next_cursor = cursor_for(rows[limit - 1].updated_at, rows[limit - 1].id) if len(rows) > limit else None
    return FinalOrdersOut(
        next_cursor=next_cursor,
        items=[
            FinalOrderOut(
                id=row.id,
                user_id=row.user_id,
                status=OrderStatus(row.status),
                cancel_reason=row.cancel_reason,
                total_cents=row.total_cents,
                currency=row.currency,
                updated_at=row.updated_at,
            )
            for row in rows[:limit]
        ],
    )
