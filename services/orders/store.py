"""The write side: the order's events are the truth. A command folds the order's history into its
state (`OrderState.from_history`), decides against it, and appends one event at the next version; in
the same transaction the `orders` projection moves to the new state (`services.orders.projection.row`,
the projector a rebuild uses too) and the outbox row is staged.

Concurrency is settled by the database, never by reading first: the unique `(order_id, version)` of
the event log refuses a second event at the same version (a stale writer gets 409 version_conflict,
or decides again), and the projection moves only through `UPDATE ... WHERE version = :expected`.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import structlog
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm.attributes import set_committed_value
from sqlmodel import select
from sqlmodel.ext.asyncio.session import AsyncSession

from services.kit.errors import Problem
from services.kit.models import new_id, utcnow
from services.kit.outbox import add_event
from services.orders import domain, projection
from services.orders.domain import CancelReason, CommandType, Confirmation, Line, OrderState
from services.orders.models import Order, OrderCommand, OrderEvent

log = structlog.get_logger(__name__)

SOURCE = "orders"


class _LostRace(Exception):
    """Another writer moved the order between our read and our write."""


def order_not_found(order_id: uuid.UUID) -> Problem:
    return Problem(404, "order_not_found", f"Order {order_id} does not exist.")


def version_conflict() -> Problem:
    return Problem(409, "version_conflict", "The order changed concurrently; read it again and retry.")


def reject_repeated_products(lines: Sequence[Line]) -> None:
    repeated = domain.repeated_product(lines)
    if repeated is not None:
        raise Problem(
            422, "duplicate_product", "A product appears on more than one line.", product_id=str(repeated)
        )


async def load_order(session: AsyncSession, order_id: uuid.UUID) -> Order | None:
    # populate_existing: the read model is moved by Core UPDATEs the identity map does not see.
    statement = select(Order).where(Order.id == order_id).execution_options(populate_existing=True)
    return (await session.exec(statement)).first()


def order_lines(order: Order) -> list[Line]:
    return [Line.from_json(raw) for raw in order.items]


# Kept in the creation event for the projection, not published: they are the caller's request keys.
_UNPUBLISHED = frozenset({"idempotency_key", "request_hash"})


def _append(session: AsyncSession, event: OrderEvent, state: OrderState, command: CommandType) -> None:
    """The event, the command record and the outbox row of one change, in the caller's transaction."""
    session.add(event)
    if event.command_id is not None:
        session.add(
            OrderCommand(
                command_id=event.command_id,
                order_id=event.order_id,
                type=command.value,
                version=event.version,
            )
        )
    add_event(
        session,
        source=SOURCE,
        type=event.type,
        subject=str(event.order_id),
        data={
            "order_id": str(event.order_id),
            "user_id": str(state.user_id),
            "status": state.status.value,
            "version": event.version,
            **{key: value for key, value in event.data.items() if key not in _UNPUBLISHED},
        },
    )


def _creation(
    order_id: uuid.UUID,
    user_id: uuid.UUID,
    lines: Sequence[Line],
    payment_method_id: uuid.UUID,
    *,
    command_id: str | None = None,
    idempotency_key: str | None = None,
    request_hash: str | None = None,
) -> tuple[OrderEvent, OrderState]:
    data: dict[str, Any] = {
        "user_id": str(user_id),
        "items": [line.to_json() for line in lines],
        "payment_method_id": str(payment_method_id),
    }
    if idempotency_key is not None or request_hash is not None:
        data.update(idempotency_key=idempotency_key, request_hash=request_hash)
    event = OrderEvent(
        order_id=order_id,
        version=1,
        type=domain.EVENT_TYPES[CommandType.CREATE],
        data=data,
        occurred_at=utcnow(),
        command_id=command_id,
    )
    return event, OrderState.created(order_id, event)


async def _create(session: AsyncSession, event: OrderEvent, state: OrderState) -> Order:
    await projection.insert_new(session, state)
    _append(session, event, state, CommandType.CREATE)
    await session.flush()
    # The row just written, without reading it back: the unique key's lock is held until commit, and
    # concurrent placements with the same Idempotency-Key wait on it.
    return Order(**projection.row(state))


