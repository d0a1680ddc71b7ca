"""The saga's view of payments: one charge per order, refunded (or voided) by the same key."""

from __future__ import annotations

from temporalio import activity

from activities.http import ServiceCaller, current_attempt, idempotency_key
from workflows.payloads import Charge, ChargeRequest

CHARGE_STEP = "charge_payment"
CHARGE_REFUSALS = {"payment_declined": "payment_declined", "invalid_payment_method": "invalid_payment_method"}


class PaymentActivities:
    def __init__(self, caller: ServiceCaller) -> None:
        self._payments = caller

    @activity.defn(name="charge_payment")
    async def charge_payment(self, request: ChargeRequest) -> Charge:
        response = await self._payments.call(
            "POST",
            "/charges",
            json={
                "order_id": request.order_id,
                "user_id": request.user_id,
                "payment_method_id": request.payment_method_id,
                "amount_cents": request.amount_cents,
                "currency": request.currency,
            },
            idempotency_key=idempotency_key(CHARGE_STEP),
            refusals=CHARGE_REFUSALS,
        )
        body = response.json()
        return Charge(
            payment_id=str(body["id"]),
            amount_cents=int(body["amount_cents"]),
            currency=str(body["currency"]),
            attempts=current_attempt(),
        )

    @activity.defn(name="refund_payment")
    async def refund_payment(self, order_id: str) -> int:
        """Refund whatever the charge key captured; with no capture, void the key so a late charge fails."""
        charge_key = idempotency_key(CHARGE_STEP)
        await self._payments.call(
            "POST",
            f"/charges/{charge_key}/refund",
            json={},
            idempotency_key=idempotency_key("refund_payment"),
            must_succeed=True,
        )
        return current_attempt()
