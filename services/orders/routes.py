"""HTTP routes: placing and reading orders, the admin listing of every order, admin status changes,
the saga's command endpoint and the saga reconciler's list of unfinished orders."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from typing import Annotated

import structlog
from fastapi import APIRouter, Body, Header, Query, Request, Response

from services.kit.business import ORDERS_PLACED
from services.kit.db import SessionDep
from services.kit.errors import Problem, problem_responses
from services.kit.identity import AdminDep, CallerDep, CustomerDep, Identity, ServiceDep, require_owner
from services.kit.models import utcnow
from services.kit.pagination import Page, PageDep
from services.orders import store
from services.orders.domain import (
    ADMIN_STATUS_COMMANDS,
    CancelReason,
    CommandType,
    Confirmation,
    OrderStatus,
    workflow_id,
)
from services.orders.models import Order, OrderEvent
from services.orders.projection import OrderRecord
from services.orders.queries import (
    OrderFilters,
    order_events_page,
    orders_page,
    unfinished_orders,
    user_orders_page,
)
from services.orders.saga import OrderStart, SagaPort, start_saga
from services.orders.schemas import (
    AwaitReviewCommand,
    CancelCommand,
    ConfirmCommand,
    CreateCommand,
    OrderAccepted,
    OrderCommandIn,
    OrderEventOut,
    OrderItemOut,
    OrderOut,
    OrdersPage,
    PlaceOrderIn,
    StartCommand,
    StatusChangeIn,
    UnfinishedOrderOut,
    UnfinishedOrdersOut,
)
from services.orders.settings import Settings

log = structlog.get_logger(__name__)

router = APIRouter(tags=["orders"])
internal_router = APIRouter(tags=["internal"])

IdempotencyKey = Annotated[
    str | None,
    Header(alias="Idempotency-Key", min_length=1, max_length=200, description="Makes a retried POST safe."),
]


def order_out(order: Order | OrderRecord) -> OrderOut:
    return OrderOut(
        id=order.id,
        user_id=order.user_id,
        status=order.status,
        items=[OrderItemOut.model_validate(line) for line in order.items],
        total_cents=order.total_cents,
        currency=order.currency,
        payment_id=order.payment_id,
        cancel_reason=order.cancel_reason,
        version=order.version,
        created_at=order.created_at,
        updated_at=order.updated_at,
    )


def _settings(request: Request) -> Settings:
    settings: Settings = request.app.state.settings
    return settings


async def _visible_order(session: SessionDep, order_id: uuid.UUID, caller: Identity) -> OrderRecord:
    """The order if the caller may see it; another customer's order is as absent as a missing one."""
    async with session.begin():
        order = await store.load_order(session, order_id)
    if order is None or not caller.owns(order.user_id):
        raise store.order_not_found(order_id)
    return order


@router.post(
    "/orders",
    status_code=202,
    response_model=OrderAccepted,
    summary="Place an order; its saga runs asynchronously",
    responses=problem_responses(400, 401, 403, 413, 422),
)
async def place_order(
    body: PlaceOrderIn,
    caller: CustomerDep,
    session: SessionDep,
    request: Request,
    response: Response,
    idempotency_key: IdempotencyKey = None,
) -> OrderAccepted:
    lines = [line.to_line() for line in body.items]
    store.reject_repeated_products(lines)
    assert caller.user_id is not None  # a customer identity always carries its user id
    order, created = await store.place_order(
        session,
        user_id=caller.user_id,
        lines=lines,
        payment_method_id=body.payment_method_id,
        idempotency_key=idempotency_key,
    )
    if created:  # a replayed idempotency key is the same order, not another one
        ORDERS_PLACED.inc()
    # After the commit: the order is safe even if the start fails; the sweeper retries unstarted ones.
    if order.saga_started_at is None:
        saga: SagaPort = request.app.state.saga
        await start_saga(session, saga, OrderStart.of(order))
    response.headers["Location"] = f"/orders/{order.id}"
    return OrderAccepted(id=order.id, status=order.status, workflow_id=workflow_id(order.id))