async def place_order(
    session: AsyncSession,
    *,
    user_id: uuid.UUID,
    lines: Sequence[Line],
    payment_method_id: uuid.UUID,
    idempotency_key: str | None,
) -> tuple[Order, bool]:
    """Record a new PENDING order → (order, created); a repeated idempotency key returns the first one."""
    request_hash = domain.request_fingerprint(lines, payment_method_id)
    event, state = _creation(
        new_id(),
        user_id,
        lines,
        payment_method_id,
        idempotency_key=idempotency_key,
        request_hash=request_hash,
    )
    try:
        async with session.begin():
            order = await _create(session, event, state)
        log.info("order_placed", order_id=str(order.id), user_id=str(user_id))
        return order, True
    except IntegrityError:
        # The only unique key a fresh random id can hit is (user_id, idempotency_key).
        if idempotency_key is None:
            raise
    async with session.begin():
        statement = select(Order).where(Order.user_id == user_id, Order.idempotency_key == idempotency_key)
        existing = (await session.exec(statement.execution_options(populate_existing=True))).first()
    if existing is None:
        raise version_conflict()
    if existing.request_hash != request_hash:
        raise Problem(
            422,
            "idempotency_key_reused",
            "This Idempotency-Key was already used for a different order request.",
        )
    log.info("order_place_repeated", order_id=str(existing.id), user_id=str(user_id))
    return existing, False


# The saga's first command since the typed order activities: no event, the order is not changed.
SAGA_START = "start"


async def _replayed(
    session: AsyncSession, order_id: uuid.UUID, command: CommandType | str, command_id: str | None
) -> Order | None:
    """The order as it is now when `command_id` was already applied; 422 when it named another command."""
    if command_id is None:
        return None
    prior = await session.get(OrderCommand, command_id, populate_existing=True)
    if prior is None:
        return None
    if prior.type != str(command) or prior.order_id != order_id:
        raise Problem(
            422,
            "command_id_reused",
            f"command_id was already used for '{prior.type}' on another order or with another type.",
        )
    order = await load_order(session, order_id)
    if order is None:  # unreachable: a command is recorded with the order's event or for an existing one
        raise order_not_found(order_id)
    return order


async def mark_saga_started(session: AsyncSession, order_id: uuid.UUID, command_id: str) -> Order:
    """The saga's `start`: its workflow runs for the order POST /orders wrote, so the start sweeper
    skips it. Idempotent on `command_id`; 404 for an order that was never placed."""
    for _ in range(3):
        try:
            async with session.begin():
                replay = await _replayed(session, order_id, SAGA_START, command_id)
                if replay is not None:
                    return replay
                order = await load_order(session, order_id)
                if order is None:
                    raise order_not_found(order_id)
                session.add(
                    OrderCommand(
                        command_id=command_id, order_id=order_id, type=SAGA_START, version=order.version
                    )
                )
                now = utcnow()
                if await projection.note_saga_started(session, order_id, now):
                    # As written, without reading the row again (nothing is flushed for this).
                    set_committed_value(order, "saga_started_at", now)
                await session.flush()
                return order
        except IntegrityError:
            continue  # the same command, retried concurrently: the next pass sees it
    raise version_conflict()


async def create_by_command(
    session: AsyncSession,
    *,
    order_id: uuid.UUID,
    user_id: uuid.UUID,
    lines: Sequence[Line],
    payment_method_id: uuid.UUID,
    command_id: str,
) -> Order:
    """The `create` of sagas started before the typed order activities (their histories still run):
    idempotent on the order id; an existing order, the usual case, is returned unchanged."""
    for _ in range(3):
        try:
            async with session.begin():
                replay = await _replayed(session, order_id, CommandType.CREATE, command_id)
                if replay is not None:
                    return replay
                existing = await load_order(session, order_id)
                if existing is not None:
                    session.add(
                        OrderCommand(
                            command_id=command_id,
                            order_id=order_id,
                            type=CommandType.CREATE.value,
                            version=existing.version,
                        )
                    )
                    await projection.note_saga_started(session, order_id, utcnow())
                    return existing
                event, state = _creation(order_id, user_id, lines, payment_method_id, command_id=command_id)
                order = await _create(session, event, state)
                # The saga itself creates it, so there is nothing for the start sweeper to do.
                await projection.note_saga_started(session, order_id, event.occurred_at)
                order = await load_order(session, order_id) or order
                log.info("order_created_by_saga", order_id=str(order_id), command_id=command_id)
                return order
        except IntegrityError:
            # A concurrent create of the same order or the same command id; the next pass sees it.
            continue
    raise version_conflict()


