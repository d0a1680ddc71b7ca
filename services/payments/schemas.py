"""Request and response bodies of the payments API."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, StrictInt, StrictStr

MAX_AMOUNT_CENTS = 1_000_000_000

AmountCents = Annotated[StrictInt, Field(ge=1, le=MAX_AMOUNT_CENTS)]
Currency = Annotated[StrictStr, Field(pattern=r"^[A-Z]{3}$")]
PaymentStatus = Literal["pending", "authorized", "captured", "declined", "refunded", "voided"]
TransactionKind = Literal["charge", "refund", "decline", "authorization", "capture", "void"]


class PaymentMethodCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    # Spaces and dashes are allowed here; the digits are checked (length, Luhn) by the route.
    card_number: StrictStr = Field(min_length=1, max_length=40)
    exp_month: StrictInt = Field(ge=1, le=12)
    exp_year: StrictInt = Field(ge=2000, le=2100)
    cvc: StrictStr = Field(pattern=r"^[0-9]{3,4}$")


class PaymentMethodOut(BaseModel):
    id: uuid.UUID
    user_id: uuid.UUID
    brand: str
    last4: str
    exp_month: int
    exp_year: int
    created_at: datetime


class ChargeCreate(BaseModel):
    """The body of a charge, and of an authorisation (which holds the amount until it is captured)."""

    model_config = ConfigDict(extra="forbid")

    order_id: uuid.UUID
    user_id: uuid.UUID
    payment_method_id: uuid.UUID
    amount_cents: AmountCents
    currency: Currency


class RefundCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    amount_cents: AmountCents | None = None


class PaymentOut(BaseModel):
    """A payment.

    `authorized_until` is set on an authorisation once it holds the amount: it can be captured until
    then. A `voided` one that never ran (its key voided before anything was charged) carries only
    id and status.
    """

    id: uuid.UUID
    order_id: uuid.UUID | None
    user_id: uuid.UUID | None
    amount_cents: int | None
    currency: str | None
    status: PaymentStatus
    refunded_cents: int
    decline_code: str | None
    authorized_until: datetime | None
    created_at: datetime


class TransactionOut(BaseModel):
    id: uuid.UUID
    kind: TransactionKind
    amount_cents: int
    created_at: datetime


class TransactionList(BaseModel):
    items: list[TransactionOut]