LISTING_DESCRIPTION = (
    "Every customer's orders, newest first, in pages of `limit` (1..100, default 20); pass the "
    "page's `next_cursor` as `cursor` for the next one (null on the last page). Filters narrow the "
    "list: `status` (repeatable: any of them), `reason` (the cancel reason), `customer_id`, and "
    "`created_after` / `created_before` (RFC 3339 with an offset, both exclusive). The review queue "
    "is `status=AWAITING_REVIEW`. A saga whose compensation failed has a CANCELLED order (its "
    "`reason` says why it was cancelled): the order row does not know about the failure, which "
    "only the saga view (`GET /orders/{id}/saga`, status `compensation_failed`) shows. A filter that "
    "cannot be read is 422 `validation_error`; a timestamp without an offset is 422 "
    "`timestamp_without_offset`, one with no UTC time (year 1 or 9999 at an offset) 422 "
    "`timestamp_out_of_range`, `created_after` not before `created_before` 422 `empty_range`, an "
    "unreadable cursor 422 `invalid_cursor`."
)


def _utc(name: str, value: datetime | None) -> datetime | None:
    # A timestamp without an offset has no single meaning; guessing UTC would shift the page.
    if value is not None and value.utcoffset() is None:
        raise Problem(
            422,
            "timestamp_without_offset",
            f"`{name}` needs an offset (RFC 3339), e.g. 2026-12-02T18:00:00Z.",
        )
    if value is None:
        return None
    try:
        return value.astimezone(UTC)  # as stored; 0001-01-01T00:00+01:00 has no UTC time
    except OverflowError:
        raise Problem(422, "timestamp_out_of_range", f"`{name}` is out of range.") from None


@router.get(
    "/orders",
    response_model=OrdersPage,
    summary="Every order, newest first, with filters (admin)",
    description=LISTING_DESCRIPTION,
    responses=problem_responses(401, 403, 422),
)
async def list_orders(
    caller: AdminDep,
    session: SessionDep,
    status: Annotated[
        list[OrderStatus] | None,
        Query(max_length=len(OrderStatus), description="Any of these statuses (repeat the parameter)."),
    ] = None,
    reason: Annotated[CancelReason | None, Query(description="Cancelled for this reason.")] = None,
    customer_id: Annotated[uuid.UUID | None, Query(description="Placed by this customer.")] = None,
    created_after: Annotated[datetime | None, Query(description="Placed after (RFC 3339).")] = None,
    created_before: Annotated[datetime | None, Query(description="Placed before (RFC 3339).")] = None,
    limit: Annotated[int, Query(ge=1, le=100, description="Orders per page.")] = 20,
    cursor: Annotated[str | None, Query(max_length=512, description="The page before's next_cursor.")] = None,
) -> OrdersPage:
    after_, before = _utc("created_after", created_after), _utc("created_before", created_before)
    if after_ is not None and before is not None and after_ >= before:
        raise Problem(422, "empty_range", "`created_after` must be before `created_before`.")
    filters = OrderFilters(
        statuses=tuple(dict.fromkeys(s.value for s in status or ())),
        reason=reason.value if reason else None,
        customer_id=customer_id,
        created_after=after_,
        created_before=before,
    )
    async with session.begin():
        orders, next_cursor = await orders_page(session, filters, limit, cursor)
    return OrdersPage(items=[order_out(order) for order in orders], next_cursor=next_cursor)


@router.get(
    "/orders/{order_id}",
    response_model=OrderOut,
    summary="One order (owner or admin)",
    responses=problem_responses(401, 404, 422),
)
async def get_order(order_id: uuid.UUID, caller: CallerDep, session: SessionDep) -> OrderOut:
    return order_out(await _visible_order(session, order_id, caller))


@router.get(
    "/orders/{order_id}/events",
    response_model=Page[OrderEventOut],
    summary="The order's event log, in version order",
    responses=problem_responses(401, 404, 422),
)
async def get_order_events(
    order_id: uuid.UUID, caller: CallerDep, session: SessionDep, page: PageDep
) -> Page[OrderEventOut]:
    await _visible_order(session, order_id, caller)
    async with session.begin():
        events, next_cursor = await order_events_page(session, order_id, page)
    return Page[OrderEventOut](items=[_event_out(event) for event in events], next_cursor=next_cursor)


def _event_out(event: OrderEvent) -> OrderEventOut:
    return OrderEventOut(
        version=event.version, type=event.type, data=event.data, occurred_at=event.occurred_at
    )


@router.get(
    "/users/{user_id}/orders",
    response_model=Page[OrderOut],
    summary="A user's orders, newest first (self or admin)",
    responses=problem_responses(401, 404, 422),
)
async def list_user_orders(
    user_id: uuid.UUID, caller: CallerDep, session: SessionDep, page: PageDep
) -> Page[OrderOut]:
    require_owner(caller, user_id)
    async with session.begin():
        orders, next_cursor = await user_orders_page(session, user_id, page)
    return Page[OrderOut](items=[order_out(order) for order in orders], next_cursor=next_cursor)


