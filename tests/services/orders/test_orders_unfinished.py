"""GET /internal/orders/unfinished: what the saga reconciler checks against the workflows' state."""

from __future__ import annotations

import uuid
from datetime import datetime, timedelta
from typing import Any

import httpx
from sqlalchemy import update
from sqlmodel import col

from services.kit.models import utcnow
from services.orders.models import Order
from tests.services.orders.conftest import (
    RecordingSaga,
    create_by_legacy_command,
    order_in_status,
    place_ok,
)
from tests.support.identity import as_admin, as_customer, as_service

PATH = "/internal/orders/unfinished"


async def _age(client: httpx.AsyncClient, order_id: str, seconds: float) -> None:
    """Pretend the order last changed `seconds` ago."""
    async with client.app.state.db.session() as session, session.begin():  # type: ignore[attr-defined]
        await session.exec(
            update(Order)
            .where(col(Order.id) == uuid.UUID(order_id))
            .values(updated_at=utcnow() - timedelta(seconds=seconds))
        )


async def _unfinished(client: httpx.AsyncClient, **params: Any) -> list[dict[str, Any]]:
    response = await client.get(PATH, params=params, headers=as_service())
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    assert set(body) == {"items", "next_cursor"}
    items: list[dict[str, Any]] = body["items"]
    return items


async def test_unfinished_orders_are_the_started_and_not_final_ones_oldest_first(
    orders: httpx.AsyncClient,
) -> None:
    pending = await order_in_status(orders, "PENDING")
    review_old = await order_in_status(orders, "AWAITING_REVIEW")
    review_new = await order_in_status(orders, "AWAITING_REVIEW")
    by_saga = str(uuid.uuid4())  # created by the saga's own create command
    await create_by_legacy_command(orders, by_saga, 2)
    final = [await order_in_status(orders, status) for status in ("CONFIRMED", "SHIPPED", "CANCELLED")]
    orders.app.state.saga = RecordingSaga(fail=True)  # type: ignore[attr-defined]
    never_started = await place_ok(orders, uuid.uuid4())  # the start sweeper's, not the reconciler's
    orders.app.state.saga = RecordingSaga()  # type: ignore[attr-defined]

    for order_id, seconds in (
        (pending, 400),
        (review_old, 300),
        (review_new, 200),
        (by_saga, 100),
        (never_started, 1000),
        *((order_id, 1000) for order_id in final),
    ):
        await _age(orders, order_id, seconds)
    fresh = await order_in_status(orders, "PENDING")

    items = await _unfinished(orders, older_than_seconds=50)
    assert [item["id"] for item in items] == [pending, review_old, review_new, by_saga]
    first = items[0]
    assert set(first) == {"id", "user_id", "status", "updated_at", "saga_started_at"}
    assert [item["status"] for item in items] == ["PENDING", "AWAITING_REVIEW", "AWAITING_REVIEW", "PENDING"]
    assert all(item["saga_started_at"] is not None for item in items)
    order = (await orders.get(f"/orders/{pending}", headers=as_admin())).json()
    assert (first["user_id"], first["updated_at"]) == (order["user_id"], order["updated_at"])
    assert first["updated_at"].endswith("Z") and first["saga_started_at"].endswith("Z")
    assert datetime.fromisoformat(first["updated_at"]) < utcnow() - timedelta(seconds=399)

    assert [item["id"] for item in await _unfinished(orders, older_than_seconds=250)] == [pending, review_old]
    assert [item["id"] for item in await _unfinished(orders, older_than_seconds=50, limit=2)] == [
        pending,
        review_old,
    ]
    everything = [item["id"] for item in await _unfinished(orders)]
    assert everything == [pending, review_old, review_new, by_saga, fresh]
    assert await _unfinished(orders, older_than_seconds=10_000) == []
    # Further back than any date can be: nothing is that old, and that is no error.
    assert await _unfinished(orders, older_than_seconds=1e300) == []


async def test_unfinished_orders_accept_the_bounds(orders: httpx.AsyncClient) -> None:
    order_id = await place_ok(orders, uuid.uuid4())
    for params in ({"limit": 1}, {"limit": 500}, {"older_than_seconds": 0}, {"older_than_seconds": "0.5"}):
        response = await orders.get(PATH, params=params, headers=as_service())
        assert response.status_code == 200, (params, response.text)
    assert [item["id"] for item in await _unfinished(orders, limit=1)] == [order_id]


async def test_unfinished_orders_refuse_bad_parameters(orders: httpx.AsyncClient) -> None:
    for params in (
        {"older_than_seconds": -1},
        {"older_than_seconds": "x"},
        {"older_than_seconds": "nan"},
        {"older_than_seconds": "inf"},
        {"limit": 0},
        {"limit": 501},
        {"limit": "x"},
        {"limit": 1.5},
    ):
        response = await orders.get(PATH, params=params, headers=as_service())
        assert response.status_code == 422, (params, response.text)
        assert response.headers["content-type"] == "application/problem+json"
        assert response.json()["code"] == "validation_error"


async def test_unfinished_orders_are_for_the_saga_only(orders: httpx.AsyncClient) -> None:
    await place_ok(orders, uuid.uuid4())
    for headers, status in (({}, 401), (as_customer(uuid.uuid4()), 403), (as_admin(), 403)):
        response = await orders.get(PATH, headers=headers)
        assert response.status_code == status, response.text
        assert response.headers["content-type"] == "application/problem+json"


async def test_unfinished_orders_page_through_every_one_with_a_cursor(orders: httpx.AsyncClient) -> None:
    placed = [await order_in_status(orders, "AWAITING_REVIEW") for _ in range(5)]
    seen: list[str] = []
    cursor: str | None = None
    pages = 0
    while True:
        params: dict[str, Any] = {"limit": 2} | ({"cursor": cursor} if cursor else {})
        response = await orders.get(PATH, params=params, headers=as_service())
        assert response.status_code == 200, response.text
        body = response.json()
        seen += [item["id"] for item in body["items"]]
        pages += 1
        cursor = body["next_cursor"]
        if cursor is None:
            break
    assert pages == 3
    assert seen == placed, "every order once, oldest change first"


async def test_an_unreadable_cursor_is_a_422(orders: httpx.AsyncClient) -> None:
    response = await orders.get(PATH, params={"cursor": "not-a-cursor"}, headers=as_service())
    assert response.status_code == 422
    assert response.headers["content-type"].startswith("application/problem+json")
    assert response.json()["code"] == "invalid_cursor"
