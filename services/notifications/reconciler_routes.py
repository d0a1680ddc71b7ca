"""The saga reconciler's question to notifications: which of these notices were ever accepted.

Asked by idempotency key (unique, so indexed): the saga's notice keys are its own convention, and
the key of a notice is what decides whether it exists.
"""

from __future__ import annotations

from fastapi import APIRouter
from pydantic import BaseModel, Field
from sqlmodel import col, select

from services.kit.db import SessionDep
from services.kit.errors import problem_responses
from services.kit.identity import ServiceDep
from services.notifications.models import MAX_IDEMPOTENCY_KEY, Notification

router = APIRouter(tags=["internal"])


class KeysQuery(BaseModel):
    idempotency_keys: list[str] = Field(max_length=4000)


class KeysOut(BaseModel):
    present: list[str]


@router.post(
    "/internal/notifications/present",
    response_model=KeysOut,
    summary="Which of these idempotency keys a notice was accepted under (reconciler)",
    responses=problem_responses(401, 403, 422),
)
async def present_keys(body: KeysQuery, _: ServiceDep, session: SessionDep) -> KeysOut:
    keys = [key for key in body.idempotency_keys if 0 < len(key) <= MAX_IDEMPOTENCY_KEY]
    if not keys:
        return KeysOut(present=[])
    statement = select(col(Notification.idempotency_key)).where(col(Notification.idempotency_key).in_(keys))
    async with session.begin():
        present = list((await session.exec(statement)).all())
    return KeysOut(present=sorted(present))
