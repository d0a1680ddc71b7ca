"""POST /charges: test cards, idempotency, leases, and bad input."""

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
    INSUFFICIENT_CARD,
    OK_CARD,
    TRANSIENT_ALWAYS_CARD,
    TRANSIENT_TWICE_CARD,
    add_card,
    charge_body,
    post_charge,
    sql,
)
from tests.support.identity import as_admin, as_customer, as_service

FAR_FUTURE = datetime(2999, 1, 1, tzinfo=UTC)
LONG_AGO = datetime(2000, 1, 1, tzinfo=UTC)


async def _ledger(client: httpx.AsyncClient, key: str) -> list[Any]:
    return await sql(
        client, "SELECT status, attempts FROM payment_provider_ledger WHERE charge_key = :key", key=key
    )


async def test_ok_card_captures_once_and_replays(payments: httpx.AsyncClient) -> None:
    user = uuid.uuid4()
    card = await add_card(payments, user)
    body = charge_body(user, card["id"], 12345)
    first = await post_charge(payments, "order-1:charge", body)
    assert first.status_code == 201
    payment = first.json()
    assert payment["status"] == "captured"
    assert (payment["amount_cents"], payment["currency"], payment["refunded_cents"]) == (12345, "EUR", 0)
    assert (payment["order_id"], payment["user_id"], payment["decline_code"]) == (
        body["order_id"],
        str(user),
        None,
    )
    assert payment["created_at"].endswith("Z")

    again = await post_charge(payments, "order-1:charge", body)
    assert again.status_code == 200
    assert again.json() == payment

    assert await _ledger(payments, "order-1:charge") == [("captured", 1)]
    assert await sql(payments, "SELECT count(*) FROM payments") == [(1,)]
    transactions = await payments.get(f"/payments/{payment['id']}/transactions", headers=as_service())
    assert [(t["kind"], t["amount_cents"]) for t in transactions.json()["items"]] == [("charge", 12345)]
    events = await sql(payments, "SELECT type, data FROM outbox WHERE type = 'payment.captured'")
    assert len(events) == 1
    data = events[0][1] if isinstance(events[0][1], dict) else json.loads(events[0][1])
    assert data["payment_id"] == payment["id"]
    assert data["amount_cents"] == 12345
    assert OK_CARD not in str(data)


async def test_same_key_other_body_is_422(payments: httpx.AsyncClient) -> None:
    user = uuid.uuid4()
    card = await add_card(payments, user)
    body = charge_body(user, card["id"], 1000)
    assert (await post_charge(payments, "k", body)).status_code == 201
    reused = await post_charge(payments, "k", {**body, "amount_cents": 2000})
    assert reused.status_code == 422
    assert reused.json()["code"] == "idempotency_key_reused"
    assert await sql(payments, "SELECT amount_cents FROM payments") == [(1000,)]


@pytest.mark.parametrize(
    ("number", "code"), [(DECLINED_CARD, "card_declined"), (INSUFFICIENT_CARD, "insufficient_funds")]
)
async def test_declines_are_final_and_recorded(payments: httpx.AsyncClient, number: str, code: str) -> None:
    user = uuid.uuid4()
    card = await add_card(payments, user, number)
    body = charge_body(user, card["id"], 500)
    for _ in range(2):
        response = await post_charge(payments, "declined-key", body)
        assert response.status_code == 402
        problem = response.json()
        assert (problem["code"], problem["decline_code"]) == ("payment_declined", code)
        assert number not in response.text
    payment = await payments.get(f"/payments/{problem['payment_id']}", headers=as_customer(user))
    assert payment.json()["status"] == "declined"
    assert payment.json()["decline_code"] == code
    assert await _ledger(payments, "declined-key") == [("declined", 1)]
    transactions = await payments.get(f"/payments/{problem['payment_id']}/transactions", headers=as_admin())
    assert [t["kind"] for t in transactions.json()["items"]] == ["decline"]
    assert await sql(payments, "SELECT count(*) FROM outbox WHERE type = 'payment.declined'") == [(1,)]


