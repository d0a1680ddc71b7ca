"""GET /payments/{id}, its transactions, and GET /orders/{id}/payments: who sees what."""

from __future__ import annotations

import uuid

import httpx
import pytest

from tests.services.payments.conftest import (
    TRANSIENT_ALWAYS_CARD,
    add_card,
    captured_payment,
    charge_body,
    post_charge,
    post_refund,
    sql,
)
from tests.support.identity import as_admin, as_customer, as_service

PAYMENT_FIELDS = {
    "id",
    "order_id",
    "user_id",
    "amount_cents",
    "currency",
    "status",
    "refunded_cents",
    "decline_code",
    "authorized_until",
    "created_at",
}


async def test_payment_visibility(payments: httpx.AsyncClient) -> None:
    _, payment, owner = await captured_payment(payments, 2500)
    path = f"/payments/{payment['id']}"
    for headers in (as_customer(owner), as_admin(), as_service()):
        for suffix in ("", "/transactions"):
            response = await payments.get(path + suffix, headers=headers)
            assert response.status_code == 200, (headers, suffix)
    own = await payments.get(path, headers=as_customer(owner))
    assert set(own.json()) == PAYMENT_FIELDS
    assert own.json() == payment
    transactions = (await payments.get(path + "/transactions", headers=as_customer(owner))).json()
    assert [(t["kind"], t["amount_cents"]) for t in transactions["items"]] == [("charge", 2500)]
    assert set(transactions["items"][0]) == {"id", "kind", "amount_cents", "created_at"}

    for suffix in ("", "/transactions"):
        stranger = await payments.get(path + suffix, headers=as_customer(uuid.uuid4()))
        assert stranger.status_code == 404
        assert stranger.json()["code"] == "payment_not_found"
        assert (await payments.get(path + suffix)).status_code == 401
        unknown = await payments.get(f"/payments/{uuid.uuid4()}{suffix}", headers=as_admin())
        assert unknown.status_code == 404
        assert unknown.json()["code"] == "payment_not_found"
        assert (await payments.get(f"/payments/nope{suffix}", headers=as_admin())).status_code == 422


async def test_pending_payments_are_hidden_from_customers(payments: httpx.AsyncClient) -> None:
    user = uuid.uuid4()
    card = await add_card(payments, user, TRANSIENT_ALWAYS_CARD)
    assert (await post_charge(payments, "p", charge_body(user, card["id"]))).status_code == 503
    [(payment_id,)] = await sql(payments, "SELECT id FROM payments")
    payment_id = uuid.UUID(str(payment_id))
    assert (await payments.get(f"/payments/{payment_id}", headers=as_customer(user))).status_code == 404
    admin_view = await payments.get(f"/payments/{payment_id}", headers=as_admin())
    assert admin_view.json()["status"] == "pending"


async def test_order_payments_are_for_admins_and_the_saga(payments: httpx.AsyncClient) -> None:
    user = uuid.uuid4()
    card = await add_card(payments, user)
    order = uuid.uuid4()
    for attempt in range(3):
        body = charge_body(user, card["id"], 100 + attempt, order_id=order)
        assert (await post_charge(payments, f"o-{attempt}", body)).status_code == 201
    await post_refund(payments, "o-0", "o-0-refund")
    await captured_payment(payments)  # another order's payment stays out of the list

    first = await payments.get(f"/orders/{order}/payments?limit=2", headers=as_service())
    assert first.status_code == 200
    assert len(first.json()["items"]) == 2
    rest = await payments.get(
        f"/orders/{order}/payments", params={"cursor": first.json()["next_cursor"]}, headers=as_admin()
    )
    items = first.json()["items"] + rest.json()["items"]
    assert rest.json()["next_cursor"] is None
    assert sorted(item["amount_cents"] for item in items) == [100, 101, 102]
    assert sorted(item["status"] for item in items) == ["captured", "captured", "refunded"]

    forbidden = await payments.get(f"/orders/{order}/payments", headers=as_customer(user))
    assert forbidden.status_code == 403
    assert (await payments.get(f"/orders/{order}/payments")).status_code == 401
    empty = await payments.get(f"/orders/{uuid.uuid4()}/payments", headers=as_service())
    assert empty.json() == {"items": [], "next_cursor": None}


@pytest.mark.parametrize("query", ["limit=0", "limit=500", "cursor=bad!", "cursor=WyJ4IiwieSJd"])
async def test_order_payments_bad_paging_is_422(payments: httpx.AsyncClient, query: str) -> None:
    response = await payments.get(f"/orders/{uuid.uuid4()}/payments?{query}", headers=as_admin())
    assert response.status_code == 422
