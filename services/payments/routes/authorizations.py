"""Saga-only routes: authorise a payment (hold the amount), then capture it or void it, all by key."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Path, Response

from services.kit.errors import problem_responses
from services.kit.identity import ServiceDep
from services.payments.charges import PaymentRecord
from services.payments.deps import IDEMPOTENCY_KEY_PATTERN, IdempotencyKeyDep, LedgerDep
from services.payments.schemas import ChargeCreate, PaymentOut

router = APIRouter(tags=["authorizations"])

AuthorizationKey = Annotated[
    str,
    Path(
        pattern=IDEMPOTENCY_KEY_PATTERN,
        max_length=200,
        description="The Idempotency-Key the authorisation was made with.",
    ),
]


@router.post(
    "/authorizations",
    status_code=201,
    response_model=PaymentOut,
    summary="Authorise a payment method: hold the amount (201 authorized; 200 when the key was already)",
    responses=problem_responses(400, 401, 402, 403, 409, 422, 503),
)
async def create_authorization(
    _: ServiceDep, key: IdempotencyKeyDep, body: ChargeCreate, ledger: LedgerDep, response: Response
) -> PaymentRecord:
    return (await ledger.authorize(key, body)).answered(response)


@router.post(
    "/authorizations/{authorization_key:path}/capture",
    response_model=PaymentOut,
    summary="Capture an authorisation: exactly the authorised amount, once",
    responses=problem_responses(401, 402, 403, 404, 409, 422, 503),
)
async def capture_authorization(
    _: ServiceDep, authorization_key: AuthorizationKey, ledger: LedgerDep
) -> PaymentRecord:
    return await ledger.capture(authorization_key)


@router.post(
    "/authorizations/{authorization_key:path}/void",
    response_model=PaymentOut,
    summary="Release what the key holds: void the authorisation, or refund its capture in full",
    responses=problem_responses(401, 403, 422, 503),
)
async def void_authorization(
    _: ServiceDep, authorization_key: AuthorizationKey, ledger: LedgerDep
) -> PaymentRecord:
    return await ledger.void(authorization_key)
