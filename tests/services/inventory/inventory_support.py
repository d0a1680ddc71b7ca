"""Helpers for the inventory tests: create products, reserve, read availability and the outbox."""

from __future__ import annotations

import uuid
from typing import Any

import httpx
from sqlmodel import select

from services.kit.outbox import OutboxEvent
from tests.support.identity import as_admin, as_service


async def create_product(client: httpx.AsyncClient, **fields: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "sku": f"SKU-{uuid.uuid4().hex[:12]}",
        "name": "Widget",
        "description": "A widget.",
        "price_cents": 1250,
        "currency": "EUR",
        "stock": 10,
    }
    body.update(fields)
    response = await client.post("/products", json=body, headers=as_admin())
    assert response.status_code == 201, response.text
    product: dict[str, Any] = response.json()
    return product


async def availability(client: httpx.AsyncClient, product_id: str) -> dict[str, Any]:
    response = await client.get(f"/products/{product_id}/availability")
    assert response.status_code == 200, response.text
    level: dict[str, Any] = response.json()
    return level


async def reserve(client: httpx.AsyncClient, order_id: str, lines: list[tuple[str, int]]) -> httpx.Response:
    body = {"order_id": order_id, "lines": [{"product_id": p, "quantity": q} for p, q in lines]}
    return await client.post("/reservations", json=body, headers=as_service())


async def outbox(client: httpx.AsyncClient, event_type: str | None = None) -> list[OutboxEvent]:
    database = client.app.state.db  # type: ignore[attr-defined]
    async with database.session() as session:
        query = select(OutboxEvent)
        if event_type is not None:
            query = query.where(OutboxEvent.type == event_type)
        return list((await session.exec(query)).all())


def new_order_id() -> str:
    return str(uuid.uuid4())
