"""POST /charges/{key}/refund: full, partial, over, idempotent, and voids of charges that never ran."""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime
from typing import Any

import httpx
import pytest
from sqlalchemy import update

from services.payments.models import Payment
from tests.services.payments.conftest import (
    DECLINED_CARD,
    TRANSIENT_ALWAYS_CARD,
    add_card,
    captured_payment,
    charge_body,
    post_charge,
    post_refund,
    sql,
)
from tests.support.identity import as_admin, as_customer, as_service


async def _kinds(client: httpx.AsyncClient, payment_id: str) -> list[tuple[str, int]]:
    response = await client.get(f"/payments/{payment_id}/transactions", headers=as_service())
    assert response.status_code == 200
    return [(item["kind"], item["amount_cents"]) for item in response.json()["items"]]


async def test_full_refund_by_default_and_idempotent(payments: httpx.AsyncClient) -> None:
    key, payment, _ = await captured_payment(payments, 1500)
    first = await post_refund(payments, key, "refund-1")
    assert first.status_code == 200
    refunded = first.json()
    assert (refunded["id"], refunded["status"], refunded["refunded_cents"]) == (
        payment["id"],
        "refunded",
        1500,
    )
    again = await post_refund(payments, key, "refund-1")
    assert again.status_code == 200
    assert again.json() == refunded
    assert await _kinds(payments, payment["id"]) == [("charge", 1500), ("refund", 1500)]
    # A compensation replayed under a new key finds nothing left and refunds nothing.
    nothing_left = await post_refund(payments, key, "refund-2")
    assert nothing_left.status_code == 200
    assert nothing_left.json()["refunded_cents"] == 1500
    assert await _kinds(payments, payment["id"]) == [("charge", 1500), ("refund", 1500)]
    # The charge key still replays the (now refunded) payment.
    replay = await post_charge(payments, key, await _charge_body_of(payments, key))
    assert replay.status_code == 200
    assert replay.json()["status"] == "refunded"

    events = await sql(payments, "SELECT data FROM outbox WHERE type = 'payment.refunded'")
    assert len(events) == 1
    data = events[0][0] if isinstance(events[0][0], dict) else json.loads(events[0][0])
    assert data == {
        "payment_id": payment["id"],
        "order_id": payment["order_id"],
        "user_id": payment["user_id"],
        "amount_cents": 1500,
        "currency": "EUR",
        "refunded_cents": 1500,
    }


async def _charge_body_of(client: httpx.AsyncClient, key: str) -> dict[str, Any]:
    rows = await sql(
        client,
        "SELECT order_id, user_id, payment_method_id, amount_cents FROM payments"
        " WHERE idempotency_key = :key",
        key=key,
    )
    order_id, user_id, method_id, amount = rows[0]
    return charge_body(
        uuid.UUID(str(user_id)), str(uuid.UUID(str(method_id))), amount, uuid.UUID(str(order_id))
    )


async def test_partial_refunds_then_over_refund(payments: httpx.AsyncClient) -> None:
    key, payment, _ = await captured_payment(payments, 1000)
    too_much = await post_refund(payments, key, "r-0", 1001)
    assert too_much.status_code == 409
    assert too_much.json()["code"] == "refund_exceeds_capture"
    partial = await post_refund(payments, key, "r-1", 300)
    assert partial.status_code == 200
    assert (partial.json()["status"], partial.json()["refunded_cents"]) == ("captured", 300)
    over = await post_refund(payments, key, "r-2", 701)
    assert over.status_code == 409
    assert over.json()["code"] == "refund_exceeds_capture"
    rest = await post_refund(payments, key, "r-3")
    assert (rest.json()["status"], rest.json()["refunded_cents"]) == ("refunded", 1000)
    assert await _kinds(payments, payment["id"]) == [("charge", 1000), ("refund", 300), ("refund", 700)]
    # The refused refund left no trace, and its key can still be used once there is something to refund.
    assert await sql(payments, "SELECT count(*) FROM payment_transactions WHERE idempotency_key = 'r-2'") == [
        (0,)
    ]


async def test_refund_key_reused_with_other_amount_is_422(payments: httpx.AsyncClient) -> None:
    key, _, _ = await captured_payment(payments, 1000)
    assert (await post_refund(payments, key, "r", 100)).status_code == 200
    reused = await post_refund(payments, key, "r", 200)
    assert reused.status_code == 422
    assert reused.json()["code"] == "idempotency_key_reused"
    other_key, _, _ = await captured_payment(payments, 1000)
    elsewhere = await post_refund(payments, other_key, "r", 100)
    assert elsewhere.status_code == 422
    assert elsewhere.json()["code"] == "idempotency_key_reused"


async def test_void_before_charge_refuses_the_late_charge(payments: httpx.AsyncClient) -> None:
    voided = await post_refund(payments, "order-9:charge", "order-9:refund")
    assert voided.status_code == 200
    body = voided.json()
    assert (body["status"], body["refunded_cents"], body["amount_cents"]) == ("voided", 0, None)
    assert (await post_refund(payments, "order-9:charge", "order-9:refund")).json() == body

    user = uuid.uuid4()
    card = await add_card(payments, user)
    late = await post_charge(payments, "order-9:charge", charge_body(user, card["id"]))
    assert late.status_code == 409
    assert late.json()["code"] == "charge_voided"
    assert await sql(payments, "SELECT count(*) FROM payment_provider_ledger") == [(0,)]
    # Voids are bookkeeping: a customer never sees them.
    assert (await payments.get(f"/payments/{body['id']}", headers=as_customer(user))).status_code == 404
    assert (await payments.get(f"/payments/{body['id']}", headers=as_admin())).json()["status"] == "voided"


