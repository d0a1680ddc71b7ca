"""The web pages in a real browser against `ordersaga up`: what a customer and an operator see.

Each test saves a screenshot of every page it opened under its own tmp dir (printed with `-s`).
"""

from __future__ import annotations

import json
import re
import secrets
import shutil
import time

import httpx
import pytest
from playwright.sync_api import Page, expect

from tests.e2e.conftest import UpProcess
from tests.web.conftest import (
    REPOSITORY,
    SAGA_TIMEOUT_MS,
    Pages,
    api_token,
    update_readme_images,
    user_id_of,
)

pytestmark = pytest.mark.timeout(600)

APPROVED = "4242424242424242"
DECLINED = "4000000000000002"
ORDER_URL = re.compile(r"#/orders/([0-9a-f-]{36})$")


def sign_up(page: Page) -> tuple[str, str]:
    """A new customer through the sign-up form; returns the username and password."""
    username = f"web{secrets.token_hex(4)}"
    password = secrets.token_urlsafe(12)
    page.goto("/#/shop")
    page.get_by_label("Email", exact=True).fill(f"{username}@example.com")
    page.get_by_label(re.compile(r"^Username")).fill(username)
    page.get_by_label(re.compile(r"^Password \(10")).fill(password)
    page.get_by_role("button", name="Sign up").click()
    expect(page.locator("#who")).to_contain_text(f"Signed in as {username}")
    return username, password


def log_in(page: Page, username: str, password: str) -> None:
    page.goto("/#/shop")
    page.get_by_label("Email or username").fill(username)
    page.get_by_label("Password", exact=True).fill(password)
    page.get_by_role("button", name="Log in").click()
    expect(page.locator("#who")).to_contain_text("Signed in as")


def add_card(page: Page, number: str) -> None:
    page.get_by_label("Card number").fill(number)
    page.get_by_label("CVC").fill("123")
    page.get_by_role("button", name="Add card").click()
    expect(page.locator(f'.cards li[data-last4="{number[-4:]}"]')).to_be_visible()
    # The card just added is the one the checkout pays with.
    expect(page.get_by_label(re.compile(rf"•••• {number[-4:]}$"))).to_be_checked()


def add_to_basket(page: Page, sku: str, quantity: int = 1) -> None:
    product = page.locator(f'li.product[data-sku="{sku}"]')
    product.get_by_label(re.compile(r"^Quantity of")).fill(str(quantity))
    product.get_by_role("button", name=re.compile(r"^Add .* to basket$")).click()


def place_order(page: Page, *, double: bool = False) -> str:
    button = page.get_by_role("button", name="Place order")
    expect(button).to_be_enabled()
    if double:
        button.dblclick()
    else:
        button.click()
    page.wait_for_url(ORDER_URL)
    match = ORDER_URL.search(page.url)
    assert match is not None
    return match.group(1)


def step(page: Page, name: str) -> object:
    return page.locator(f'#timeline li[data-step="{name}"]')


def admin(pages: Pages, stack: UpProcess) -> Page:
    creds = stack.credentials()
    page = pages.open("admin")
    log_in(page, creds["admin_email"], creds["admin_password"])
    page.get_by_role("link", name="Operator console").click()
    expect(page.get_by_role("heading", name="Operator console", level=1)).to_be_visible()
    return page


def approve(operator: Page, order_id: str) -> None:
    """Approve in the console's review queue, again while the saga cannot take it yet (a worker
    just restarted: the update answers 503 until the workflow's task reaches it)."""
    queue = operator.locator("#console-review")
    row = queue.locator(f'tr[data-order="{order_id}"]')
    deadline = time.monotonic() + SAGA_TIMEOUT_MS / 1000
    while time.monotonic() < deadline:
        button = queue.get_by_role("button", name=f"Approve {order_id[:8]}")
        if button.count() and button.is_enabled():
            button.click()
        try:
            expect(row).to_have_count(0, timeout=10_000)
            return
        except AssertionError:
            continue  # refused for now: the console said why, and the row is still there
    raise AssertionError(f"order {order_id} still waits for review")


