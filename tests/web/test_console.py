"""The operator console's remaining features in a real browser, on the stack test_web.py uses:
failed compensations and their retry, the stock form, the orders' filters and pages.

Each test saves a screenshot of every page it opened under its own tmp dir (printed with `-s`).
"""

from __future__ import annotations

import secrets
import time
from typing import Any

import httpx
import pytest
from playwright.sync_api import Locator, Page, expect

from tests.e2e.conftest import UpProcess
from tests.web.conftest import SAGA_TIMEOUT_MS, Pages, api_token, user_id_of
from tests.web.test_web import APPROVED, DECLINED, add_card, add_to_basket, admin, place_order, sign_up, step

pytestmark = pytest.mark.timeout(600)


def _process(operator: Page, part: str) -> Locator:
    """The demo controls' row of a data service (`inventory`, or `inventory-1` with replicas)."""
    return operator.locator("#console-demo").locator(f'li[data-process^="{part}"]').first


def _kill_and_wait(operator: Page, part: str) -> str:
    row = _process(operator, part)
    expect(row).to_have_attribute("data-state", "running")
    name = str(row.get_attribute("data-process"))
    row.get_by_role("button", name=f"Kill {name}").click()
    expect(row).to_have_attribute("data-state", "stopped", timeout=SAGA_TIMEOUT_MS)
    return name


def _restart_and_wait(operator: Page, name: str) -> None:
    row = operator.locator("#console-demo").locator(f'li[data-process="{name}"]')
    row.get_by_role("button", name=f"Restart {name}").click()
    expect(row).to_have_attribute("data-state", "running", timeout=SAGA_TIMEOUT_MS)


def test_a_failed_compensation_is_listed_and_its_retry_finishes_the_saga(
    pages: Pages, stack: UpProcess
) -> None:
    customer = pages.open("customer")
    sign_up(customer)
    add_card(customer, APPROVED)
    add_to_basket(customer, "CHAIR-011", 2)  # 2 x 599.00: waits for review, its stock held
    order_id = place_order(customer)
    expect(customer.locator("#order-status")).to_have_text("AWAITING_REVIEW", timeout=SAGA_TIMEOUT_MS)
    expect(step(customer, "reserve_stock")).to_have_attribute("data-status", "done")

    operator = admin(pages, stack)
    # The inventory service dies while the saga waits: the release of its hold cannot run.
    inventory = _kill_and_wait(operator, "inventory")
    queue = operator.locator("#console-review")
    expect(queue.locator(f'tr[data-order="{order_id}"]')).to_be_visible(timeout=SAGA_TIMEOUT_MS)
    queue.get_by_role("button", name=f"Reject {order_id[:8]}").click()

    # The release is retried for the stack's compensation budget, then marked failed; the other
    # compensations (the authorisation's void, the order's cancellation) still run.
    expect(customer.locator("#saga-state")).to_have_attribute(
        "data-status", "compensation_failed", timeout=SAGA_TIMEOUT_MS
    )
    expect(step(customer, "reserve_stock")).to_have_attribute("data-status", "compensation_failed")
    expect(customer.locator("#order-status")).to_have_text("CANCELLED")
    expect(customer.locator("#order-reason")).to_have_text("review_rejected")
    pages.shoot(customer, "customer-compensation-failed")
    # The shop's catalogue refresh stopped when the customer left the shop: no word of it here.
    expect(customer.locator("#notice")).not_to_contain_text("catalogue")

    failed = operator.locator("#console-compensations")
    failed.get_by_role("button", name="Check the latest 50 cancelled orders").click()
    row = failed.locator(f'tr[data-order="{order_id}"]')
    expect(row).to_be_visible()
    pages.shoot(operator, "console-failed-compensation")

    _restart_and_wait(operator, inventory)  # the cause is fixed
    failed.get_by_role("button", name=f"Retry compensations of {order_id[:8]}").click()
    expect(operator.locator("#notice")).to_contain_text(
        f"Retrying the failed compensations of {order_id[:8]}."
    )

    # The customer's page, never reloaded, follows the retried saga to its end.
    expect(customer.locator("#saga-state")).to_have_attribute(
        "data-status", "compensated", timeout=SAGA_TIMEOUT_MS
    )
    expect(step(customer, "reserve_stock").locator("[data-compensation]")).to_have_attribute(
        "data-compensation", "done"
    )
    # Checked again, the console no longer lists it.
    failed.get_by_role("button", name="Check the latest 50 cancelled orders").click()
    expect(failed).to_contain_text("No failed compensation among the latest")
    expect(row).to_have_count(0)


