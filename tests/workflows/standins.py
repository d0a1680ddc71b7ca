"""Stand-in activities for OrderWorkflow, registered under the real activity names.

No service runs: each stand-in records its call and answers as a test told it to, a refusal
(non-retryable, typed with the cancel reason, as activities/http.py raises it), an outage (retryable,
as a 5xx becomes), or a hold until the test lets the call go.
"""

from __future__ import annotations

import asyncio
import os
import uuid
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any

from temporalio import activity
from temporalio.client import Client, WorkflowHandle
from temporalio.exceptions import ApplicationError
from temporalio.worker import Worker

from workflows.contract import (
    AwaitReview,
    CancelOrder,
    Charge,
    ChargeRequest,
    ConfirmOrder,
    CreateOrder,
    CustomerContact,
    Notice,
    NoticeResult,
    OrderCommand,
    OrderInput,
    OrderLine,
    OrderSnapshot,
    PricedLine,
    Reservation,
    SagaPolicy,
    SagaView,
    workflow_id_for,
)
from workflows.order import OrderWorkflow

FOREVER = 1_000_000


@dataclass
class StandIns:
    """What the saga's services would answer; `calls` is what the saga asked, in order."""

    policy: SagaPolicy = field(default_factory=SagaPolicy)
    unit_price_cents: int = 2_500
    calls: list[str] = field(default_factory=list)
    # call name -> the cancel reason of a refusal (a 4xx with a known problem code)
    refusals: dict[str, str] = field(default_factory=dict)
    # call name -> how many attempts fail as a retryable outage (FOREVER: until `heal`)
    outages: dict[str, int] = field(default_factory=dict)
    # call name -> held until the event is set; `reached` tells the test the call arrived
    holds: dict[str, asyncio.Event] = field(default_factory=dict)
    reached: dict[str, asyncio.Event] = field(default_factory=dict)
    notices: list[Notice] = field(default_factory=list)
    cancel_reasons: list[str | None] = field(default_factory=list)

    def hold(self, name: str) -> None:
        self.holds[name] = asyncio.Event()
        self.reached[name] = asyncio.Event()

    def release(self, name: str) -> None:
        self.holds[name].set()

    def heal(self, name: str) -> None:
        self.outages.pop(name, None)

    def release_all(self) -> None:
        for event in self.holds.values():
            event.set()

    def count(self, name: str) -> int:
        return self.calls.count(name)

    async def _answer(self, name: str) -> int:
        attempt = activity.info().attempt
        self.calls.append(name)
        if name in self.reached:
            self.reached[name].set()
            await self.holds[name].wait()
        if name in self.refusals:
            reason = self.refusals[name]
            raise ApplicationError(f"{name} refused", {"attempt": attempt}, type=reason, non_retryable=True)
        if self.outages.get(name, 0) >= attempt:
            raise ApplicationError(f"{name}: 503", {"attempt": attempt}, type="upstream_unavailable")
        return attempt

    # ---- the stand-ins, one per activity name the saga may call ------------------------------

    @activity.defn(name="saga_policy")
    async def saga_policy(self) -> SagaPolicy:
        return self.policy

    # The one order activity of sagas before the typed ones (their histories replay in tests/replay).
    @activity.defn(name="order_command")
    async def order_command(self, command: OrderCommand) -> OrderSnapshot:
        attempts = await self._answer(f"order_command:{command.type}")
        return OrderSnapshot(command.order_id, command.type, 1, attempts)

    @activity.defn(name="create_order")
    async def create_order(self, command: CreateOrder) -> OrderSnapshot:
        attempts = await self._answer("create_order")
        return OrderSnapshot(command.order_id, "PENDING", 1, attempts)

    @activity.defn(name="await_review")
    async def await_review(self, command: AwaitReview) -> OrderSnapshot:
        assert command.payment_id is not None, "the authorisation comes before the review"
        attempts = await self._answer("await_review")
        return OrderSnapshot(command.order_id, "AWAITING_REVIEW", 2, attempts)

    @activity.defn(name="confirm_order")
    async def confirm_order(self, command: ConfirmOrder) -> OrderSnapshot:
        attempts = await self._answer("confirm_order")
        return OrderSnapshot(command.order_id, "CONFIRMED", 3, attempts)

    @activity.defn(name="cancel_order")
    async def cancel_order(self, command: CancelOrder) -> OrderSnapshot:
        self.cancel_reasons.append(command.reason)
        attempts = await self._answer("cancel_order")
        return OrderSnapshot(command.order_id, "CANCELLED", 3, attempts)

    @activity.defn(name="validate_user")
    async def validate_user(self, user_id: str) -> CustomerContact:
        attempts = await self._answer("validate_user")
        return CustomerContact(user_id, email="c@example.com", attempts=attempts)

    @activity.defn(name="lookup_contact")
    async def lookup_contact(self, user_id: str) -> CustomerContact:
        attempts = await self._answer("lookup_contact")
        return CustomerContact(user_id, email="c@example.com", attempts=attempts)

    @activity.defn(name="reserve_stock")
    async def reserve_stock(self, order_id: str, lines: list[OrderLine]) -> Reservation:
        attempts = await self._answer("reserve_stock")
        priced = [PricedLine(ln.product_id, ln.quantity, self.unit_price_cents) for ln in lines]
        total = sum(ln.quantity * ln.unit_price_cents for ln in priced)
        return Reservation(order_id, priced, total, "EUR", attempts)

    @activity.defn(name="release_stock")
    async def release_stock(self, order_id: str) -> int:
        return await self._answer("release_stock")

    @activity.defn(name="commit_stock")
    async def commit_stock(self, order_id: str) -> int:
        return await self._answer("commit_stock")

    @activity.defn(name="authorize_payment")
    async def authorize_payment(self, request: ChargeRequest) -> Charge:
        attempts = await self._answer("authorize_payment")
        return Charge(f"auth-{request.order_id}", request.amount_cents, request.currency, attempts)

    @activity.defn(name="capture_payment")
    async def capture_payment(self, order_id: str) -> Charge:
        attempts = await self._answer("capture_payment")
        return Charge(f"auth-{order_id}", 0, "EUR", attempts)

    @activity.defn(name="void_payment")
    async def void_payment(self, order_id: str) -> int:
        return await self._answer("void_payment")

    @activity.defn(name="refund_capture")
    async def refund_capture(self, order_id: str) -> int:
        return await self._answer("refund_capture")

    @activity.defn(name="charge_payment")
    async def charge_payment(self, request: ChargeRequest) -> Charge:
        attempts = await self._answer("charge_payment")
        return Charge(f"charge-{request.order_id}", request.amount_cents, request.currency, attempts)

    @activity.defn(name="refund_payment")
    async def refund_payment(self, order_id: str) -> int:
        return await self._answer("refund_payment")

    @activity.defn(name="notify_customer")
    async def notify_customer(self, notice: Notice) -> NoticeResult:
        self.notices.append(notice)
        attempts = await self._answer("notify_customer")
        return NoticeResult(sent=1, attempts=attempts)

    def activities(self) -> Sequence[Callable[..., Any]]:
        return [
            self.saga_policy,
            self.order_command,
            self.create_order,
            self.await_review,
            self.confirm_order,
            self.cancel_order,
            self.validate_user,
            self.lookup_contact,
            self.reserve_stock,
            self.release_stock,
            self.commit_stock,
            self.authorize_payment,
            self.capture_payment,
            self.void_payment,
            self.refund_capture,
            self.charge_payment,
            self.refund_payment,
            self.notify_customer,
        ]


