"""How a failed step's error becomes the order's cancel reason, for regular and local activities.

A regular activity's failure reaches the workflow wrapped in ActivityError with a retry state; a
local activity's arrives unwrapped, and only once its retries are over. Both must give the reason
the saga records (the live saga tests cover the refusals end to end).
"""

from __future__ import annotations

import pytest
from temporalio.exceptions import ActivityError, ApplicationError, RetryState, TimeoutError, TimeoutType

from workflows.failures import attempts_from_error, describe, reason_for


def wrapped(cause: Exception, retry_state: RetryState) -> ActivityError:
    error = ActivityError(
        "activity failed",
        scheduled_event_id=5,
        started_event_id=6,
        identity="worker",
        activity_type="reserve_stock",
        activity_id="3",
        retry_state=retry_state,
    )
    error.__cause__ = cause
    return error


REFUSAL = ApplicationError("no stock", {"attempt": 1}, type="out_of_stock", non_retryable=True)
UNKNOWN_REFUSAL = ApplicationError("422 odd", {"attempt": 1}, type="upstream_rejected", non_retryable=True)
UNAVAILABLE = ApplicationError("503", {"attempt": 7}, type="upstream_unavailable")
TIMED_OUT = TimeoutError("schedule to close", type=TimeoutType.SCHEDULE_TO_CLOSE, last_heartbeat_details=[])


@pytest.mark.parametrize(
    ("error", "reason"),
    [
        (wrapped(REFUSAL, RetryState.NON_RETRYABLE_FAILURE), "out_of_stock"),
        (REFUSAL, "out_of_stock"),
        (wrapped(UNKNOWN_REFUSAL, RetryState.NON_RETRYABLE_FAILURE), "internal_error"),
        (UNKNOWN_REFUSAL, "internal_error"),
        (wrapped(UNAVAILABLE, RetryState.MAXIMUM_ATTEMPTS_REACHED), "payment_failed"),
        (UNAVAILABLE, "payment_failed"),
        (wrapped(TIMED_OUT, RetryState.TIMEOUT), "payment_failed"),
        (TIMED_OUT, "payment_failed"),
    ],
    ids=[
        "regular-refusal",
        "local-refusal",
        "regular-unknown-refusal",
        "local-unknown-refusal",
        "regular-retries-exhausted",
        "local-retries-exhausted",
        "regular-timeout",
        "local-timeout",
    ],
)
def test_cancel_reason_of_a_failed_step(error: Exception, reason: str) -> None:
    assert reason_for(error, budget_reason="payment_failed") == reason


def test_attempts_and_description_read_through_the_wrapper_or_not() -> None:
    assert attempts_from_error(wrapped(UNAVAILABLE, RetryState.MAXIMUM_ATTEMPTS_REACHED)) == 7
    assert attempts_from_error(UNAVAILABLE) == 7
    assert describe(REFUSAL) == describe(wrapped(REFUSAL, RetryState.NON_RETRYABLE_FAILURE))
    assert describe(REFUSAL) == "out_of_stock: no stock"
