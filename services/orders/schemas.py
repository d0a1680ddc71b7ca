"""Request and response bodies of the orders service."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from services.orders.domain import CancelReason, Line, OrderStatus

Quantity = Annotated[int, Field(strict=True, ge=1, le=1000)]
Cents = Annotated[int, Field(strict=True, ge=0, le=10**15)]
CommandId = Annotated[str, Field(min_length=1, max_length=200)]
ExpectedVersion = Annotated[int | None, Field(default=None, strict=True, ge=1, le=2**31 - 1)]
MAX_LINES = 100


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class OrderLineIn(_Strict):
    product_id: uuid.UUID
    quantity: Quantity

    def to_line(self) -> Line:
        return Line(self.product_id, self.quantity)


class PricedLineIn(_Strict):
    product_id: uuid.UUID
    quantity: Quantity
    unit_price_cents: Cents

    def to_line(self) -> Line:
        return Line(self.product_id, self.quantity, self.unit_price_cents)


OrderLines = Annotated[list[OrderLineIn], Field(min_length=1, max_length=MAX_LINES)]


class PlaceOrderIn(_Strict):
    items: OrderLines
    payment_method_id: uuid.UUID


class OrderAccepted(BaseModel):
    id: uuid.UUID
    status: OrderStatus
    workflow_id: str


class OrderItemOut(BaseModel):
    product_id: uuid.UUID
    quantity: int
    unit_price_cents: int | None


class OrderOut(BaseModel):
    id: uuid.UUID
    user_id: uuid.UUID
    status: OrderStatus
    items: list[OrderItemOut]
    total_cents: int | None
    currency: str | None
    payment_id: uuid.UUID | None
    cancel_reason: CancelReason | None
    version: int
    created_at: datetime
    updated_at: datetime


class OrdersPage(BaseModel):
    """A page of the admin listing: `next_cursor` fetches the next one, null on the last."""

    items: list[OrderOut]
    next_cursor: str | None = None


class OrderEventOut(BaseModel):
    version: int
    type: str
    data: dict[str, Any]
    occurred_at: datetime


class StatusChangeIn(_Strict):
    status: OrderStatus


class _Command(_Strict):
    command_id: CommandId
    expected_version: ExpectedVersion


class CreateCommand(_Command):
    type: Literal["create"]
    user_id: uuid.UUID
    items: OrderLines
    payment_method_id: uuid.UUID


class StartCommand(_Command):
    """The saga's first step: its workflow runs for this order (written by POST /orders)."""

    type: Literal["start"]


class AwaitReviewCommand(_Command):
    type: Literal["await_review"]
    # The payment the saga authorised before the review; recorded on the order when given.
    payment_id: uuid.UUID | None = None


class ConfirmCommand(_Command):
    type: Literal["confirm"]
    items: Annotated[list[PricedLineIn], Field(min_length=1, max_length=MAX_LINES)]
    total_cents: Cents
    currency: Annotated[str, Field(pattern=r"^[A-Z]{3}$")]
    payment_id: uuid.UUID


class CancelCommand(_Command):
    type: Literal["cancel"]
    reason: CancelReason
    # The payment authorised before the cancel (voided or refunded by the saga), when there was one.
    payment_id: uuid.UUID | None = None


class ShipCommand(_Command):
    type: Literal["ship"]


class DeliverCommand(_Command):
    type: Literal["deliver"]


class UnfinishedOrderOut(BaseModel):
    id: uuid.UUID
    user_id: uuid.UUID
    status: OrderStatus
    updated_at: datetime
    saga_started_at: datetime


class UnfinishedOrdersOut(BaseModel):
    items: list[UnfinishedOrderOut]
    next_cursor: str | None = None


OrderCommandIn = Annotated[
    CreateCommand
    | StartCommand
    | AwaitReviewCommand
    | ConfirmCommand
    | CancelCommand
    | ShipCommand
    | DeliverCommand,
    Field(discriminator="type"),
]
