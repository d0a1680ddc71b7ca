"""Request dependencies of the payments routes: the provider, the ledger and idempotency keys."""

from __future__ import annotations

import re
from typing import Annotated

from fastapi import Depends, Header, Request

from services.kit.db import SessionDep
from services.kit.errors import Problem
from services.payments.charges import PaymentLedger
from services.payments.provider import CardProvider
from services.payments.settings import Settings

IDEMPOTENCY_KEY_PATTERN = r"^[A-Za-z0-9._:/-]{1,200}$"
_VALID_KEY = re.compile(IDEMPOTENCY_KEY_PATTERN)


async def get_provider(request: Request) -> CardProvider:
    provider: CardProvider = request.app.state.provider
    return provider


ProviderDep = Annotated[CardProvider, Depends(get_provider)]


async def get_ledger(request: Request, session: SessionDep, provider: ProviderDep) -> PaymentLedger:
    settings: Settings = request.app.state.settings
    return PaymentLedger(
        session,
        request.app.state.db.engine,
        provider,
        method_tokens=request.app.state.method_tokens,
        lease_seconds=settings.charge_lease_seconds,
        authorization_validity_seconds=settings.authorization_validity_seconds,
    )


LedgerDep = Annotated[PaymentLedger, Depends(get_ledger)]


async def idempotency_key(
    key: Annotated[
        str | None,
        Header(
            alias="Idempotency-Key",
            description="1-200 characters of `[A-Za-z0-9._:/-]`.",
        ),
    ] = None,
) -> str:
    if key is None or not _VALID_KEY.match(key):
        raise Problem(
            400,
            "idempotency_key_required",
            "An Idempotency-Key header of 1-200 characters [A-Za-z0-9._:/-] is required.",
        )
    return key


IdempotencyKeyDep = Annotated[str, Depends(idempotency_key)]