def test_an_admin_sets_a_products_stock_and_the_shop_shows_it(
    pages: Pages, stack: UpProcess, base_url: str
) -> None:
    shop = pages.open("shopper")
    lamp = shop.locator('li.product[data-sku="LAMP-007"] .available')
    expect(lamp).to_contain_text("available")

    operator = admin(pages, stack)
    stock = operator.locator("#console-stock")
    product = stock.get_by_label("Product")
    expect(product.locator("option", has_text="LAMP-007")).to_have_count(1)
    product.select_option(label="Desk lamp (LAMP-007)")
    stock.get_by_label("On hand").fill("3")
    stock.get_by_role("button", name="Set stock").click()
    row = stock.locator('tr[data-sku="LAMP-007"]')
    expect(row.locator("td").nth(2)).to_have_text("3")
    expect(row.locator("td").nth(4)).to_have_text("3")

    # The shop's page, never reloaded, shows the new availability; the API says the same.
    expect(lamp).to_have_text("3 available")
    lamp_id = str(shop.locator('li.product[data-sku="LAMP-007"]').get_attribute("data-product"))
    assert httpx.get(f"{base_url}/api/v1/products/{lamp_id}/availability").json()["available"] == 3
    pages.shoot(operator, "console-stock")

    stock.get_by_label("On hand").fill("0")
    stock.get_by_role("button", name="Set stock").click()
    expect(row.locator("td").nth(4)).to_have_text("0")
    expect(lamp).to_have_text("Out of stock")
    # Put back as seeded, for the tests that follow on this stack.
    stock.get_by_label("On hand").fill("30")
    stock.get_by_role("button", name="Set stock").click()
    expect(row.locator("td").nth(4)).to_have_text("30")
    expect(lamp).to_have_text("30 available")


def _declined_orders(base_url: str, count: int) -> tuple[str, str]:
    """A new customer with `count` orders paid with the declined card (through the public API);
    returns their user id and token once every saga has compensated."""
    username = f"pager{secrets.token_hex(4)}"
    password = secrets.token_urlsafe(12)
    api = f"{base_url}/api/v1"
    created = httpx.post(
        f"{api}/users", json={"email": f"{username}@example.com", "username": username, "password": password}
    )
    assert created.status_code == 201, created.text
    token = api_token(base_url, username, password)
    auth = {"Authorization": f"Bearer {token}"}
    card = httpx.post(
        f"{api}/payment-methods",
        json={"card_number": DECLINED, "exp_month": 12, "exp_year": 2040, "cvc": "123"},
        headers=auth,
    )
    assert card.status_code == 201, card.text
    mug = next(p for p in httpx.get(f"{api}/products").json()["items"] if p["sku"] == "STICK-010")
    body = {"items": [{"product_id": mug["id"], "quantity": 1}], "payment_method_id": card.json()["id"]}
    for number in range(count):
        placed = httpx.post(f"{api}/orders", json=body, headers=auth | {"Idempotency-Key": f"pager-{number}"})
        assert placed.status_code == 202, placed.text
    user_id = user_id_of(token)
    deadline = time.monotonic() + SAGA_TIMEOUT_MS / 1000
    while time.monotonic() < deadline:
        items = httpx.get(f"{api}/users/{user_id}/orders?limit=100", headers=auth).json()["items"]
        if len(items) == count and all(o["cancel_reason"] == "payment_declined" for o in items):
            return user_id, token
        time.sleep(1)
    raise AssertionError(f"the {count} declined orders did not all compensate: {items}")


