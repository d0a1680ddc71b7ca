"""The saga helper: a stack of compensations, registered before their steps, undone in reverse."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from workflows.payloads import CompensationState

# A compensation returns how many attempts its activity needed.
CompensationAction = Callable[[], Awaitable[int]]
OutcomeListener = Callable[[str, CompensationState], None]


@dataclass
class Compensation:
    step: str
    action: CompensationAction


class Saga:
    """Holds the compensations of the steps run so far.

    A step's compensation is registered *before* the step runs, because a step can act (charge a
    card, hold stock) and still fail on the way back. Compensations are idempotent, so undoing a
    step that never acted is harmless.
    """

    def __init__(self, on_outcome: OutcomeListener) -> None:
        self._stack: list[Compensation] = []
        self._on_outcome = on_outcome

    def register(self, step: str, action: CompensationAction) -> None:
        self._stack.append(Compensation(step, action))

    @property
    def registered_steps(self) -> list[str]:
        return [compensation.step for compensation in self._stack]

    async def compensate(self) -> list[tuple[str, CompensationState]]:
        """Run every registered compensation, newest first; a failure does not stop the rest."""
        outcomes: list[tuple[str, CompensationState]] = []
        while self._stack:
            compensation = self._stack.pop()
            self._on_outcome(compensation.step, CompensationState(status="running"))
            try:
                attempts = await compensation.action()
                state = CompensationState(status="done", attempts=attempts)
            except Exception as err:  # each outcome is reported, and the remaining ones still run
                state = CompensationState(status="failed", attempts=_attempts_of(err), error=_describe(err))
            self._on_outcome(compensation.step, state)
            outcomes.append((compensation.step, state))
        return outcomes


def _describe(err: BaseException) -> str:
    cause = err.__cause__ or getattr(err, "cause", None)
    return str(cause or err)[:500]


def _attempts_of(err: BaseException) -> int:
    from workflows.failures import attempts_from_error

    return attempts_from_error(err)
