"""Reads: who may see an order, its event log in version order, a user's orders newest first."""

from __future__ import annotations

import uuid

import httpx

from tests.services.orders.conftest import command, confirm_fields, get_order, place_ok
from tests.support.identity import as_admin, as_customer, as_service


async def test_who_may_read_an_order(orders: httpx.AsyncClient) -> None:
    owner, stranger = uuid.uuid4(), uuid.uuid4()
    order_id = await place_ok(orders, owner)

    for path in (f"/orders/{order_id}", f"/orders/{order_id}/events"):
        for headers in (as_customer(owner), as_admin(), as_service()):
            response = await orders.get(path, headers=headers)
            assert response.status_code == 200, (path, response.text)
        response = await orders.get(path, headers=as_customer(stranger))
        assert response.status_code == 404, path
        assert response.json()["code"] == "order_not_found"
        response = await orders.get(path)
        assert response.status_code == 401, path
        assert response.json()["code"] == "unauthenticated"

    unknown = uuid.uuid4()
    for path in (f"/orders/{unknown}", f"/orders/{unknown}/events"):
        response = await orders.get(path, headers=as_admin())
        assert response.status_code == 404
        assert response.json()["code"] == "order_not_found"
    assert (await orders.get("/orders/not-a-uuid", headers=as_admin())).status_code == 422


async def test_who_may_list_a_users_orders(orders: httpx.AsyncClient) -> None:
    owner, stranger = uuid.uuid4(), uuid.uuid4()
    order_id = await place_ok(orders, owner)
    path = f"/users/{owner}/orders"

    for headers in (as_customer(owner), as_admin(), as_service()):
        response = await orders.get(path, headers=headers)
        assert response.status_code == 200
        assert [order["id"] for order in response.json()["items"]] == [order_id]
    response = await orders.get(path, headers=as_customer(stranger))
    assert response.status_code == 404
    assert (await orders.get(path)).status_code == 401
    # Someone without orders has an empty list, not an error.
    response = await orders.get(f"/users/{stranger}/orders", headers=as_customer(stranger))
    assert response.json() == {"items": [], "next_cursor": None}


async def test_events_are_in_version_order_and_paginated(orders: httpx.AsyncClient) -> None:
    user = uuid.uuid4()
    order_id = await place_ok(orders, user)
    assert (await command(orders, order_id, "await_review")).status_code == 200
    fields = confirm_fields(await get_order(orders, order_id), unit_price_cents=500)
    assert (await command(orders, order_id, "confirm", **fields)).status_code == 200
    assert (await command(orders, order_id, "ship")).status_code == 200
    assert (await command(orders, order_id, "deliver")).status_code == 200

    seen: list[dict[str, object]] = []
    cursor: str | None = None
    pages = 0
    while True:
        params: dict[str, str | int] = {"limit": 2}
        if cursor:
            params["cursor"] = cursor
        response = await orders.get(f"/orders/{order_id}/events", headers=as_customer(user), params=params)
        assert response.status_code == 200, response.text
        page = response.json()
        seen.extend(page["items"])
        pages += 1
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert pages == 3
    assert [(e["version"], e["type"]) for e in seen] == [
        (1, "order.created"),
        (2, "order.awaiting_review"),
        (3, "order.confirmed"),
        (4, "order.shipped"),
        (5, "order.delivered"),
    ]
    assert seen[0]["data"]["user_id"] == str(user)  # type: ignore[index]
    assert seen[2]["data"]["total_cents"] == fields["total_cents"]  # type: ignore[index]
    assert seen[2]["data"]["payment_id"] == fields["payment_id"]  # type: ignore[index]
    assert all(str(e["occurred_at"]).endswith("Z") for e in seen)


async def test_event_pages_refuse_bad_parameters(orders: httpx.AsyncClient) -> None:
    order_id = await place_ok(orders, uuid.uuid4())
    path = f"/orders/{order_id}/events"
    for params in ({"limit": 0}, {"limit": 201}, {"limit": "x"}, {"cursor": "!!!"}, {"cursor": "WyJ4Il0"}):
        response = await orders.get(path, headers=as_admin(), params=params)
        assert response.status_code == 422, params


async def test_user_orders_are_newest_first_and_paginated(orders: httpx.AsyncClient) -> None:
    user = uuid.uuid4()
    placed = [await place_ok(orders, user) for _ in range(5)]
    await place_ok(orders, uuid.uuid4())  # someone else's order never shows up

    listed: list[str] = []
    cursor: str | None = None
    while True:
        params: dict[str, str | int] = {"limit": 2}
        if cursor:
            params["cursor"] = cursor
        response = await orders.get(f"/users/{user}/orders", headers=as_customer(user), params=params)
        assert response.status_code == 200, response.text
        page = response.json()
        assert len(page["items"]) <= 2
        listed.extend(order["id"] for order in page["items"])
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert listed == list(reversed(placed))

    full = (await orders.get(f"/users/{user}/orders", headers=as_admin())).json()
    assert full["next_cursor"] is None
    first = full["items"][0]
    assert set(first) == {
        "id",
        "user_id",
        "status",
        "items",
        "total_cents",
        "currency",
        "payment_id",
        "cancel_reason",
        "version",
        "created_at",
        "updated_at",
    }

    for bad in ("garbage", "WyJ4IiwieSJd", "WyIyMDI1LTAxLTAxVDAwOjAwOjAwIiwieSJd"):
        response = await orders.get(f"/users/{user}/orders", headers=as_admin(), params={"cursor": bad})
        assert response.status_code == 422, bad
        assert response.json()["code"] == "invalid_cursor"