def test_customer_buys_two_products_and_watches_the_timeline_complete(pages: Pages, stack: UpProcess) -> None:
    page = pages.open("customer")
    sign_up(page)
    add_card(page, APPROVED)
    add_to_basket(page, "MUG-001", 2)
    add_to_basket(page, "TEE-002", 1)
    expect(page.locator(".basket li")).to_have_count(2)
    expect(page.locator(".total")).to_contain_text("49.00")  # 2 x 12.00 + 25.00
    order_id = place_order(page)

    expect(page.locator("#saga-state")).to_have_attribute("data-status", "completed", timeout=SAGA_TIMEOUT_MS)
    expect(page.locator("#order-status")).to_have_text("CONFIRMED")
    for name in (
        "create_order",
        "validate_user",
        "reserve_stock",
        "authorize_payment",
        "capture_payment",
        "confirm_order",
    ):
        expect(step(page, name)).to_have_attribute("data-status", "done")
    expect(page.locator("#temporal-link")).to_have_attribute(
        "href", f"http://127.0.0.1:{stack.ports['ui']}/namespaces/default/workflows/order-{order_id}"
    )
    # My orders lists it, with its status.
    page.get_by_role("link", name="My orders").click()
    expect(page.locator(f'tr[data-order="{order_id}"]')).to_have_attribute("data-status", "CONFIRMED")
    page.go_back()
    expect(page.locator("#saga-state")).to_have_attribute("data-status", "completed", timeout=SAGA_TIMEOUT_MS)
    shot = pages.shoot(page, "order-timeline")
    if update_readme_images():
        shutil.copy(shot, REPOSITORY / "docs" / "images" / "order-timeline.png")


def test_declined_card_shows_the_compensated_steps(pages: Pages) -> None:
    page = pages.open("customer")
    sign_up(page)
    add_card(page, DECLINED)
    add_to_basket(page, "BOOK-003")
    place_order(page)

    expect(page.locator("#saga-state")).to_have_attribute(
        "data-status", "compensated", timeout=SAGA_TIMEOUT_MS
    )
    expect(page.locator("#order-status")).to_have_text("CANCELLED")
    expect(page.locator("#order-reason")).to_have_text("payment_declined")
    expect(step(page, "authorize_payment")).to_have_attribute("data-status", "failed")
    expect(step(page, "authorize_payment")).to_contain_text("Error:")
    for name in ("reserve_stock", "create_order"):
        expect(step(page, name)).to_have_attribute("data-status", "compensated")
        expect(step(page, name).locator("[data-compensation]")).to_have_attribute("data-compensation", "done")
    expect(step(page, "confirm_order")).to_have_attribute("data-status", "skipped")
    expect(page.get_by_role("button", name="Cancel order")).to_have_count(0)


def test_review_approved_in_the_console_turns_the_customer_page_confirmed(
    pages: Pages, stack: UpProcess
) -> None:
    customer = pages.open("customer")
    sign_up(customer)
    add_card(customer, APPROVED)
    add_to_basket(customer, "HEAD-006", 5)  # 5 x 249.00: over the 1,000.00 review threshold
    order_id = place_order(customer)
    expect(customer.locator("#order-status")).to_have_text("AWAITING_REVIEW", timeout=SAGA_TIMEOUT_MS)
    expect(customer.get_by_role("button", name="Cancel order")).to_be_visible()

    operator = admin(pages, stack)
    queue = operator.locator("#console-review")
    expect(queue.locator(f'tr[data-order="{order_id}"]')).to_be_visible(timeout=SAGA_TIMEOUT_MS)
    approve(operator, order_id)

    # The customer's page, never reloaded, follows the saga to its end.
    expect(customer.locator("#order-status")).to_have_text("CONFIRMED", timeout=SAGA_TIMEOUT_MS)
    expect(customer.locator("#saga-state")).to_have_attribute(
        "data-status", "completed", timeout=SAGA_TIMEOUT_MS
    )
    expect(step(customer, "review")).to_have_attribute("data-status", "done")
    expect(customer.get_by_role("button", name="Cancel order")).to_have_count(0)
    # Fulfilment sees it, and ships it.
    fulfilment = operator.locator("#console-fulfilment")
    fulfilment.get_by_role("button", name=f"Mark {order_id[:8]} shipped").click()
    expect(fulfilment.locator(f'tr[data-order="{order_id}"]')).to_have_attribute("data-status", "SHIPPED")


def test_the_customer_cancels_while_the_order_waits_for_review(pages: Pages) -> None:
    page = pages.open("customer")
    sign_up(page)
    add_card(page, APPROVED)
    add_to_basket(page, "HEAD-006", 5)
    place_order(page)
    expect(page.locator("#order-status")).to_have_text("AWAITING_REVIEW", timeout=SAGA_TIMEOUT_MS)
    page.get_by_role("button", name="Cancel order").click()

    expect(page.locator("#saga-state")).to_have_attribute(
        "data-status", "compensated", timeout=SAGA_TIMEOUT_MS
    )
    expect(page.locator("#order-status")).to_have_text("CANCELLED")
    expect(page.locator("#order-reason")).to_have_text("customer_cancelled")
    for name in ("authorize_payment", "reserve_stock", "create_order"):
        expect(step(page, name)).to_have_attribute("data-status", "compensated")
    expect(page.get_by_role("button", name="Cancel order")).to_have_count(0)


