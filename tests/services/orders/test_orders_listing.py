"""The admin listing, GET /orders: newest first, keyset pages that hold while orders arrive,
filters that narrow it, and bad filters refused with a code."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx

from tests.services.orders.conftest import order_in_status, place_ok
from tests.support.identity import as_admin, as_customer


async def listing(orders: httpx.AsyncClient, **params: Any) -> dict[str, Any]:
    response = await orders.get("/orders", params=params, headers=as_admin())
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


async def every_page(orders: httpx.AsyncClient, **params: Any) -> list[str]:
    ids: list[str] = []
    cursor: str | None = None
    while True:
        page = await listing(orders, **params, **({"cursor": cursor} if cursor else {}))
        ids += [order["id"] for order in page["items"]]
        cursor = page["next_cursor"]
        if cursor is None:
            return ids


async def test_only_an_admin_lists_every_order(orders: httpx.AsyncClient) -> None:
    customer = uuid.uuid4()
    await place_ok(orders, customer)
    refused = await orders.get("/orders", headers=as_customer(customer))
    assert refused.status_code == 403
    assert refused.headers["content-type"].startswith("application/problem+json")
    assert (await orders.get("/orders")).status_code == 401
    page = await listing(orders)
    assert len(page["items"]) == 1
    # The same order object as GET /orders/{id}.
    one = await orders.get(f"/orders/{page['items'][0]['id']}", headers=as_admin())
    assert page["items"][0] == one.json()


async def test_pages_are_newest_first_and_hold_while_orders_arrive(orders: httpx.AsyncClient) -> None:
    placed = [await place_ok(orders, uuid.uuid4()) for _ in range(7)]
    first = await listing(orders, limit=3)
    assert [o["id"] for o in first["items"]] == placed[::-1][:3]
    created = [datetime.fromisoformat(o["created_at"]) for o in first["items"]]
    assert created == sorted(created, reverse=True)
    # An order placed between two pages lands on no later page and moves nothing along.
    late = await place_ok(orders, uuid.uuid4())
    rest: list[str] = []
    cursor = first["next_cursor"]
    while cursor:
        page = await listing(orders, limit=3, cursor=cursor)
        rest += [o["id"] for o in page["items"]]
        cursor = page["next_cursor"]
    assert rest == placed[::-1][3:]
    assert late not in rest
    assert (await every_page(orders, limit=100)) == [late, *placed[::-1]]


async def test_filters_narrow_the_list(orders: httpx.AsyncClient) -> None:
    waiting = await order_in_status(orders, "AWAITING_REVIEW")
    cancelled = await order_in_status(orders, "CANCELLED")  # reason out_of_stock
    confirmed = await order_in_status(orders, "CONFIRMED")
    customer = uuid.uuid4()
    mine = await place_ok(orders, customer)

    assert await every_page(orders, status="AWAITING_REVIEW") == [waiting]
    statuses = await every_page(orders, status=["CONFIRMED", "CANCELLED"])
    assert statuses == [confirmed, cancelled]
    assert await every_page(orders, reason="out_of_stock") == [cancelled]
    assert await every_page(orders, reason="payment_declined") == []
    assert await every_page(orders, customer_id=str(customer)) == [mine]
    assert await every_page(orders, customer_id=str(customer), status="CONFIRMED") == []

    middle = (await orders.get(f"/orders/{cancelled}", headers=as_admin())).json()["created_at"]
    assert await every_page(orders, created_after=middle) == [mine, confirmed]
    assert await every_page(orders, created_before=middle) == [waiting]
    future = (datetime.now(UTC) + timedelta(days=1)).isoformat()
    assert await every_page(orders, created_after=future) == []


async def test_bad_filters_are_refused_with_a_code(orders: httpx.AsyncClient) -> None:
    await place_ok(orders, uuid.uuid4())
    cases: list[tuple[dict[str, Any], str]] = [
        ({"status": "LOST"}, "validation_error"),
        ({"reason": "bored"}, "validation_error"),
        ({"customer_id": "not-a-uuid"}, "validation_error"),
        ({"created_after": "yesterday"}, "validation_error"),
        ({"created_after": "2026-12-02T10:00:00"}, "timestamp_without_offset"),
        ({"created_before": "0001-01-01T00:00:00+01:00"}, "timestamp_out_of_range"),
        ({"created_after": "9999-12-31T23:59:59-01:00"}, "timestamp_out_of_range"),
        ({"created_after": "2026-12-02T10:00:00Z", "created_before": "2026-12-02T09:00:00Z"}, "empty_range"),
        ({"limit": 0}, "validation_error"),
        ({"limit": 101}, "validation_error"),
        ({"cursor": "garbage!"}, "invalid_cursor"),
        ({"cursor": "WyJ4IiwieSJd"}, "invalid_cursor"),  # ["x","y"]: the right shape, wrong values
    ]
    for params, code in cases:
        response = await orders.get("/orders", params=params, headers=as_admin())
        assert response.status_code == 422, (params, response.text)
        assert response.headers["content-type"].startswith("application/problem+json")
        assert response.json()["code"] == code, (params, response.text)


async def test_the_listing_is_in_the_openapi_schema(orders: httpx.AsyncClient) -> None:
    schema = (await orders.get("/openapi.json")).json()
    operation = schema["paths"]["/orders"]["get"]
    names = {p["name"] for p in operation["parameters"]}
    assert {"status", "reason", "customer_id", "created_after", "created_before", "limit", "cursor"} <= names
    assert "AWAITING_REVIEW" in operation["description"]
    assert "compensation_failed" in operation["description"]