def order_input(quantity: int = 2) -> OrderInput:
    return OrderInput(str(uuid.uuid4()), "user-1", "pm-1", [OrderLine("sku-1", quantity)])


# ORDERSAGA_RECORD_HISTORIES=1 writes the history of each saga given a `record` name here, for the
# replay corpus (tests/replay): the plan with typed order activities, on the stand-ins.
RECORDED = Path(__file__).parents[1] / "replay" / "histories" / "typed-order-activities"


@asynccontextmanager
async def saga(
    client: Client, services: StandIns, order: OrderInput | None = None, *, record: str | None = None
) -> AsyncIterator[WorkflowHandle[Any, Any]]:
    """A worker with the stand-ins on a queue of its own, and one OrderWorkflow started on it."""
    queue = f"workflow-tests-{uuid.uuid4()}"
    order = order or order_input()
    worker = Worker(
        client,
        task_queue=queue,
        workflows=[OrderWorkflow],
        activities=services.activities(),
        graceful_shutdown_timeout=timedelta(seconds=0),
    )
    async with worker:
        handle = await client.start_workflow(
            OrderWorkflow.run, order, id=workflow_id_for(order.order_id), task_queue=queue
        )
        try:
            yield handle
            if record and os.environ.get("ORDERSAGA_RECORD_HISTORIES"):
                RECORDED.mkdir(parents=True, exist_ok=True)
                (RECORDED / f"{record}.json").write_text((await handle.fetch_history()).to_json())
        finally:
            services.release_all()


async def view_when(
    handle: WorkflowHandle[Any, Any], done: Callable[[SagaView], bool], timeout: float = 30.0
) -> SagaView:
    """The saga view once `done` holds (polled: a query never waits on the saga)."""
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        view: SagaView = await handle.query(OrderWorkflow.status)
        if done(view):
            return view
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"the saga view never got there: {view}")
        await asyncio.sleep(0.05)


def steps(view: SagaView) -> dict[str, str]:
    return {step.name: step.status for step in view.steps}


def step(view: SagaView, name: str) -> Any:
    return next(s for s in view.steps if s.name == name)
