"""OrderWorkflow: the order saga. Deterministic orchestration only; every side effect is an activity.

The plan: create_order, validate_user, reserve_stock, authorize_payment, review (above the
threshold), capture_payment, confirm_order (the pivot), notify_customer. Money is only held, never
taken, while a human reviews; an unusable card ends the saga before any review holds stock.
"""

# No `from __future__ import annotations` here, on purpose: the sandbox runs this module afresh for
# every workflow run, and @workflow.defn reads the type hints of run, queries and updates; string
# annotations make each read compile and evaluate them again (~0.9 of ~3.5 ms CPU per new run).
import asyncio
import contextlib
from collections.abc import Awaitable, Callable
from datetime import timedelta
from typing import Any, Literal, TypeVar

from temporalio import workflow
from temporalio.exceptions import ApplicationError

with workflow.unsafe.imports_passed_through():
    # `import a.b as b`, not `from a import b`: the sandbox loads the `workflows` package afresh
    # for each run, and Python imports the names of a from-list through importlib itself, past the
    # sandbox's passthrough, so `from workflows import policies` re-ran policies.py on every run.
    import workflows.metrics as metrics
    import workflows.policies as policies
    from activities.inventory import InventoryActivities
    from activities.notifications import NotificationActivities
    from activities.orders import OrderActivities
    from activities.payments import PaymentActivities
    from activities.policy import PolicyActivities
    from activities.users import UserActivities
    from workflows.contract import (
        CUSTOMER_ID,
        ORDER_STATUS,
        STEP_NAMES,
        AbandonCompensations,
        AwaitReview,
        CancelOrder,
        CancelRequest,
        Charge,
        ChargeRequest,
        CompensationState,
        ConfirmOrder,
        CreateOrder,
        CustomerContact,
        Notice,
        OrderCommand,
        OrderInput,
        OrderResult,
        OrderSnapshot,
        Reservation,
        RetryCompensations,
        ReviewDecision,
        SagaFacts,
        SagaPolicy,
        SagaStatus,
        SagaView,
        StepState,
    )
    from workflows.failures import STEP_ERRORS, StepFailed, attempts_from_error, describe, reason_for
    from workflows.saga import Saga

# Sagas started before this patch sent every order command through the one `order_command` activity,
# their create sending the order's lines back to the orders service; since, each order step has its
# own activity and input type, and create_order only marks the saga started on the order POST /orders
# wrote. Asked once, before the saga's first command, so a saga keeps one shape throughout.
TYPED_ORDER_ACTIVITIES = "typed-order-activities"

# Sagas started before this patch reviewed first and then charged in one call (`charge_payment`);
# they keep that plan when they replay on this code. See tests/replay/histories/v1-charge-before-review.
AUTHORIZE_BEFORE_REVIEW = "authorize-before-review"

T = TypeVar("T")


