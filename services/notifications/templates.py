"""Subject and plain-text body of each notice, rendered from the free-form `data` it was queued with.

`data` comes from other services and may lack keys or hold odd types: rendering never raises on it,
it renders what is there and words the rest generically.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from decimal import Decimal
from typing import Any, Literal

TemplateName = Literal["welcome", "order_confirmed", "order_cancelled", "refund_receipt", "stock_low"]
TEMPLATES: tuple[TemplateName, ...] = (
    "welcome",
    "order_confirmed",
    "order_cancelled",
    "refund_receipt",
    "stock_low",
)

# ISO 4217 currencies without minor units, or with three; every other currency has two.
_ZERO_DECIMAL = frozenset(
    {"BIF", "CLP", "DJF", "GNF", "ISK", "JPY", "KMF", "KRW", "PYG", "RWF", "UGX", "VND"}
)
_THREE_DECIMAL = frozenset({"BHD", "IQD", "JOD", "KWD", "LYD", "OMR", "TND"})

CANCEL_REASONS: dict[str, str] = {
    "user_invalid": "your account is missing or has been deleted",
    "invalid_item": "it contained a product we do not know",
    "out_of_stock": "some items are out of stock",
    "invalid_payment_method": "the payment method could not be used",
    "payment_declined": "the payment was declined",
    "payment_failed": "the payment could not be processed",
    "customer_cancelled": "you cancelled it",
    "review_rejected": "it did not pass our review",
    "review_timeout": "it could not be reviewed in time",
    "operator_cancelled": "our team stopped it before it was completed",
    "saga_terminated": "its processing stopped unexpectedly before it was completed",
    "internal_error": "of an internal error on our side",
}

_MAX_FIELD = 200  # a runaway value in `data` must not turn a notice into a novel


@dataclass(frozen=True)
class Rendered:
    subject: str
    body: str


def _text(data: Mapping[str, Any], key: str) -> str | None:
    value = data.get(key)
    if value is None or isinstance(value, dict | list):
        return None
    text = str(value).strip()
    return text[:_MAX_FIELD] if text else None


def _integer(data: Mapping[str, Any], key: str) -> int | None:
    value = data.get(key)
    # bool is an int subclass; True is not a price.
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def format_money(cents: int, currency: str | None) -> str:
    """`1234, "USD"` → `12.34 USD`, exact (no float), with the currency's own minor units."""
    code = currency.upper() if currency else ""
    digits = 0 if code in _ZERO_DECIMAL else 3 if code in _THREE_DECIMAL else 2
    amount = Decimal(cents).scaleb(-digits)
    formatted = f"{amount:,.{digits}f}"
    return f"{formatted} {code}".strip()


def _money(data: Mapping[str, Any], key: str) -> str | None:
    cents = _integer(data, key)
    if cents is None:
        return None
    return format_money(cents, _text(data, "currency"))


def _greeting(data: Mapping[str, Any]) -> str:
    name = _text(data, "first_name") or _text(data, "username")
    return f"Hello {name}," if name else "Hello,"


def _order_ref(data: Mapping[str, Any]) -> str:
    order_id = _text(data, "order_id")
    return f"order {order_id}" if order_id else "your order"


def _welcome(data: Mapping[str, Any]) -> Rendered:
    username = _text(data, "username")
    lines = [_greeting(data), "", "Welcome to ordersaga! Your account is ready."]
    if username:
        lines.append(f"You can sign in as {username}.")
    return Rendered("Welcome to ordersaga", "\n".join(lines))


def _order_confirmed(data: Mapping[str, Any]) -> Rendered:
    order = _order_ref(data)
    total = _money(data, "total_cents")
    lines = [_greeting(data), "", f"Thank you: {order} is confirmed."]
    if total:
        lines.append(f"Total charged: {total}.")
    return Rendered(
        f"Your {order} is confirmed" if order != "your order" else "Your order is confirmed", "\n".join(lines)
    )


def _order_cancelled(data: Mapping[str, Any]) -> Rendered:
    order = _order_ref(data)
    reason = _text(data, "reason") or _text(data, "cancel_reason")
    words = CANCEL_REASONS.get(reason or "")
    lines = [_greeting(data), ""]
    if words:
        lines.append(f"We are sorry: {order} was cancelled because {words}.")
    elif reason:
        lines.append(f"We are sorry: {order} was cancelled ({reason}).")
    else:
        lines.append(f"We are sorry: {order} was cancelled.")
    lines.append("Any amount charged for it is refunded.")
    subject = f"Your {order} was cancelled" if order != "your order" else "Your order was cancelled"
    return Rendered(subject, "\n".join(lines))


def _refund_receipt(data: Mapping[str, Any]) -> Rendered:
    order = _order_ref(data)
    amount = _money(data, "amount_cents") or _money(data, "refunded_cents")
    payment = _text(data, "payment_id")
    lines = [_greeting(data), ""]
    lines.append(f"We refunded {amount} for {order}." if amount else f"We issued a refund for {order}.")
    if payment:
        lines.append(f"Payment reference: {payment}.")
    lines.append("It may take a few days to appear on your statement.")
    return Rendered("Your refund receipt", "\n".join(lines))


def _stock_low(data: Mapping[str, Any]) -> Rendered:
    product = _text(data, "name") or _text(data, "sku") or _text(data, "product_id") or "A product"
    available = _integer(data, "available")
    threshold = _integer(data, "threshold")
    lines = [f"Stock is running low for {product}."]
    if available is not None:
        lines.append(f"Available now: {available}.")
    if threshold is not None:
        lines.append(f"Threshold: {threshold}.")
    return Rendered(f"Low stock: {product}", "\n".join(lines))


_RENDERERS: dict[str, Callable[[Mapping[str, Any]], Rendered]] = {
    "welcome": _welcome,
    "order_confirmed": _order_confirmed,
    "order_cancelled": _order_cancelled,
    "refund_receipt": _refund_receipt,
    "stock_low": _stock_low,
}


def render(template: str, data: Mapping[str, Any], *, order_id: str | None = None) -> Rendered:
    """Render a notice; the notification's own order id fills in when `data` lacks one."""
    if order_id and not _text(data, "order_id"):
        data = {**data, "order_id": order_id}
    renderer = _RENDERERS.get(template)
    if renderer is None:
        raise ValueError(f"unknown template {template!r}")
    return renderer(data)
