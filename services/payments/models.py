"""Payments tables: payment methods, payments and their transactions, and the provider's vault and ledger.

The provider tables (`payment_provider_*`) stand for the card network's own systems: only the
simulator in `provider.py` reads or writes them.
"""

from __future__ import annotations

import uuid
from datetime import datetime

from sqlalchemy import ForeignKey, UniqueConstraint
from sqlmodel import Field, SQLModel

from services.kit.models import UTCDateTime, new_id, utcnow

KEY_LENGTH = 200
HASH_LENGTH = 64


class PaymentMethod(SQLModel, table=True):
    __tablename__ = "payment_methods"
    __table_args__ = (UniqueConstraint("token", name="uq_payment_methods_token"),)

    id: uuid.UUID = Field(default_factory=new_id, primary_key=True)
    user_id: uuid.UUID = Field(index=True)
    brand: str = Field(max_length=16)
    last4: str = Field(max_length=4)
    exp_month: int
    exp_year: int
    # Opaque provider token: the only handle on the card this service keeps.
    token: str = Field(max_length=64)
    created_at: datetime = Field(default_factory=utcnow, sa_type=UTCDateTime, nullable=False)


class Payment(SQLModel, table=True):
    """One charge or authorisation per idempotency key; a `voided` row may hold the key alone.

    A charge goes pending → captured | declined (→ refunded); an authorisation goes pending →
    authorized | declined, then authorized → captured (→ refunded) or authorized → voided.
    """

    __tablename__ = "payments"
    __table_args__ = (UniqueConstraint("idempotency_key", name="uq_payments_idempotency_key"),)

    id: uuid.UUID = Field(default_factory=new_id, primary_key=True)
    idempotency_key: str = Field(max_length=KEY_LENGTH)
    request_hash: str | None = Field(default=None, max_length=HASH_LENGTH)
    order_id: uuid.UUID | None = Field(default=None, index=True)
    user_id: uuid.UUID | None = Field(default=None, index=True)
    payment_method_id: uuid.UUID | None = Field(default=None)
    amount_cents: int | None = Field(default=None)
    currency: str | None = Field(default=None, max_length=3)
    status: str = Field(max_length=16)
    refunded_cents: int = Field(default=0)
    decline_code: str | None = Field(default=None, max_length=32)
    provider_ref: str | None = Field(default=None, max_length=64)
    # Set when an authorisation succeeds: the hold can be captured until then (kept once captured).
    authorized_until: datetime | None = Field(default=None, sa_type=UTCDateTime)
    # While a request talks to the provider it holds the lease; an expired lease may be taken over.
    lease_owner: uuid.UUID | None = Field(default=None)
    lease_until: datetime | None = Field(default=None, sa_type=UTCDateTime)
    created_at: datetime = Field(default_factory=utcnow, sa_type=UTCDateTime, nullable=False)
    updated_at: datetime = Field(default_factory=utcnow, sa_type=UTCDateTime, nullable=False)


class PaymentTransaction(SQLModel, table=True):
    """Money movements of a payment: its charge or decline, and each refund (unique by refund key)."""

    __tablename__ = "payment_transactions"
    __table_args__ = (UniqueConstraint("idempotency_key", name="uq_payment_transactions_idempotency_key"),)

    id: uuid.UUID = Field(default_factory=new_id, primary_key=True)
    payment_id: uuid.UUID = Field(sa_column_args=[ForeignKey("payments.id")], index=True)
    kind: str = Field(max_length=16)
    amount_cents: int
    idempotency_key: str | None = Field(default=None, max_length=KEY_LENGTH)
    request_hash: str | None = Field(default=None, max_length=HASH_LENGTH)
    created_at: datetime = Field(default_factory=utcnow, sa_type=UTCDateTime, nullable=False)


class ProviderVaultEntry(SQLModel, table=True):
    """Provider side: token → keyed fingerprint of the number and its test-card behaviour class."""

    __tablename__ = "payment_provider_vault"

    token: str = Field(primary_key=True, max_length=64)
    fingerprint: str = Field(max_length=HASH_LENGTH, index=True)
    behaviour: str = Field(max_length=32)
    created_at: datetime = Field(default_factory=utcnow, sa_type=UTCDateTime, nullable=False)


class ProviderLedgerEntry(SQLModel, table=True):
    """Provider side: one row per charge key, so a repeated capture never captures twice.

    A charge goes pending → captured | declined; an authorisation pending → authorized | declined,
    then authorized → captured (until `expires_at`) or voided.
    """

    __tablename__ = "payment_provider_ledger"

    charge_key: str = Field(primary_key=True, max_length=KEY_LENGTH)
    token: str | None = Field(default=None, max_length=64)
    amount_cents: int | None = Field(default=None)
    currency: str | None = Field(default=None, max_length=3)
    status: str = Field(max_length=16)
    attempts: int = Field(default=0)
    provider_ref: str | None = Field(default=None, max_length=64)
    decline_code: str | None = Field(default=None, max_length=32)
    # An authorisation can be captured until then; null for a plain charge.
    expires_at: datetime | None = Field(default=None, sa_type=UTCDateTime)
    created_at: datetime = Field(default_factory=utcnow, sa_type=UTCDateTime, nullable=False)
    updated_at: datetime = Field(default_factory=utcnow, sa_type=UTCDateTime, nullable=False)
