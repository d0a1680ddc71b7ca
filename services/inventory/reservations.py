"""Stock reservations keyed by order id: reserve all lines or none, then release or commit.

Idempotency is decided by the reservation's primary key (the order id), and every status change is
a conditional `UPDATE ... WHERE status = 'reserved'`, so a retried or concurrent call can neither
hold stock twice nor give it back twice. Products are always updated in product-id order so that
overlapping transactions on PostgreSQL lock rows in the same order and cannot deadlock.

The saga's calls run Core statements built once below, on the session's connection: the rows they
write are never read back in their transaction, and the answer is built from what was written.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import TypeVar

import structlog
from sqlalchemy import Connection, Row, Table, Update, bindparam, insert, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session
from sqlmodel.ext.asyncio.session import AsyncSession

from services.inventory import stock
from services.inventory.models import (
    InventoryReservation,
    InventoryReservationLine,
    ReservationStatus,
)
from services.inventory.schemas import (
    ReservationCreate,
    ReservationLineIn,
    ReservationLineOut,
    ReservationOut,
)
from services.kit.errors import Problem
from services.kit.models import UTCDateTime, utcnow
from services.kit.outbox import add_event

log = structlog.get_logger(__name__)

_T = TypeVar("_T")

_HEADERS: Table = InventoryReservation.__table__  # type: ignore[attr-defined]
_LINES: Table = InventoryReservationLine.__table__  # type: ignore[attr-defined]
_PRODUCTS = stock.PRODUCTS
# Not "order_id": an UPDATE reserves its columns' names for its own bind parameters.
_order_id = bindparam("for_order", type_=_HEADERS.c.order_id.type)
_now = bindparam("now", type_=UTCDateTime)

_PRICES = select(_PRODUCTS.c.id, _PRODUCTS.c.price_cents, _PRODUCTS.c.currency).where(
    _PRODUCTS.c.id.in_(bindparam("product_ids", expanding=True))
)
_INSERT_HEADER = insert(_HEADERS)
_INSERT_LINES = insert(_LINES)
_LINES_OF = (
    select(_LINES.c.product_id, _LINES.c.quantity, _LINES.c.unit_price_cents)
    .where(_LINES.c.order_id == _order_id)
    .order_by(_LINES.c.product_id)
)
# The header and its lines in one statement; a tombstone (no lines) is one row of null line columns.
_RESERVATION = (
    select(
        _HEADERS.c.status,
        _HEADERS.c.total_cents,
        _HEADERS.c.currency,
        _HEADERS.c.created_at,
        _LINES.c.product_id,
        _LINES.c.quantity,
        _LINES.c.unit_price_cents,
    )
    .select_from(_HEADERS.outerjoin(_LINES, _LINES.c.order_id == _HEADERS.c.order_id))
    .where(_HEADERS.c.order_id == _order_id)
    .order_by(_LINES.c.product_id)
)
_STATUS = select(_HEADERS.c.status).where(_HEADERS.c.order_id == _order_id)


def _mark(target: ReservationStatus) -> Update:
    return (
        update(_HEADERS)
        .where(_HEADERS.c.order_id == _order_id, _HEADERS.c.status == ReservationStatus.RESERVED.value)
        .values(status=target.value, updated_at=_now)
    )


_MARK_RELEASED = _mark(ReservationStatus.RELEASED)
_MARK_COMMITTED = _mark(ReservationStatus.COMMITTED).returning(
    _HEADERS.c.total_cents, _HEADERS.c.currency, _HEADERS.c.created_at
)

# A release racing a reserve of the same order id can lose the insert at most once in practice.
_RELEASE_ATTEMPTS = 3


class _OrderIdTaken(Exception):
    """The reservation's primary key already exists: the stored reservation decides the answer."""


def _not_found(order_id: uuid.UUID) -> Problem:
    return Problem(404, "reservation_not_found", f"No reservation exists for order {order_id}.")


def _released(order_id: uuid.UUID) -> Problem:
    return Problem(409, "reservation_released", f"The reservation of order {order_id} was released.")


def _committed(order_id: uuid.UUID) -> Problem:
    return Problem(
        409,
        "reservation_committed",
        f"The reservation of order {order_id} is committed; it cannot be released.",
    )


def ensure_distinct_products(lines: Sequence[ReservationLineIn]) -> None:
    seen: set[uuid.UUID] = set()
    for line in lines:
        if line.product_id in seen:
            raise Problem(
                422,
                "duplicate_product",
                f"Product {line.product_id} appears on more than one line.",
                product_id=str(line.product_id),
            )
        seen.add(line.product_id)


def _load(connection: Connection, order_id: uuid.UUID) -> ReservationOut | None:
    rows = connection.execute(_RESERVATION, {"for_order": order_id}).all()
    if not rows:
        return None
    header = rows[0]
    return _reservation_out(
        order_id,
        header.status,
        [(row.product_id, row.quantity, row.unit_price_cents) for row in rows if row.product_id is not None],
        total_cents=header.total_cents,
        currency=header.currency,
        created_at=header.created_at,
    )


