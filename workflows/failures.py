"""How an activity failure becomes a cancel reason and an attempt count for the saga view."""

from __future__ import annotations

from temporalio.exceptions import ActivityError, ApplicationError, RetryState, TimeoutError

from workflows.contract import CANCEL_REASONS


class StepFailed(Exception):
    """A forward step failed for good: the saga compensates and cancels with `reason`."""

    def __init__(self, reason: str, error: str, attempts: int = 0) -> None:
        super().__init__(f"{reason}: {error}")
        self.reason = reason
        self.error = error
        self.attempts = attempts


# What a failed activity call raises in the workflow: a regular activity's failure comes wrapped in
# ActivityError; a local activity's arrives unwrapped, as the error the activity raised (or a timeout).
STEP_ERRORS: tuple[type[Exception], ...] = (ActivityError, ApplicationError, TimeoutError)


def _cause(err: BaseException) -> BaseException | None:
    return err.cause if isinstance(err, ActivityError) else err


def attempts_from_error(err: BaseException) -> int:
    """Activities put their attempt number in the details of the errors they raise."""
    cause = _cause(err)
    if isinstance(cause, ApplicationError) and cause.details:
        detail = cause.details[0]
        if isinstance(detail, dict) and isinstance(detail.get("attempt"), int):
            return int(detail["attempt"])
    return 0


def reason_for(err: BaseException, *, budget_reason: str = "internal_error") -> str:
    """The cancel reason for a failed step.

    A business refusal carries its reason as the error type. A step whose retry budget ran out
    (attempts or schedule-to-close) ends with `budget_reason`: `payment_failed` for the charge.
    """
    cause = _cause(err)
    if isinstance(cause, ApplicationError) and cause.non_retryable and cause.type in CANCEL_REASONS:
        return cause.type
    if isinstance(err, ActivityError):
        if err.retry_state in (RetryState.MAXIMUM_ATTEMPTS_REACHED, RetryState.TIMEOUT) or isinstance(
            cause, TimeoutError
        ):
            return budget_reason
        return "internal_error"
    # Unwrapped (a local activity): a retryable error or a timeout only gets here once retries are over.
    if isinstance(err, TimeoutError) or (isinstance(err, ApplicationError) and not err.non_retryable):
        return budget_reason
    return "internal_error"


def describe(err: BaseException) -> str:
    cause = _cause(err)
    if isinstance(cause, ApplicationError) and cause.type:
        return f"{cause.type}: {cause.message}"[:500]
    return str(cause if cause is not None else err)[:500]
