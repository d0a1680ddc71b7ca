"""POST /authorizations, /authorizations/{key}/capture and /void: hold, capture once, release, and races."""

from __future__ import annotations

import asyncio
import json
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest
from prometheus_client import REGISTRY
from temporalio.exceptions import ApplicationError

from activities.http import ServiceCaller, saga_key
from activities.payments import AUTHORIZE_STEP, PaymentActivities
from tests.services.payments.conftest import (
    DECLINED_CARD,
    INSUFFICIENT_CARD,
    OK_CARD,
    TRANSIENT_ALWAYS_CARD,
    TRANSIENT_TWICE_CARD,
    add_card,
    captured_payment,
    charge_body,
    post_authorize,
    post_capture,
    post_charge,
    post_refund,
    post_void,
    sql,
)
from tests.support.identity import INTERNAL_TOKEN, as_admin, as_customer, as_service
from workflows.payloads import ChargeRequest

WEEK = timedelta(days=7)


def _captured_cents() -> float:
    return REGISTRY.get_sample_value("ordersaga_payments_captured_cents_total") or 0.0


def _data(raw: Any) -> dict[str, Any]:
    return dict(raw) if isinstance(raw, dict) else dict(json.loads(raw))


async def _ledger(client: httpx.AsyncClient, key: str) -> list[Any]:
    return await sql(
        client, "SELECT status, attempts FROM payment_provider_ledger WHERE charge_key = :key", key=key
    )


async def _kinds(client: httpx.AsyncClient, payment_id: str) -> list[tuple[str, int]]:
    response = await client.get(f"/payments/{payment_id}/transactions", headers=as_service())
    assert response.status_code == 200
    return [(item["kind"], item["amount_cents"]) for item in response.json()["items"]]


async def _events(client: httpx.AsyncClient, type_: str) -> list[dict[str, Any]]:
    rows = await sql(client, "SELECT data FROM outbox WHERE type = :type ORDER BY id", type=type_)
    return [_data(row[0]) for row in rows]


async def _authorized(
    client: httpx.AsyncClient, amount_cents: int = 1000, number: str = OK_CARD
) -> tuple[str, dict[str, Any], uuid.UUID]:
    """A fresh user with an authorised payment: (authorisation key, payment, user id)."""
    user = uuid.uuid4()
    card = await add_card(client, user, number)
    key = f"order-{uuid.uuid4()}:authorize_payment"
    response = await post_authorize(client, key, charge_body(user, card["id"], amount_cents))
    assert response.status_code == 201, response.text
    return key, dict(response.json()), user


async def _body_of(client: httpx.AsyncClient, key: str) -> dict[str, Any]:
    """The body the key was authorised with."""
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


def _when(value: str) -> datetime:
    return datetime.fromisoformat(value.replace("Z", "+00:00"))


# -- authorise ---------------------------------------------------------------------------------


async def test_authorize_holds_the_amount_once_and_replays(payments: httpx.AsyncClient) -> None:
    user = uuid.uuid4()
    card = await add_card(payments, user)
    body = charge_body(user, card["id"], 12345)
    before = datetime.now(UTC)
    captured_before = _captured_cents()
    first = await post_authorize(payments, "order-1:authorize_payment", body)
    assert first.status_code == 201, first.text
    payment = first.json()
    assert payment["status"] == "authorized"
    assert (payment["amount_cents"], payment["currency"], payment["refunded_cents"]) == (12345, "EUR", 0)
    assert (payment["order_id"], payment["user_id"], payment["decline_code"]) == (
        body["order_id"],
        str(user),
        None,
    )
    until = _when(payment["authorized_until"])
    assert before + WEEK <= until <= datetime.now(UTC) + WEEK

    again = await post_authorize(payments, "order-1:authorize_payment", body)
    assert again.status_code == 200
    assert again.json() == payment

    assert await _ledger(payments, "order-1:authorize_payment") == [("authorized", 1)]
    [(expires_at,)] = await sql(payments, "SELECT expires_at FROM payment_provider_ledger")
    assert expires_at is not None
    assert await sql(payments, "SELECT count(*) FROM payments") == [(1,)]
    assert await _kinds(payments, payment["id"]) == [("authorization", 12345)]
    assert _captured_cents() == captured_before  # nothing captured yet
    [event] = await _events(payments, "payment.authorized")
    assert (event["payment_id"], event["order_id"], event["amount_cents"]) == (
        payment["id"],
        body["order_id"],
        12345,
    )
    assert _when(event["authorized_until"]) == until
    assert OK_CARD not in str(event)
    assert await _events(payments, "payment.captured") == []
    # The customer sees the hold on their card.
    own = await payments.get(f"/payments/{payment['id']}", headers=as_customer(user))
    assert own.status_code == 200
    assert own.json() == payment