# Pinned by the versioned worker's default (workers/main.py): a saga ends on the worker version it
# started on, however long its review waits. Not declared here: the SDK refuses a declared behaviour
# on an unversioned worker (WORKER_VERSIONING=off, or a Temporal without the feature).
@workflow.defn(name="OrderWorkflow")
class OrderWorkflow:
    def __init__(self) -> None:
        self._order_id = ""
        self._order_status = "PENDING"
        self._cancel_reason: str | None = None
        self._saga_status: SagaStatus = "running"
        self._steps = {name: StepState(name=name) for name in STEP_NAMES}
        self._saga = Saga(self._on_compensation)
        # The reason of a cancellation asked for (customer_cancelled, operator_cancelled), once asked.
        self._cancel_asked: str | None = None
        self._awaiting_review = False
        self._review: ReviewDecision | None = None
        self._pivot_started = False
        self._retry_asked = False
        self._abandoned: AbandonCompensations | None = None
        self._ended = False
        self._local = False
        self._reservation: Reservation | None = None
        self._payment_id: str | None = None
        self._charged_in_one_call = False
        self._typed_orders = False

    # ---- the saga -------------------------------------------------------------------------

    @workflow.run
    async def run(self, order: OrderInput) -> OrderResult:
        self._order_id = order.order_id
        saga = asyncio.ensure_future(self._run_saga(order))
        operator_cancelled = False
        while True:
            try:
                # Shielded: a Temporal cancellation (Web UI "Request Cancellation", `temporal workflow
                # cancel`) is turned into the saga's own cancel, so that its compensations still run.
                result = await asyncio.shield(saga)
                break
            except asyncio.CancelledError:
                if saga.done():
                    raise
                operator_cancelled = True
                if self._cancel_asked is None:
                    self._cancel_asked = "operator_cancelled"
                workflow.logger.info(
                    "operator_cancel_requested", extra={"pivot_started": self._pivot_started}
                )
        if operator_cancelled and result.status == "CANCELLED":
            # The workflow closes as Canceled, as the operator asked; the order is final and compensated.
            raise asyncio.CancelledError()
        return result

    async def _run_saga(self, order: OrderInput) -> OrderResult:
        self._typed_orders = workflow.patched(TYPED_ORDER_ACTIVITIES)
        policy = await workflow.execute_local_activity_method(
            PolicyActivities.saga_policy, start_to_close_timeout=policies.POLICY_LOOKUP
        )
        self._local = policy.local_activities
        contact: CustomerContact | None = None
        try:
            self._saga.register("create_order", lambda: self._cancel_order(order, policy))
            await self._step("create_order", lambda: self._create_order(order))

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
                "reserve_stock",
                lambda: self._compensate_with(InventoryActivities.release_stock, order, policy),
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
            self._reservation = reserved

            if workflow.patched(AUTHORIZE_BEFORE_REVIEW):
                charge = await self._authorize_review_capture(order, reserved, policy)
            else:
                charge = await self._review_then_charge(order, reserved, policy)

            if self._cancel_asked:
                raise StepFailed(self._cancel_asked, "cancelled before confirmation")
            await self._confirm(order, reserved, charge)
        except StepFailed as failure:
            await self._unwind(failure.reason)

        await self._notify(order, contact, self._reservation)
        await self._settle_failed_compensations()
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
        reservation = self._reservation
        return OrderResult(
            order_id=order.order_id,
            status=self._order_status,
            cancel_reason=self._cancel_reason,
            payment_id=self._payment_id if self._order_status == "CONFIRMED" else None,
            total_cents=reservation.total_cents if reservation else None,
            currency=reservation.currency if reservation else None,
        )

    async def _authorize_review_capture(
        self, order: OrderInput, reserved: Reservation, policy: SagaPolicy
    ) -> Charge:
        self._saga.register(
            "authorize_payment", lambda: self._compensate_with(PaymentActivities.void_payment, order, policy)
        )
        authorization: Charge = await self._step(
            "authorize_payment",
            _payment_call(
                PaymentActivities.authorize_payment,
                self._charge_request(order, reserved),
                policy,
                f"authorise {reserved.total_cents} {reserved.currency}",
            ),
            budget_reason="payment_failed",
        )
        self._payment_id = authorization.payment_id

        await self._review_if_needed(order, reserved, policy)

        self._saga.register(
            "capture_payment", lambda: self._compensate_with(PaymentActivities.refund_capture, order, policy)
        )
        # Not interruptible: a cancellation asked meanwhile waits for the capture's answer, then
        # refunds it, so that no capture can land after its refund.
        return await self._step(
            "capture_payment",
            _payment_call(
                PaymentActivities.capture_payment,
                order.order_id,
                policy,
                f"capture {reserved.total_cents} {reserved.currency}",
            ),
            interruptible=False,
            budget_reason="payment_failed",
        )

    async def _review_then_charge(
        self, order: OrderInput, reserved: Reservation, policy: SagaPolicy
    ) -> Charge:
        """The plan of sagas started before AUTHORIZE_BEFORE_REVIEW; their charge shows as the capture."""
        self._charged_in_one_call = True
        await self._review_if_needed(order, reserved, policy)
        self._steps["authorize_payment"].status = "skipped"
        self._saga.register(
            "capture_payment", lambda: self._compensate_with(PaymentActivities.refund_payment, order, policy)
        )
        charge: Charge = await self._step(
            "capture_payment",
            _payment_call(
                PaymentActivities.charge_payment,
                self._charge_request(order, reserved),
                policy,
                f"charge {reserved.total_cents} {reserved.currency}",
            ),
            budget_reason="payment_failed",
        )
        self._payment_id = charge.payment_id
        return charge

    async def _review_if_needed(
        self, order: OrderInput, reservation: Reservation, policy: SagaPolicy
    ) -> None:
        step = self._steps["review"]
        if reservation.total_cents < policy.review_threshold_cents:
            step.status = "skipped"
            return
        await self._step("review", lambda: self._await_review(order), finish=False)
        self._set_status("AWAITING_REVIEW")
        self._awaiting_review = True
        decided = True
        try:
            await workflow.wait_condition(
                lambda: self._review is not None or self._cancel_asked is not None,
                timeout=timedelta(seconds=policy.review_timeout_seconds),
                timeout_summary="review timeout",
            )
        except TimeoutError:
            decided = False
        self._awaiting_review = False
        if self._cancel_asked:
            self._fail_step(step, self._cancel_asked)
            raise StepFailed(self._cancel_asked, "cancelled during review")
        if not decided or self._review is None:
            self._fail_step(step, "review_timeout")
            raise StepFailed("review_timeout", "nobody reviewed the order in time")
        if not self._review.approve:
            self._fail_step(step, "review_rejected")
            raise StepFailed("review_rejected", "the reviewer rejected the order")
        step.status = "done"
        step.finished_at = _now()

    async def _confirm(self, order: OrderInput, reservation: Reservation, charge: Charge) -> None:
        """The pivot: once it starts, cancellation is refused and it is retried until it succeeds.

        Its first call is a regular activity on the current plan, never a local one. A cancel request
        that reaches the server while a workflow task runs local activities fails that task; its
        replay then sees the request together with the capture's result and does not enter the pivot,
        while a local commit would already have acted. A scheduled activity is a command instead, and
        a failed task never sent it, so whichever way the replay goes, the services agree with it.
        """
        self._pivot_started = True
        durable_start = not self._charged_in_one_call

        async def pivot() -> Any:
            if durable_start:
                await workflow.execute_activity_method(
                    InventoryActivities.commit_stock,
                    order.order_id,
                    **_options(policies.PIVOT),
                    summary="commit stock",
                )
            else:
                await self._short_call(
                    InventoryActivities.commit_stock,
                    order.order_id,
                    options=policies.PIVOT,
                    summary="commit stock",
                )
            typed = ConfirmOrder(
                order_id=order.order_id,
                priced_lines=reservation.lines,
                total_cents=reservation.total_cents,
                currency=reservation.currency,
                payment_id=charge.payment_id,
            )
            legacy = OrderCommand(
                order_id=order.order_id,
                step="confirm_order",
                type="confirm",
                priced_lines=typed.priced_lines,
                total_cents=typed.total_cents,
                currency=typed.currency,
                payment_id=typed.payment_id,
            )
            return await self._order_step(
                OrderActivities.confirm_order,
                typed,
                legacy,
                f"confirm {reservation.total_cents} {reservation.currency}",
                options=policies.PIVOT,
            )

        await self._step("confirm_order", pivot, interruptible=False)
        self._set_status("CONFIRMED")

    async def _unwind(self, reason: str) -> None:
        self._cancel_reason = reason
        self._saga_status = "compensating"
        await self._saga.compensate()
        self._saga_status = "compensation_failed" if self._saga.failed_steps else "compensated"
        self._set_status("CANCELLED")

    async def _settle_failed_compensations(self) -> None:
        """A saga with a failed compensation stays open until an admin retries it or an operator gives up."""
        while self._saga.failed_steps and self._abandoned is None:
            await workflow.wait_condition(lambda: self._retry_asked or self._abandoned is not None)
            if self._abandoned is not None:
                workflow.logger.warning(
                    "compensations_abandoned",
                    extra={"steps": self._saga.failed_steps, "reason": self._abandoned.reason},
                )
                return
            self._retry_asked = False
            self._saga_status = "compensating"
            await self._saga.retry_failed()
            self._saga_status = "compensation_failed" if self._saga.failed_steps else "compensated"

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
        if interruptible and self._cancel_asked:
            raise StepFailed(self._cancel_asked, "cancelled before this step")
        state = self._steps[name]
        state.status = "running"
        state.started_at = _now()
        task = asyncio.ensure_future(run())
        if interruptible:
            await workflow.wait_condition(lambda: task.done() or self._cancel_asked is not None)
            if not task.done():
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError, *STEP_ERRORS):
                    await task
                reason = self._cancel_asked or "customer_cancelled"
                self._fail_step(state, reason)
                raise StepFailed(reason, "cancelled during this step")
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
        if outcome.status == "failed":
            workflow.logger.error(
                "compensation_failed",
                extra={"step": step, "attempts": outcome.attempts, "error": outcome.error},
            )
        if state.status == "failed":
            return  # the step that failed stays failed, even though its compensation ran
        if outcome.status == "done":
            state.status = "compensated"
        elif outcome.status == "failed":
            state.status = "compensation_failed"

    def _charge_request(self, order: OrderInput, reserved: Reservation) -> ChargeRequest:
        return ChargeRequest(
            order_id=order.order_id,
            user_id=order.user_id,
            payment_method_id=order.payment_method_id,
            amount_cents=reserved.total_cents,
            currency=reserved.currency,
        )

    async def _create_order(self, order: OrderInput) -> OrderSnapshot:
        legacy = _legacy_command(order, "create_order", "create")
        return await self._order_step(
            OrderActivities.create_order, CreateOrder(order.order_id), legacy, "mark saga started"
        )

    async def _await_review(self, order: OrderInput) -> OrderSnapshot:
        typed = AwaitReview(order_id=order.order_id, payment_id=self._payment_id)
        legacy = _legacy_command(order, "review", "await_review", payment_id=self._payment_id)
        return await self._order_step(OrderActivities.await_review, typed, legacy, "await review order")

    async def _order_step(
        self,
        activity_method: Callable[[Any, Any], Awaitable[OrderSnapshot]],
        command: Any,
        legacy: OrderCommand,
        summary: str,
        options: policies.ActivityOptions = policies.FORWARD,
    ) -> OrderSnapshot:
        """An order step's typed activity; the one `order_command` for sagas before TYPED_ORDER_ACTIVITIES."""
        if self._typed_orders:
            return await self._short_call(activity_method, command, options=options, summary=summary)
        return await self._short_call(OrderActivities.order_command, legacy, options=options, summary=summary)

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
        The payment calls, with their long retry budget, and the compensations stay regular activities.
        """
        if self._local:
            return workflow.execute_local_activity_method(
                activity_method, args=args, **_options(options), summary=summary
            )
        return workflow.execute_activity_method(
            activity_method, args=args, **_options(options), summary=summary
        )

    async def _cancel_order(self, order: OrderInput, policy: SagaPolicy) -> int:
        options = _options(policies.compensation(policy))
        summary = f"cancel order ({self._cancel_reason})"
        if self._typed_orders:
            snapshot = await workflow.execute_activity_method(
                OrderActivities.cancel_order,
                CancelOrder(order_id=order.order_id, reason=self._cancel_reason, payment_id=self._payment_id),
                **options,
                summary=summary,
            )
        else:
            snapshot = await workflow.execute_activity_method(
                OrderActivities.order_command,
                OrderCommand(
                    order_id=order.order_id,
                    step="cancel_order",
                    type="cancel",
                    reason=self._cancel_reason,
                    payment_id=self._payment_id,
                ),
                **options,
                summary=summary,
            )
        return int(snapshot.attempts)

    async def _compensate_with(
        self, activity_method: Callable[..., Awaitable[int]], order: OrderInput, policy: SagaPolicy
    ) -> int:
        name = getattr(activity_method, "__name__", "compensate").replace("_", " ")
        attempts = await workflow.execute_activity_method(
            activity_method, order.order_id, **_options(policies.compensation(policy)), summary=name
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

    @workflow.query(name="facts")
    def facts(self) -> SagaFacts:
        """What a repair of this saga needs once its workflow is closed (see workflows/repair.py)."""
        return SagaFacts(
            order_id=self._order_id,
            pivot_started=self._pivot_started,
            order_status=self._order_status,
            reservation=self._reservation,
            payment_id=self._payment_id,
            charged_in_one_call=self._charged_in_one_call,
        )

    @workflow.update(name="cancel")
    def cancel(self, request: CancelRequest) -> str:
        self._cancel_asked = "customer_cancelled"
        return self._order_status

    @cancel.validator
    def validate_cancel(self, request: CancelRequest) -> None:
        if self._pivot_started or self._order_status in ("CONFIRMED", "SHIPPED", "DELIVERED"):
            raise ApplicationError("the order is already confirmed", type="illegal_transition")
        if self._cancel_asked or self._saga_status != "running" or self._ended:
            raise ApplicationError("the order is already cancelled", type="illegal_transition")

    @workflow.update(name="review")
    def review(self, decision: ReviewDecision) -> str:
        self._review = decision
        return "approved" if decision.approve else "rejected"

    @review.validator
    def validate_review(self, decision: ReviewDecision) -> None:
        if not self._awaiting_review or self._review is not None or self._cancel_asked:
            raise ApplicationError("the order is not awaiting review", type="illegal_transition")

    @workflow.update(name="retry_compensations")
    def retry_compensations(self, request: RetryCompensations) -> list[str]:
        self._retry_asked = True
        return self._saga.failed_steps

    @retry_compensations.validator
    def validate_retry(self, request: RetryCompensations) -> None:
        if self._saga_status != "compensation_failed" or self._retry_asked or self._abandoned:
            raise ApplicationError("no failed compensation is waiting for a retry", type="illegal_transition")

    @workflow.update(name="abandon_compensations")
    def abandon_compensations(self, request: AbandonCompensations) -> list[str]:
        self._abandoned = request
        return self._saga.failed_steps

    @abandon_compensations.validator
    def validate_abandon(self, request: AbandonCompensations) -> None:
        if self._saga_status != "compensation_failed" or self._abandoned:
            raise ApplicationError("no failed compensation to give up on", type="illegal_transition")
        if not request.reason.strip():
            raise ApplicationError("giving up needs a reason", type="invalid_request")


def _legacy_command(
    order: OrderInput, step: str, kind: Literal["create", "await_review"], payment_id: str | None = None
) -> OrderCommand:
    """The OrderCommand the sagas before TYPED_ORDER_ACTIVITIES sent, lines and all."""
    return OrderCommand(
        order_id=order.order_id,
        step=step,
        type=kind,
        user_id=order.user_id,
        payment_method_id=order.payment_method_id,
        lines=order.lines,
        payment_id=payment_id,
    )


def _payment_call(
    activity_method: Callable[[Any, Any], Awaitable[Charge]], argument: Any, policy: SagaPolicy, summary: str
) -> Callable[[], Awaitable[Charge]]:
    """A call to the card network through payments: a regular activity with the payment retry budget."""
    return lambda: workflow.execute_activity_method(
        activity_method, argument, **_options(policies.payment(policy)), summary=summary
    )


def _options(options: policies.ActivityOptions) -> dict[str, Any]:
    return {
        "start_to_close_timeout": options.start_to_close,
        "schedule_to_close_timeout": options.schedule_to_close,
        "retry_policy": options.retry,
    }


def _now() -> str:
    return workflow.now().isoformat().replace("+00:00", "Z")
