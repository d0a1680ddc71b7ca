"""Cancellation and review are workflow updates: accepted while legal, refused (409) otherwise."""

from __future__ import annotations

from typing import Any

import pytest

from tests.support.driver import Customer, Driver

pytestmark = [pytest.mark.slow, pytest.mark.temporal]

BIG_PRICE = 60_000  # two of these cross the 100000-cent review threshold


async def awaiting_review(driver: Driver, customer: Customer, product: str) -> str:
    accepted = await driver.place_order(customer, [(product, 2)])
    order_id: str = accepted.json()["id"]
    await driver.wait_saga(
        order_id, lambda v: v["order_status"] == "AWAITING_REVIEW" if "order_status" in v else False
    )
    order = await driver.order(order_id)
    assert order["status"] == "AWAITING_REVIEW"
    return order_id


def statuses(view: dict[str, Any]) -> dict[str, str]:
    return {step["name"]: step["status"] for step in view["steps"]}


async def test_review_approved_confirms(driver: Driver, record_history: Any) -> None:
    customer = await driver.customer()
    product = await driver.product(stock=3, price_cents=BIG_PRICE)
    order_id = await awaiting_review(driver, customer, product)
    held = await driver.payments_of(order_id)
    assert [(p["status"], p["amount_cents"]) for p in held] == [("authorized", 2 * BIG_PRICE)]
    assert (await driver.order(order_id))["payment_id"] == held[0]["id"], "known from the authorisation on"

    assert (await driver.review(order_id, approve=True)).status_code == 202
    order, view = await driver.wait_final(order_id)
    assert [p["status"] for p in await driver.payments_of(order_id)] == ["captured"]

    assert order["status"] == "CONFIRMED"
    assert order["total_cents"] == 2 * BIG_PRICE
    assert statuses(view)["review"] == "done"
    await driver.assert_invariants(order, {product: 3})
    record_history(order_id, "review_approved")


async def test_review_rejected_cancels_and_releases(driver: Driver, record_history: Any) -> None:
    customer = await driver.customer()
    product = await driver.product(stock=3, price_cents=BIG_PRICE)
    order_id = await awaiting_review(driver, customer, product)

    assert (await driver.review(order_id, approve=False)).status_code == 202
    order, view = await driver.wait_final(order_id)

    assert (order["status"], order["cancel_reason"]) == ("CANCELLED", "review_rejected")
    assert statuses(view)["review"] == "failed"
    assert statuses(view)["reserve_stock"] == "compensated"
    assert statuses(view)["capture_payment"] == "skipped"
    assert statuses(view)["authorize_payment"] == "compensated"
    assert [p["status"] for p in await driver.payments_of(order_id)] == ["voided"]
    await driver.assert_invariants(order, {product: 3})
    record_history(order_id, "review_rejected")


async def test_customer_cancels_during_review(driver: Driver, record_history: Any) -> None:
    customer = await driver.customer()
    product = await driver.product(stock=3, price_cents=BIG_PRICE)
    order_id = await awaiting_review(driver, customer, product)

    cancelled = await driver.cancel(order_id, customer)
    assert cancelled.status_code == 202, cancelled.text
    assert cancelled.json()["id"] == order_id

    order, view = await driver.wait_final(order_id)
    assert (order["status"], order["cancel_reason"]) == ("CANCELLED", "customer_cancelled")
    review = next(step for step in view["steps"] if step["name"] == "review")
    assert review["status"] == "failed"
    assert review["error"] == "customer_cancelled"
    assert view["status"] == "compensated"
    await driver.assert_invariants(order, {product: 3})
    notices = await driver.notifications_of(customer.user_id)
    assert [n["template"] for n in notices if n["order_id"] == order_id] == ["order_cancelled"]
    record_history(order_id, "customer_cancelled")

    again = await driver.cancel(order_id, customer)
    assert again.status_code == 409
    assert again.json()["code"] == "illegal_transition"


async def test_cancel_after_confirmation_is_refused(driver: Driver) -> None:
    customer = await driver.customer()
    product = await driver.product()
    accepted = await driver.place_order(customer, [(product, 1)])
    order, _ = await driver.wait_final(accepted.json()["id"])
    assert order["status"] == "CONFIRMED"

    refused = await driver.cancel(order["id"], customer)
    assert refused.status_code == 409
    assert refused.json()["code"] == "illegal_transition"
    assert (await driver.order(order["id"]))["status"] == "CONFIRMED"
    await driver.assert_invariants(order, {product: 10})


async def test_review_of_an_order_not_awaiting_review_is_refused(driver: Driver) -> None:
    customer = await driver.customer()
    product = await driver.product()
    accepted = await driver.place_order(customer, [(product, 1)])
    order, _ = await driver.wait_final(accepted.json()["id"])
    refused = await driver.review(order["id"], approve=True)
    assert refused.status_code == 409
    assert refused.json()["code"] == "illegal_transition"


async def test_another_customer_cannot_cancel(driver: Driver) -> None:
    owner, stranger = await driver.customer(), await driver.customer()
    product = await driver.product(stock=3, price_cents=BIG_PRICE)
    order_id = await awaiting_review(driver, owner, product)
    response = await driver.cancel(order_id, stranger)
    assert response.status_code == 404
    assert (await driver.review(order_id, approve=False)).status_code == 202
    await driver.wait_final(order_id)