async def test_same_key_other_body_or_other_operation_is_422(payments: httpx.AsyncClient) -> None:
    user = uuid.uuid4()
    card = await add_card(payments, user)
    body = charge_body(user, card["id"], 1000)
    assert (await post_authorize(payments, "k", body)).status_code == 201
    reused = await post_authorize(payments, "k", {**body, "amount_cents": 2000})
    assert reused.status_code == 422
    assert reused.json()["code"] == "idempotency_key_reused"
    # An authorisation's key is not a charge's, nor the other way round, even with the same body.
    as_charge = await post_charge(payments, "k", body)
    assert as_charge.status_code == 422
    assert as_charge.json()["code"] == "idempotency_key_reused"
    assert (await post_charge(payments, "c", body)).status_code == 201
    as_authorization = await post_authorize(payments, "c", body)
    assert as_authorization.status_code == 422
    assert as_authorization.json()["code"] == "idempotency_key_reused"
    assert sorted(await sql(payments, "SELECT status, amount_cents FROM payments")) == [
        ("authorized", 1000),
        ("captured", 1000),
    ]


@pytest.mark.parametrize(
    ("number", "code"), [(DECLINED_CARD, "card_declined"), (INSUFFICIENT_CARD, "insufficient_funds")]
)
async def test_declined_authorizations_are_final_and_recorded(
    payments: httpx.AsyncClient, number: str, code: str
) -> None:
    user = uuid.uuid4()
    card = await add_card(payments, user, number)
    body = charge_body(user, card["id"], 500)
    for _ in range(2):
        response = await post_authorize(payments, "declined-key", body)
        assert response.status_code == 402
        problem = response.json()
        assert (problem["code"], problem["decline_code"]) == ("payment_declined", code)
        assert number not in response.text
    payment = await payments.get(f"/payments/{problem['payment_id']}", headers=as_customer(user))
    assert (payment.json()["status"], payment.json()["decline_code"]) == ("declined", code)
    assert payment.json()["authorized_until"] is None
    assert await _ledger(payments, "declined-key") == [("declined", 1)]
    assert await _kinds(payments, problem["payment_id"]) == [("decline", 500)]
    assert len(await _events(payments, "payment.declined")) == 1
    # Nothing to capture, nothing to release.
    capture = await post_capture(payments, "declined-key")
    assert capture.status_code == 402
    assert (capture.json()["code"], capture.json()["decline_code"]) == ("payment_declined", code)
    void = await post_void(payments, "declined-key")
    assert void.status_code == 200
    assert void.json()["status"] == "declined"
    assert await _kinds(payments, problem["payment_id"]) == [("decline", 500)]


async def test_invalid_payment_method_is_422_and_records_nothing(payments: httpx.AsyncClient) -> None:
    owner, stranger = uuid.uuid4(), uuid.uuid4()
    card = await add_card(payments, owner)
    for body in (charge_body(stranger, card["id"]), charge_body(owner, str(uuid.uuid4()))):
        for _ in range(2):
            response = await post_authorize(payments, "bad-method", body)
            assert response.status_code == 422
            assert response.json()["code"] == "invalid_payment_method"
    assert await sql(payments, "SELECT count(*) FROM payments") == [(0,)]
    assert await sql(payments, "SELECT count(*) FROM payment_provider_ledger") == [(0,)]
    assert await sql(payments, "SELECT count(*) FROM outbox WHERE type LIKE 'payment.%'") == [(0,)]
    # The key was not used up: a valid body with it authorises.
    assert (await post_authorize(payments, "bad-method", charge_body(owner, card["id"]))).status_code == 201


