"""POST /payment-methods and GET /users/{id}/payment-methods."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Any

import httpx
import pytest
from sqlalchemy import MetaData, select

from tests.services.payments.conftest import (
    NEXT_YEAR,
    OK_CARD,
    TRANSIENT_TWICE_CARD,
    add_card,
    charge_body,
    post_charge,
    post_refund,
)
from tests.support.identity import as_admin, as_customer, as_service


def _card(number: str = OK_CARD, **overrides: Any) -> dict[str, Any]:
    return {"card_number": number, "exp_month": 12, "exp_year": NEXT_YEAR, "cvc": "123", **overrides}


async def test_add_card_returns_token_view_only(payments: httpx.AsyncClient) -> None:
    user = uuid.uuid4()
    response = await payments.post(
        "/payment-methods", json=_card("4242 4242-4242 4242", cvc="1234"), headers=as_customer(user)
    )
    assert response.status_code == 201
    body = response.json()
    assert set(body) == {"id", "user_id", "brand", "last4", "exp_month", "exp_year", "created_at"}
    assert body["user_id"] == str(user)
    assert (body["brand"], body["last4"], body["exp_month"], body["exp_year"]) == (
        "visa",
        "4242",
        12,
        NEXT_YEAR,
    )
    assert body["created_at"].endswith("Z")
    uuid.UUID(body["id"])
    assert OK_CARD not in response.text


@pytest.mark.parametrize(
    ("number", "brand"),
    [("5555555555554444", "mastercard"), ("378282246310005", "amex"), ("6011111111111117", "discover")],
)
async def test_brand_is_detected(payments: httpx.AsyncClient, number: str, brand: str) -> None:
    card = await add_card(payments, uuid.uuid4(), number)
    assert (card["brand"], card["last4"]) == (brand, number[-4:])


async def test_card_number_errors_never_echo_the_number(payments: httpx.AsyncClient) -> None:
    user = as_customer(uuid.uuid4())
    cases = {
        "4242424242424241": "invalid_card_number",  # Luhn
        "4242abcd42424242": "invalid_card_number",
        "42424242424": "invalid_card_number",  # 11 digits
        "42424242424242424242": "invalid_card_number",  # 20 digits
        "4242" * 11: "validation_error",  # over the field's bound
    }
    for number, code in cases.items():
        response = await payments.post("/payment-methods", json=_card(number), headers=user)
        assert response.status_code == 422, number
        assert response.headers["content-type"] == "application/problem+json"
        assert response.json()["code"] == code
        assert number not in response.text
    # A valid number with an invalid field elsewhere is not echoed either.
    response = await payments.post("/payment-methods", json=_card(cvc="12"), headers=user)
    assert response.status_code == 422
    assert OK_CARD not in response.text


async def test_expiry_boundary_this_month_is_valid_last_month_is_expired(payments: httpx.AsyncClient) -> None:
    user = as_customer(uuid.uuid4())
    now = datetime.now(UTC)
    last_month = (now.month - 1, now.year) if now.month > 1 else (12, now.year - 1)
    ok = await payments.post(
        "/payment-methods", json=_card(exp_month=now.month, exp_year=now.year), headers=user
    )
    assert ok.status_code == 201
    expired = await payments.post(
        "/payment-methods", json=_card(exp_month=last_month[0], exp_year=last_month[1]), headers=user
    )
    assert expired.status_code == 422
    assert expired.json()["code"] == "card_expired"
    assert OK_CARD not in expired.text


@pytest.mark.parametrize(
    "overrides",
    [
        {"cvc": "12"},
        {"cvc": "12345"},
        {"cvc": "12a"},
        {"cvc": 123},
        {"exp_month": 0},
        {"exp_month": 13},
        {"exp_month": "12"},
        {"exp_year": 1999},
        {"exp_year": 12.0},
        {"card_number": 4242424242424242},
        {"card_number": None},
        {"nickname": "extra field"},
    ],
)
async def test_schema_violations_are_422(payments: httpx.AsyncClient, overrides: dict[str, Any]) -> None:
    response = await payments.post(
        "/payment-methods", json=_card(**overrides), headers=as_customer(uuid.uuid4())
    )
    assert response.status_code == 422
    assert response.json()["code"] == "validation_error"
    assert OK_CARD not in response.text


async def test_missing_fields_and_malformed_json(payments: httpx.AsyncClient) -> None:
    user = as_customer(uuid.uuid4())
    missing = await payments.post("/payment-methods", json={"card_number": OK_CARD}, headers=user)
    assert missing.status_code == 422
    assert OK_CARD not in missing.text
    malformed = await payments.post(
        "/payment-methods",
        content=b'{"card_number": "4242424242424242", ',
        headers={**user, "content-type": "application/json"},
    )
    assert malformed.status_code == 400
    assert malformed.json()["code"] == "malformed_json"
    assert OK_CARD not in malformed.text


async def test_only_customers_add_cards(payments: httpx.AsyncClient) -> None:
    assert (await payments.post("/payment-methods", json=_card())).status_code == 401
    for headers in (as_admin(), as_service()):
        response = await payments.post("/payment-methods", json=_card(), headers=headers)
        assert response.status_code == 403
        assert response.json()["code"] == "forbidden"


async def test_list_is_self_or_admin_and_paginates(payments: httpx.AsyncClient) -> None:
    user, other = uuid.uuid4(), uuid.uuid4()
    created = [await add_card(payments, user, "5555555555554444") for _ in range(3)]
    await add_card(payments, other)
    first = await payments.get(f"/users/{user}/payment-methods?limit=2", headers=as_customer(user))
    assert first.status_code == 200
    page = first.json()
    assert len(page["items"]) == 2
    assert page["next_cursor"]
    second = await payments.get(
        f"/users/{user}/payment-methods",
        params={"limit": 2, "cursor": page["next_cursor"]},
        headers=as_customer(user),
    )
    rest = second.json()
    assert rest["next_cursor"] is None
    ids = [item["id"] for item in page["items"] + rest["items"]]
    assert sorted(ids) == sorted(card["id"] for card in created)
    assert all("token" not in item for item in page["items"])

    admin = await payments.get(f"/users/{user}/payment-methods", headers=as_admin())
    assert len(admin.json()["items"]) == 3
    foreign = await payments.get(f"/users/{user}/payment-methods", headers=as_customer(other))
    assert foreign.status_code == 404
    assert foreign.json()["code"] == "user_not_found"
    assert (await payments.get(f"/users/{user}/payment-methods")).status_code == 401
    empty = await payments.get(f"/users/{uuid.uuid4()}/payment-methods", headers=as_admin())
    assert empty.json() == {"items": [], "next_cursor": None}


@pytest.mark.parametrize("query", ["limit=0", "limit=201", "limit=x", "cursor=%25%25%25", "cursor=WyJ4Il0"])
async def test_list_bad_paging_is_422(payments: httpx.AsyncClient, query: str) -> None:
    user = uuid.uuid4()
    response = await payments.get(f"/users/{user}/payment-methods?{query}", headers=as_customer(user))
    assert response.status_code == 422


async def test_list_malformed_user_id_is_422(payments: httpx.AsyncClient) -> None:
    response = await payments.get("/users/not-a-uuid/payment-methods", headers=as_admin())
    assert response.status_code == 422


async def test_card_number_is_never_stored(payments: httpx.AsyncClient) -> None:
    """After cards, charges and refunds, no row of any table contains a card number."""
    user = uuid.uuid4()
    numbers = [OK_CARD, TRANSIENT_TWICE_CARD, "378282246310005"]
    cards = [await add_card(payments, user, number) for number in numbers]
    await post_charge(payments, "k-1", charge_body(user, cards[0]["id"]))
    await post_charge(payments, "k-2", charge_body(user, cards[1]["id"]))
    await post_refund(payments, "k-1", "r-1")

    database = payments.app.state.db  # type: ignore[attr-defined]
    metadata = MetaData()
    dump: list[str] = []
    async with database.engine.connect() as conn:
        await conn.run_sync(metadata.reflect)
        assert {"payment_methods", "payment_provider_vault", "payments", "outbox"} <= set(metadata.tables)
        for table in metadata.tables.values():
            rows = (await conn.execute(select(table))).all()
            dump.extend(repr(tuple(row)) for row in rows)
    text = "\n".join(dump)
    assert "pm_tok_" in text  # the dump did see the tokenised rows
    for number in numbers:
        assert number not in text
        assert number[:-4] not in text