async def _in_transaction(session: AsyncSession, body: Callable[[Connection], _T]) -> _T:
    """Run `body` on the session's connection in one transaction, committed unless it raises.

    The whole transaction runs in one greenlet (`run_sync`): its statements, the outbox's insert and
    the commit do not each pay a greenlet of their own, as awaiting each of them would.
    """

    def run(sync_session: Session) -> _T:
        with sync_session.begin():
            return body(sync_session.connection())

    return await session.run_sync(run)


async def get_reservation(session: AsyncSession, order_id: uuid.UUID) -> ReservationOut:
    reservation = await _in_transaction(session, lambda connection: _load(connection, order_id))
    if reservation is None:
        raise _not_found(order_id)
    return reservation


async def reserve(
    session: AsyncSession, request: ReservationCreate, *, low_threshold: int
) -> tuple[ReservationOut, bool]:
    """The reservation of `request.order_id`, and whether this call created it."""
    ensure_distinct_products(request.lines)
    try:
        # Built from what this transaction wrote: reading it back would be two more statements.
        created = await _in_transaction(
            session, lambda connection: _hold_all(session, connection, request, low_threshold)
        )
    except _OrderIdTaken:
        existing = await _in_transaction(session, lambda connection: _load(connection, request.order_id))
        if existing is None:  # rows are never deleted, so the key that clashed is still there
            raise RuntimeError(f"reservation {request.order_id} vanished") from None
        if existing.status == ReservationStatus.RELEASED:
            raise _released(request.order_id) from None
        log.info("reservation_repeated", order_id=str(request.order_id), status=existing.status)
        return existing, False
    log.info(
        "reservation_created",
        order_id=str(request.order_id),
        lines=len(created.lines),
        total_cents=created.total_cents,
    )
    return created, True


@dataclass(frozen=True)
class _Priced:
    """The prices of an order's products, or the problem that refuses them."""

    prices: dict[uuid.UUID, int]
    currency: str | None
    problem: Problem | None


def _price(connection: Connection, product_ids: Sequence[uuid.UUID]) -> _Priced:
    rows = connection.execute(_PRICES, {"product_ids": product_ids}).all()
    prices = {row.id: row.price_cents for row in rows}
    for product_id in product_ids:
        if product_id not in prices:
            problem = Problem(
                422, "invalid_item", f"Product {product_id} does not exist.", product_id=str(product_id)
            )
            return _Priced(prices, None, problem)
    currencies = {row.currency for row in rows}
    if len(currencies) > 1:
        problem = Problem(
            422,
            "invalid_item",
            f"The lines mix currencies ({', '.join(sorted(currencies))}); an order has one currency.",
        )
        return _Priced(prices, None, problem)
    return _Priced(prices, currencies.pop(), None)


def _insert_header(
    connection: Connection,
    order_id: uuid.UUID,
    status: ReservationStatus,
    total_cents: int,
    currency: str | None,
) -> datetime:
    """Insert the header, or raise `_OrderIdTaken`; returns its created_at."""
    now = utcnow()
    row = {
        "order_id": order_id,
        "status": status.value,
        "total_cents": total_cents,
        "currency": currency,
        "created_at": now,
        "updated_at": now,
    }
    try:
        connection.execute(_INSERT_HEADER, row)
    except IntegrityError:
        raise _OrderIdTaken from None
    return now


def _hold_all(
    session: AsyncSession, connection: Connection, request: ReservationCreate, low_threshold: int
) -> ReservationOut:
    """Runs inside `_in_transaction`: every statement goes through `connection`; `session` only
    stages the outbox's events (kit's `add_event` keeps them in the session's `info`)."""
    lines = sorted(request.lines, key=lambda line: line.product_id)
    # Read first so that the header goes in once, whole; reading moves no stock and locks nothing.
    priced = _price(connection, [line.product_id for line in lines])
    total_cents = sum(line.quantity * priced.prices.get(line.product_id, 0) for line in lines)
    # The primary key decides idempotency first, before any problem of the lines and any stock move:
    # a retried reserve answers the stored reservation.
    created_at = _insert_header(
        connection, request.order_id, ReservationStatus.RESERVED, total_cents, priced.currency
    )
    if priced.problem is not None:
        raise priced.problem
    for line in lines:
        level = stock.hold(connection, line.product_id, line.quantity)
        if level is None:
            # Raising rolls back the whole transaction: the lines held so far are given back.
            raise Problem(
                409,
                "out_of_stock",
                f"Not enough stock of product {line.product_id} for {line.quantity} units.",
                product_id=str(line.product_id),
            )
        stock.stage_stock_events(
            session, level, available_before=level.available + line.quantity, low_threshold=low_threshold
        )
    priced_lines = [(line.product_id, line.quantity, priced.prices[line.product_id]) for line in lines]
    connection.execute(
        _INSERT_LINES,
        [
            {
                "order_id": request.order_id,
                "product_id": product_id,
                "quantity": quantity,
                "unit_price_cents": price,
            }
            for product_id, quantity, price in priced_lines
        ],
    )
    add_event(
        session,
        source=stock.EVENT_SOURCE,
        type="reservation.created",
        subject=str(request.order_id),
        data={"order_id": str(request.order_id), "total_cents": total_cents, "currency": priced.currency},
    )
    return _reservation_out(
        request.order_id,
        ReservationStatus.RESERVED.value,
        priced_lines,
        total_cents=total_cents,
        currency=priced.currency,
        created_at=created_at,
    )