async def test_transient_twice_card_authorizes_on_the_third_attempt(payments: httpx.AsyncClient) -> None:
    user = uuid.uuid4()
    card = await add_card(payments, user, TRANSIENT_TWICE_CARD)
    body = charge_body(user, card["id"], 700)
    for _ in range(2):
        response = await post_authorize(payments, "flaky", body)
        assert response.status_code == 503
        assert response.json()["code"] == "provider_unavailable"
        assert response.headers["retry-after"] == "1"
        assert "nothing was held" in response.json()["detail"]
    assert await sql(payments, "SELECT status, lease_owner FROM payments") == [("pending", None)]
    third = await post_authorize(payments, "flaky", body)
    assert third.status_code == 201
    assert third.json()["status"] == "authorized"
    assert await _ledger(payments, "flaky") == [("authorized", 3)]
    assert await _kinds(payments, third.json()["id"]) == [("authorization", 700)]


async def test_transient_always_card_never_holds_and_its_key_can_be_voided(
    payments: httpx.AsyncClient,
) -> None:
    user = uuid.uuid4()
    card = await add_card(payments, user, TRANSIENT_ALWAYS_CARD)
    body = charge_body(user, card["id"])
    for _ in range(3):
        response = await post_authorize(payments, "down", body)
        assert response.status_code == 503
        assert response.json()["code"] == "provider_unavailable"
    assert await _ledger(payments, "down") == [("pending", 3)]
    assert await sql(payments, "SELECT count(*) FROM payment_transactions") == [(0,)]
    # A capture cannot take what was never held; the saga retries (or gives up and voids).
    capture = await post_capture(payments, "down")
    assert capture.status_code == 503
    assert capture.json()["code"] == "charge_in_progress"
    voided = await post_void(payments, "down")
    assert voided.status_code == 200
    assert (voided.json()["status"], voided.json()["amount_cents"]) == ("voided", 1000)
    assert await _ledger(payments, "down") == [("voided", 3)]
    late = await post_authorize(payments, "down", body)
    assert late.status_code == 409
    assert late.json()["code"] == "charge_voided"


# -- capture -----------------------------------------------------------------------------------


async def test_capture_takes_the_authorised_amount_once(payments: httpx.AsyncClient) -> None:
    key, authorized, user = await _authorized(payments, 4321)
    captured_before = _captured_cents()
    first = await post_capture(payments, key)
    assert first.status_code == 200, first.text
    payment = first.json()
    assert (payment["id"], payment["status"], payment["amount_cents"]) == (authorized["id"], "captured", 4321)
    assert payment["authorized_until"] == authorized["authorized_until"]
    again = await post_capture(payments, key)
    assert again.status_code == 200
    assert again.json() == payment

    assert await _kinds(payments, payment["id"]) == [("authorization", 4321), ("capture", 4321)]
    assert await _ledger(payments, key) == [("captured", 1)]
    assert _captured_cents() - captured_before == 4321
    [event] = await _events(payments, "payment.captured")
    assert (event["payment_id"], event["amount_cents"], event["currency"]) == (payment["id"], 4321, "EUR")
    # The authorisation key replays the (now captured) payment.
    replay = await post_authorize(payments, key, await _body_of(payments, key))
    assert replay.status_code == 200
    assert replay.json()["status"] == "captured"
    assert (await payments.get(f"/payments/{payment['id']}", headers=as_customer(user))).json() == payment


async def test_concurrent_captures_capture_once(service_client: Any) -> None:
    async with service_client("payments", provider_latency_ms=20) as payments:
        key, authorized, _ = await _authorized(payments, 900)
        captured_before = _captured_cents()
        responses = await asyncio.gather(*(post_capture(payments, key) for _ in range(10)))
        assert all(r.status_code == 200 for r in responses), [r.text for r in responses]
        assert {r.json()["status"] for r in responses} == {"captured"}
        assert await _kinds(payments, authorized["id"]) == [("authorization", 900), ("capture", 900)]
        assert len(await _events(payments, "payment.captured")) == 1
        assert _captured_cents() - captured_before == 900


async def test_capture_of_an_unknown_key_or_a_plain_charge_is_404(payments: httpx.AsyncClient) -> None:
    unknown = await post_capture(payments, "never-authorised")
    assert unknown.status_code == 404
    assert unknown.json()["code"] == "authorization_not_found"
    assert await sql(payments, "SELECT count(*) FROM payments") == [(0,)]
    charge_key, _, _ = await captured_payment(payments)
    plain = await post_capture(payments, charge_key)
    assert plain.status_code == 404
    assert plain.json()["code"] == "authorization_not_found"


