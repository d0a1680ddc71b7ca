"""Accepting notices (idempotently) and reading them back; free of FastAPI."""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from typing import Any

import structlog
from sqlalchemy import bindparam, insert
from sqlalchemy.exc import IntegrityError
from sqlmodel import col, select
from sqlmodel.ext.asyncio.session import AsyncSession

from services.kit.errors import Problem
from services.kit.keyset import after, split_page
from services.kit.models import new_id, utcnow
from services.notifications.models import STATUS_QUEUED, Notification
from services.notifications.schemas import NotificationCreate

log = structlog.get_logger(__name__)


def stage(session: AsyncSession, request: NotificationCreate) -> Notification:
    """Add a notice to the caller's transaction (the event consumer's), where its key decides idempotency."""
    notification = Notification(
        idempotency_key=request.idempotency_key,
        request_hash=request.fingerprint(),
        user_id=request.user_id,
        channel=request.channel,
        recipient=request.to,
        template=request.template,
        data=request.data,
        order_id=request.order_id,
    )
    session.add(notification)
    return notification


# Core statements on the table, built once: the saga's notice is written and answered without the
# ORM's unit of work (no identity map, no model validation of a row only ever written here).
_TABLE = Notification.__table__  # type: ignore[attr-defined]
_INSERT = insert(_TABLE)
_BY_KEY = select(_TABLE).where(_TABLE.c.idempotency_key == bindparam("key"))
_BY_ID = select(_TABLE).where(_TABLE.c.id == bindparam("notification_id"))


def queued_row(request: NotificationCreate) -> dict[str, Any]:
    """Every column of the notice as it is first written: what the insert writes and the answer shows."""
    now = utcnow()
    return {
        "id": new_id(),
        "idempotency_key": request.idempotency_key,
        "request_hash": request.fingerprint(),
        "user_id": request.user_id,
        "channel": request.channel,
        "recipient": request.to,
        "template": request.template,
        "data": request.data,
        "order_id": request.order_id,
        "status": STATUS_QUEUED,
        "attempts": 0,
        "last_error": None,
        "next_attempt_at": now,
        "claimed_until": None,
        "claim_token": None,
        "send_started_at": None,
        "created_at": now,
        "sent_at": None,
    }


async def accept(session: AsyncSession, request: NotificationCreate) -> tuple[Mapping[str, Any], bool]:
    """Queue a notice; `(stored, False)` when its idempotency key was already used for the same body.

    The row is answered from what was written (no read-back); only a repeated key reads the stored one.
    """
    row = queued_row(request)
    try:
        async with session.begin():
            await (await session.connection()).execute(_INSERT, row)
    except IntegrityError:
        # The unique key decided it: someone (maybe a concurrent twin of this request) got there first.
        await session.rollback()
        existing = await _by_key(session, request.idempotency_key)
        if existing is None:  # cannot happen while rows are never deleted; refuse rather than guess
            raise
        if existing["request_hash"] != row["request_hash"]:
            raise Problem(
                422,
                "idempotency_key_reused",
                "This idempotency key was already used with a different request.",
            ) from None
        log.info("notification_repeat", notification_id=str(existing["id"]))
        return existing, False
    log.info(
        "notification_queued",
        notification_id=str(row["id"]),
        channel=row["channel"],
        template=row["template"],
    )
    return row, True


async def _by_key(session: AsyncSession, key: str) -> Mapping[str, Any] | None:
    async with session.begin():
        result = await (await session.connection()).execute(_BY_KEY, {"key": key})
        return result.mappings().first()


async def get(session: AsyncSession, notification_id: uuid.UUID) -> Mapping[str, Any]:
    result = await (await session.connection()).execute(_BY_ID, {"notification_id": notification_id})
    notification = result.mappings().first()
    if notification is None:
        raise Problem(404, "notification_not_found", "No notification has this id.")
    return notification


async def list_for_user(
    session: AsyncSession, user_id: uuid.UUID, *, limit: int, cursor: str | None
) -> tuple[list[Notification], str | None]:
    """Newest first, keyed by (created_at, id) so that equal timestamps neither repeat nor vanish."""
    query = select(Notification).where(Notification.user_id == user_id)
    if cursor is not None:
        query = query.where(
            after(col(Notification.created_at), col(Notification.id), cursor, descending=True)
        )
    query = query.order_by(col(Notification.created_at).desc(), col(Notification.id).desc()).limit(limit + 1)
    return split_page(list((await session.exec(query)).all()), limit)