async def test_refund_of_a_pending_charge_voids_it_at_the_provider(payments: httpx.AsyncClient) -> None:
    user = uuid.uuid4()
    card = await add_card(payments, user, TRANSIENT_ALWAYS_CARD)
    body = charge_body(user, card["id"])
    assert (await post_charge(payments, "stuck", body)).status_code == 503
    voided = await post_refund(payments, "stuck", "undo")
    assert voided.status_code == 200
    assert (voided.json()["status"], voided.json()["amount_cents"]) == ("voided", 1000)
    assert await sql(payments, "SELECT status FROM payment_provider_ledger") == [("voided",)]
    late = await post_charge(payments, "stuck", body)
    assert late.status_code == 409
    assert late.json()["code"] == "charge_voided"


async def test_refund_of_a_pending_charge_the_provider_did_capture(payments: httpx.AsyncClient) -> None:
    """The provider captured but the answer was lost: the refund records that capture, then refunds it."""
    user = uuid.uuid4()
    card = await add_card(payments, user, TRANSIENT_ALWAYS_CARD)
    assert (await post_charge(payments, "half-done", charge_body(user, card["id"], 800))).status_code == 503
    await sql(payments, "UPDATE payment_provider_ledger SET status = 'captured', provider_ref = 'ch_x'")
    refunded = await post_refund(payments, "half-done", "undo")
    assert refunded.status_code == 200
    assert (refunded.json()["status"], refunded.json()["refunded_cents"]) == ("refunded", 800)
    assert await _kinds(payments, refunded.json()["id"]) == [("charge", 800), ("refund", 800)]


async def test_refund_while_the_charge_is_in_flight_is_503(payments: httpx.AsyncClient) -> None:
    user = uuid.uuid4()
    card = await add_card(payments, user, TRANSIENT_ALWAYS_CARD)
    assert (await post_charge(payments, "busy", charge_body(user, card["id"]))).status_code == 503
    await sql(
        payments,
        update(Payment).values(lease_owner=uuid.uuid4(), lease_until=datetime(2999, 1, 1, tzinfo=UTC)),
    )
    response = await post_refund(payments, "busy", "undo")
    assert response.status_code == 503
    assert response.json()["code"] == "charge_in_progress"
    assert response.headers["retry-after"] == "1"
    assert await sql(payments, "SELECT status FROM payments") == [("pending",)]


async def test_refund_of_a_declined_charge_refunds_nothing(payments: httpx.AsyncClient) -> None:
    user = uuid.uuid4()
    card = await add_card(payments, user, DECLINED_CARD)
    assert (await post_charge(payments, "no", charge_body(user, card["id"]))).status_code == 402
    response = await post_refund(payments, "no", "undo")
    assert response.status_code == 200
    assert (response.json()["status"], response.json()["refunded_cents"]) == ("declined", 0)
    assert await sql(payments, "SELECT count(*) FROM payment_transactions WHERE kind = 'refund'") == [(0,)]


@pytest.mark.parametrize(
    "body",
    [{"amount_cents": 0}, {"amount_cents": -1}, {"amount_cents": "5"}, {"amount_cents": 1.5}, {"x": 1}],
)
async def test_bad_refund_bodies_are_422(payments: httpx.AsyncClient, body: dict[str, Any]) -> None:
    key, _, _ = await captured_payment(payments)
    response = await payments.post(
        f"/charges/{key}/refund", json=body, headers={**as_service(), "Idempotency-Key": "r"}
    )
    assert response.status_code == 422
    assert response.json()["code"] == "validation_error"


async def test_refund_input_errors(payments: httpx.AsyncClient) -> None:
    key, _, user = await captured_payment(payments)
    no_key = await payments.post(f"/charges/{key}/refund", json={}, headers=as_service())
    assert no_key.status_code == 400
    assert no_key.json()["code"] == "idempotency_key_required"
    malformed = await payments.post(
        f"/charges/{key}/refund",
        content=b"{",
        headers={**as_service(), "Idempotency-Key": "r", "content-type": "application/json"},
    )
    assert malformed.status_code == 400
    assert malformed.json()["code"] == "malformed_json"
    bad_charge_key = await payments.post(
        "/charges/has%20space/refund", json={}, headers={**as_service(), "Idempotency-Key": "r"}
    )
    assert bad_charge_key.status_code == 422
    # No body at all means "refund all that is left".
    no_body = await payments.post(f"/charges/{key}/refund", headers={**as_service(), "Idempotency-Key": "r"})
    assert no_body.status_code == 200
    assert no_body.json()["status"] == "refunded"
    for headers in (as_customer(user), as_admin()):
        forbidden = await payments.post(
            f"/charges/{key}/refund", json={}, headers={**headers, "Idempotency-Key": "r2"}
        )
        assert forbidden.status_code == 403
    assert (await payments.post(f"/charges/{key}/refund", json={})).status_code == 401


async def test_charge_keys_with_slashes_refund(payments: httpx.AsyncClient) -> None:
    user = uuid.uuid4()
    card = await add_card(payments, user)
    key = "order-1/charge_payment:1"
    assert (await post_charge(payments, key, charge_body(user, card["id"]))).status_code == 201
    response = await post_refund(payments, key, "order-1/refund")
    assert response.status_code == 200
    assert response.json()["status"] == "refunded"
