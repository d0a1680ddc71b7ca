"""Saga-only routes: charge a payment method and refund (or void) a charge, both idempotent by key."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Path, Response

from services.kit.errors import problem_responses
from services.kit.identity import ServiceDep
from services.payments.charges import PaymentRecord
from services.payments.deps import IDEMPOTENCY_KEY_PATTERN, IdempotencyKeyDep, LedgerDep
from services.payments.schemas import ChargeCreate, PaymentOut, RefundCreate

router = APIRouter(tags=["charges"])


@router.post(
    "/charges",
    status_code=201,
    response_model=PaymentOut,
    summary="Charge a payment method (201 captured; 200 when the key was already captured)",
    responses=problem_responses(400, 401, 402, 403, 409, 422, 503),
)
async def create_charge(
    _: ServiceDep, key: IdempotencyKeyDep, body: ChargeCreate, ledger: LedgerDep, response: Response
) -> PaymentRecord:
    return (await ledger.charge(key, body)).answered(response)


@router.post(
    "/charges/{charge_key:path}/refund",
    response_model=PaymentOut,
    summary="Refund a charge (default: all that is left), or void it if it never ran",
    responses=problem_responses(400, 401, 403, 409, 422, 503),
)
async def refund_charge(
    _: ServiceDep,
    charge_key: Annotated[str, Path(pattern=IDEMPOTENCY_KEY_PATTERN, max_length=200)],
    key: IdempotencyKeyDep,
    ledger: LedgerDep,
    body: RefundCreate | None = None,
) -> PaymentRecord:
    amount = body.amount_cents if body is not None else None
    return await ledger.refund(charge_key, key, amount)
