"""Drive the running stack as its users and the saga would, and audit the invariants afterwards."""

from __future__ import annotations

import asyncio
import time
import uuid
from dataclasses import dataclass
from typing import Any

import httpx

from tests.support.identity import as_admin, as_customer, as_service

FINAL_SAGA_STATES = {"completed", "compensated", "compensation_failed"}
CONFIRMED_STATUSES = ("CONFIRMED", "SHIPPED", "DELIVERED")
# A payment in these statuses took money (a refund, partial or full, keeps it counted as captured).
CAPTURED_STATUSES = ("captured", "refunded")
# A payment in these still holds money on the card, or may yet: none may outlive a final order.
LIVE_PAYMENT_STATUSES = ("authorized", "pending")
OK_CARD = "4242424242424242"


@dataclass
class Customer:
    user_id: str
    payment_method_id: str
    email: str


class Driver:
    def __init__(self, urls: dict[str, str]) -> None:
        self.urls = urls
        self.http = httpx.AsyncClient(timeout=30)

    async def close(self) -> None:
        await self.http.aclose()

    def _u(self, service: str, path: str) -> str:
        return self.urls[service] + path

    async def _ok(self, response: httpx.Response) -> Any:
        assert response.is_success, (
            f"{response.request.method} {response.request.url} → {response.status_code} {response.text}"
        )
        return response.json() if response.content else None

    async def customer(self, card: str = OK_CARD, phone: str | None = None) -> Customer:
        tag = uuid.uuid4().hex[:10]
        email = f"c{tag}@example.com"
        profile = {"first_name": "Test", "last_name": tag} | ({"phone": phone} if phone else {})
        user = await self._ok(
            await self.http.post(
                self._u("users", "/users"),
                json={
                    "email": email,
                    "username": f"c{tag}",
                    "password": "correct-horse-battery",
                    "profile": profile,
                },
            )
        )
        method = await self._ok(
            await self.http.post(
                self._u("payments", "/payment-methods"),
                json={"card_number": card, "exp_month": 12, "exp_year": 2035, "cvc": "123"},
                headers=as_customer(user["id"]),
            )
        )
        return Customer(user_id=user["id"], payment_method_id=method["id"], email=email)

    async def product(self, stock: int = 10, price_cents: int = 1_000, currency: str = "USD") -> str:
        tag = uuid.uuid4().hex[:10]
        product = await self._ok(
            await self.http.post(
                self._u("inventory", "/products"),
                json={
                    "sku": f"SKU-{tag}",
                    "name": f"Product {tag}",
                    "description": "test product",
                    "price_cents": price_cents,
                    "currency": currency,
                    "stock": stock,
                },
                headers=as_admin(),
            )
        )
        return str(product["id"])

    async def place_order(
        self,
        customer: Customer,
        lines: list[tuple[str, int]],
        *,
        key: str | None = None,
        payment_method_id: str | None = None,
    ) -> httpx.Response:
        headers = as_customer(customer.user_id) | ({"Idempotency-Key": key} if key else {})
        return await self.http.post(
            self._u("orders", "/orders"),
            json={
                "items": [{"product_id": pid, "quantity": qty} for pid, qty in lines],
                "payment_method_id": payment_method_id or customer.payment_method_id,
            },
            headers=headers,
        )

    async def record_order(self, order_id: str, customer: Customer, lines: list[tuple[str, int]]) -> None:
        """Write an order without starting its saga (for a test that runs the saga on a server of its
        own): the create command of the sagas before the typed order activities, kept for them."""
        await self._ok(
            await self.http.post(
                self._u("orders", f"/internal/orders/{order_id}/commands"),
                json={
                    "command_id": f"test-record-{order_id}",
                    "type": "create",
                    "user_id": customer.user_id,
                    "payment_method_id": customer.payment_method_id,
                    "items": [{"product_id": pid, "quantity": qty} for pid, qty in lines],
                },
                headers=as_service(),
            )
        )

    async def order(self, order_id: str) -> dict[str, Any]:
        return await self._ok(
            await self.http.get(self._u("orders", f"/orders/{order_id}"), headers=as_admin())
        )  # type: ignore[no-any-return]

    async def saga(self, order_id: str) -> dict[str, Any]:
        return await self._ok(
            await self.http.get(self._u("orders", f"/orders/{order_id}/saga"), headers=as_admin())
        )  # type: ignore[no-any-return]

    async def wait_saga(self, order_id: str, predicate: Any, timeout: float = 60.0) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        view: dict[str, Any] = {}
        while time.monotonic() < deadline:
            response = await self.http.get(self._u("orders", f"/orders/{order_id}/saga"), headers=as_admin())
            if response.status_code == 200:
                view = response.json()
                if predicate(view):
                    return view
            await asyncio.sleep(0.2)
        raise AssertionError(f"saga of {order_id} did not reach the expected state in {timeout}s: {view}")

    async def wait_final(self, order_id: str, timeout: float = 60.0) -> tuple[dict[str, Any], dict[str, Any]]:
        view = await self.wait_saga(
            order_id, lambda v: v["status"] in FINAL_SAGA_STATES and _notified(v), timeout
        )
        return await self.order(order_id), view

    async def cancel(self, order_id: str, customer: Customer) -> httpx.Response:
        return await self.http.post(
            self._u("orders", f"/orders/{order_id}/cancel"), headers=as_customer(customer.user_id)
        )

    async def review(self, order_id: str, approve: bool) -> httpx.Response:
        return await self.http.post(
            self._u("orders", f"/orders/{order_id}/review"), json={"approve": approve}, headers=as_admin()
        )

    async def availability(self, product_id: str) -> dict[str, Any]:
        return await self._ok(
            await self.http.get(self._u("inventory", f"/products/{product_id}/availability"))
        )  # type: ignore[no-any-return]

    async def payments_of(self, order_id: str) -> list[dict[str, Any]]:
        body = await self._ok(
            await self.http.get(self._u("payments", f"/orders/{order_id}/payments"), headers=as_service())
        )
        return list(body["items"] if isinstance(body, dict) else body)

    async def notifications_of(self, user_id: str) -> list[dict[str, Any]]:
        body = await self._ok(
            await self.http.get(
                self._u("notifications", f"/users/{user_id}/notifications"), headers=as_admin()
            )
        )
        return list(body["items"])

    async def delete_user(self, user_id: str) -> None:
        response = await self.http.delete(self._u("users", f"/users/{user_id}"), headers=as_customer(user_id))
        assert response.status_code == 204, response.text

    async def assert_invariants(self, order: dict[str, Any], stock_before: dict[str, int]) -> None:
        """Stock conserved, no live hold on stock or card, and the net charge is the confirmed total or 0.

        A final order keeps no authorisation (nor a payment still in flight): each was captured,
        voided or declined. A confirmed order's `payment_id` is its one captured payment.
        """
        confirmed = order["status"] in CONFIRMED_STATUSES
        if confirmed:
            assert order["cancel_reason"] is None
        else:
            assert order["status"] == "CANCELLED" and order["cancel_reason"], order
        units = {item["product_id"]: item["quantity"] for item in order["items"]}
        for product_id, on_hand_before in stock_before.items():
            now = await self.availability(product_id)
            sold = units.get(product_id, 0) if confirmed else 0
            assert now["on_hand"] + sold == on_hand_before, (product_id, now, on_hand_before)
            assert now["reserved"] == 0, f"a reservation outlived order {order['id']}: {now}"
        payments = await self.payments_of(order["id"])
        live = [p for p in payments if p["status"] in LIVE_PAYMENT_STATUSES]
        assert live == [], f"an authorisation outlived order {order['id']} ({order['status']}): {payments}"
        captured = [p for p in payments if p["status"] in CAPTURED_STATUSES]
        net = sum(p["amount_cents"] - p["refunded_cents"] for p in captured)
        if confirmed:
            assert len(captured) == 1, payments
            assert net == order["total_cents"], (net, order)
            assert order["payment_id"] == captured[0]["id"], (order["payment_id"], payments)
        else:
            assert len(captured) <= 1, payments
            assert net == 0, payments


def _notified(view: dict[str, Any]) -> bool:
    steps = {step["name"]: step for step in view["steps"]}
    return steps["notify_customer"]["status"] in ("done", "failed")
