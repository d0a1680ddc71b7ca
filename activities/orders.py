"""The saga's view of the orders service: commands on the order record, one activity per step.

Each command carries `command_id` = the step's saga key, so a retried or replayed command is a no-op
on the event log. `order_command` is the single activity of the sagas before the typed ones
(workflow.patched "typed-order-activities"): kept registered so that their histories still run.
"""

from __future__ import annotations

from typing import Any

from temporalio import activity

from activities.http import ServiceCaller, current_attempt, saga_key
from workflows.contract import (
    AwaitReview,
    CancelOrder,
    ConfirmOrder,
    CreateOrder,
    OrderCommand,
    OrderSnapshot,
    Step,
)

# The idempotency-key step of the cancel command (a compensation, not a step of the saga view).
CANCEL_STEP = "cancel_order"


class OrderActivities:
    def __init__(self, caller: ServiceCaller) -> None:
        self._orders = caller

    @activity.defn(name="create_order")
    async def create_order(self, command: CreateOrder) -> OrderSnapshot:
        """Mark the saga started on the order POST /orders wrote; the lines stay where they are."""
        return await self._send(command.order_id, Step.CREATE_ORDER, {"type": "start"})

    @activity.defn(name="await_review")
    async def await_review(self, command: AwaitReview) -> OrderSnapshot:
        body: dict[str, Any] = {"type": "await_review"}
        if command.payment_id:
            body["payment_id"] = command.payment_id
        return await self._send(command.order_id, Step.REVIEW, body)

    @activity.defn(name="confirm_order")
    async def confirm_order(self, command: ConfirmOrder) -> OrderSnapshot:
        body = {
            "type": "confirm",
            "items": [
                {
                    "product_id": ln.product_id,
                    "quantity": ln.quantity,
                    "unit_price_cents": ln.unit_price_cents,
                }
                for ln in command.priced_lines
            ],
            "total_cents": command.total_cents,
            "currency": command.currency,
            "payment_id": command.payment_id,
        }
        # The pivot's second half: it may not give up.
        return await self._send(command.order_id, Step.CONFIRM_ORDER, body, must_succeed=True)

    @activity.defn(name="cancel_order")
    async def cancel_order(self, command: CancelOrder) -> OrderSnapshot:
        body: dict[str, Any] = {"type": "cancel", "reason": command.reason}
        if command.payment_id:
            body["payment_id"] = command.payment_id
        # A compensation: it may not give up either.
        return await self._send(command.order_id, CANCEL_STEP, body, must_succeed=True)

    @activity.defn(name="order_command")
    async def order_command(self, command: OrderCommand) -> OrderSnapshot:
        """The one activity of the sagas before the typed ones; their create sends the lines back."""
        return await self._send(
            command.order_id,
            command.step,
            _command_body(command),
            must_succeed=command.type in ("confirm", "cancel"),
        )

    async def _send(
        self, order_id: str, step: str, body: dict[str, Any], *, must_succeed: bool = False
    ) -> OrderSnapshot:
        response = await self._orders.call(
            "POST",
            f"/internal/orders/{order_id}/commands",
            json={"command_id": saga_key(order_id, step), **body},
            must_succeed=must_succeed,
        )
        answer = response.json()
        return OrderSnapshot(
            order_id=str(answer["id"]),
            status=str(answer["status"]),
            version=int(answer["version"]),
            attempts=current_attempt(),
        )


def _command_body(command: OrderCommand) -> dict[str, Any]:
    body: dict[str, Any] = {"type": command.type}
    if command.type == "create":
        body.update(
            user_id=command.user_id,
            payment_method_id=command.payment_method_id,
            items=[{"product_id": ln.product_id, "quantity": ln.quantity} for ln in command.lines or []],
        )
    elif command.type == "confirm":
        body.update(
            items=[
                {
                    "product_id": ln.product_id,
                    "quantity": ln.quantity,
                    "unit_price_cents": ln.unit_price_cents,
                }
                for ln in command.priced_lines or []
            ],
            total_cents=command.total_cents,
            currency=command.currency,
            payment_id=command.payment_id,
        )
    elif command.type == "cancel":
        body["reason"] = command.reason
    if command.type in ("await_review", "cancel") and command.payment_id:
        body["payment_id"] = command.payment_id  # known from the authorisation on
    return body