async def test_capture_after_void_is_409(payments: httpx.AsyncClient) -> None:
    key, authorized, user = await _authorized(payments, 800)
    voided = await post_void(payments, key)
    assert voided.status_code == 200
    assert (voided.json()["status"], voided.json()["refunded_cents"]) == ("voided", 0)
    refused = await post_capture(payments, key)
    assert refused.status_code == 409
    assert refused.json()["code"] == "authorization_voided"
    assert await _ledger(payments, key) == [("voided", 1)]
    assert await _kinds(payments, authorized["id"]) == [("authorization", 800), ("void", 800)]
    assert (await post_void(payments, key)).json() == voided.json()  # a repeated void is a no-op
    assert await _kinds(payments, authorized["id"]) == [("authorization", 800), ("void", 800)]
    [event] = await _events(payments, "payment.voided")
    assert (event["payment_id"], event["amount_cents"], event["order_id"]) == (
        authorized["id"],
        800,
        authorized["order_id"],
    )
    # A voided authorisation of an order is the customer's to see; a late authorise is refused.
    own = await payments.get(f"/payments/{authorized['id']}", headers=as_customer(user))
    assert own.status_code == 200
    assert own.json()["status"] == "voided"
    late = await post_authorize(payments, key, await _body_of(payments, key))
    assert late.status_code == 409
    assert late.json()["code"] == "charge_voided"
    assert await _events(payments, "payment.captured") == []


async def test_capture_after_expiry_is_409_and_captures_nothing(service_client: Any) -> None:
    async with service_client("payments", authorization_validity_seconds=1) as payments:
        key, authorized, _ = await _authorized(payments, 600)
        assert _when(authorized["authorized_until"]) <= datetime.now(UTC) + timedelta(seconds=1)
        await asyncio.sleep(1.2)
        for _ in range(2):
            expired = await post_capture(payments, key)
            assert expired.status_code == 409
            assert expired.json()["code"] == "authorization_expired"
        assert await _ledger(payments, key) == [("authorized", 1)]
        assert await sql(payments, "SELECT status FROM payments") == [("authorized",)]
        assert await _kinds(payments, authorized["id"]) == [("authorization", 600)]
        assert await _events(payments, "payment.captured") == []
        # Its compensation still releases it.
        voided = await post_void(payments, key)
        assert voided.json()["status"] == "voided"
        assert await _ledger(payments, key) == [("voided", 1)]


async def test_lost_capture_answer_is_recovered_on_retry(payments: httpx.AsyncClient) -> None:
    """The provider captured but the answer never came back: the retry records that capture, once."""
    key, authorized, _ = await _authorized(payments, 300)
    await sql(payments, "UPDATE payment_provider_ledger SET status = 'captured'")
    response = await post_capture(payments, key)
    assert response.status_code == 200
    assert response.json()["status"] == "captured"
    assert await _kinds(payments, authorized["id"]) == [("authorization", 300), ("capture", 300)]


# -- void --------------------------------------------------------------------------------------


async def test_void_of_an_unseen_key_refuses_a_late_authorization(payments: httpx.AsyncClient) -> None:
    voided = await post_void(payments, "order-9:authorize_payment")
    assert voided.status_code == 200
    body = voided.json()
    assert (body["status"], body["amount_cents"], body["order_id"]) == ("voided", None, None)
    assert (await post_void(payments, "order-9:authorize_payment")).json() == body

    user = uuid.uuid4()
    card = await add_card(payments, user)
    late = await post_authorize(payments, "order-9:authorize_payment", charge_body(user, card["id"]))
    assert late.status_code == 409
    assert late.json()["code"] == "charge_voided"
    capture = await post_capture(payments, "order-9:authorize_payment")
    assert capture.status_code == 409
    assert capture.json()["code"] == "authorization_voided"
    assert await sql(payments, "SELECT count(*) FROM payment_provider_ledger") == [(0,)]
    assert await sql(payments, "SELECT count(*) FROM payments") == [(1,)]
    # A placeholder void is bookkeeping: no customer sees it.
    assert (await payments.get(f"/payments/{body['id']}", headers=as_customer(user))).status_code == 404
    assert (await payments.get(f"/payments/{body['id']}", headers=as_admin())).json()["status"] == "voided"


