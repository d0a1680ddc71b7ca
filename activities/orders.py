"""The saga's view of the orders service: commands on the event-sourced order record."""

from __future__ import annotations

from typing import Any

from temporalio import activity

from activities.http import ServiceCaller, current_attempt, saga_key
from workflows.contract import OrderCommand, OrderSnapshot


class OrderActivities:
    def __init__(self, caller: ServiceCaller) -> None:
        self._orders = caller

    @activity.defn(name="order_command")
    async def order_command(self, command: OrderCommand) -> OrderSnapshot:
        # The command id makes a retried or replayed command a no-op on the event log.
        response = await self._orders.call(
            "POST",
            f"/internal/orders/{command.order_id}/commands",
            json=_command_body(command, saga_key(command.order_id, command.step)),
            # Confirm is the pivot's second half and cancel a compensation: neither may give up.
            must_succeed=command.type in ("confirm", "cancel"),
        )
        body = response.json()
        return OrderSnapshot(
            order_id=str(body["id"]),
            status=str(body["status"]),
            version=int(body["version"]),
            attempts=current_attempt(),
        )


def _command_body(command: OrderCommand, command_id: str) -> dict[str, Any]:
    body: dict[str, Any] = {"command_id": command_id, "type": command.type}
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
