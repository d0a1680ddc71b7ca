"""The write side: the order's events are the truth. A command reads the order's state from its
projection row (moved with each event, in the event's transaction, so it is the fold of the log at
its version), decides against it, and appends one event at the next version; in the same
transaction the `orders` projection moves to the new state (`services.orders.projection.row`, the
projector a rebuild uses too) and the outbox row is staged.

Concurrency is settled by the database, never by reading first: the unique `(order_id, version)` of
the event log refuses a second event at the same version (a stale writer gets 409 version_conflict,
or decides again), and the projection moves only through `UPDATE ... WHERE version = :expected`.
A repeated `command_id` is met the same way: the command record's key refuses it, and only then is
the first application looked up (the replay). The writes are Core statements built once.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass, replace
from datetime import datetime
from typing import Any

import structlog
from sqlalchemy import bindparam, insert
from sqlalchemy import select as select_columns
from sqlalchemy.exc import IntegrityError
from sqlmodel.ext.asyncio.session import AsyncSession

from services.kit.errors import Problem
from services.kit.models import new_id, utcnow
from services.kit.outbox import add_event
from services.orders import domain, projection
from services.orders.domain import CancelReason, CommandType, Confirmation, Line, OrderState
from services.orders.models import OrderCommand, OrderEvent
from services.orders.projection import OrderRecord

log = structlog.get_logger(__name__)

SOURCE = "orders"

_EVENTS = OrderEvent.__table__  # type: ignore[attr-defined]
_COMMANDS = OrderCommand.__table__  # type: ignore[attr-defined]
_INSERT_EVENT = insert(_EVENTS)
_INSERT_COMMAND = insert(_COMMANDS)
_SELECT_COMMAND = select_columns(_COMMANDS.c.type, _COMMANDS.c.order_id).where(
    _COMMANDS.c.command_id == bindparam("command_id")
)


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


async def load_order(session: AsyncSession, order_id: uuid.UUID) -> OrderRecord | None:
    return await projection.load(session, order_id)


@dataclass(frozen=True, slots=True)
class NewEvent:
    """An event about to be appended to the log (a `domain.RecordedEvent`), as its row's values."""

    order_id: uuid.UUID
    version: int
    type: str
    data: dict[str, Any]
    occurred_at: datetime
    command_id: str | None = None

    def values(self) -> dict[str, Any]:
        return {
            "id": new_id(),
            "order_id": self.order_id,
            "version": self.version,
            "type": self.type,
            "data": self.data,
            "occurred_at": self.occurred_at,
            "command_id": self.command_id,
        }


async def _record_command(
    session: AsyncSession, command_id: str, order_id: uuid.UUID, command: CommandType | str, version: int
) -> None:
    """The command record; its key refuses a `command_id` already applied (IntegrityError)."""
    connection = await session.connection()
    values = {"command_id": command_id, "order_id": order_id, "type": str(command), "version": version}
    await connection.execute(_INSERT_COMMAND, values)


# Kept in the creation event for the projection, not published: they are the caller's request keys.
_UNPUBLISHED = frozenset({"idempotency_key", "request_hash"})


async def _append(session: AsyncSession, event: NewEvent, state: OrderState, command: CommandType) -> None:
    """The command record, the event and the outbox row of one change, in the caller's transaction
    (in the order the ORM's flush wrote them, so that PostgreSQL takes its locks as before).

    A repeated command stops at its record; a stale writer at the event: (order_id, version) is taken.
    """
    if event.command_id is not None:
        await _record_command(session, event.command_id, event.order_id, command, event.version)
    connection = await session.connection()
    await connection.execute(_INSERT_EVENT, event.values())
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
) -> tuple[NewEvent, OrderState]:
    data: dict[str, Any] = {
        "user_id": str(user_id),
        "items": [line.to_json() for line in lines],
        "payment_method_id": str(payment_method_id),
    }
    if idempotency_key is not None or request_hash is not None:
        data.update(idempotency_key=idempotency_key, request_hash=request_hash)
    event = NewEvent(
        order_id=order_id,
        version=1,
        type=domain.EVENT_TYPES[CommandType.CREATE],
        data=data,
        occurred_at=utcnow(),
        command_id=command_id,
    )
    return event, OrderState.created(order_id, event)


async def _create(session: AsyncSession, event: NewEvent, state: OrderState) -> OrderRecord:
    await projection.insert_new(session, state)
    await _append(session, event, state, CommandType.CREATE)
    # The row just written, without reading it back: the unique key's lock is held until commit, and
    # concurrent placements with the same Idempotency-Key wait on it.
    return OrderRecord.of(state)


