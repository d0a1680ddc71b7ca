"""The saga helper: a stack of compensations, registered before their steps, undone in reverse."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from workflows.contract import CompensationState
from workflows.failures import attempts_from_error, describe

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
    step that never acted is harmless. Each runs within its own retry budget: one that is still
    failing when its budget is spent is kept aside, the others still run, and `retry_failed` runs
    the kept ones again, in the same order, once the cause is fixed.
    """

    def __init__(self, on_outcome: OutcomeListener) -> None:
        self._stack: list[Compensation] = []
        self._failed: list[Compensation] = []
        self._on_outcome = on_outcome

    def register(self, step: str, action: CompensationAction) -> None:
        self._stack.append(Compensation(step, action))

    @property
    def registered_steps(self) -> list[str]:
        return [compensation.step for compensation in self._stack]

    @property
    def failed_steps(self) -> list[str]:
        return [compensation.step for compensation in self._failed]

    async def compensate(self) -> list[tuple[str, CompensationState]]:
        """Run every registered compensation, newest first; a failure does not stop the rest."""
        pending, self._stack = list(reversed(self._stack)), []
        return await self._run(pending)

    async def retry_failed(self) -> list[tuple[str, CompensationState]]:
        pending, self._failed = self._failed, []
        return await self._run(pending)

    async def _run(self, pending: list[Compensation]) -> list[tuple[str, CompensationState]]:
        outcomes: list[tuple[str, CompensationState]] = []
        for compensation in pending:
            self._on_outcome(compensation.step, CompensationState(status="running"))
            try:
                attempts = await compensation.action()
                state = CompensationState(status="done", attempts=attempts)
            except Exception as err:  # each outcome is reported, and the remaining ones still run
                state = CompensationState(
                    status="failed", attempts=attempts_from_error(err), error=describe(err)
                )
                self._failed.append(compensation)
            self._on_outcome(compensation.step, state)
            outcomes.append((compensation.step, state))
        return outcomes