@dataclass(frozen=True)
class Transition:
    command: CommandType
    reason: CancelReason | None = None
    confirmation: Confirmation | None = None
    # The authorised payment named by await_review or cancel; None leaves the order's payment_id as is.
    payment_id: uuid.UUID | None = None


async def apply_transition(
    session: AsyncSession,
    order_id: uuid.UUID,
    transition: Transition,
    *,
    expected_version: int | None = None,
    command_id: str | None = None,
    from_saga: bool = False,
    attempts: int = 3,
) -> Order:
    """Apply one state-changing command; a repeated `command_id` returns the order without a new event.

    With `expected_version` a stale caller gets 409 at once. Without it the command is decided on the
    version read in the transaction, and decided again (up to `attempts` times) if another writer wins.
    """
    for _ in range(max(1, attempts)):
        try:
            async with session.begin():
                return await _transition_once(
                    session, order_id, transition, expected_version, command_id, from_saga
                )
        except (IntegrityError, _LostRace):
            pass
        # Perhaps the writer that won was this very command, retried concurrently.
        async with session.begin():
            replay = await _replayed(session, order_id, transition.command, command_id)
        if replay is not None:
            return replay
        if expected_version is not None:
            break
    log.info("order_version_conflict", order_id=str(order_id), command=transition.command.value)
    raise version_conflict()


async def _transition_once(
    session: AsyncSession,
    order_id: uuid.UUID,
    transition: Transition,
    expected_version: int | None,
    command_id: str | None,
    from_saga: bool,
) -> Order:
    replay = await _replayed(session, order_id, transition.command, command_id)
    if replay is not None:
        return replay
    events = await projection.history(session, order_id)
    if not events:
        raise order_not_found(order_id)
    state = OrderState.from_history(order_id, events)
    expected = state.version if expected_version is None else expected_version
    if expected != state.version:
        raise _LostRace
    try:
        decision = domain.decide(
            state.status,
            state.lines(),
            transition.command,
            reason=transition.reason,
            confirmation=transition.confirmation,
            payment_id=transition.payment_id,
        )
    except domain.IllegalTransition as exc:
        # The same command, retried concurrently, may have committed between our look for it and our
        # read of the history (READ COMMITTED): then this is its replay, not an illegal transition.
        replay = await _replayed(session, order_id, transition.command, command_id)
        if replay is not None:
            return replay
        raise Problem(409, "illegal_transition", str(exc), status_now=state.status.value) from None
    except domain.ConfirmationMismatch as exc:
        raise Problem(422, "confirmation_mismatch", str(exc)) from None
    event = OrderEvent(
        order_id=order_id,
        version=expected + 1,
        type=domain.EVENT_TYPES[transition.command],
        data=decision.event_data,
        occurred_at=utcnow(),
        command_id=command_id,
    )
    moved = state.apply(event)
    _append(session, event, moved, transition.command)
    await session.flush()  # a stale writer stops here: (order_id, version) is taken
    written, saga_started_at = await projection.move(session, moved, from_version=expected)
    if not written:
        raise _LostRace
    if from_saga and saga_started_at is None:
        await projection.note_saga_started(session, order_id, event.occurred_at)
        saga_started_at = event.occurred_at
    # The row as this transaction wrote it: the projector's columns and the start time returned.
    updated = Order(**projection.row(moved), saga_started_at=saga_started_at)
    log.info(
        "order_transition",
        order_id=str(order_id),
        command=transition.command.value,
        status=moved.status.value,
        version=moved.version,
    )
    return updated