async def test_transient_twice_card_survives_a_restart(service_client: Any) -> None:
    """0119 fails on the first two attempts of a key; the count lives in the database."""
    user = uuid.uuid4()
    async with service_client("payments") as first_process:
        card = await add_card(first_process, user, TRANSIENT_TWICE_CARD)
        body = charge_body(user, card["id"], 700)
        response = await post_charge(first_process, "flaky", body)
        assert response.status_code == 503
        assert response.json()["code"] == "provider_unavailable"
        assert response.headers["retry-after"] == "1"
        url = first_process.app.state.db.url  # type: ignore[attr-defined]
    async with service_client("payments", database_url=url) as restarted:
        second = await post_charge(restarted, "flaky", body)
        assert second.status_code == 503
        assert second.json()["code"] == "provider_unavailable"
        third = await post_charge(restarted, "flaky", body)
        assert third.status_code == 201
        assert third.json()["status"] == "captured"
        assert await _ledger(restarted, "flaky") == [("captured", 3)]
        # Another key with the same card starts its own count.
        other = await post_charge(restarted, "flaky-2", charge_body(user, card["id"], 700))
        assert other.status_code == 503


async def test_transient_always_card_never_captures(payments: httpx.AsyncClient) -> None:
    user = uuid.uuid4()
    card = await add_card(payments, user, TRANSIENT_ALWAYS_CARD)
    body = charge_body(user, card["id"])
    for _ in range(3):
        response = await post_charge(payments, "down", body)
        assert response.status_code == 503
        assert response.json()["code"] == "provider_unavailable"
    assert await _ledger(payments, "down") == [("pending", 3)]
    assert await sql(payments, "SELECT status, lease_owner FROM payments") == [("pending", None)]
    assert await sql(payments, "SELECT count(*) FROM payment_transactions") == [(0,)]


async def test_invalid_payment_method_is_422_and_repeatable(payments: httpx.AsyncClient) -> None:
    owner, stranger = uuid.uuid4(), uuid.uuid4()
    card = await add_card(payments, owner)
    for body in (charge_body(stranger, card["id"]), charge_body(owner, str(uuid.uuid4()))):
        for _ in range(2):
            response = await post_charge(payments, "bad-method", body)
            assert response.status_code == 422
            assert response.json()["code"] == "invalid_payment_method"
    assert await sql(payments, "SELECT count(*) FROM payments") == [(0,)]
    assert await sql(payments, "SELECT count(*) FROM payment_provider_ledger") == [(0,)]


async def test_other_test_cards_capture(payments: httpx.AsyncClient) -> None:
    user = uuid.uuid4()
    card = await add_card(payments, user, "5555555555554444")
    response = await post_charge(payments, "mc", charge_body(user, card["id"]))
    assert response.status_code == 201


async def test_held_lease_is_503_and_expired_lease_is_taken_over(payments: httpx.AsyncClient) -> None:
    """A request that died mid-charge leaves a pending row; its lease expires and a retry finishes it."""
    user = uuid.uuid4()
    card = await add_card(payments, user, TRANSIENT_TWICE_CARD)
    body = charge_body(user, card["id"])
    assert (await post_charge(payments, "crashy", body)).status_code == 503
    # As if a request were still talking to the provider.
    await sql(payments, update(Payment).values(lease_owner=uuid.uuid4(), lease_until=FAR_FUTURE))
    busy = await post_charge(payments, "crashy", body)
    assert busy.status_code == 503
    assert busy.json()["code"] == "charge_in_progress"
    assert busy.headers["retry-after"] == "1"
    # The lease ran out (the process died): the next retry takes over.
    await sql(payments, update(Payment).values(lease_until=LONG_AGO))
    assert (await post_charge(payments, "crashy", body)).status_code == 503  # attempt 2 of the 0119 card
    done = await post_charge(payments, "crashy", body)
    assert done.status_code == 201


