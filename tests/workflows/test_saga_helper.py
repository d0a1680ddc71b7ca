"""workflows/saga.py on its own: compensations run newest first, a failure is kept aside, retried later."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from temporalio.exceptions import ApplicationError

from workflows.contract import CompensationState
from workflows.saga import Saga


class Ledger:
    def __init__(self) -> None:
        self.ran: list[str] = []
        self.outcomes: list[tuple[str, str]] = []
        self.broken: set[str] = set()

    def action(self, step: str, attempts: int = 1) -> Callable[[], Awaitable[int]]:
        async def undo() -> int:
            self.ran.append(step)
            if step in self.broken:
                raise ApplicationError("still down", {"attempt": 7}, type="upstream_unavailable")
            return attempts

        return undo

    def listen(self, step: str, state: CompensationState) -> None:
        self.outcomes.append((step, state.status))


async def test_compensations_run_newest_first_and_report_each_outcome() -> None:
    ledger = Ledger()
    saga = Saga(ledger.listen)
    for step in ("create_order", "reserve_stock", "authorize_payment"):
        saga.register(step, ledger.action(step, attempts=2))
    assert saga.registered_steps == ["create_order", "reserve_stock", "authorize_payment"]

    outcomes = await saga.compensate()

    assert ledger.ran == ["authorize_payment", "reserve_stock", "create_order"]
    assert [(step, state.status, state.attempts) for step, state in outcomes] == [
        ("authorize_payment", "done", 2),
        ("reserve_stock", "done", 2),
        ("create_order", "done", 2),
    ]
    assert ledger.outcomes[:2] == [("authorize_payment", "running"), ("authorize_payment", "done")]
    assert saga.registered_steps == [] and saga.failed_steps == []
    assert await saga.compensate() == [], "each compensation runs once"


async def test_a_failed_compensation_does_not_stop_the_others_and_is_retried_alone() -> None:
    ledger = Ledger()
    saga = Saga(ledger.listen)
    for step in ("create_order", "reserve_stock", "authorize_payment"):
        saga.register(step, ledger.action(step))
    ledger.broken = {"reserve_stock", "authorize_payment"}

    outcomes = dict(await saga.compensate())

    assert ledger.ran == ["authorize_payment", "reserve_stock", "create_order"]
    failed = outcomes["reserve_stock"]
    assert (failed.status, failed.attempts) == ("failed", 7)
    assert failed.error == "upstream_unavailable: still down"
    assert outcomes["create_order"].status == "done"
    assert saga.failed_steps == ["authorize_payment", "reserve_stock"], "kept in the order they ran"

    ledger.broken = {"reserve_stock"}
    retried = await saga.retry_failed()
    assert [(step, state.status) for step, state in retried] == [
        ("authorize_payment", "done"),
        ("reserve_stock", "failed"),
    ]
    assert saga.failed_steps == ["reserve_stock"]

    ledger.broken = set()
    await saga.retry_failed()
    assert saga.failed_steps == []
    assert ledger.ran[-1] == "reserve_stock"
