"""The saga's first command since the typed order activities: `start` marks the saga running on the
order POST /orders wrote, without sending its lines back, once per command id."""

from __future__ import annotations

import uuid

import httpx

from tests.services.orders.conftest import command, event_types, get_order, order_body, place_ok
from tests.support.identity import as_admin, as_service


async def test_start_marks_a_placed_order_once_and_changes_nothing_else(orders: httpx.AsyncClient) -> None:
    user = uuid.uuid4()
    placed = await place_ok(orders, user, order_body(3))
    before = await get_order(orders, placed)

    started = await command(orders, placed, "start", f"order-{placed}:create_order")
    again = await command(orders, placed, "start", f"order-{placed}:create_order")

    assert started.status_code == again.status_code == 200, started.text
    assert started.json() == again.json()
    after = started.json()
    assert (after["status"], after["version"], after["items"]) == ("PENDING", 1, before["items"])
    assert await event_types(orders, placed) == [(1, "order.created")], "no event: nothing changed"
    listed = await orders.get(
        "/internal/orders/unfinished", params={"older_than_seconds": 0}, headers=as_service()
    )
    assert listed.status_code == 200
    assert placed in {item["id"] for item in listed.json()["items"]}, "a started saga is unfinished"


async def test_start_of_an_order_never_placed_is_not_found_and_writes_nothing(
    orders: httpx.AsyncClient,
) -> None:
    order_id = str(uuid.uuid4())
    answer = await command(orders, order_id, "start", f"order-{order_id}:create_order")
    assert answer.status_code == 404
    assert answer.json()["code"] == "order_not_found"
    assert answer.headers["content-type"].startswith("application/problem+json")
    missing = await orders.get(f"/orders/{order_id}", headers=as_admin())
    assert missing.status_code == 404


async def test_a_start_command_id_is_bound_to_start(orders: httpx.AsyncClient) -> None:
    placed = await place_ok(orders, uuid.uuid4(), order_body(1))
    assert (await command(orders, placed, "start", "saga-key-1")).status_code == 200
    reused = await command(orders, placed, "cancel", "saga-key-1", reason="customer_cancelled")
    assert (reused.status_code, reused.json()["code"]) == (422, "command_id_reused")