async def test_lost_provider_answer_is_recovered_on_retry(payments: httpx.AsyncClient) -> None:
    """The provider captured but its answer never arrived: a retry records that capture, once."""
    user = uuid.uuid4()
    card = await add_card(payments, user, TRANSIENT_ALWAYS_CARD)
    body = charge_body(user, card["id"], 900)
    assert (await post_charge(payments, "lost", body)).status_code == 503
    await sql(payments, "UPDATE payment_provider_ledger SET status = 'captured', provider_ref = 'ch_lost'")
    recovered = await post_charge(payments, "lost", body)
    assert recovered.status_code == 201
    assert recovered.json()["status"] == "captured"
    assert (await post_charge(payments, "lost", body)).status_code == 200
    assert await sql(payments, "SELECT provider_ref FROM payments") == [("ch_lost",)]
    assert await sql(payments, "SELECT count(*) FROM payment_transactions WHERE kind = 'charge'") == [(1,)]


async def test_random_provider_failures_are_503(service_client: Any) -> None:
    async with service_client("payments", provider_failure_rate=1.0) as client:
        user = uuid.uuid4()
        card = await add_card(client, user)
        response = await post_charge(client, "unlucky", charge_body(user, card["id"]))
        assert response.status_code == 503
        assert response.json()["code"] == "provider_unavailable"


@pytest.mark.parametrize(
    "headers",
    [
        {},
        {"Idempotency-Key": ""},
        {"Idempotency-Key": "has space"},
        {"Idempotency-Key": "k" * 201},
        {"Idempotency-Key": "bad\u00e9".encode("latin-1")},
    ],
)
async def test_idempotency_key_is_required_and_checked(
    payments: httpx.AsyncClient, headers: dict[str, str]
) -> None:
    user = uuid.uuid4()
    card = await add_card(payments, user)
    response = await payments.post(
        "/charges", json=charge_body(user, card["id"]), headers={**as_service(), **headers}
    )
    assert response.status_code == 400
    assert response.json()["code"] == "idempotency_key_required"


async def test_longest_key_with_every_allowed_character(payments: httpx.AsyncClient) -> None:
    user = uuid.uuid4()
    card = await add_card(payments, user)
    key = ("order-1._:/Z9" * 20)[:200]
    assert (await post_charge(payments, key, charge_body(user, card["id"]))).status_code == 201


@pytest.mark.parametrize(
    "change",
    [
        {"amount_cents": 0},
        {"amount_cents": -5},
        {"amount_cents": 1_000_000_001},
        {"amount_cents": "100"},
        {"amount_cents": 10.5},
        {"amount_cents": True},
        {"currency": "eur"},
        {"currency": "EURO"},
        {"order_id": "not-a-uuid"},
        {"payment_method_id": 7},
        {"extra": 1},
    ],
)
async def test_bad_charge_bodies_are_422(payments: httpx.AsyncClient, change: dict[str, Any]) -> None:
    body = {**charge_body(uuid.uuid4(), str(uuid.uuid4())), **change}
    response = await post_charge(payments, "k", body)
    assert response.status_code == 422
    assert response.json()["code"] == "validation_error"


async def test_largest_amount_and_missing_fields(payments: httpx.AsyncClient) -> None:
    user = uuid.uuid4()
    card = await add_card(payments, user)
    assert (
        await post_charge(payments, "big", charge_body(user, card["id"], 1_000_000_000))
    ).status_code == 201
    body = charge_body(user, card["id"])
    del body["currency"]
    assert (await post_charge(payments, "missing", body)).status_code == 422
    malformed = await payments.post(
        "/charges",
        content=b"{not json",
        headers={**as_service(), "Idempotency-Key": "m", "content-type": "application/json"},
    )
    assert malformed.status_code == 400
    assert malformed.json()["code"] == "malformed_json"


async def test_only_the_saga_charges(payments: httpx.AsyncClient) -> None:
    user = uuid.uuid4()
    card = await add_card(payments, user)
    body = charge_body(user, card["id"])
    anonymous = await payments.post("/charges", json=body, headers={"Idempotency-Key": "x"})
    assert anonymous.status_code == 401
    for headers in (as_customer(user), as_admin()):
        response = await payments.post("/charges", json=body, headers={**headers, "Idempotency-Key": "x"})
        assert response.status_code == 403
        assert response.json()["code"] == "forbidden"
    assert await sql(payments, "SELECT count(*) FROM payments") == [(0,)]
