"""Accepting notices (idempotently) and reading them back; free of FastAPI."""

from __future__ import annotations

import uuid

import structlog
from sqlalchemy.exc import IntegrityError
from sqlmodel import col, select
from sqlmodel.ext.asyncio.session import AsyncSession

from services.kit.errors import Problem
from services.kit.keyset import after, split_page
from services.notifications.models import Notification
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


async def accept(session: AsyncSession, request: NotificationCreate) -> tuple[Notification, bool]:
    """Queue a notice; `(stored, False)` when its idempotency key was already used for the same body."""
    fingerprint = request.fingerprint()
    notification = Notification(
        idempotency_key=request.idempotency_key,
        request_hash=fingerprint,
        user_id=request.user_id,
        channel=request.channel,
        recipient=request.to,
        template=request.template,
        data=request.data,
        order_id=request.order_id,
    )
    try:
        async with session.begin():
            session.add(notification)
    except IntegrityError:
        # The unique key decided it: someone (maybe a concurrent twin of this request) got there first.
        await session.rollback()
        existing = await _by_key(session, request.idempotency_key)
        if existing is None:  # cannot happen while rows are never deleted; refuse rather than guess
            raise
        if existing.request_hash != fingerprint:
            raise Problem(
                422,
                "idempotency_key_reused",
                "This idempotency key was already used with a different request.",
            ) from None
        log.info("notification_repeat", notification_id=str(existing.id))
        return existing, False
    log.info(
        "notification_queued",
        notification_id=str(notification.id),
        channel=notification.channel,
        template=notification.template,
    )
    return notification, True


async def _by_key(session: AsyncSession, key: str) -> Notification | None:
    async with session.begin():
        result = await session.exec(select(Notification).where(Notification.idempotency_key == key))
        return result.first()


async def get(session: AsyncSession, notification_id: uuid.UUID) -> Notification:
    notification = await session.get(Notification, notification_id)
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