@router.put(
    "/orders/{order_id}/status",
    response_model=OrderOut,
    summary="Ship or deliver a confirmed order, one step at a time (admin)",
    responses=problem_responses(400, 401, 403, 404, 409, 422),
)
async def change_status(
    order_id: uuid.UUID, body: StatusChangeIn, caller: AdminDep, session: SessionDep, request: Request
) -> OrderOut:
    command = ADMIN_STATUS_COMMANDS.get(body.status)
    if command is None:
        order = await _visible_order(session, order_id, caller)
        raise Problem(
            409,
            "illegal_transition",
            f"An admin can only set SHIPPED or DELIVERED, not {body.status}.",
            status_now=order.status,
        )
    order = await store.apply_transition(
        session,
        order_id,
        store.Transition(command),
        attempts=_settings(request).command_attempts,
    )
    log.info("order_status_set", order_id=str(order_id), status=order.status)
    return order_out(order)


@internal_router.get(
    "/internal/orders/unfinished",
    response_model=UnfinishedOrdersOut,
    summary="Orders whose saga started but which are not final yet, oldest change first (reconciler)",
    responses=problem_responses(401, 403, 422),
)
async def list_unfinished_orders(
    caller: ServiceDep,
    session: SessionDep,
    older_than_seconds: Annotated[
        float,
        Query(ge=0, allow_inf_nan=False, description="Only orders unchanged for at least this long."),
    ] = 0,
    limit: Annotated[int, Query(ge=1, le=500, description="At most this many orders.")] = 100,
    cursor: Annotated[str | None, Query(max_length=500, description="The page before's next_cursor.")] = None,
) -> UnfinishedOrdersOut:
    try:
        changed_before = utcnow() - timedelta(seconds=older_than_seconds)
    except OverflowError:  # further back than any datetime: no order is that old
        return UnfinishedOrdersOut(items=[])
    async with session.begin():
        orders, next_cursor = await unfinished_orders(session, changed_before, limit, cursor)
    return UnfinishedOrdersOut(
        next_cursor=next_cursor,
        items=[
            UnfinishedOrderOut(
                id=order.id,
                user_id=order.user_id,
                status=order.status,
                updated_at=order.updated_at,
                saga_started_at=order.saga_started_at,
            )
            for order in orders
        ],
    )


@internal_router.post(
    "/internal/orders/{order_id}/commands",
    response_model=OrderOut,
    summary="Apply a saga command to an order (idempotent by command_id)",
    responses=problem_responses(400, 401, 403, 404, 409, 422),
)
async def apply_command(
    order_id: uuid.UUID,
    command: Annotated[OrderCommandIn, Body()],
    caller: ServiceDep,
    session: SessionDep,
    request: Request,
) -> OrderOut:
    if isinstance(command, StartCommand):
        return order_out(await store.mark_saga_started(session, order_id, command.command_id))
    if isinstance(command, CreateCommand):
        # Only sagas started before the typed order activities send this (their lines come back).
        lines = [line.to_line() for line in command.items]
        store.reject_repeated_products(lines)
        order = await store.create_by_command(
            session,
            order_id=order_id,
            user_id=command.user_id,
            lines=lines,
            payment_method_id=command.payment_method_id,
            command_id=command.command_id,
        )
        return order_out(order)
    transition = _transition(command)
    order = await store.apply_transition(
        session,
        order_id,
        transition,
        expected_version=command.expected_version,
        command_id=command.command_id,
        from_saga=True,
        attempts=_settings(request).command_attempts,
    )
    return order_out(order)


def _transition(command: OrderCommandIn) -> store.Transition:
    kind = CommandType(command.type)
    if isinstance(command, CancelCommand):
        return store.Transition(kind, reason=command.reason, payment_id=command.payment_id)
    if isinstance(command, AwaitReviewCommand):
        return store.Transition(kind, payment_id=command.payment_id)
    if isinstance(command, ConfirmCommand):
        lines = [line.to_line() for line in command.items]
        store.reject_repeated_products(lines)
        confirmation = Confirmation(
            lines=tuple(lines),
            total_cents=command.total_cents,
            currency=command.currency,
            payment_id=command.payment_id,
        )
        return store.Transition(kind, confirmation=confirmation)
    return store.Transition(kind)
