"""Inventory tables: products with their stock counters, and reservations with their priced lines."""

from __future__ import annotations

import uuid
from datetime import datetime
from enum import StrEnum

from sqlalchemy import BigInteger, CheckConstraint, Index, UniqueConstraint
from sqlmodel import Field, SQLModel

from services.kit.models import UTCDateTime, new_id, utcnow


class ReservationStatus(StrEnum):
    RESERVED = "reserved"
    RELEASED = "released"
    COMMITTED = "committed"


class InventoryProduct(SQLModel, table=True):
    __tablename__ = "inventory_products"
    __table_args__ = (
        UniqueConstraint("sku", name="uq_inventory_products_sku"),
        # The stock invariant 0 <= reserved <= on_hand, enforced by the database as a last line of
        # defence behind the conditional updates.
        CheckConstraint("on_hand >= 0", name="ck_inventory_products_on_hand_nonnegative"),
        CheckConstraint("reserved >= 0", name="ck_inventory_products_reserved_nonnegative"),
        CheckConstraint("reserved <= on_hand", name="ck_inventory_products_reserved_within_on_hand"),
        CheckConstraint("price_cents >= 0", name="ck_inventory_products_price_nonnegative"),
        Index("ix_inventory_products_created_at_id", "created_at", "id"),
    )

    id: uuid.UUID = Field(default_factory=new_id, primary_key=True)
    sku: str = Field(max_length=64)
    name: str = Field(max_length=200)
    description: str = Field(default="", max_length=5000)
    price_cents: int = Field(sa_type=BigInteger)
    currency: str = Field(max_length=3)
    on_hand: int = Field(default=0)
    reserved: int = Field(default=0)
    created_at: datetime = Field(default_factory=utcnow, sa_type=UTCDateTime, nullable=False)
    updated_at: datetime = Field(default_factory=utcnow, sa_type=UTCDateTime, nullable=False)

    @property
    def available(self) -> int:
        return self.on_hand - self.reserved


class InventoryReservation(SQLModel, table=True):
    """One per order id; a `released` row without lines is a tombstone that refuses a late reserve."""

    __tablename__ = "inventory_reservations"
    __table_args__ = (
        CheckConstraint(
            "status IN ('reserved', 'released', 'committed')", name="ck_inventory_reservations_status"
        ),
    )

    order_id: uuid.UUID = Field(primary_key=True)
    status: str = Field(max_length=16)
    total_cents: int = Field(default=0, sa_type=BigInteger)
    currency: str | None = Field(default=None, max_length=3)
    created_at: datetime = Field(default_factory=utcnow, sa_type=UTCDateTime, nullable=False)
    updated_at: datetime = Field(default_factory=utcnow, sa_type=UTCDateTime, nullable=False)


class InventoryReservationLine(SQLModel, table=True):
    __tablename__ = "inventory_reservation_lines"

    order_id: uuid.UUID = Field(foreign_key="inventory_reservations.order_id", primary_key=True)
    product_id: uuid.UUID = Field(foreign_key="inventory_products.id", primary_key=True)
    quantity: int
    # The price when the stock was reserved: later price changes never reprice an order.
    unit_price_cents: int = Field(sa_type=BigInteger)
