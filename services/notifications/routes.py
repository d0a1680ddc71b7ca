"""HTTP routes: queue a notice (saga/consumer), list a user's notices, read one."""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Request, Response, status

from services.kit.db import SessionDep
from services.kit.errors import problem_responses
from services.kit.identity import AdminDep, CallerDep, ServiceDep, require_owner
from services.kit.pagination import Page, PageDep
from services.notifications import domain
from services.notifications.models import Notification
from services.notifications.schemas import NotificationCreate, NotificationOut, NotificationSummary
from services.notifications.sender import Sender

router = APIRouter(tags=["notifications"])


async def get_sender(request: Request) -> Sender:
    sender: Sender = request.app.state.sender
    return sender


SenderDep = Annotated[Sender, Depends(get_sender)]


def to_out(notification: Mapping[str, Any]) -> NotificationOut:
    """From a notifications row's columns by name (as written, or as read with Core)."""
    return NotificationOut(
        id=notification["id"],
        user_id=notification["user_id"],
        channel=notification["channel"],
        to=notification["recipient"],
        template=notification["template"],
        status=notification["status"],
        order_id=notification["order_id"],
        attempts=notification["attempts"],
        last_error=notification["last_error"],
        created_at=notification["created_at"],
        sent_at=notification["sent_at"],
    )


def to_summary(notification: Notification) -> NotificationSummary:
    return NotificationSummary(
        id=notification.id,
        channel=notification.channel,
        template=notification.template,
        status=notification.status,
        order_id=notification.order_id,
        created_at=notification.created_at,
        sent_at=notification.sent_at,
    )


@router.post(
    "/notifications",
    status_code=status.HTTP_202_ACCEPTED,
    response_model=NotificationOut,
    summary="Queue a notification (saga and event consumer only)",
    responses={
        200: {"description": "Repeated idempotency key: the stored notification"},
        **problem_responses(400, 401, 403, 413, 422),
    },
)
async def create_notification(
    body: NotificationCreate,
    _: ServiceDep,
    session: SessionDep,
    sender: SenderDep,
    response: Response,
) -> NotificationOut:
    notification, created = await domain.accept(session, body)
    if created:
        sender.wake(queued=notification)
    else:
        response.status_code = status.HTTP_200_OK
    return to_out(notification)


@router.get(
    "/notifications/{notification_id}",
    response_model=NotificationOut,
    summary="One notification, with its recipient and delivery state (admin and saga)",
    responses=problem_responses(401, 403, 404, 422),
)
async def read_notification(notification_id: uuid.UUID, _: AdminDep, session: SessionDep) -> NotificationOut:
    return to_out(await domain.get(session, notification_id))


@router.get(
    "/users/{user_id}/notifications",
    response_model=Page[NotificationSummary],
    summary="A user's notifications, newest first (self and admin)",
    responses=problem_responses(401, 404, 422),
)
async def list_user_notifications(
    user_id: uuid.UUID, caller: CallerDep, session: SessionDep, page: PageDep
) -> Page[NotificationSummary]:
    require_owner(caller, user_id)
    rows, next_cursor = await domain.list_for_user(session, user_id, limit=page.limit, cursor=page.cursor)
    return Page[NotificationSummary](items=[to_summary(row) for row in rows], next_cursor=next_cursor)
