"""The `orders` projection: one row per order, every column folded from its events.

`row` is the one projector: the live write path (`services.orders.store`) writes what it returns for
the state after each new event, in the event's transaction, and `rebuild` writes what it returns for
the state folded from the whole log; so the two cannot drift. The saga's start time is not an event
of the order: it comes from `order_saga_starts`, written beside the projection's column.
"""

from __future__ import annotations

import uuid
from collections import defaultdict
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy import Text, bindparam, cast, delete, insert, text, update
from sqlalchemy import select as select_columns
from sqlmodel import col, select
from sqlmodel.ext.asyncio.session import AsyncSession

from services.kit.models import UTCDateTime
from services.orders.domain import OrderState, OrderStatus
from services.orders.models import Order, OrderEvent, OrderSagaStart

_TABLE = Order.__table__  # type: ignore[attr-defined]


_STARTS = OrderSagaStart.__table__  # type: ignore[attr-defined]

# The hot path's statements, built once: Core on the tables, executed on the session's connection,
# so that no call pays for the ORM's unit of work or for building and hashing a statement again.
_SELECT_ORDER = select_columns(_TABLE).where(_TABLE.c.id == bindparam("order_id"))
_SELECT_BY_IDEMPOTENCY_KEY = select_columns(_TABLE).where(
    _TABLE.c.user_id == bindparam("user_id"), _TABLE.c.idempotency_key == bindparam("idempotency_key")
)
_INSERT_ORDER = insert(_TABLE)
# SET takes every column named in the parameters (the projector's columns, not `id`).
_MOVE = (
    update(_TABLE)
    .where(_TABLE.c.id == bindparam("order_id"), _TABLE.c.version == bindparam("from_version"))
    .returning(_TABLE.c.saga_started_at)
)
_NOTE_SAGA_STARTED = (
    update(_TABLE)
    .where(_TABLE.c.id == bindparam("order_id"), _TABLE.c.saga_started_at.is_(None))
    .values(saga_started_at=bindparam("now", type_=UTCDateTime))
)
_INSERT_SAGA_START = insert(_STARTS)


def row(state: OrderState) -> dict[str, Any]:
    """The projection's columns for `state`, all but `saga_started_at`."""
    return {
        "id": state.order_id,
        "user_id": state.user_id,
        "status": state.status.value,
        "items": state.items,
        "payment_method_id": state.payment_method_id,
        "total_cents": state.total_cents,
        "currency": state.currency,
        "payment_id": state.payment_id,
        "cancel_reason": state.cancel_reason,
        "version": state.version,
        "created_at": state.created_at,
        "updated_at": state.updated_at,
        "idempotency_key": state.idempotency_key,
        "request_hash": state.request_hash,
    }


@dataclass(frozen=True, slots=True)
class OrderRecord:
    """One row of the projection as the write path reads or wrote it: the `Order` columns, without
    an ORM instance (nothing is tracked, nothing is flushed)."""

    id: uuid.UUID
    user_id: uuid.UUID
    status: str
    items: list[dict[str, Any]]
    payment_method_id: uuid.UUID
    total_cents: int | None
    currency: str | None
    payment_id: uuid.UUID | None
    cancel_reason: str | None
    version: int
    created_at: datetime
    updated_at: datetime
    saga_started_at: datetime | None
    idempotency_key: str | None
    request_hash: str | None

    @classmethod
    def of(cls, state: OrderState, saga_started_at: datetime | None = None) -> OrderRecord:
        """The row the projector writes for `state`: what a write answers without reading it back."""
        return cls(**row(state), saga_started_at=saga_started_at)

    def state(self) -> OrderState:
        """The state this row was projected from: the row is moved with each event, in its
        transaction and at its version, so it is the fold of the log up to `version`."""
        return OrderState(
            order_id=self.id,
            user_id=self.user_id,
            status=OrderStatus(self.status),
            items=self.items,
            payment_method_id=self.payment_method_id,
            version=self.version,
            created_at=self.created_at,
            updated_at=self.updated_at,
            total_cents=self.total_cents,
            currency=self.currency,
            payment_id=self.payment_id,
            cancel_reason=self.cancel_reason,
            idempotency_key=self.idempotency_key,
            request_hash=self.request_hash,
        )


async def load(session: AsyncSession, order_id: uuid.UUID) -> OrderRecord | None:
    connection = await session.connection()
    found = (await connection.execute(_SELECT_ORDER, {"order_id": order_id})).first()
    return None if found is None else OrderRecord(**found._mapping)