async def test_void_of_a_capture_refunds_it_in_full_once(payments: httpx.AsyncClient) -> None:
    key, authorized, _ = await _authorized(payments, 1500)
    assert (await post_capture(payments, key)).status_code == 200
    for _ in range(2):
        voided = await post_void(payments, key)
        assert voided.status_code == 200
        assert (voided.json()["status"], voided.json()["refunded_cents"]) == ("refunded", 1500)
    assert await _kinds(payments, authorized["id"]) == [
        ("authorization", 1500),
        ("capture", 1500),
        ("refund", 1500),
    ]
    assert await sql(payments, "SELECT idempotency_key FROM payment_transactions WHERE kind = 'refund'") == [
        (f"{key}:void",)
    ]
    [event] = await _events(payments, "payment.refunded")
    assert (event["payment_id"], event["amount_cents"], event["refunded_cents"]) == (
        authorized["id"],
        1500,
        1500,
    )
    assert await _events(payments, "payment.voided") == []
    # The capture key's refund compensation finds nothing left.
    refund = await post_refund(payments, key, "refund-capture")
    assert refund.json()["refunded_cents"] == 1500
    assert len(await _kinds(payments, authorized["id"])) == 3


async def test_void_refunds_the_rest_of_a_partly_refunded_capture(payments: httpx.AsyncClient) -> None:
    key, authorized, _ = await _authorized(payments, 1000)
    assert (await post_capture(payments, key)).status_code == 200
    assert (await post_refund(payments, key, "partial", 400)).json()["refunded_cents"] == 400
    voided = await post_void(payments, key)
    assert (voided.json()["status"], voided.json()["refunded_cents"]) == ("refunded", 1000)
    assert await _kinds(payments, authorized["id"]) == [
        ("authorization", 1000),
        ("capture", 1000),
        ("refund", 400),
        ("refund", 600),
    ]


async def test_void_finds_a_capture_that_landed_late(payments: httpx.AsyncClient) -> None:
    """A capture reached the provider but its saga was terminated before it recorded the answer."""
    key, authorized, _ = await _authorized(payments, 700)
    captured_before = _captured_cents()
    await sql(payments, "UPDATE payment_provider_ledger SET status = 'captured'")
    voided = await post_void(payments, key)
    assert voided.status_code == 200
    assert (voided.json()["status"], voided.json()["refunded_cents"]) == ("refunded", 700)
    assert await _kinds(payments, authorized["id"]) == [
        ("authorization", 700),
        ("capture", 700),
        ("refund", 700),
    ]
    assert _captured_cents() - captured_before == 700
    assert len(await _events(payments, "payment.captured")) == 1
    # The late capture's own retry now answers with what happened to it.
    replay = await post_capture(payments, key)
    assert replay.status_code == 200
    assert replay.json()["status"] == "refunded"
    assert len(await _kinds(payments, authorized["id"])) == 3


async def test_void_of_a_voided_key_at_the_provider_records_the_void(payments: httpx.AsyncClient) -> None:
    """A void reached the provider but its answer was lost: a capture is refused and records the void."""
    key, authorized, _ = await _authorized(payments, 250)
    await sql(payments, "UPDATE payment_provider_ledger SET status = 'voided'")
    refused = await post_capture(payments, key)
    assert refused.status_code == 409
    assert refused.json()["code"] == "authorization_voided"
    assert await _kinds(payments, authorized["id"]) == [("authorization", 250), ("void", 250)]
    assert len(await _events(payments, "payment.voided")) == 1


# -- refunds through /charges/{key}/refund -----------------------------------------------------


async def test_refund_of_an_authorization_key(payments: httpx.AsyncClient) -> None:
    key, authorized, _ = await _authorized(payments, 900)
    # Held, never captured: nothing to refund, and the hold stays for its capture or void.
    untouched = await post_refund(payments, key, "early-refund")
    assert untouched.status_code == 200
    assert (untouched.json()["status"], untouched.json()["refunded_cents"]) == ("authorized", 0)
    assert await _ledger(payments, key) == [("authorized", 1)]
    assert (await post_capture(payments, key)).status_code == 200
    refunded = await post_refund(payments, key, "refund-capture")
    assert refunded.status_code == 200
    assert (refunded.json()["status"], refunded.json()["refunded_cents"]) == ("refunded", 900)
    assert await _kinds(payments, authorized["id"]) == [
        ("authorization", 900),
        ("capture", 900),
        ("refund", 900),
    ]
    assert (await post_void(payments, key)).json()["status"] == "refunded"
    assert len(await _kinds(payments, authorized["id"])) == 3


