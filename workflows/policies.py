"""Timeouts and retry policies per step, each with the reason for its shape."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta

from temporalio.common import RetryPolicy

from workflows.contract import SagaPolicy


@dataclass(frozen=True)
class ActivityOptions:
    start_to_close: timedelta
    retry: RetryPolicy
    schedule_to_close: timedelta | None = None


# Order records and stock holds are quick calls to our own services; a stuck call is cut at 10 s and
# retried with backoff, and after 5 minutes of failures the saga gives up with internal_error.
FORWARD = ActivityOptions(
    start_to_close=timedelta(seconds=10),
    schedule_to_close=timedelta(minutes=5),
    retry=RetryPolicy(
        initial_interval=timedelta(milliseconds=500),
        backoff_coefficient=2,
        maximum_interval=timedelta(seconds=10),
    ),
)

# Past the charge, the pivot (commit stock, confirm order) must happen: retried without limit.
PIVOT = ActivityOptions(
    start_to_close=timedelta(seconds=10),
    retry=RetryPolicy(
        initial_interval=timedelta(milliseconds=500),
        backoff_coefficient=2,
        maximum_interval=timedelta(seconds=30),
    ),
)


def compensation(policy: SagaPolicy) -> ActivityOptions:
    """A compensation is retried with backoff for its budget (the worker's setting); one still
    failing then is marked compensation_failed, the others still run, and an admin retries it once
    the cause is fixed. Without a budget (sagas recorded before it) it is retried without end."""
    budget = policy.compensation_budget_seconds
    return ActivityOptions(
        start_to_close=PIVOT.start_to_close,
        schedule_to_close=timedelta(seconds=budget) if budget else None,
        retry=PIVOT.retry,
    )


# Notices are best effort: ten minutes of retries, and a failure never undoes a confirmed order.
NOTIFY = ActivityOptions(
    start_to_close=timedelta(seconds=10),
    schedule_to_close=timedelta(minutes=10),
    retry=RetryPolicy(
        initial_interval=timedelta(seconds=1), backoff_coefficient=2, maximum_interval=timedelta(seconds=30)
    ),
)

# The policy lookup is a local read of the worker's settings, recorded so that replays agree.
POLICY_LOOKUP = timedelta(seconds=5)


def payment(policy: SagaPolicy) -> ActivityOptions:
    """The card network may be slow (15 s per try); the whole step is bounded by the worker's budget,
    after which the order is cancelled as payment_failed and the charge key is voided."""
    return ActivityOptions(
        start_to_close=timedelta(seconds=15),
        schedule_to_close=timedelta(seconds=policy.payment_budget_seconds),
        retry=RetryPolicy(
            initial_interval=timedelta(seconds=policy.payment_initial_interval_seconds),
            backoff_coefficient=2,
            maximum_interval=timedelta(seconds=10),
            maximum_attempts=policy.payment_max_attempts,
        ),
    )
