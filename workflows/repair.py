"""Repairs of sagas whose workflow closed before their order was final (terminated, timed out, failed).

No code of a terminated workflow runs, so its order would stay PENDING or AWAITING_REVIEW for ever,
holding stock and an authorisation. The reconciler, started by a Temporal Schedule every sweep
interval, finds such orders and starts one `RepairWorkflow` per order, with the id `repair-<order
id>`: two reconcilers at once start it once, and a killed worker resumes it where it stopped.

A repair reads what the closed saga knew (its `facts` query, answered from its history) and then:
- before the pivot: refunds, voids and releases whatever the saga may have taken, and cancels the
  order as `saga_terminated`;
- once the pivot had started: finishes it (commit the stock, confirm the order).
Every call reuses the saga's own idempotency keys, so nothing a saga already did is done twice.

The same sweep tidies the loose ends of closed sagas whose order is final (`LOOSE_ENDS`): it
releases a reservation a cancelled order still holds (commits one of a confirmed order) and sends
an outcome notice that never went out, under the saga's own notice key, so never a second one.
"""

from __future__ import annotations

from datetime import timedelta

from temporalio import workflow
from temporalio.common import WorkflowIDReusePolicy
from temporalio.exceptions import WorkflowAlreadyStartedError

with workflow.unsafe.imports_passed_through():
    # Not `from workflows import policies`, which re-runs policies.py per run (workflows/order.py).
    import workflows.policies as policies
    from activities.inventory import InventoryActivities
    from activities.notifications import NotificationActivities
    from activities.orders import OrderActivities
    from activities.payments import PaymentActivities
    from activities.reconciler import (
        COMMIT_STOCK,
        NOTIFY,
        RELEASE_STOCK,
        FoundOrder,
        ReconcilerActivities,
        notice_template,
    )
    from activities.users import UserActivities

    # From workflows.contract itself (not its alias workflows.payloads): the converter resolves a
    # payload type's hints in the sandbox's entry for the module that declares it.
    from workflows.contract import (
        CustomerContact,
        Notice,
        OrderCommand,
        RepairRequest,
        RepairResult,
        SagaFacts,
    )
    from workflows.failures import STEP_ERRORS

REPAIR_ID_PREFIX = "repair-"
RECONCILE_WORKFLOW = "ReconcileWorkflow"

_PATIENT = policies.PIVOT  # a repair must finish: every call is retried until it succeeds
_QUICK = timedelta(seconds=30)
# A loose end's call is bounded so that one failing order cannot hold up the sweep; the next sweep
# finds it again.
_TIDY = timedelta(minutes=1)
LOOSE_ENDS = "reconcile-loose-ends"


def repair_id_for(order_id: str) -> str:
    return f"{REPAIR_ID_PREFIX}{order_id}"


@workflow.defn(name="RepairWorkflow")
class RepairWorkflow:
    @workflow.run
    async def run(self, request: RepairRequest) -> RepairResult:
        facts: SagaFacts = await workflow.execute_activity_method(
            ReconcilerActivities.saga_facts,
            request.order_id,
            start_to_close_timeout=_QUICK,
            retry_policy=_PATIENT.retry,
            summary="read the closed saga",
        )
        if facts.pivot_started:
            status = await self._roll_forward(facts)
            outcome = "rolled_forward"
        else:
            status = await self._roll_back(facts)
            outcome = "rolled_back"
        await self._notify(request, facts, status)
        workflow.logger.info("saga_repaired", extra={"order_id": request.order_id, "outcome": outcome})
        return RepairResult(request.order_id, outcome, status)  # type: ignore[arg-type]

    async def _roll_back(self, facts: SagaFacts) -> str:
        # The saga's compensations in its own reverse order; each is harmless for a step never run.
        payment = (
            (PaymentActivities.refund_payment,)  # the plan before authorisations charged in one call
            if facts.charged_in_one_call
            else (PaymentActivities.refund_capture, PaymentActivities.void_payment)
        )
        for compensate in (*payment, InventoryActivities.release_stock):
            await workflow.execute_activity_method(
                compensate,
                facts.order_id,
                start_to_close_timeout=_PATIENT.start_to_close,
                retry_policy=_PATIENT.retry,
                summary=getattr(compensate, "__name__", "compensate").replace("_", " "),
            )
        await self._order_command(
            OrderCommand(
                order_id=facts.order_id,
                step="cancel_order",
                type="cancel",
                reason="saga_terminated",
                payment_id=facts.payment_id,
            ),
            "cancel order (saga_terminated)",
        )
        return "CANCELLED"

    async def _roll_forward(self, facts: SagaFacts) -> str:
        reservation = facts.reservation
        if reservation is None or facts.payment_id is None:
            raise RuntimeError(f"saga of {facts.order_id} started its pivot without a reservation or payment")
        await workflow.execute_activity_method(
            InventoryActivities.commit_stock,
            facts.order_id,
            start_to_close_timeout=_PATIENT.start_to_close,
            retry_policy=_PATIENT.retry,
            summary="commit stock",
        )
        await self._order_command(
            OrderCommand(
                order_id=facts.order_id,
                step="confirm_order",
                type="confirm",
                priced_lines=reservation.lines,
                total_cents=reservation.total_cents,
                currency=reservation.currency,
                payment_id=facts.payment_id,
            ),
            f"confirm {reservation.total_cents} {reservation.currency}",
        )
        return "CONFIRMED"

    async def _order_command(self, command: OrderCommand, summary: str) -> None:
        await workflow.execute_activity_method(
            OrderActivities.order_command,
            command,
            start_to_close_timeout=_PATIENT.start_to_close,
            retry_policy=_PATIENT.retry,
            summary=summary,
        )

    async def _notify(self, request: RepairRequest, facts: SagaFacts, status: str) -> None:
        """Best effort, as in the saga, and under the saga's own notice key: told once."""
        confirmed = status == "CONFIRMED"
        try:
            contact: CustomerContact = await workflow.execute_activity_method(
                UserActivities.lookup_contact,
                request.user_id,
                start_to_close_timeout=policies.NOTIFY.start_to_close,
                schedule_to_close_timeout=policies.NOTIFY.schedule_to_close,
                retry_policy=policies.NOTIFY.retry,
                summary="find contact",
            )
            data: dict[str, str | int | None] = {"order_id": facts.order_id}
            if facts.reservation is not None:
                data.update(total_cents=facts.reservation.total_cents, currency=facts.reservation.currency)
            if not confirmed:
                data["reason"] = "saga_terminated"
            await workflow.execute_activity_method(
                NotificationActivities.notify_customer,
                Notice(
                    order_id=facts.order_id,
                    user_id=request.user_id,
                    template="order_confirmed" if confirmed else "order_cancelled",
                    contact=contact,
                    data=data,
                ),
                start_to_close_timeout=policies.NOTIFY.start_to_close,
                schedule_to_close_timeout=policies.NOTIFY.schedule_to_close,
                retry_policy=policies.NOTIFY.retry,
                summary="notify confirmed" if confirmed else "notify cancelled (saga_terminated)",
            )
        except STEP_ERRORS:
            workflow.logger.warning("repair_notice_failed", extra={"order_id": facts.order_id})