def _api_page(base_url: str, token: str, params: list[tuple[str, str]]) -> dict[str, Any]:
    answer = httpx.get(
        f"{base_url}/api/v1/orders", params=params, headers={"Authorization": f"Bearer {token}"}
    )
    assert answer.status_code == 200, answer.text
    page: dict[str, Any] = answer.json()
    return page


def _shown(orders: Locator) -> list[str]:
    return [str(row.get_attribute("data-order")) for row in orders.locator("tbody tr").all()]


def _expect_rows(orders: Locator, caption: str, ids: list[str]) -> None:
    expect(orders.locator("caption")).to_have_text(caption)
    expect(orders.locator("tbody tr")).to_have_count(len(ids))
    assert _shown(orders) == ids


def test_the_orders_filters_and_pages_show_what_the_api_returns(
    pages: Pages, stack: UpProcess, base_url: str
) -> None:
    customer_id, _ = _declined_orders(base_url, 12)
    creds = stack.credentials()
    token = api_token(base_url, creds["admin_email"], creds["admin_password"])
    operator = admin(pages, stack)
    orders = operator.locator("#console-orders")

    # By status only: the newest page of CANCELLED orders, as the API lists them.
    orders.get_by_label("CANCELLED", exact=True).check()
    orders.get_by_label("Limit").select_option("10")
    orders.get_by_role("button", name="Filter").click()
    first = _api_page(base_url, token, [("status", "CANCELLED"), ("limit", "10")])
    _expect_rows(orders, "Orders, page 1", [o["id"] for o in first["items"]])
    for status in orders.locator("tbody tr").all():
        expect(status).to_have_attribute("data-status", "CANCELLED")

    # By status, reason and customer: 12 orders in pages of 10, forward and back.
    orders.get_by_label("Reason").select_option("payment_declined")
    orders.get_by_label("Customer id").fill(customer_id)
    orders.get_by_role("button", name="Filter").click()
    params = [("status", "CANCELLED"), ("reason", "payment_declined"), ("customer_id", customer_id)]
    page_one = _api_page(base_url, token, [*params, ("limit", "10")])
    assert len(page_one["items"]) == 10 and page_one["next_cursor"]
    _expect_rows(orders, "Orders, page 1", [o["id"] for o in page_one["items"]])
    expect(orders.locator("tbody tr td:nth-child(4)").first).to_have_text("payment_declined")
    expect(orders.get_by_role("button", name="Previous page")).to_be_disabled()

    orders.get_by_role("button", name="Next page").click()
    page_two = _api_page(base_url, token, [*params, ("limit", "10"), ("cursor", page_one["next_cursor"])])
    assert len(page_two["items"]) == 2 and not page_two["next_cursor"]
    _expect_rows(orders, "Orders, page 2", [o["id"] for o in page_two["items"]])
    expect(orders.get_by_role("button", name="Next page")).to_be_disabled()
    pages.shoot(operator, "console-orders-page-2")

    orders.get_by_role("button", name="Previous page").click()
    _expect_rows(orders, "Orders, page 1", [o["id"] for o in page_one["items"]])
    everyone = {o["id"] for o in page_one["items"] + page_two["items"]}
    assert len(everyone) == 12

    # By another reason: none of this customer's orders.
    orders.get_by_label("Reason").select_option("review_rejected")
    orders.get_by_role("button", name="Filter").click()
    assert not _api_page(base_url, token, [*params[:1], ("reason", "review_rejected"), params[2]])["items"]
    expect(orders).to_contain_text("No order matches.")
