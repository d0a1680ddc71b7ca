"""The saga's view of inventory: hold stock for every line at once, release it, commit it."""

from __future__ import annotations

from temporalio import activity

from activities.http import ServiceCaller, current_attempt
from workflows.contract import CancelReason, OrderLine, PricedLine, Reservation

# Inventory's problem codes -> the saga's cancel reasons.
RESERVE_REFUSALS = {
    "out_of_stock": CancelReason.OUT_OF_STOCK,
    "invalid_item": CancelReason.INVALID_ITEM,
    "duplicate_product": CancelReason.INVALID_ITEM,
}


class InventoryActivities:
    def __init__(self, caller: ServiceCaller) -> None:
        self._inventory = caller

    @activity.defn(name="reserve_stock")
    async def reserve_stock(self, order_id: str, lines: list[OrderLine]) -> Reservation:
        # The reservation is keyed by order id: a retried call returns the hold already made.
        response = await self._inventory.call(
            "POST",
            "/reservations",
            json={
                "order_id": order_id,
                "lines": [{"product_id": ln.product_id, "quantity": ln.quantity} for ln in lines],
            },
            refusals=RESERVE_REFUSALS,
        )
        return _reservation(response.json())

    @activity.defn(name="release_stock")
    async def release_stock(self, order_id: str) -> int:
        await self._inventory.call("POST", f"/reservations/{order_id}/release", must_succeed=True)
        return current_attempt()

    @activity.defn(name="commit_stock")
    async def commit_stock(self, order_id: str) -> int:
        await self._inventory.call("POST", f"/reservations/{order_id}/commit", must_succeed=True)
        return current_attempt()


def _reservation(body: dict[str, object]) -> Reservation:
    raw_lines = body["lines"]
    assert isinstance(raw_lines, list)
    return Reservation(
        order_id=str(body["order_id"]),
        lines=[
            PricedLine(str(ln["product_id"]), int(ln["quantity"]), int(ln["unit_price_cents"]))
            for ln in raw_lines
        ],
        total_cents=int(str(body["total_cents"])),
        currency=str(body["currency"]),
        attempts=current_attempt(),
    )