# -- races -------------------------------------------------------------------------------------


@pytest.mark.parametrize("latency_ms", [0, 15])
async def test_capture_racing_void_ends_one_way(service_client: Any, latency_ms: int) -> None:
    """Either captured then refunded by the void, or voided with the capture refused; never both."""
    async with service_client("payments", provider_latency_ms=latency_ms) as payments:
        user = uuid.uuid4()
        card = await add_card(payments, user)
        outcomes = set()
        for round_ in range(10):
            key = f"order-{round_}:authorize_payment"
            authorized = await post_authorize(payments, key, charge_body(user, card["id"], 500))
            assert authorized.status_code == 201
            payment_id = authorized.json()["id"]
            capture, void = await asyncio.gather(post_capture(payments, key), post_void(payments, key))
            assert void.status_code == 200, void.text
            kinds = [kind for kind, _ in await _kinds(payments, payment_id)]
            [(provider_status,)] = await sql(
                payments, "SELECT status FROM payment_provider_ledger WHERE charge_key = :key", key=key
            )
            if capture.status_code == 200:
                assert capture.json()["status"] in ("captured", "refunded")
                assert (void.json()["status"], void.json()["refunded_cents"]) == ("refunded", 500)
                assert kinds == ["authorization", "capture", "refund"]
                assert provider_status == "captured"
                outcomes.add("captured_then_refunded")
            else:
                assert capture.status_code == 409, capture.text
                assert capture.json()["code"] == "authorization_voided"
                assert (void.json()["status"], void.json()["refunded_cents"]) == ("voided", 0)
                assert kinds == ["authorization", "void"]
                assert provider_status == "voided"
                outcomes.add("voided")
            # Net charge 0 either way, and the key stays as it ended.
            final = await payments.get(f"/payments/{payment_id}", headers=as_service())
            assert final.json()["status"] in ("refunded", "voided")
            retry = await post_capture(payments, key)
            assert retry.status_code == capture.status_code
        assert outcomes  # which ones occur depends on the scheduling


async def test_concurrent_voids_void_once(payments: httpx.AsyncClient) -> None:
    key, authorized, _ = await _authorized(payments, 100)
    responses = await asyncio.gather(*(post_void(payments, key) for _ in range(6)))
    assert all(r.status_code == 200 for r in responses)
    assert {r.json()["status"] for r in responses} == {"voided"}
    assert await _kinds(payments, authorized["id"]) == [("authorization", 100), ("void", 100)]
    assert len(await _events(payments, "payment.voided")) == 1


# -- input and callers -------------------------------------------------------------------------


async def test_only_the_saga_authorizes_captures_and_voids(payments: httpx.AsyncClient) -> None:
    key, _, user = await _authorized(payments)
    card = await add_card(payments, user)
    body = charge_body(user, card["id"])
    calls: list[tuple[str, dict[str, Any] | None]] = [
        ("/authorizations", body),
        (f"/authorizations/{key}/capture", None),
        (f"/authorizations/{key}/void", None),
    ]
    for path, json_body in calls:
        anonymous = await payments.post(path, json=json_body, headers={"Idempotency-Key": "x"})
        assert anonymous.status_code == 401
        for headers in (as_customer(user), as_admin()):
            response = await payments.post(path, json=json_body, headers={**headers, "Idempotency-Key": "x"})
            assert response.status_code == 403
            assert response.json()["code"] == "forbidden"
    assert await sql(payments, "SELECT status FROM payments") == [("authorized",)]


