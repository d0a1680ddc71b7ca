"""OrderWorkflow: the order saga. Deterministic orchestration only; every side effect is an activity."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable
from datetime import timedelta
from typing import Any, TypeVar

from temporalio import workflow
from temporalio.common import SearchAttributeKey
from temporalio.exceptions import ApplicationError

with workflow.unsafe.imports_passed_through():
    from activities.inventory import InventoryActivities
    from activities.notifications import NotificationActivities
    from activities.orders import OrderActivities
    from activities.payments import PaymentActivities
    from activities.policy import PolicyActivities
    from activities.users import UserActivities
    from workflows import metrics, policies
    from workflows.failures import STEP_ERRORS, StepFailed, attempts_from_error, describe, reason_for
    from workflows.payloads import (
        STEP_NAMES,
        CancelRequest,
        Charge,
        ChargeRequest,
        CompensationState,
        CustomerContact,
        Notice,
        OrderCommand,
        OrderInput,
        OrderResult,
        OrderSnapshot,
        Reservation,
        ReviewDecision,
        SagaPolicy,
        SagaStatus,
        SagaView,
        StepState,
    )
    from workflows.saga import Saga

ORDER_STATUS = SearchAttributeKey.for_keyword("OrderStatus")
CUSTOMER_ID = SearchAttributeKey.for_keyword("CustomerId")

T = TypeVar("T")


@workflow.defn(name="OrderWorkflow")
class OrderWorkflow:
    def __init__(self) -> None:
        self._order_id = ""
        self._order_status = "PENDING"
        self._cancel_reason: str | None = None
        self._saga_status: SagaStatus = "running"
        self._steps = {name: StepState(name=name) for name in STEP_NAMES}
        self._saga = Saga(self._on_compensation)
        self._cancel_requested = False
        self._awaiting_review = False
        self._review: ReviewDecision | None = None
        self._pivot_started = False
        self._ended = False
        self._local = False

    # ---- the saga -------------------------------------------------------------------------

    @workflow.run
    async def run(self, order: OrderInput) -> OrderResult:
        self._order_id = order.order_id
        policy = await workflow.execute_local_activity_method(
            PolicyActivities.saga_policy, start_to_close_timeout=policies.POLICY_LOOKUP
        )
        self._local = policy.local_activities
        contact: CustomerContact | None = None
        charge: Charge | None = None
        reservation: Reservation | None = None
        try:
            self._saga.register("create_order", lambda: self._cancel_order(order))
            await self._step("create_order", lambda: self._order_command(order, "create", "create_order"))

            contact = await self._step(
                "validate_user",
                lambda: self._short_call(
                    UserActivities.validate_user,
                    order.user_id,
                    options=policies.FORWARD,
                    summary="validate customer",
                ),
            )

            self._saga.register(
                "reserve_stock", lambda: self._compensate_with(InventoryActivities.release_stock, order)
            )
            reserved: Reservation = await self._step(
                "reserve_stock",
                lambda: self._short_call(
                    InventoryActivities.reserve_stock,
                    order.order_id,
                    order.lines,
                    options=policies.FORWARD,
                    summary=f"reserve {len(order.lines)} line{'s' if len(order.lines) != 1 else ''}",
                ),
            )

            reservation = reserved
            await self._review_if_needed(order, reserved, policy)

            self._saga.register(
                "charge_payment", lambda: self._compensate_with(PaymentActivities.refund_payment, order)
            )
            charged: Charge = await self._step(
                "charge_payment",
                lambda: workflow.execute_activity_method(
                    PaymentActivities.charge_payment,
                    ChargeRequest(
                        order_id=order.order_id,
                        user_id=order.user_id,
                        payment_method_id=order.payment_method_id,
                        amount_cents=reserved.total_cents,
                        currency=reserved.currency,
                    ),
                    **_options(policies.payment(policy)),
                    summary=f"charge {reserved.total_cents} {reserved.currency}",
                ),
                budget_reason="payment_failed",
            )

            if self._cancel_requested:
                raise StepFailed("customer_cancelled", "cancelled by the customer")
            charge = charged
            await self._confirm(order, reserved, charged)
        except StepFailed as failure:
            await self._unwind(failure.reason)

        await self._notify(order, contact, reservation)
        self._ended = True
        if self._saga_status == "running":
            self._saga_status = "completed"
        for state in self._steps.values():
            if state.status in ("pending", "running"):
                state.status = "skipped"
        metrics.saga_ended(
            self._order_status, self._cancel_reason, workflow.now() - workflow.info().workflow_start_time
        )
        # The SDK's workflow logger stays silent while replaying, so this is logged once per saga.
        workflow.logger.info(
            "saga_ended",
            extra={"order_status": self._order_status, "cancel_reason": self._cancel_reason},
        )
        return OrderResult(
            order_id=order.order_id,
            status=self._order_status,
            cancel_reason=self._cancel_reason,
            payment_id=charge.payment_id if charge and self._order_status == "CONFIRMED" else None,
            total_cents=reservation.total_cents if reservation else None,
            currency=reservation.currency if reservation else None,
        )

    async def _review_if_needed(
        self, order: OrderInput, reservation: Reservation, policy: SagaPolicy
    ) -> None:
        step = self._steps["review"]
        if reservation.total_cents < policy.review_threshold_cents:
            step.status = "skipped"
            return
        await self._step("review", lambda: self._order_command(order, "await_review", "review"), finish=False)
        self._set_status("AWAITING_REVIEW")
        self._awaiting_review = True
        decided = True
        try:
            await workflow.wait_condition(
                lambda: self._review is not None or self._cancel_requested,
                timeout=timedelta(seconds=policy.review_timeout_seconds),
                timeout_summary="review timeout",
            )
        except TimeoutError:
            decided = False
        self._awaiting_review = False
        if self._cancel_requested:
            self._fail_step(step, "customer_cancelled")
            raise StepFailed("customer_cancelled", "cancelled by the customer during review")
        if not decided or self._review is None:
            self._fail_step(step, "review_timeout")
            raise StepFailed("review_timeout", "nobody reviewed the order in time")
        if not self._review.approve:
            self._fail_step(step, "review_rejected")
            raise StepFailed("review_rejected", "the reviewer rejected the order")
        step.status = "done"
        step.finished_at = _now()

    async def _confirm(self, order: OrderInput, reservation: Reservation, charge: Charge) -> None:
        """The pivot: once it starts, cancellation is refused and it is retried until it succeeds."""
        self._pivot_started = True

        async def pivot() -> Any:
            await self._short_call(
                InventoryActivities.commit_stock,
                order.order_id,
                options=policies.PIVOT,
                summary="commit stock",
            )
            return await self._short_call(
                OrderActivities.order_command,
                OrderCommand(
                    order_id=order.order_id,
                    step="confirm_order",
                    type="confirm",
                    priced_lines=reservation.lines,
                    total_cents=reservation.total_cents,
                    currency=reservation.currency,
                    payment_id=charge.payment_id,
                ),
                options=policies.PIVOT,
                summary=f"confirm {reservation.total_cents} {reservation.currency}",
            )

        await self._step("confirm_order", pivot, interruptible=False)
        self._set_status("CONFIRMED")

    async def _unwind(self, reason: str) -> None:
        self._cancel_reason = reason
        self._saga_status = "compensating"
        outcomes = await self._saga.compensate()
        failed = any(state.status == "failed" for _, state in outcomes)
        self._saga_status = "compensation_failed" if failed else "compensated"
        self._set_status("CANCELLED")

    async def _notify(
        self, order: OrderInput, contact: CustomerContact | None, reservation: Reservation | None
    ) -> None:
        confirmed = self._order_status == "CONFIRMED"

        async def send() -> Any:
            reach: CustomerContact | None = contact
            if reach is None:
                try:
                    reach = await self._short_call(
                        UserActivities.lookup_contact,
                        order.user_id,
                        options=policies.NOTIFY,
                        summary="find contact",
                    )
                except STEP_ERRORS:
                    reach = CustomerContact(user_id=order.user_id)  # an unknown user has nowhere to be told
            data: dict[str, str | int | None] = {"order_id": order.order_id}
            if reservation is not None:
                data.update(total_cents=reservation.total_cents, currency=reservation.currency)
            if not confirmed:
                data["reason"] = self._cancel_reason
            return await self._short_call(
                NotificationActivities.notify_customer,
                Notice(
                    order_id=order.order_id,
                    user_id=order.user_id,
                    template="order_confirmed" if confirmed else "order_cancelled",
                    contact=reach or CustomerContact(user_id=order.user_id),
                    data=data,
                ),
                options=policies.NOTIFY,
                summary="notify confirmed" if confirmed else f"notify cancelled ({self._cancel_reason})",
            )

        # Best effort: the order's outcome stands whether or not the notice went out.
        with contextlib.suppress(StepFailed):
            await self._step("notify_customer", send, interruptible=False)

    # ---- step bookkeeping -----------------------------------------------------------------

    async def _step(
        self,
        name: str,
        run: Callable[[], Awaitable[T]],
        *,
        interruptible: bool = True,
        finish: bool = True,
        budget_reason: str = "internal_error",
    ) -> T:
        if interruptible and self._cancel_requested:
            raise StepFailed("customer_cancelled", "cancelled by the customer")
        state = self._steps[name]
        state.status = "running"
        state.started_at = _now()
        task = asyncio.ensure_future(run())
        if interruptible:
            await workflow.wait_condition(lambda: task.done() or self._cancel_requested)
            if not task.done():
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError, *STEP_ERRORS):
                    await task
                self._fail_step(state, "customer_cancelled")
                raise StepFailed("customer_cancelled", "cancelled by the customer")
        try:
            result = await task
        except STEP_ERRORS as err:
            state.attempts = max(state.attempts, attempts_from_error(err))
            reason = reason_for(err, budget_reason=budget_reason)
            self._fail_step(state, describe(err))
            raise StepFailed(reason, describe(err), state.attempts) from err
        state.attempts = max(state.attempts, int(getattr(result, "attempts", 1) or 1))
        if finish:
            state.status = "done"
            state.finished_at = _now()
        return result

    def _fail_step(self, state: StepState, error: str) -> None:
        state.status = "failed"
        state.error = error
        state.finished_at = _now()

    def _on_compensation(self, step: str, outcome: CompensationState) -> None:
        state = self._steps[step]
        state.compensation = outcome
        if outcome.status != "running":
            metrics.compensation_ran(step, outcome.status)
        if state.status == "failed":
            return  # the step that failed stays failed, even though its compensation ran
        if outcome.status == "done":
            state.status = "compensated"
        elif outcome.status == "failed":
            state.status = "compensation_failed"

    async def _order_command(self, order: OrderInput, kind: str, step: str) -> Any:
        return await self._short_call(
            OrderActivities.order_command,
            OrderCommand(
                order_id=order.order_id,
                step=step,
                type=kind,  # type: ignore[arg-type]
                user_id=order.user_id,
                payment_method_id=order.payment_method_id,
                lines=order.lines,
            ),
            options=policies.FORWARD,
            summary=f"{kind.replace('_', ' ')} order",
        )

    def _short_call(
        self,
        activity_method: Callable[..., Awaitable[T]],
        *args: Any,
        options: policies.ActivityOptions,
        summary: str,
    ) -> Awaitable[T]:
        """A quick, idempotent call to one of our services: a local activity when the policy says so.

        Local: no activity task round trip through the server and no scheduled/started/completed
        events, only a marker, and consecutive calls share one workflow task. The cost: a worker
        crash re-runs the calls of the unfinished workflow task (they are idempotent, keyed by
        workflow id and step), and attempts are not visible in the history until the call ends.
        The charge, with its long retry budget, and the compensations stay regular activities.
        """
        if self._local:
            return workflow.execute_local_activity_method(
                activity_method, args=args, **_options(options), summary=summary
            )
        return workflow.execute_activity_method(
            activity_method, args=args, **_options(options), summary=summary
        )

    async def _cancel_order(self, order: OrderInput) -> int:
        snapshot: OrderSnapshot = await workflow.execute_activity_method(
            OrderActivities.order_command,
            OrderCommand(
                order_id=order.order_id, step="cancel_order", type="cancel", reason=self._cancel_reason
            ),
            **_options(policies.COMPENSATION),
            summary=f"cancel order ({self._cancel_reason})",
        )
        return int(snapshot.attempts)

    async def _compensate_with(
        self, activity_method: Callable[..., Awaitable[int]], order: OrderInput
    ) -> int:
        name = getattr(activity_method, "__name__", "compensate").replace("_", " ")
        attempts = await workflow.execute_activity_method(
            activity_method, order.order_id, **_options(policies.COMPENSATION), summary=name
        )
        return int(attempts)

    def _set_status(self, status: str) -> None:
        self._order_status = status
        # Kept current only for sagas started as indexed (with CustomerId), the orders service's way;
        # a namespace without these attributes (the time-skipping test server) would fail the task.
        if workflow.info().typed_search_attributes.get(CUSTOMER_ID) is not None:
            workflow.upsert_search_attributes([ORDER_STATUS.value_set(status)])

    # ---- messages ---------------------------------------------------------------------------

    @workflow.query(name="status")
    def status(self) -> SagaView:
        return SagaView(
            order_id=self._order_id,
            workflow_id=workflow.info().workflow_id,
            status=self._saga_status,
            order_status=self._order_status,
            cancel_reason=self._cancel_reason,
            steps=[self._steps[name] for name in STEP_NAMES],
            # Set by the orders service from the trace of POST /orders; part of the start event.
            trace_id=workflow.memo_value("trace_id", None, type_hint=str),
        )

    @workflow.update(name="cancel")
    def cancel(self, request: CancelRequest) -> str:
        self._cancel_requested = True
        return self._order_status

    @cancel.validator
    def validate_cancel(self, request: CancelRequest) -> None:
        if self._pivot_started or self._order_status in ("CONFIRMED", "SHIPPED", "DELIVERED"):
            raise ApplicationError("the order is already confirmed", type="illegal_transition")
        if self._cancel_requested or self._saga_status != "running" or self._ended:
            raise ApplicationError("the order is already cancelled", type="illegal_transition")

    @workflow.update(name="review")
    def review(self, decision: ReviewDecision) -> str:
        self._review = decision
        return "approved" if decision.approve else "rejected"

    @review.validator
    def validate_review(self, decision: ReviewDecision) -> None:
        if not self._awaiting_review or self._review is not None or self._cancel_requested:
            raise ApplicationError("the order is not awaiting review", type="illegal_transition")


def _options(options: policies.ActivityOptions) -> dict[str, Any]:
    return {
        "start_to_close_timeout": options.start_to_close,
        "schedule_to_close_timeout": options.schedule_to_close,
        "retry_policy": options.retry,
    }


def _now() -> str:
    return workflow.now().isoformat().replace("+00:00", "Z")
