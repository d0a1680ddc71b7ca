"""Stock counters: conditional updates of on_hand/reserved and the events they stage.

Every change is a single `UPDATE ... WHERE <guard>` whose RETURNING row says whether it applied, so
concurrent writers can never push a product past its invariant 0 <= reserved <= on_hand.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from typing import Any

from sqlalchemy import ColumnElement, update
from sqlmodel import col
from sqlmodel.ext.asyncio.session import AsyncSession

from services.inventory.models import InventoryProduct
from services.kit.models import utcnow
from services.kit.outbox import add_event

EVENT_SOURCE = "inventory"

_id_column = col(InventoryProduct.id)
_on_hand = col(InventoryProduct.on_hand)
_reserved = col(InventoryProduct.reserved)


@dataclass(frozen=True)
class StockLevel:
    product_id: uuid.UUID
    sku: str
    name: str
    on_hand: int
    reserved: int

    @property
    def available(self) -> int:
        return self.on_hand - self.reserved

    def as_event_data(self) -> dict[str, Any]:
        return {
            "product_id": str(self.product_id),
            "on_hand": self.on_hand,
            "reserved": self.reserved,
            "available": self.available,
        }


async def _apply(
    session: AsyncSession, product_id: uuid.UUID, guard: ColumnElement[bool], values: dict[str, Any]
) -> StockLevel | None:
    statement = (
        update(InventoryProduct)
        .where(_id_column == product_id, guard)
        .values(**values, updated_at=utcnow())
        .returning(_id_column, col(InventoryProduct.sku), col(InventoryProduct.name), _on_hand, _reserved)
        .execution_options(synchronize_session=False)
    )
    row = (await session.exec(statement)).first()
    return None if row is None else StockLevel(*row)


async def hold(session: AsyncSession, product_id: uuid.UUID, quantity: int) -> StockLevel | None:
    """Reserve units if that many are available; None when they are not."""
    return await _apply(
        session, product_id, _on_hand - _reserved >= quantity, {"reserved": _reserved + quantity}
    )


async def give_back(session: AsyncSession, product_id: uuid.UUID, quantity: int) -> StockLevel:
    """Return reserved units to availability (a released reservation)."""
    level = await _apply(session, product_id, _reserved >= quantity, {"reserved": _reserved - quantity})
    return _applied(level, product_id)


async def ship_out(session: AsyncSession, product_id: uuid.UUID, quantity: int) -> StockLevel:
    """Reserved units leave the warehouse (a committed reservation): on_hand and reserved both drop."""
    level = await _apply(
        session,
        product_id,
        _reserved >= quantity,
        {"on_hand": _on_hand - quantity, "reserved": _reserved - quantity},
    )
    return _applied(level, product_id)


async def set_on_hand(session: AsyncSession, product_id: uuid.UUID, on_hand: int) -> StockLevel | None:
    """Set the on-hand count unless that would leave fewer units than are reserved; None then."""
    return await _apply(session, product_id, _reserved <= on_hand, {"on_hand": on_hand})


def _applied(level: StockLevel | None, product_id: uuid.UUID) -> StockLevel:
    # A reservation's units are always held on its products, so a miss here is a broken invariant.
    if level is None:
        raise RuntimeError(f"reserved units of product {product_id} are missing")
    return level


def stage_stock_events(
    session: AsyncSession, level: StockLevel, *, available_before: int, low_threshold: int
) -> None:
    """`stock.changed` always; `stock.low` only on the change that crosses below the threshold."""
    subject = str(level.product_id)
    add_event(session, source=EVENT_SOURCE, type="stock.changed", subject=subject, data=level.as_event_data())
    if available_before >= low_threshold > level.available:
        add_event(
            session,
            source=EVENT_SOURCE,
            type="stock.low",
            subject=subject,
            data={**level.as_event_data(), "sku": level.sku, "name": level.name, "threshold": low_threshold},
        )
