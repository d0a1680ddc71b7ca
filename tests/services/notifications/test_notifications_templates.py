"""Rendering: every template renders from whatever `data` holds, and money is exact."""

from __future__ import annotations

import pytest

from services.notifications.templates import CANCEL_REASONS, TEMPLATES, format_money, render
from workflows.payloads import CANCEL_REASONS as SAGA_CANCEL_REASONS


@pytest.mark.parametrize(
    ("cents", "currency", "expected"),
    [
        (12345, "USD", "123.45 USD"),
        (5, "EUR", "0.05 EUR"),
        (123456789, "GBP", "1,234,567.89 GBP"),
        (500, "JPY", "500 JPY"),
        (1234, "KWD", "1.234 KWD"),
        (-250, "USD", "-2.50 USD"),
        (999, None, "9.99"),
    ],
)
def test_format_money_uses_the_currency_minor_units(cents: int, currency: str | None, expected: str) -> None:
    assert format_money(cents, currency) == expected


def test_order_confirmed_shows_order_and_total() -> None:
    rendered = render("order_confirmed", {"order_id": "A-17", "total_cents": 4999, "currency": "usd"})
    assert rendered.subject == "Your order A-17 is confirmed"
    assert "49.99 USD" in rendered.body


def test_order_id_of_the_notification_fills_in() -> None:
    rendered = render("order_cancelled", {"reason": "payment_declined"}, order_id="B-2")
    assert "order B-2" in rendered.subject
    assert "the payment was declined" in rendered.body


@pytest.mark.parametrize("reason", sorted(CANCEL_REASONS))
def test_every_cancel_reason_is_put_in_words(reason: str) -> None:
    body = render("order_cancelled", {"reason": reason}).body
    assert CANCEL_REASONS[reason] in body
    assert reason not in body


def test_every_reason_the_saga_cancels_for_has_words() -> None:
    assert set(SAGA_CANCEL_REASONS) <= set(CANCEL_REASONS)
    for reason in ("operator_cancelled", "saga_terminated"):
        assert CANCEL_REASONS[reason] in render("order_cancelled", {"reason": reason}).body


def test_unknown_cancel_reason_is_shown_as_given() -> None:
    assert "(lost_in_transit)" in render("order_cancelled", {"reason": "lost_in_transit"}).body


def test_refund_receipt_and_stock_low_and_welcome() -> None:
    refund = render("refund_receipt", {"order_id": "C-3", "amount_cents": 1000, "currency": "EUR"})
    assert "refunded 10.00 EUR for order C-3" in refund.body
    stock = render("stock_low", {"sku": "SKU-1", "available": 3, "threshold": 5})
    assert stock.subject == "Low stock: SKU-1"
    assert "Available now: 3." in stock.body
    welcome = render("welcome", {"first_name": "Grace", "username": "grace"})
    assert welcome.body.startswith("Hello Grace,")
    assert "sign in as grace" in welcome.body


@pytest.mark.parametrize("template", TEMPLATES)
@pytest.mark.parametrize(
    "data",
    [
        {},
        {"total_cents": "12.5", "amount_cents": True, "available": None, "currency": 7},
        {"order_id": {"nested": 1}, "reason": ["x"], "first_name": "", "name": "n" * 5000},
    ],
)
def test_missing_or_odd_data_never_crashes(template: str, data: dict[str, object]) -> None:
    rendered = render(template, data)
    assert rendered.subject
    assert rendered.body
    assert len(rendered.body) < 1000  # a runaway value is truncated


def test_unknown_template_is_refused() -> None:
    with pytest.raises(ValueError, match="unknown template"):
        render("birthday", {})
