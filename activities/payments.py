"""The saga's view of payments.

Sagas started on the old code charge once per order (`charge_payment`, compensated by
`refund_payment`). The current saga authorises the total (`authorize_payment`, compensated by
`void_payment`), captures it after the review (`capture_payment`, compensated by `refund_capture`),
all under the authorisation's key.
"""

from __future__ import annotations

from typing import Any

from temporalio import activity

from activities.http import ServiceCaller, current_attempt, saga_key
from workflows.contract import CancelReason, Charge, ChargeRequest, Step

CHARGE_STEP = "charge_payment"
REFUND_STEP = "refund_payment"
AUTHORIZE_STEP = Step.AUTHORIZE_PAYMENT
REFUND_CAPTURE_STEP = "refund_capture"
VOID_STEP = "void_payment"

# Payments' problem codes -> the saga's cancel reasons.
CHARGE_REFUSALS = {
    "payment_declined": CancelReason.PAYMENT_DECLINED,
    "invalid_payment_method": CancelReason.INVALID_PAYMENT_METHOD,
}
AUTHORIZE_REFUSALS = CHARGE_REFUSALS
# An authorisation that ran out, or was voided, can never be captured: the saga cancels the order.
CAPTURE_REFUSALS = {
    "authorization_expired": CancelReason.PAYMENT_FAILED,
    "authorization_voided": CancelReason.PAYMENT_FAILED,
}


def _charge_body(request: ChargeRequest) -> dict[str, Any]:
    return {
        "order_id": request.order_id,
        "user_id": request.user_id,
        "payment_method_id": request.payment_method_id,
        "amount_cents": request.amount_cents,
        "currency": request.currency,
    }


def _charge(body: dict[str, Any]) -> Charge:
    return Charge(
        payment_id=str(body["id"]),
        amount_cents=int(body["amount_cents"]),
        currency=str(body["currency"]),
        attempts=current_attempt(),
    )


class PaymentActivities:
    def __init__(self, caller: ServiceCaller) -> None:
        self._payments = caller

    @activity.defn(name="charge_payment")
    async def charge_payment(self, request: ChargeRequest) -> Charge:
        response = await self._payments.call(
            "POST",
            "/charges",
            json=_charge_body(request),
            idempotency_key=saga_key(request.order_id, CHARGE_STEP),
            refusals=CHARGE_REFUSALS,
        )
        return _charge(response.json())

    @activity.defn(name="refund_payment")
    async def refund_payment(self, order_id: str) -> int:
        """Refund whatever the charge key captured; with no capture, void the key so a late charge fails."""
        charge_key = saga_key(order_id, CHARGE_STEP)
        await self._payments.call(
            "POST",
            f"/charges/{charge_key}/refund",
            json={},
            idempotency_key=saga_key(order_id, REFUND_STEP),
            must_succeed=True,
        )
        return current_attempt()

    @activity.defn(name="authorize_payment")
    async def authorize_payment(self, request: ChargeRequest) -> Charge:
        """Hold the order's total on the card; nothing is captured yet."""
        response = await self._payments.call(
            "POST",
            "/authorizations",
            json=_charge_body(request),
            idempotency_key=saga_key(request.order_id, AUTHORIZE_STEP),
            refusals=AUTHORIZE_REFUSALS,
        )
        return _charge(response.json())

    @activity.defn(name="capture_payment")
    async def capture_payment(self, order_id: str) -> Charge:
        """Capture exactly what the order's authorisation holds."""
        authorization_key = saga_key(order_id, AUTHORIZE_STEP)
        response = await self._payments.call(
            "POST", f"/authorizations/{authorization_key}/capture", refusals=CAPTURE_REFUSALS
        )
        return _charge(response.json())

    @activity.defn(name="refund_capture")
    async def refund_capture(self, order_id: str) -> int:
        """Compensate the capture: refund all that is left of it (nothing if it never captured)."""
        authorization_key = saga_key(order_id, AUTHORIZE_STEP)
        await self._payments.call(
            "POST",
            f"/charges/{authorization_key}/refund",
            json={},
            idempotency_key=saga_key(order_id, REFUND_CAPTURE_STEP),
            must_succeed=True,
        )
        return current_attempt()

    @activity.defn(name="void_payment")
    async def void_payment(self, order_id: str) -> int:
        """Compensate the authorisation: release the hold, or refund a capture that landed late."""
        authorization_key = saga_key(order_id, AUTHORIZE_STEP)
        await self._payments.call("POST", f"/authorizations/{authorization_key}/void", must_succeed=True)
        return current_attempt()
