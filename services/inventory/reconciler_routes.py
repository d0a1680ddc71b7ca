"""The saga reconciler's question to inventory: which of these orders still hold their reservation."""

from __future__ import annotations

import uuid

from fastapi import APIRouter
from pydantic import BaseModel, Field
from sqlmodel import col, select

from services.inventory.models import InventoryReservation, ReservationStatus
from services.kit.db import SessionDep
from services.kit.errors import problem_responses
from services.kit.identity import ServiceDep

router = APIRouter(tags=["internal"])


class HeldQuery(BaseModel):
    order_ids: list[uuid.UUID] = Field(max_length=500)


class HeldOut(BaseModel):
    held: list[uuid.UUID]


@router.post(
    "/internal/reservations/held",
    response_model=HeldOut,
    summary="Which of these orders' reservations are still held (reconciler)",
    responses=problem_responses(401, 403, 422),
)
async def held_reservations(body: HeldQuery, _: ServiceDep, session: SessionDep) -> HeldOut:
    if not body.order_ids:
        return HeldOut(held=[])
    statement = select(col(InventoryReservation.order_id)).where(
        col(InventoryReservation.order_id).in_(body.order_ids),
        col(InventoryReservation.status) == ReservationStatus.RESERVED.value,
    )
    async with session.begin():
        held = list((await session.exec(statement)).all())
    return HeldOut(held=sorted(held))