def test_a_double_clicked_checkout_places_one_order(pages: Pages, base_url: str) -> None:
    page = pages.open("customer")
    username, password = sign_up(page)
    add_card(page, APPROVED)
    add_to_basket(page, "PLANT-008")
    order_id = place_order(page, double=True)
    expect(page.locator("#saga-state")).to_have_attribute("data-status", "completed", timeout=SAGA_TIMEOUT_MS)

    token = api_token(base_url, username, password)
    listed = httpx.get(
        f"{base_url}/api/v1/users/{user_id_of(token)}/orders", headers={"Authorization": f"Bearer {token}"}
    ).json()["items"]
    assert [order["id"] for order in listed] == [order_id]


def test_worker_killed_from_the_demo_controls_mid_saga_and_the_timeline_completes(
    pages: Pages, stack: UpProcess
) -> None:
    customer = pages.open("customer")
    sign_up(customer)
    add_card(customer, APPROVED)
    add_to_basket(customer, "KB-004", 8)  # 8 x 129.00: waits for review, mid-saga
    order_id = place_order(customer)
    expect(customer.locator("#order-status")).to_have_text("AWAITING_REVIEW", timeout=SAGA_TIMEOUT_MS)
    expect(step(customer, "authorize_payment")).to_have_attribute("data-status", "done")

    operator = admin(pages, stack)
    demo = operator.locator("#console-demo")
    worker = demo.locator('li[data-process="worker"]')
    expect(worker).to_have_attribute("data-state", "running")
    pid_before = _worker_pid(stack)
    demo.get_by_role("button", name="Kill worker").click()
    expect(worker).to_have_attribute("data-state", "stopped", timeout=SAGA_TIMEOUT_MS)
    # The saga waits in Temporal meanwhile: the customer's page still shows where it stopped.
    time.sleep(3)
    expect(customer.locator("#order-status")).to_have_text("AWAITING_REVIEW")
    pages.shoot(customer, "customer-while-worker-down")

    demo.get_by_role("button", name="Restart worker").click()
    expect(worker).to_have_attribute("data-state", "running", timeout=SAGA_TIMEOUT_MS)
    assert _worker_pid(stack) != pid_before
    builds = _worker_builds(stack)
    # A saga is pinned to its worker's build (README, "Rollouts"): if workflows/ changed on disk
    # during the test, the restarted worker is another version and this saga waits for the old one.
    assert len(set(builds)) == 1, f"workflow code changed during the test: builds {builds}"
    approve(operator, order_id)
    expect(customer.locator("#saga-state")).to_have_attribute(
        "data-status", "completed", timeout=SAGA_TIMEOUT_MS
    )
    expect(customer.locator("#order-status")).to_have_text("CONFIRMED")
    # `up` is still running: a worker killed on purpose does not stop the stack.
    assert stack.proc is not None and stack.proc.poll() is None


def _worker_pid(stack: UpProcess) -> int:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        state = json.loads((stack.data_dir / "up.json").read_text())
        if "worker" in state["children"]:
            return int(state["children"]["worker"])
        time.sleep(0.5)
    raise AssertionError("no worker in up.json")


def _worker_builds(stack: UpProcess) -> list[str]:
    log = (stack.data_dir / "logs" / "worker.log").read_text(errors="replace")
    started = [json.loads(line) for line in log.splitlines() if '"worker_started"' in line]
    return [str(line["build_id"]) for line in started if line.get("event") == "worker_started"]


def test_the_pages_on_a_phone_and_their_security_headers(pages: Pages, base_url: str) -> None:
    answer = httpx.get(base_url + "/")
    assert answer.status_code == 200
    csp = answer.headers["content-security-policy"]
    assert "script-src 'self'" in csp and "frame-ancestors 'none'" in csp and "unsafe-inline" not in csp
    assert answer.headers["x-content-type-options"] == "nosniff"
    script = httpx.get(base_url + "/static/js/app.js")
    assert script.headers["content-type"].startswith("text/javascript")
    assert script.headers["content-security-policy"] == csp
    # The demo controls are the admin's only.
    assert httpx.get(base_url + "/demo/processes").status_code == 401

    page = pages.open("phone", mobile=True)
    expect(page.get_by_role("heading", name="Shop", level=1)).to_be_focused()
    expect(page.locator('li.product[data-sku="MUG-001"] .available')).to_contain_text("available")
    # Nothing wider than the phone's screen: no sideways scrolling.
    assert page.evaluate("document.documentElement.scrollWidth") <= 390
    # Keyboard only: from the page's heading, Tab reaches the log-in form.
    page.keyboard.press("Tab")
    expect(page.get_by_label("Email or username")).to_be_focused()
    expect(page.locator("footer")).to_contain_text("reloading the page logs you out")
