"""Fixtures and helpers for the orders service tests."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from sqlmodel import col, select

from services.kit.errors import Problem
from services.kit.identity import Identity
from services.kit.outbox import OutboxEvent
from services.orders.saga import OrderStart
from tests.support.identity import as_admin, as_customer, as_service


class RecordingSaga:
    """Our own SagaPort, recording what the service asked of it; `fail` makes start raise."""

    def __init__(self, *, fail: bool = False) -> None:
        self.fail = fail
        self.started: list[OrderStart] = []

    async def start(self, order: OrderStart) -> None:
        self.started.append(order)
        if self.fail:
            raise RuntimeError("saga engine unreachable")

    async def cancel(self, order_id: uuid.UUID, by: Identity) -> None:
        raise NotImplementedError

    async def review(self, order_id: uuid.UUID, approve: bool, by: Identity) -> None:
        raise NotImplementedError

    async def retry_compensations(self, order_id: uuid.UUID, by: Identity) -> None:
        raise NotImplementedError

    async def describe(self, order_id: uuid.UUID) -> dict[str, Any]:
        raise NotImplementedError


class UpdatingSaga(RecordingSaga):
    """A SagaPort whose workflow updates are recorded; `refuse` makes them fail as a refused update would.

    `view` is what `describe` answers (the workflow's `status` query).
    """

    def __init__(self, *, refuse: str | None = None, view: dict[str, Any] | None = None) -> None:
        super().__init__()
        self.refuse = refuse
        self.view = view
        self.updates: list[tuple[str, uuid.UUID, Identity]] = []

    def _update(self, name: str, order_id: uuid.UUID, by: Identity) -> None:
        self.updates.append((name, order_id, by))
        if self.refuse is not None:
            # What TemporalSaga raises when the workflow's update validator refuses.
            raise Problem(409, "illegal_transition", self.refuse)

    async def cancel(self, order_id: uuid.UUID, by: Identity) -> None:
        self._update("cancel", order_id, by)

    async def review(self, order_id: uuid.UUID, approve: bool, by: Identity) -> None:
        self._update("review", order_id, by)

    async def retry_compensations(self, order_id: uuid.UUID, by: Identity) -> None:
        self._update("retry_compensations", order_id, by)

    async def describe(self, order_id: uuid.UUID) -> dict[str, Any]:
        if self.view is None:
            raise NotImplementedError
        return self.view


@pytest.fixture
async def orders(service_client: Any) -> AsyncIterator[httpx.AsyncClient]:
    async with service_client("orders") as client:
        yield client


def order_body(*quantities: int, payment_method_id: uuid.UUID | None = None) -> dict[str, Any]:
    return {
        "items": [{"product_id": str(uuid.uuid4()), "quantity": q} for q in (quantities or (1,))],
        "payment_method_id": str(payment_method_id or uuid.uuid4()),
    }


async def place(
    client: httpx.AsyncClient, user_id: uuid.UUID, body: dict[str, Any] | None = None, key: str | None = None
) -> httpx.Response:
    headers = as_customer(user_id)
    if key is not None:
        headers["Idempotency-Key"] = key
    return await client.post("/orders", json=body or order_body(), headers=headers)


async def place_ok(client: httpx.AsyncClient, user_id: uuid.UUID, body: dict[str, Any] | None = None) -> str:
    response = await place(client, user_id, body)
    assert response.status_code == 202, response.text
    return str(response.json()["id"])


async def command(
    client: httpx.AsyncClient, order_id: str, type_: str, command_id: str | None = None, **fields: Any
) -> httpx.Response:
    body = {"command_id": command_id or f"{type_}-{uuid.uuid4()}", "type": type_, **fields}
    return await client.post(f"/internal/orders/{order_id}/commands", json=body, headers=as_service())


async def create_by_legacy_command(client: httpx.AsyncClient, order_id: str, *quantities: int) -> None:
    """Write an order as the create command of sagas older than the typed order activities did."""
    body = order_body(*quantities)
    created = await command(
        client,
        order_id,
        "create",
        user_id=str(uuid.uuid4()),
        items=body["items"],
        payment_method_id=body["payment_method_id"],
    )
    assert created.status_code == 200, created.text


async def get_order(client: httpx.AsyncClient, order_id: str) -> dict[str, Any]:
    response = await client.get(f"/orders/{order_id}", headers=as_admin())
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


def confirm_fields(order: dict[str, Any], unit_price_cents: int = 1250) -> dict[str, Any]:
    """A confirmation pricing every line of `order` at `unit_price_cents`."""
    items = [
        {"product_id": line["product_id"], "quantity": line["quantity"], "unit_price_cents": unit_price_cents}
        for line in order["items"]
    ]
    total = sum(line["quantity"] * unit_price_cents for line in order["items"])
    return {"items": items, "total_cents": total, "currency": "EUR", "payment_id": str(uuid.uuid4())}


async def event_types(client: httpx.AsyncClient, order_id: str) -> list[tuple[int, str]]:
    response = await client.get(f"/orders/{order_id}/events", headers=as_admin(), params={"limit": 200})
    assert response.status_code == 200, response.text
    return [(event["version"], event["type"]) for event in response.json()["items"]]


async def outbox_types(client: httpx.AsyncClient, order_id: str) -> list[str]:
    async with client.app.state.db.session() as session:  # type: ignore[attr-defined]
        statement = (
            select(OutboxEvent).where(OutboxEvent.subject == order_id).order_by(col(OutboxEvent.created_at))
        )
        return [event.type for event in (await session.exec(statement)).all()]


async def order_in_status(client: httpx.AsyncClient, status: str) -> str:
    """A fresh order driven by saga commands into `status`."""
    order_id = await place_ok(client, uuid.uuid4())
    steps = {
        "PENDING": [],
        "AWAITING_REVIEW": ["await_review"],
        "CONFIRMED": ["confirm"],
        "SHIPPED": ["confirm", "ship"],
        "DELIVERED": ["confirm", "ship", "deliver"],
        "CANCELLED": ["cancel"],
    }[status]
    for step in steps:
        fields: dict[str, Any] = {}
        if step == "confirm":
            fields = confirm_fields(await get_order(client, order_id))
        elif step == "cancel":
            fields = {"reason": "out_of_stock"}
        response = await command(client, order_id, step, **fields)
        assert response.status_code == 200, response.text
    assert (await get_order(client, order_id))["status"] == status
    return order_id
