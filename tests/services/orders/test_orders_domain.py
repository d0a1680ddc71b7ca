"""The pure order rules: the state machine, pricing a confirmation, the request fingerprint."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import pytest

from services.orders.domain import (
    CancelReason,
    CommandType,
    ConfirmationMismatch,
    CorruptHistory,
    IllegalTransition,
    Line,
    OrderState,
    OrderStatus,
    decide,
    next_status,
    price_lines,
    request_fingerprint,
)
from workflows.payloads import CANCEL_REASONS

ALLOWED = {
    (OrderStatus.PENDING, CommandType.AWAIT_REVIEW): OrderStatus.AWAITING_REVIEW,
    (OrderStatus.PENDING, CommandType.CONFIRM): OrderStatus.CONFIRMED,
    (OrderStatus.PENDING, CommandType.CANCEL): OrderStatus.CANCELLED,
    (OrderStatus.AWAITING_REVIEW, CommandType.CONFIRM): OrderStatus.CONFIRMED,
    (OrderStatus.AWAITING_REVIEW, CommandType.CANCEL): OrderStatus.CANCELLED,
    (OrderStatus.CONFIRMED, CommandType.SHIP): OrderStatus.SHIPPED,
    (OrderStatus.SHIPPED, CommandType.DELIVER): OrderStatus.DELIVERED,
}


def test_the_state_machine_allows_exactly_the_documented_transitions() -> None:
    for status in OrderStatus:
        for command in CommandType:
            expected = ALLOWED.get((status, command))
            if expected is None:
                with pytest.raises(IllegalTransition):
                    next_status(status, command)
            else:
                assert next_status(status, command) is expected


def test_a_confirmation_prices_the_lines_in_their_original_order() -> None:
    a, b = uuid.uuid4(), uuid.uuid4()
    ordered = [Line(a, 2), Line(b, 1)]
    priced = price_lines(ordered, [Line(b, 1, 300), Line(a, 2, 150)], 600)
    assert priced == [Line(a, 2, 150), Line(b, 1, 300)]
    with pytest.raises(ConfirmationMismatch):
        price_lines(ordered, [Line(b, 1, 300), Line(a, 2, 150)], 601)
    with pytest.raises(ConfirmationMismatch):
        price_lines(ordered, [Line(a, 2, 150), Line(a, 2, 150), Line(b, 1, 300)], 900)


def test_the_fingerprint_ignores_line_order_but_not_content() -> None:
    a, b, pm = uuid.uuid4(), uuid.uuid4(), uuid.uuid4()
    assert request_fingerprint([Line(a, 1), Line(b, 2)], pm) == request_fingerprint(
        [Line(b, 2), Line(a, 1)], pm
    )
    assert request_fingerprint([Line(a, 1)], pm) != request_fingerprint([Line(a, 2)], pm)
    assert request_fingerprint([Line(a, 1)], pm) != request_fingerprint([Line(a, 1)], uuid.uuid4())


def test_the_cancel_reasons_are_the_sagas() -> None:
    assert {reason.value for reason in CancelReason} == set(CANCEL_REASONS)
    assert CancelReason("operator_cancelled") is CancelReason.OPERATOR_CANCELLED
    assert CancelReason("saga_terminated") is CancelReason.SAGA_TERMINATED


def test_await_review_and_cancel_may_name_the_payment() -> None:
    lines = [Line(uuid.uuid4(), 1)]
    payment = uuid.uuid4()
    review = decide(OrderStatus.PENDING, lines, CommandType.AWAIT_REVIEW, payment_id=payment)
    assert (review.status, review.event_data) == (OrderStatus.AWAITING_REVIEW, {"payment_id": str(payment)})
    cancel = decide(
        OrderStatus.AWAITING_REVIEW,
        lines,
        CommandType.CANCEL,
        reason=CancelReason.SAGA_TERMINATED,
        payment_id=payment,
    )
    assert cancel.event_data == {"reason": "saga_terminated", "payment_id": str(payment)}
    # Without one, the decision leaves the order's payment_id alone.
    assert decide(OrderStatus.PENDING, lines, CommandType.AWAIT_REVIEW).event_data == {}
    with pytest.raises(ValueError, match="payment_id"):
        decide(OrderStatus.CONFIRMED, lines, CommandType.SHIP, payment_id=payment)


@dataclass(frozen=True)
class _Event:
    version: int
    type: str
    data: dict[str, Any]
    occurred_at: datetime


def test_the_state_is_the_fold_of_the_events_and_a_broken_history_is_refused() -> None:
    order_id, user, card, payment, product = (uuid.uuid4() for _ in range(5))
    at = [datetime(2026, 12, 4, 1, minute, tzinfo=UTC) for minute in range(5)]
    item = {"product_id": str(product), "quantity": 2, "unit_price_cents": None}
    priced = {**item, "unit_price_cents": 450}
    history = [
        _Event(
            1, "order.created", {"user_id": str(user), "items": [item], "payment_method_id": str(card)}, at[0]
        ),
        _Event(2, "order.awaiting_review", {"payment_id": str(payment)}, at[1]),
        _Event(
            3,
            "order.confirmed",
            {"items": [priced], "total_cents": 900, "currency": "EUR", "payment_id": str(payment)},
            at[2],
        ),
        _Event(4, "order.shipped", {}, at[3]),
    ]
    state = OrderState.from_history(order_id, history)
    assert (state.status, state.version, state.items, state.total_cents, state.currency) == (
        OrderStatus.SHIPPED,
        4,
        [priced],
        900,
        "EUR",
    )
    assert (state.user_id, state.payment_method_id, state.payment_id) == (user, card, payment)
    assert (state.created_at, state.updated_at, state.cancel_reason) == (at[0], at[3], None)
    # Each prefix of the history is the state of then: the live path applies one event at a time.
    assert OrderState.from_history(order_id, history[:3]) == OrderState.from_history(
        order_id, history[:2]
    ).apply(history[2])
    cancelled = OrderState.from_history(order_id, history[:1]).apply(
        _Event(2, "order.cancelled", {"reason": "out_of_stock"}, at[4])
    )
    assert (cancelled.status, cancelled.cancel_reason, cancelled.payment_id) == (
        OrderStatus.CANCELLED,
        "out_of_stock",
        None,
    )
    for broken in (
        [],
        history[1:],
        [history[0], history[2]],
        [history[0], _Event(2, "order.lost", {}, at[1])],
    ):
        with pytest.raises(CorruptHistory):
            OrderState.from_history(order_id, broken)