async def place_order(
    session: AsyncSession,
    *,
    user_id: uuid.UUID,
    lines: Sequence[Line],
    payment_method_id: uuid.UUID,
    idempotency_key: str | None,
) -> tuple[OrderRecord, bool]:
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
        existing = await projection.load_by_idempotency_key(session, user_id, idempotency_key)
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
) -> OrderRecord | None:
    """The order as it is now when `command_id` was already applied; 422 when it named another command."""
    if command_id is None:
        return None
    connection = await session.connection()
    prior = (await connection.execute(_SELECT_COMMAND, {"command_id": command_id})).first()
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


async def mark_saga_started(session: AsyncSession, order_id: uuid.UUID, command_id: str) -> OrderRecord:
    """The saga's `start`: its workflow runs for the order POST /orders wrote, so the start sweeper
    skips it. Idempotent on `command_id`; 404 for an order that was never placed."""
    for attempt in range(3):
        try:
            async with session.begin():
                if attempt:  # the command's key was taken: perhaps by this very command, before
                    replay = await _replayed(session, order_id, SAGA_START, command_id)
                    if replay is not None:
                        return replay
                return await _start_once(session, order_id, command_id)
        except IntegrityError:
            continue  # the same command, repeated or retried concurrently: the next pass sees it
    raise version_conflict()


async def _start_once(session: AsyncSession, order_id: uuid.UUID, command_id: str) -> OrderRecord:
    order = await projection.load(session, order_id)
    if order is None:
        raise order_not_found(order_id)
    await _record_command(session, command_id, order_id, SAGA_START, order.version)
    if order.saga_started_at is not None:  # POST /orders marked it after starting the workflow
        return order
    now = utcnow()
    if await projection.note_saga_started(session, order_id, now):
        return replace(order, saga_started_at=now)  # as written, without reading the row again
    return order


async def create_by_command(
    session: AsyncSession,
    *,
    order_id: uuid.UUID,
    user_id: uuid.UUID,
    lines: Sequence[Line],
    payment_method_id: uuid.UUID,
    command_id: str,
) -> OrderRecord:
    """The `create` of sagas started before the typed order activities (their histories still run):
    idempotent on the order id; an existing order, the usual case, is returned unchanged."""
    for _ in range(3):
        try:
            async with session.begin():
                replay = await _replayed(session, order_id, CommandType.CREATE, command_id)
                if replay is not None:
                    return replay
                existing = await projection.load(session, order_id)
                if existing is not None:
                    await _record_command(session, command_id, order_id, CommandType.CREATE, existing.version)
                    await projection.note_saga_started(session, order_id, utcnow())
                    return existing
                event, state = _creation(order_id, user_id, lines, payment_method_id, command_id=command_id)
                await _create(session, event, state)
                # The saga itself creates it, so there is nothing for the start sweeper to do.
                await projection.note_saga_started(session, order_id, event.occurred_at)
                log.info("order_created_by_saga", order_id=str(order_id), command_id=command_id)
                return OrderRecord.of(state, saga_started_at=event.occurred_at)
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
) -> OrderRecord:
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
) -> OrderRecord:
    # The preconditions are checked on the projection's row, not on a fold of the whole log: the
    # event's unique (order_id, version) and the row's `WHERE version` refuse a stale read below.
    order = await projection.load(session, order_id)
    if order is None:
        raise order_not_found(order_id)
    state = order.state()
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
        # A command already applied (repeated, or retried concurrently and committed first) finds the
        # order moved past it: then this is its replay, not an illegal transition.
        replay = await _replayed(session, order_id, transition.command, command_id)
        if replay is not None:
            return replay
        raise Problem(409, "illegal_transition", str(exc), status_now=state.status.value) from None
    except domain.ConfirmationMismatch as exc:
        raise Problem(422, "confirmation_mismatch", str(exc)) from None
    event = NewEvent(
        order_id=order_id,
        version=expected + 1,
        type=domain.EVENT_TYPES[transition.command],
        data=decision.event_data,
        occurred_at=utcnow(),
        command_id=command_id,
    )
    moved = state.apply(event)
    await _append(session, event, moved, transition.command)
    written, saga_started_at = await projection.move(session, moved, from_version=expected)
    if not written:
        raise _LostRace
    if from_saga and saga_started_at is None:
        await projection.note_saga_started(session, order_id, event.occurred_at)
        saga_started_at = event.occurred_at
    log.info(
        "order_transition",
        order_id=str(order_id),
        command=transition.command.value,
        status=moved.status.value,
        version=moved.version,
    )
    # The row as this transaction wrote it: the projector's columns and the start time returned.
    return OrderRecord.of(moved, saga_started_at=saga_started_at)
