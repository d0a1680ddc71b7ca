"""Request and response bodies of the inventory API."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, StrictInt, StringConstraints

MAX_PRICE_CENTS = 10**9
MAX_STOCK = 10**7
MAX_LINES = 100
MAX_QUANTITY = 1000

Sku = Annotated[str, StringConstraints(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9._-]+$")]
ProductName = Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=200)]
Description = Annotated[str, StringConstraints(max_length=5000)]
Currency = Annotated[str, StringConstraints(pattern=r"^[A-Z]{3}$")]
# Strict ints: 12.5, "12" and true are refused rather than coerced, so money never passes a float.
PriceCents = Annotated[StrictInt, Field(ge=0, le=MAX_PRICE_CENTS)]
StockUnits = Annotated[StrictInt, Field(ge=0, le=MAX_STOCK)]
Quantity = Annotated[StrictInt, Field(ge=1, le=MAX_QUANTITY)]


class ProductCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    sku: Sku
    name: ProductName
    description: Description = ""
    price_cents: PriceCents
    currency: Currency
    stock: StockUnits = 0


class ProductOut(BaseModel):
    id: uuid.UUID
    sku: str
    name: str
    description: str
    price_cents: int
    currency: str
    available: int


class StockUpdate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    stock: StockUnits


class Availability(BaseModel):
    product_id: uuid.UUID
    on_hand: int
    reserved: int
    available: int


class ReservationLineIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    product_id: uuid.UUID
    quantity: Quantity


class ReservationCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    order_id: uuid.UUID
    lines: Annotated[list[ReservationLineIn], Field(min_length=1, max_length=MAX_LINES)]


class ReservationLineOut(BaseModel):
    product_id: uuid.UUID
    quantity: int
    unit_price_cents: int


class ReservationOut(BaseModel):
    order_id: uuid.UUID
    status: Literal["reserved", "released", "committed"]
    lines: list[ReservationLineOut]
    total_cents: int
    # Null only for the tombstone a release leaves for an order that was never reserved.
    currency: str | None
    created_at: datetime


class ReleaseOut(BaseModel):
    order_id: uuid.UUID
    status: Literal["released"]
