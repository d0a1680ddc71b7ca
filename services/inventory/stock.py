"""Stock counters: conditional updates of on_hand/reserved and the events they stage.

Every change is a single `UPDATE ... WHERE <guard>` whose RETURNING row says whether it applied, so
concurrent writers can never push a product past its invariant 0 <= reserved <= on_hand.

The statements are Core, built once here with bind parameters: each call only binds its values,
without building a statement and its cache key again, nor passing through the ORM. They are
synchronous: a call runs its whole transaction in one greenlet (see `reservations`).
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from typing import Any

from sqlalchemy import BindParameter, ColumnElement, Connection, Integer, Table, Update, bindparam, update
from sqlmodel.ext.asyncio.session import AsyncSession

from services.inventory.models import InventoryProduct
from services.kit.models import UTCDateTime, utcnow
from services.kit.outbox import add_event

EVENT_SOURCE = "inventory"

PRODUCTS: Table = InventoryProduct.__table__  # type: ignore[attr-defined]
_on_hand = PRODUCTS.c.on_hand
_reserved = PRODUCTS.c.reserved
_quantity: BindParameter[int] = bindparam("quantity", type_=Integer)


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


def _stock_update(guard: ColumnElement[bool], values: dict[str, Any]) -> Update:
    return (
        update(PRODUCTS)
        .where(PRODUCTS.c.id == bindparam("product_id"), guard)
        .values(**values, updated_at=bindparam("now", type_=UTCDateTime))
        .returning(PRODUCTS.c.id, PRODUCTS.c.sku, PRODUCTS.c.name, _on_hand, _reserved)
    )


_HOLD = _stock_update(_on_hand - _reserved >= _quantity, {"reserved": _reserved + _quantity})
_GIVE_BACK = _stock_update(_reserved >= _quantity, {"reserved": _reserved - _quantity})
_SHIP_OUT = _stock_update(
    _reserved >= _quantity, {"on_hand": _on_hand - _quantity, "reserved": _reserved - _quantity}
)
_SET_ON_HAND = _stock_update(
    _reserved <= bindparam("target_on_hand"), {"on_hand": bindparam("target_on_hand")}
)


def _apply(connection: Connection, statement: Update, params: dict[str, Any]) -> StockLevel | None:
    row = connection.execute(statement, {**params, "now": utcnow()}).first()
    return None if row is None else StockLevel(*row)


def hold(connection: Connection, product_id: uuid.UUID, quantity: int) -> StockLevel | None:
    """Reserve units if that many are available; None when they are not."""
    return _apply(connection, _HOLD, {"product_id": product_id, "quantity": quantity})


def give_back(connection: Connection, product_id: uuid.UUID, quantity: int) -> StockLevel:
    """Return reserved units to availability (a released reservation)."""
    level = _apply(connection, _GIVE_BACK, {"product_id": product_id, "quantity": quantity})
    return _applied(level, product_id)


def ship_out(connection: Connection, product_id: uuid.UUID, quantity: int) -> StockLevel:
    """Reserved units leave the warehouse (a committed reservation): on_hand and reserved both drop."""
    level = _apply(connection, _SHIP_OUT, {"product_id": product_id, "quantity": quantity})
    return _applied(level, product_id)


def set_on_hand(connection: Connection, product_id: uuid.UUID, on_hand: int) -> StockLevel | None:
    """Set the on-hand count unless that would leave fewer units than are reserved; None then."""
    return _apply(connection, _SET_ON_HAND, {"product_id": product_id, "target_on_hand": on_hand})


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