@workflow.defn(name=RECONCILE_WORKFLOW)
class ReconcileWorkflow:
    """One sweep, started by the reconciler's Schedule: a repair for every stranded order."""

    @workflow.run
    async def run(self, older_than_seconds: float) -> list[str]:
        found: list[FoundOrder] = await workflow.execute_activity_method(
            ReconcilerActivities.find_stranded_orders,
            older_than_seconds,
            start_to_close_timeout=timedelta(minutes=2),
            retry_policy=policies.FORWARD.retry,
            schedule_to_close_timeout=timedelta(minutes=5),
            summary="find orders whose saga closed early",
        )
        stranded = [order for order in found if not order.tidy]
        loose = [order for order in found if order.tidy]
        started: list[str] = []
        for order in stranded:
            try:
                await workflow.start_child_workflow(
                    RepairWorkflow.run,
                    RepairRequest(order_id=order.order_id, user_id=order.user_id),
                    id=repair_id_for(order.order_id),
                    # A repair that ran to its end made the order final; only a failed one is redone.
                    id_reuse_policy=WorkflowIDReusePolicy.ALLOW_DUPLICATE_FAILED_ONLY,
                    parent_close_policy=workflow.ParentClosePolicy.ABANDON,
                    static_summary=f"repair order {order.order_id} (saga {order.workflow_status.lower()})",
                )
            except WorkflowAlreadyStartedError:
                continue  # another sweep or reconciler is on it
            started.append(order.order_id)
        if started:
            workflow.logger.info("repairs_started", extra={"orders": started})
        # Sweeps recorded before loose ends found none, so their replay never reaches the marker.
        if loose and workflow.patched(LOOSE_ENDS):
            tidied = [order.order_id for order in loose if await self._tidy(order)]
            workflow.logger.info("loose_ends_tidied", extra={"orders": tidied})
        return started

    async def _tidy(self, order: FoundOrder) -> bool:
        """Each call idempotent under the saga's own keys; a failure waits for the next sweep."""
        try:
            for step, compensate in (
                (RELEASE_STOCK, InventoryActivities.release_stock),
                (COMMIT_STOCK, InventoryActivities.commit_stock),
            ):
                if step in order.tidy:
                    await workflow.execute_activity_method(
                        compensate,
                        order.order_id,
                        start_to_close_timeout=policies.FORWARD.start_to_close,
                        schedule_to_close_timeout=_TIDY,
                        retry_policy=policies.FORWARD.retry,
                        summary=f"{step.replace('_', ' ')} of final order {order.order_id}",
                    )
            if NOTIFY in order.tidy:
                await self._notify(order)
        except STEP_ERRORS:
            workflow.logger.warning("loose_end_not_tidied", extra={"order_id": order.order_id})
            return False
        return True

    async def _notify(self, order: FoundOrder) -> None:
        contact: CustomerContact = await workflow.execute_activity_method(
            UserActivities.lookup_contact,
            order.user_id,
            start_to_close_timeout=policies.NOTIFY.start_to_close,
            schedule_to_close_timeout=_TIDY,
            retry_policy=policies.NOTIFY.retry,
            summary="find contact",
        )
        template = notice_template(order.status or "")
        data: dict[str, str | int | None] = {"order_id": order.order_id}
        if order.total_cents is not None:
            data.update(total_cents=order.total_cents, currency=order.currency)
        if template == "order_cancelled":
            data["reason"] = order.cancel_reason
        await workflow.execute_activity_method(
            NotificationActivities.notify_customer,
            Notice(
                order_id=order.order_id,
                user_id=order.user_id,
                template=template,  # type: ignore[arg-type]
                contact=contact,
                data=data,
            ),
            start_to_close_timeout=policies.NOTIFY.start_to_close,
            schedule_to_close_timeout=_TIDY,
            retry_policy=policies.NOTIFY.retry,
            summary=f"notify {order.status} order {order.order_id} left untold",
        )
