"""Stock reservations keyed by order id: reserve all lines or none, then release or commit.

Idempotency is decided by the reservation's primary key (the order id), and every status change is
a conditional `UPDATE ... WHERE status = 'reserved'`, so a retried or concurrent call can neither
hold stock twice nor give it back twice. Products are always updated in product-id order so that
overlapping transactions on PostgreSQL lock rows in the same order and cannot deadlock.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from datetime import datetime

import structlog
from sqlalchemy import Update, update
from sqlalchemy.exc import IntegrityError
from sqlmodel import col, select
from sqlmodel.ext.asyncio.session import AsyncSession

from services.inventory import stock
from services.inventory.models import (
    InventoryProduct,
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
from services.kit.models import utcnow
from services.kit.outbox import add_event

log = structlog.get_logger(__name__)

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


async def _load(session: AsyncSession, order_id: uuid.UUID) -> ReservationOut | None:
    header = (
        await session.exec(
            select(InventoryReservation)
            .where(col(InventoryReservation.order_id) == order_id)
            .execution_options(populate_existing=True)
        )
    ).first()
    if header is None:
        return None
    lines = (
        await session.exec(
            select(InventoryReservationLine)
            .where(col(InventoryReservationLine.order_id) == order_id)
            .order_by(col(InventoryReservationLine.product_id))
        )
    ).all()
    return _reservation_out(
        header.order_id,
        header.status,
        [(line.product_id, line.quantity, line.unit_price_cents) for line in lines],
        total_cents=header.total_cents,
        currency=header.currency,
        created_at=header.created_at,
    )


async def get_reservation(session: AsyncSession, order_id: uuid.UUID) -> ReservationOut:
    async with session.begin():
        reservation = await _load(session, order_id)
    if reservation is None:
        raise _not_found(order_id)
    return reservation


async def reserve(
    session: AsyncSession, request: ReservationCreate, *, low_threshold: int
) -> tuple[ReservationOut, bool]:
    """The reservation of `request.order_id`, and whether this call created it."""
    ensure_distinct_products(request.lines)
    try:
        async with session.begin():
            # Built from what this transaction wrote: reading it back would be two more statements.
            created = await _hold_all(session, request, low_threshold)
    except _OrderIdTaken:
        async with session.begin():
            existing = await _load(session, request.order_id)
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


async def _hold_all(session: AsyncSession, request: ReservationCreate, low_threshold: int) -> ReservationOut:
    header = InventoryReservation(order_id=request.order_id, status=ReservationStatus.RESERVED.value)
    session.add(header)
    try:
        # The primary key decides idempotency first, before any stock moves.
        await session.flush()
    except IntegrityError:
        raise _OrderIdTaken from None

    lines = sorted(request.lines, key=lambda line: line.product_id)
    product_ids = [line.product_id for line in lines]
    products = {
        product.id: product
        for product in (
            await session.exec(select(InventoryProduct).where(col(InventoryProduct.id).in_(product_ids)))
        ).all()
    }
    for product_id in product_ids:
        if product_id not in products:
            raise Problem(
                422, "invalid_item", f"Product {product_id} does not exist.", product_id=str(product_id)
            )
    currencies = {product.currency for product in products.values()}
    if len(currencies) > 1:
        raise Problem(
            422,
            "invalid_item",
            f"The lines mix currencies ({', '.join(sorted(currencies))}); an order has one currency.",
        )

    total_cents = 0
    for line in lines:
        product = products[line.product_id]
        level = await stock.hold(session, line.product_id, line.quantity)
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
        session.add(
            InventoryReservationLine(
                order_id=request.order_id,
                product_id=line.product_id,
                quantity=line.quantity,
                unit_price_cents=product.price_cents,
            )
        )
        total_cents += line.quantity * product.price_cents

    header.total_cents = total_cents
    header.currency = currencies.pop()
    add_event(
        session,
        source=stock.EVENT_SOURCE,
        type="reservation.created",
        subject=str(request.order_id),
        data={"order_id": str(request.order_id), "total_cents": total_cents, "currency": header.currency},
    )
    await session.flush()
    return _reservation_out(
        header.order_id,
        header.status,
        [(line.product_id, line.quantity, products[line.product_id].price_cents) for line in lines],
        total_cents=total_cents,
        currency=header.currency,
        created_at=header.created_at,
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


async def _transition(session: AsyncSession, order_id: uuid.UUID, target: ReservationStatus) -> bool:
    """Move a `reserved` reservation to `target`; False when it was not `reserved` (or is unknown)."""
    result = await session.exec(_transition_statement(order_id, target))
    return result.rowcount == 1


def _transition_statement(order_id: uuid.UUID, target: ReservationStatus) -> Update:
    return (
        update(InventoryReservation)
        .where(
            col(InventoryReservation.order_id) == order_id,
            col(InventoryReservation.status) == ReservationStatus.RESERVED.value,
        )
        .values(status=target.value, updated_at=utcnow())
        .execution_options(synchronize_session=False)
    )


async def _held_lines(session: AsyncSession, order_id: uuid.UUID) -> Sequence[InventoryReservationLine]:
    return (
        await session.exec(
            select(InventoryReservationLine)
            .where(col(InventoryReservationLine.order_id) == order_id)
            .order_by(col(InventoryReservationLine.product_id))
        )
    ).all()


async def _current_status(session: AsyncSession, order_id: uuid.UUID) -> ReservationStatus | None:
    status = (
        await session.exec(
            select(col(InventoryReservation.status)).where(col(InventoryReservation.order_id) == order_id)
        )
    ).first()
    return None if status is None else ReservationStatus(status)


async def release(session: AsyncSession, order_id: uuid.UUID, *, low_threshold: int) -> None:
    for _ in range(_RELEASE_ATTEMPTS):
        try:
            async with session.begin():
                await _release_once(session, order_id, low_threshold)
            return
        except _OrderIdTaken:
            # A reserve of this order committed between our look and our tombstone: release that.
            continue
    raise Problem(409, "conflict", f"The reservation of order {order_id} keeps changing; retry.")


async def _release_once(session: AsyncSession, order_id: uuid.UUID, low_threshold: int) -> None:
    if await _transition(session, order_id, ReservationStatus.RELEASED):
        for line in await _held_lines(session, order_id):
            level = await stock.give_back(session, line.product_id, line.quantity)
            stock.stage_stock_events(
                session, level, available_before=level.available - line.quantity, low_threshold=low_threshold
            )
        add_event(
            session,
            source=stock.EVENT_SOURCE,
            type="reservation.released",
            subject=str(order_id),
            data={"order_id": str(order_id)},
        )
        log.info("reservation_released", order_id=str(order_id))
        return
    status = await _current_status(session, order_id)
    if status is ReservationStatus.COMMITTED:
        raise _committed(order_id)
    if status is ReservationStatus.RELEASED:
        return
    # Never reserved (yet): leave a tombstone so that a late reserve of this order is refused.
    session.add(InventoryReservation(order_id=order_id, status=ReservationStatus.RELEASED.value))
    try:
        await session.flush()
    except IntegrityError:
        raise _OrderIdTaken from None
    log.info("reservation_tombstoned", order_id=str(order_id))


async def commit(session: AsyncSession, order_id: uuid.UUID, *, low_threshold: int) -> ReservationOut:
    async with session.begin():
        header = (
            await session.exec(
                _transition_statement(order_id, ReservationStatus.COMMITTED).returning(
                    col(InventoryReservation.total_cents),
                    col(InventoryReservation.currency),
                    col(InventoryReservation.created_at),
                )
            )
        ).first()
        if header is not None:
            lines = await _held_lines(session, order_id)
            for line in lines:
                level = await stock.ship_out(session, line.product_id, line.quantity)
                stock.stage_stock_events(
                    session, level, available_before=level.available, low_threshold=low_threshold
                )
            add_event(
                session,
                source=stock.EVENT_SOURCE,
                type="reservation.committed",
                subject=str(order_id),
                data={"order_id": str(order_id)},
            )
            log.info("reservation_committed", order_id=str(order_id))
            # The header's row came back from the update and the lines are read: no reading back.
            total_cents, currency, created_at = header
            return _reservation_out(
                order_id,
                ReservationStatus.COMMITTED.value,
                [(line.product_id, line.quantity, line.unit_price_cents) for line in lines],
                total_cents=total_cents,
                currency=currency,
                created_at=created_at,
            )
        status = await _current_status(session, order_id)
        if status is None:
            raise _not_found(order_id)
        if status is ReservationStatus.RELEASED:
            raise _released(order_id)
        reservation = await _load(session, order_id)
    assert reservation is not None
    return reservation