def _reservation_out(
    order_id: uuid.UUID,
    status: str,
    lines: Sequence[tuple[uuid.UUID, int, int]],
    *,
    total_cents: int,
    currency: str | None,
    created_at: datetime,
) -> ReservationOut:
    """The reservation as the API shows it; `lines` are (product id, quantity, unit price) by product id."""
    return ReservationOut(
        order_id=order_id,
        status=ReservationStatus(status).value,
        lines=[
            ReservationLineOut(product_id=product_id, quantity=quantity, unit_price_cents=unit_price_cents)
            for product_id, quantity, unit_price_cents in lines
        ],
        total_cents=total_cents,
        currency=currency,
        created_at=created_at,
    )


def _held_lines(connection: Connection, order_id: uuid.UUID) -> Sequence[Row[uuid.UUID, int, int]]:
    return connection.execute(_LINES_OF, {"for_order": order_id}).all()


def _current_status(connection: Connection, order_id: uuid.UUID) -> ReservationStatus | None:
    status = connection.execute(_STATUS, {"for_order": order_id}).scalar()
    return None if status is None else ReservationStatus(status)


async def release(session: AsyncSession, order_id: uuid.UUID, *, low_threshold: int) -> None:
    for _ in range(_RELEASE_ATTEMPTS):
        try:
            await _in_transaction(
                session, lambda connection: _release_once(session, connection, order_id, low_threshold)
            )
            return
        except _OrderIdTaken:
            # A reserve of this order committed between our look and our tombstone: release that.
            continue
    raise Problem(409, "conflict", f"The reservation of order {order_id} keeps changing; retry.")


def _release_once(
    session: AsyncSession, connection: Connection, order_id: uuid.UUID, low_threshold: int
) -> None:
    marked = connection.execute(_MARK_RELEASED, {"for_order": order_id, "now": utcnow()})
    if marked.rowcount == 1:
        for line in _held_lines(connection, order_id):
            level = stock.give_back(connection, line.product_id, line.quantity)
            stock.stage_stock_events(
                session, level, available_before=level.available - line.quantity, low_threshold=low_threshold
            )
        _announce(session, order_id, "released")
        return
    status = _current_status(connection, order_id)
    if status is ReservationStatus.COMMITTED:
        raise _committed(order_id)
    if status is ReservationStatus.RELEASED:
        return
    # Never reserved (yet): leave a tombstone so that a late reserve of this order is refused.
    _insert_header(connection, order_id, ReservationStatus.RELEASED, 0, None)
    log.info("reservation_tombstoned", order_id=str(order_id))


def _announce(session: AsyncSession, order_id: uuid.UUID, outcome: str) -> None:
    """The `reservation.<outcome>` event, staged in the caller's transaction, and its log line."""
    add_event(
        session,
        source=stock.EVENT_SOURCE,
        type=f"reservation.{outcome}",
        subject=str(order_id),
        data={"order_id": str(order_id)},
    )
    log.info(f"reservation_{outcome}", order_id=str(order_id))


async def commit(session: AsyncSession, order_id: uuid.UUID, *, low_threshold: int) -> ReservationOut:
    reservation = await _in_transaction(
        session, lambda connection: _commit_once(session, connection, order_id, low_threshold)
    )
    if reservation is None:
        raise _not_found(order_id)
    if reservation.status == ReservationStatus.RELEASED:
        raise _released(order_id)
    return reservation


def _commit_once(
    session: AsyncSession, connection: Connection, order_id: uuid.UUID, low_threshold: int
) -> ReservationOut | None:
    header = connection.execute(_MARK_COMMITTED, {"for_order": order_id, "now": utcnow()}).first()
    if header is None:
        # Not `reserved`: unknown, released, or committed before (a retried commit).
        return _load(connection, order_id)
    return _ship_lines(session, connection, order_id, header, low_threshold)


def _ship_lines(
    session: AsyncSession,
    connection: Connection,
    order_id: uuid.UUID,
    header: Row[int, str | None, datetime],
    low_threshold: int,
) -> ReservationOut:
    lines = _held_lines(connection, order_id)
    for line in lines:
        level = stock.ship_out(connection, line.product_id, line.quantity)
        stock.stage_stock_events(
            session, level, available_before=level.available, low_threshold=low_threshold
        )
    _announce(session, order_id, "committed")
    # The header's row came back from the update and the lines are read: no reading back.
    return _reservation_out(
        order_id,
        ReservationStatus.COMMITTED.value,
        [(line.product_id, line.quantity, line.unit_price_cents) for line in lines],
        total_cents=header.total_cents,
        currency=header.currency,
        created_at=header.created_at,
    )