async def test_authorization_input_errors(payments: httpx.AsyncClient) -> None:
    user = uuid.uuid4()
    card = await add_card(payments, user)
    no_key = await payments.post("/authorizations", json=charge_body(user, card["id"]), headers=as_service())
    assert no_key.status_code == 400
    assert no_key.json()["code"] == "idempotency_key_required"
    for change in ({"amount_cents": 0}, {"currency": "eur"}, {"extra": 1}):
        bad = await post_authorize(payments, "k", {**charge_body(user, card["id"]), **change})
        assert bad.status_code == 422
        assert bad.json()["code"] == "validation_error"
    for action in ("capture", "void"):
        bad_key = await payments.post(f"/authorizations/has%20space/{action}", headers=as_service())
        assert bad_key.status_code == 422
    # Keys with slashes (the saga's) work in the path.
    key = "order-1/authorize_payment:1"
    assert (await post_authorize(payments, key, charge_body(user, card["id"]))).status_code == 201
    assert (await post_capture(payments, key)).json()["status"] == "captured"
    assert (await post_void(payments, key)).json()["status"] == "refunded"


async def test_longest_key_voids_a_capture(payments: httpx.AsyncClient) -> None:
    user = uuid.uuid4()
    card = await add_card(payments, user)
    key = "k" * 200
    assert (await post_authorize(payments, key, charge_body(user, card["id"]))).status_code == 201
    assert (await post_capture(payments, key)).status_code == 200
    voided = await post_void(payments, key)
    assert voided.status_code == 200
    assert voided.json()["status"] == "refunded"


# -- the saga's activities ---------------------------------------------------------------------


def _activities(client: httpx.AsyncClient) -> PaymentActivities:
    return PaymentActivities(ServiceCaller(client, "http://payments", INTERNAL_TOKEN))


async def test_activities_authorize_capture_and_compensate(payments: httpx.AsyncClient) -> None:
    activities = _activities(payments)
    user = uuid.uuid4()
    card = await add_card(payments, user)
    order_id = str(uuid.uuid4())
    request = ChargeRequest(order_id, str(user), card["id"], 2500, "EUR")
    authorization = await activities.authorize_payment(request)
    assert (authorization.amount_cents, authorization.currency, authorization.attempts) == (2500, "EUR", 1)
    key = saga_key(order_id, AUTHORIZE_STEP)
    assert await sql(payments, "SELECT idempotency_key, status FROM payments") == [(key, "authorized")]
    assert await activities.authorize_payment(request) == authorization  # a retry replays
    capture = await activities.capture_payment(order_id)
    assert (capture.payment_id, capture.amount_cents) == (authorization.payment_id, 2500)
    assert await activities.refund_capture(order_id) == 1
    assert await activities.void_payment(order_id) == 1
    assert await _kinds(payments, authorization.payment_id) == [
        ("authorization", 2500),
        ("capture", 2500),
        ("refund", 2500),
    ]
    refund_keys = await sql(
        payments, "SELECT idempotency_key FROM payment_transactions WHERE kind = 'refund'"
    )
    assert refund_keys == [(saga_key(order_id, "refund_capture"),)]


async def test_activities_refusals(payments: httpx.AsyncClient) -> None:
    activities = _activities(payments)
    user = uuid.uuid4()
    declined = await add_card(payments, user, DECLINED_CARD)
    order_id = str(uuid.uuid4())
    with pytest.raises(ApplicationError) as refused:
        await activities.authorize_payment(ChargeRequest(order_id, str(user), declined["id"], 100, "EUR"))
    assert (refused.value.type, refused.value.non_retryable) == ("payment_declined", True)

    card = await add_card(payments, user)
    voided_order = str(uuid.uuid4())
    await activities.authorize_payment(ChargeRequest(voided_order, str(user), card["id"], 100, "EUR"))
    assert await activities.void_payment(voided_order) == 1
    with pytest.raises(ApplicationError) as failed:
        await activities.capture_payment(voided_order)
    assert (failed.value.type, failed.value.non_retryable) == ("payment_failed", True)

    # The charge of sagas started on the old code, and its refund, under the same saga keys.
    old_order = str(uuid.uuid4())
    charge = await activities.charge_payment(ChargeRequest(old_order, str(user), card["id"], 300, "EUR"))
    assert await activities.refund_payment(old_order) == 1
    refunded = await payments.get(f"/payments/{charge.payment_id}", headers=as_service())
    assert (refunded.json()["status"], refunded.json()["refunded_cents"]) == ("refunded", 300)
    assert await sql(
        payments,
        "SELECT status FROM payments WHERE idempotency_key = :key",
        key=saga_key(old_order, "charge_payment"),
    ) == [("refunded",)]
