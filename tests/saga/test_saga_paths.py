"""Every saga path ends in the right state across all services, and the invariants hold after it."""

from __future__ import annotations

from typing import Any

import pytest

from tests.support.driver import Driver

pytestmark = [pytest.mark.slow, pytest.mark.temporal]

DECLINED = "4000000000000002"
INSUFFICIENT_FUNDS = "4000000000009995"
TRANSIENT_TWICE = "4000000000000119"
ALWAYS_TRANSIENT = "4000000000000101"


def steps(view: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {step["name"]: step for step in view["steps"]}


def statuses(view: dict[str, Any]) -> dict[str, str]:
    return {step["name"]: step["status"] for step in view["steps"]}


async def stock_of(driver: Driver, *product_ids: str) -> dict[str, int]:
    return {pid: (await driver.availability(pid))["on_hand"] for pid in product_ids}


async def test_success_confirms_charges_once_and_commits_stock(driver: Driver, record_history: Any) -> None:
    customer = await driver.customer()
    first, second = (
        await driver.product(stock=10, price_cents=1_250),
        await driver.product(stock=5, price_cents=999),
    )
    before = await stock_of(driver, first, second)

    accepted = await driver.place_order(customer, [(first, 2), (second, 1)])
    assert accepted.status_code == 202, accepted.text
    body = accepted.json()
    assert body["status"] == "PENDING"
    assert body["workflow_id"] == f"order-{body['id']}"

    order, view = await driver.wait_final(body["id"])
    assert order["status"] == "CONFIRMED"
    assert order["total_cents"] == 2 * 1_250 + 999
    assert order["currency"] == "USD"
    assert {i["product_id"]: i["unit_price_cents"] for i in order["items"]} == {first: 1_250, second: 999}
    assert view["status"] == "completed"
    assert statuses(view) == {
        "create_order": "done",
        "validate_user": "done",
        "reserve_stock": "done",
        "authorize_payment": "done",
        "review": "skipped",
        "capture_payment": "done",
        "confirm_order": "done",
        "notify_customer": "done",
    }
    assert all(step["attempts"] >= 1 for step in view["steps"] if step["status"] == "done")
    await driver.assert_invariants(order, before)
    notices = await driver.notifications_of(customer.user_id)
    assert [n["template"] for n in notices if n["order_id"] == order["id"]] == ["order_confirmed"]
    record_history(order["id"], "success")


async def test_deleted_user_cancels_with_user_invalid(driver: Driver, record_history: Any) -> None:
    customer = await driver.customer()
    product = await driver.product()
    before = await stock_of(driver, product)
    await driver.delete_user(customer.user_id)

    accepted = await driver.place_order(customer, [(product, 1)])
    order, view = await driver.wait_final(accepted.json()["id"])

    assert (order["status"], order["cancel_reason"]) == ("CANCELLED", "user_invalid")
    assert view["status"] == "compensated"
    assert statuses(view) == {
        "create_order": "compensated",
        "validate_user": "failed",
        "reserve_stock": "skipped",
        "authorize_payment": "skipped",
        "review": "skipped",
        "capture_payment": "skipped",
        "confirm_order": "skipped",
        "notify_customer": "done",
    }
    assert "user_invalid" in steps(view)["validate_user"]["error"]
    await driver.assert_invariants(order, before)
    record_history(order["id"], "user_invalid")


async def test_out_of_stock_releases_nothing_and_cancels(driver: Driver, record_history: Any) -> None:
    customer = await driver.customer()
    plenty, scarce = await driver.product(stock=10), await driver.product(stock=1)
    before = await stock_of(driver, plenty, scarce)

    accepted = await driver.place_order(customer, [(plenty, 3), (scarce, 2)])
    order, view = await driver.wait_final(accepted.json()["id"])

    assert (order["status"], order["cancel_reason"]) == ("CANCELLED", "out_of_stock")
    assert statuses(view)["reserve_stock"] == "failed"
    assert steps(view)["reserve_stock"]["compensation"]["status"] == "done"
    assert statuses(view)["create_order"] == "compensated"
    await driver.assert_invariants(order, before)
    record_history(order["id"], "out_of_stock")


async def test_unknown_product_cancels_with_invalid_item(driver: Driver) -> None:
    customer = await driver.customer()
    accepted = await driver.place_order(customer, [("00000000-0000-4000-8000-000000000000", 1)])
    order, _ = await driver.wait_final(accepted.json()["id"])
    assert (order["status"], order["cancel_reason"]) == ("CANCELLED", "invalid_item")


@pytest.mark.parametrize("card", [DECLINED, INSUFFICIENT_FUNDS], ids=["declined", "insufficient_funds"])
async def test_declined_card_refunds_nothing_releases_stock_and_cancels(
    driver: Driver, record_history: Any, card: str
) -> None:
    customer = await driver.customer(card=card)
    product = await driver.product(stock=4)
    before = await stock_of(driver, product)

    accepted = await driver.place_order(customer, [(product, 2)])
    order, view = await driver.wait_final(accepted.json()["id"])

    assert (order["status"], order["cancel_reason"]) == ("CANCELLED", "payment_declined")
    assert view["status"] == "compensated"
    assert statuses(view) == {
        "create_order": "compensated",
        "validate_user": "done",
        "reserve_stock": "compensated",
        "authorize_payment": "failed",
        "review": "skipped",
        "capture_payment": "skipped",
        "confirm_order": "skipped",
        "notify_customer": "done",
    }
    assert steps(view)["authorize_payment"]["attempts"] == 1, "a decline is final, never retried"
    assert steps(view)["authorize_payment"]["compensation"]["status"] == "done", "the void ran, harmless"
    await driver.assert_invariants(order, before)
    payments = await driver.payments_of(order["id"])
    assert [p["status"] for p in payments] == ["declined"]
    if card == DECLINED:
        record_history(order["id"], "payment_declined")


async def test_transient_payment_failure_is_retried_then_confirms(
    driver: Driver, record_history: Any
) -> None:
    customer = await driver.customer(card=TRANSIENT_TWICE)
    product = await driver.product()
    before = await stock_of(driver, product)

    accepted = await driver.place_order(customer, [(product, 1)])
    order, view = await driver.wait_final(accepted.json()["id"])

    assert order["status"] == "CONFIRMED"
    assert steps(view)["authorize_payment"]["attempts"] == 3
    assert steps(view)["capture_payment"]["attempts"] == 1
    await driver.assert_invariants(order, before)
    record_history(order["id"], "payment_retried")


async def test_provider_down_for_good_ends_payment_failed_with_nothing_charged(
    driver: Driver, record_history: Any
) -> None:
    customer = await driver.customer(card=ALWAYS_TRANSIENT)
    product = await driver.product()
    before = await stock_of(driver, product)

    accepted = await driver.place_order(customer, [(product, 1)])
    order, view = await driver.wait_final(accepted.json()["id"], timeout=90)

    assert (order["status"], order["cancel_reason"]) == ("CANCELLED", "payment_failed")
    assert statuses(view)["authorize_payment"] == "failed"
    assert steps(view)["authorize_payment"]["attempts"] == 4  # the test worker's payment budget
    await driver.assert_invariants(order, before)
    record_history(order["id"], "payment_failed")


async def test_someone_elses_payment_method_is_refused(driver: Driver) -> None:
    owner, other = await driver.customer(), await driver.customer()
    product = await driver.product()
    before = await stock_of(driver, product)
    accepted = await driver.place_order(other, [(product, 1)], payment_method_id=owner.payment_method_id)
    order, _ = await driver.wait_final(accepted.json()["id"])
    assert (order["status"], order["cancel_reason"]) == ("CANCELLED", "invalid_payment_method")
    await driver.assert_invariants(order, before)


async def test_repeated_post_with_one_idempotency_key_makes_one_order_and_one_charge(driver: Driver) -> None:
    customer = await driver.customer()
    product = await driver.product()
    before = await stock_of(driver, product)

    responses = [await driver.place_order(customer, [(product, 1)], key="checkout-42") for _ in range(3)]
    assert {r.status_code for r in responses} == {202}
    assert len({r.json()["id"] for r in responses}) == 1

    order, _ = await driver.wait_final(responses[0].json()["id"])
    assert order["status"] == "CONFIRMED"
    await driver.assert_invariants(order, before)  # exactly one capture of the total


async def test_same_key_with_another_body_is_refused(driver: Driver) -> None:
    customer = await driver.customer()
    product = await driver.product()
    first = await driver.place_order(customer, [(product, 1)], key="k-1")
    again = await driver.place_order(customer, [(product, 2)], key="k-1")
    assert first.status_code == 202
    assert again.status_code == 422
    assert again.json()["code"] == "idempotency_key_reused"
