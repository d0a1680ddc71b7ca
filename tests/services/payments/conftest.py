"""Fixtures and helpers for the payments tests."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from sqlalchemy import Executable, text

from tests.support.identity import as_customer, as_service

OK_CARD = "4242424242424242"
DECLINED_CARD = "4000000000000002"
INSUFFICIENT_CARD = "4000000000009995"
TRANSIENT_TWICE_CARD = "4000000000000119"
TRANSIENT_ALWAYS_CARD = "4000000000000101"
NEXT_YEAR = 2099


@pytest.fixture
async def payments(service_client: Any) -> AsyncIterator[httpx.AsyncClient]:
    async with service_client("payments") as client:
        yield client


async def add_card(
    client: httpx.AsyncClient, user_id: uuid.UUID, number: str = OK_CARD, **overrides: Any
) -> dict[str, Any]:
    body = {"card_number": number, "exp_month": 12, "exp_year": NEXT_YEAR, "cvc": "123", **overrides}
    response = await client.post("/payment-methods", json=body, headers=as_customer(user_id))
    assert response.status_code == 201, response.text
    return dict(response.json())


def charge_body(
    user_id: uuid.UUID, method_id: str, amount_cents: int = 1000, order_id: uuid.UUID | None = None
) -> dict[str, Any]:
    return {
        "order_id": str(order_id or uuid.uuid4()),
        "user_id": str(user_id),
        "payment_method_id": method_id,
        "amount_cents": amount_cents,
        "currency": "EUR",
    }


async def post_charge(client: httpx.AsyncClient, key: str, body: dict[str, Any]) -> httpx.Response:
    return await client.post("/charges", json=body, headers={**as_service(), "Idempotency-Key": key})


async def post_refund(
    client: httpx.AsyncClient, charge_key: str, refund_key: str, amount_cents: int | None = None
) -> httpx.Response:
    body = {} if amount_cents is None else {"amount_cents": amount_cents}
    return await client.post(
        f"/charges/{charge_key}/refund", json=body, headers={**as_service(), "Idempotency-Key": refund_key}
    )


async def post_authorize(client: httpx.AsyncClient, key: str, body: dict[str, Any]) -> httpx.Response:
    return await client.post("/authorizations", json=body, headers={**as_service(), "Idempotency-Key": key})


async def post_capture(client: httpx.AsyncClient, key: str) -> httpx.Response:
    return await client.post(f"/authorizations/{key}/capture", headers=as_service())


async def post_void(client: httpx.AsyncClient, key: str) -> httpx.Response:
    return await client.post(f"/authorizations/{key}/void", headers=as_service())


async def captured_payment(
    client: httpx.AsyncClient, amount_cents: int = 1000
) -> tuple[str, dict[str, Any], uuid.UUID]:
    """A fresh user with a captured charge: (charge key, payment, user id)."""
    user = uuid.uuid4()
    card = await add_card(client, user)
    key = f"charge-{uuid.uuid4()}"
    response = await post_charge(client, key, charge_body(user, card["id"], amount_cents))
    assert response.status_code == 201, response.text
    return key, dict(response.json()), user


async def sql(client: httpx.AsyncClient, statement: str | Executable, **params: Any) -> list[Any]:
    """Run SQL on the service's own database (for checks no API exposes, and to stage crashes)."""
    database = client.app.state.db  # type: ignore[attr-defined]
    async with database.engine.begin() as conn:
        result = await conn.execute(text(statement) if isinstance(statement, str) else statement, params)
        return list(result.all()) if result.returns_rows else []
