"""Races: one charge key hit by many requests at once, concurrent refunds, and a refund racing its charge."""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

import httpx
from sqlalchemy import func, select
from sqlmodel import col

from services.payments.models import PaymentTransaction
from tests.services.payments.conftest import (
    add_card,
    captured_payment,
    charge_body,
    post_charge,
    post_refund,
    sql,
)
from tests.support.identity import as_service

CONCURRENCY = 20


async def test_one_key_many_requests_capture_once(service_client: Any) -> None:
    # Provider latency keeps the first request in flight while the others arrive.
    async with service_client("payments", provider_latency_ms=50) as payments:
        user = uuid.uuid4()
        card = await add_card(payments, user)
        body = charge_body(user, card["id"], 4200)
        responses = await asyncio.gather(*(post_charge(payments, "race", body) for _ in range(CONCURRENCY)))

        payment_ids = set()
        for response in responses:
            if response.status_code == 503:
                assert response.json()["code"] == "charge_in_progress"
                assert response.headers["retry-after"] == "1"
            else:
                assert response.status_code in (200, 201), response.text
                payment_ids.add(response.json()["id"])
        assert len(payment_ids) == 1
        assert [r.status_code for r in responses].count(201) == 1

        assert await sql(payments, "SELECT count(*) FROM payments") == [(1,)]
        assert await sql(payments, "SELECT status, attempts FROM payment_provider_ledger") == [
            ("captured", 1)
        ]
        charges = "SELECT count(*) FROM payment_transactions WHERE kind = 'charge'"
        assert await sql(payments, charges) == [(1,)]
        assert await sql(payments, "SELECT count(*) FROM outbox WHERE type = 'payment.captured'") == [(1,)]
        retry = await post_charge(payments, "race", body)
        assert retry.status_code == 200
        assert retry.json()["id"] in payment_ids


async def _refunded_total(client: httpx.AsyncClient, payment_id: str) -> int:
    total = func.coalesce(func.sum(PaymentTransaction.amount_cents), 0)
    statement = select(total).where(
        col(PaymentTransaction.kind) == "refund", col(PaymentTransaction.payment_id) == uuid.UUID(payment_id)
    )
    rows = await sql(client, statement)
    return int(rows[0][0])


async def test_concurrent_refunds_never_exceed_the_capture(payments: httpx.AsyncClient) -> None:
    key, payment, _ = await captured_payment(payments, 1000)
    responses = await asyncio.gather(*(post_refund(payments, key, f"r-{i}", 300) for i in range(10)))
    codes = sorted(response.status_code for response in responses)
    assert codes == [200] * 3 + [409] * 7
    assert all(r.json()["code"] == "refund_exceeds_capture" for r in responses if r.status_code == 409)
    final = await payments.get(f"/payments/{payment['id']}", headers=as_service())
    assert (final.json()["refunded_cents"], final.json()["status"]) == (900, "captured")
    assert await _refunded_total(payments, payment["id"]) == 900


async def test_concurrent_full_refunds_refund_once(payments: httpx.AsyncClient) -> None:
    key, payment, _ = await captured_payment(payments, 1000)
    distinct = [post_refund(payments, key, f"full-{i}") for i in range(5)]
    same = [post_refund(payments, key, "same-key") for _ in range(5)]
    responses = await asyncio.gather(*distinct, *same)
    assert all(response.status_code == 200 for response in responses), [r.text for r in responses]
    assert all(response.json()["refunded_cents"] == 1000 for response in responses)
    assert await _refunded_total(payments, payment["id"]) == 1000
    assert await sql(payments, "SELECT count(*) FROM outbox WHERE type = 'payment.refunded'") == [(1,)]


async def test_refund_racing_its_charge_leaves_no_money_behind(payments: httpx.AsyncClient) -> None:
    """Whatever the interleaving, a refund that answered 200 leaves the key with a net charge of 0."""
    user = uuid.uuid4()
    card = await add_card(payments, user)
    for round_ in range(5):
        key = f"order-{round_}:charge"
        body = charge_body(user, card["id"], 500)
        charge, refund = await asyncio.gather(
            post_charge(payments, key, body), post_refund(payments, key, f"order-{round_}:refund")
        )
        assert charge.status_code in (201, 409, 503), charge.text
        while refund.status_code == 503:  # the charge held the lease: the saga retries its compensation
            assert refund.json()["code"] == "charge_in_progress"
            await asyncio.sleep(0.05)
            refund = await post_refund(payments, key, f"order-{round_}:refund")
        assert refund.status_code == 200
        assert refund.json()["status"] in ("voided", "refunded")
        late = await post_charge(payments, key, body)
        assert late.status_code in (200, 409)
        captured = await sql(
            payments,
            "SELECT coalesce(sum(amount_cents), 0) FROM payment_provider_ledger"
            " WHERE charge_key = :key AND status = 'captured'",
            key=key,
        )
        refunded = refund.json()["refunded_cents"]
        assert int(captured[0][0]) == refunded