async def load_by_idempotency_key(
    session: AsyncSession, user_id: uuid.UUID, idempotency_key: str
) -> OrderRecord | None:
    connection = await session.connection()
    parameters = {"user_id": user_id, "idempotency_key": idempotency_key}
    found = (await connection.execute(_SELECT_BY_IDEMPOTENCY_KEY, parameters)).first()
    return None if found is None else OrderRecord(**found._mapping)


async def insert_new(session: AsyncSession, state: OrderState) -> None:
    """The projection of a new order (its creation event is added beside it)."""
    connection = await session.connection()
    await connection.execute(_INSERT_ORDER, row(state))


async def move(
    session: AsyncSession, state: OrderState, *, from_version: int
) -> tuple[bool, datetime | None]:
    """Move the projection to `state` → (moved, the row's `saga_started_at`); not moved when its row
    is no longer at `from_version` (lost race). The start time comes back with the write, so that the
    caller can answer with the row without reading it again."""
    values = row(state)
    values["order_id"] = values.pop("id")
    values["from_version"] = from_version
    connection = await session.connection()
    written = (await connection.execute(_MOVE, values)).first()
    return (False, None) if written is None else (True, written[0])


async def note_saga_started(session: AsyncSession, order_id: uuid.UUID, now: datetime) -> bool:
    """Record the first sign that the order's saga runs, once; True when this call recorded it.

    The projection's row is moved first: its row lock (or SQLite's write lock) makes a concurrent
    second call see the time already set, so `order_saga_starts` gets one row, and none for an order
    that does not exist.
    """
    connection = await session.connection()
    result = await connection.execute(_NOTE_SAGA_STARTED, {"order_id": order_id, "now": now})
    if not result.rowcount:
        return False
    await connection.execute(_INSERT_SAGA_START, {"order_id": order_id, "started_at": now})
    return True


@dataclass
class RebuildReport:
    orders: int = 0
    # order id → {column: (before, after)}, each value as the database spells it in text
    differing: dict[str, dict[str, tuple[str | None, str | None]]] = field(default_factory=dict)


async def rebuild(session: AsyncSession, *, check: bool) -> RebuildReport:
    """Delete every row of the projection and write it again from the events, in one transaction.

    The rows before and after are compared column by column as the database's own text (`CAST(... AS
    TEXT)`: the JSON as stored, the timestamps to the microsecond). With `check` the transaction is
    rolled back, so nothing changes. Writers wait for it: on PostgreSQL the tables are locked, on
    SQLite the kit's `BEGIN IMMEDIATE` holds the write lock from the start.
    """
    transaction = await session.begin()
    try:
        if session.get_bind().dialect.name == "postgresql":
            await session.exec(text("LOCK TABLE orders, order_events, order_saga_starts IN EXCLUSIVE MODE"))  # type: ignore[call-overload]
        before = await _snapshot(session)
        events: dict[uuid.UUID, list[OrderEvent]] = defaultdict(list)
        in_order = select(OrderEvent).order_by(col(OrderEvent.order_id), col(OrderEvent.version))
        for event in (await session.exec(in_order)).all():
            events[event.order_id].append(event)
        starts = {
            start.order_id: start.started_at for start in (await session.exec(select(OrderSagaStart))).all()
        }
        await session.exec(delete(Order))
        rows = [
            {**row(OrderState.from_history(order_id, log)), "saga_started_at": starts.get(order_id)}
            for order_id, log in events.items()
        ]
        for start in range(0, len(rows), 500):
            await session.exec(insert(Order), params=rows[start : start + 500])
        after = await _snapshot(session)
        report = RebuildReport(orders=len(rows), differing=_differences(before, after))
    except BaseException:
        await transaction.rollback()
        raise
    if check:
        await transaction.rollback()
    else:
        await transaction.commit()
    return report


async def _snapshot(session: AsyncSession) -> dict[str, dict[str, str | None]]:
    columns = [column.name for column in _TABLE.columns]
    statement = select_columns(*[cast(_TABLE.c[name], Text).label(name) for name in columns])
    rows = (await session.exec(statement)).all()  # type: ignore[call-overload]
    return {values.id: dict(zip(columns, values, strict=True)) for values in rows}


def _differences(
    before: dict[str, dict[str, str | None]], after: dict[str, dict[str, str | None]]
) -> dict[str, dict[str, tuple[str | None, str | None]]]:
    differing: dict[str, dict[str, tuple[str | None, str | None]]] = {}
    for order_id in sorted(before.keys() | after.keys()):
        old, new = before.get(order_id, {}), after.get(order_id, {})
        columns = {name for name in old.keys() | new.keys() if old.get(name) != new.get(name)}
        if columns:
            differing[order_id] = {name: (old.get(name), new.get(name)) for name in sorted(columns)}
    return differing
