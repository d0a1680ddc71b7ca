"""The pure order rules: the state machine, pricing a confirmation, the request fingerprint."""

from __future__ import annotations

import uuid

import pytest

from services.orders.domain import (
    CancelReason,
    CommandType,
    ConfirmationMismatch,
    IllegalTransition,
    Line,
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
    assert (review.status, review.fields, review.event_data) == (
        OrderStatus.AWAITING_REVIEW,
        {"payment_id": payment},
        {"payment_id": str(payment)},
    )
    cancel = decide(
        OrderStatus.AWAITING_REVIEW,
        lines,
        CommandType.CANCEL,
        reason=CancelReason.SAGA_TERMINATED,
        payment_id=payment,
    )
    assert cancel.fields == {"cancel_reason": "saga_terminated", "payment_id": payment}
    assert cancel.event_data == {"reason": "saga_terminated", "payment_id": str(payment)}
    # Without one, the decision leaves the order's payment_id alone.
    assert decide(OrderStatus.PENDING, lines, CommandType.AWAIT_REVIEW).fields == {}
    with pytest.raises(ValueError, match="payment_id"):
        decide(OrderStatus.CONFIRMED, lines, CommandType.SHIP, payment_id=payment)
