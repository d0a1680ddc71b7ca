"""Concurrent reservations never oversell, never hold twice and never give back twice.

The requests run truly concurrently against one in-process app (one connection each from the
pool), so on PostgreSQL they race on row locks and on SQLite on the database write lock.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from typing import Any

import httpx

from tests.services.inventory.inventory_support import availability, create_product, new_order_id, reserve
from tests.support.identity import as_service


async def test_fifty_orders_race_for_ten_units(inventory: httpx.AsyncClient) -> None:
    product = await create_product(inventory, stock=10)
    samples: list[dict[str, Any]] = []

    async def one_order() -> int:
        return (await reserve(inventory, new_order_id(), [(product["id"], 1)])).status_code

    async def sample() -> int:
        samples.append(await availability(inventory, product["id"]))
        return 0

    calls = []
    for index in range(50):
        calls.append(one_order())
        if index % 5 == 0:
            calls.append(sample())
    statuses = Counter(await asyncio.gather(*calls))

    assert statuses[201] == 10
    assert statuses[409] == 40
    assert len(samples) == 10
    for level in samples:
        assert level["on_hand"] == level["reserved"] + level["available"]
        assert 0 <= level["reserved"] <= level["on_hand"] == 10
    final = await availability(inventory, product["id"])
    assert final == {"product_id": product["id"], "on_hand": 10, "reserved": 10, "available": 0}


async def test_overlapping_multi_line_orders_neither_deadlock_nor_oversell(
    inventory: httpx.AsyncClient,
) -> None:
    products = [await create_product(inventory, stock=12) for _ in range(3)]
    ids = [p["id"] for p in products]
    # Every order takes all three products, listed in a different order each time.
    orders = [[(ids[(i + k) % 3], 1) for k in range(3)] for i in range(20)]

    responses = await asyncio.gather(*(reserve(inventory, new_order_id(), lines) for lines in orders))

    statuses = Counter(r.status_code for r in responses)
    assert statuses == {201: 12, 409: 8}
    for product_id in ids:
        assert await availability(inventory, product_id) == {
            "product_id": product_id,
            "on_hand": 12,
            "reserved": 12,
            "available": 0,
        }


async def test_concurrent_repeats_of_one_order_hold_stock_once(inventory: httpx.AsyncClient) -> None:
    product = await create_product(inventory, stock=10)
    order_id = new_order_id()

    responses = await asyncio.gather(*(reserve(inventory, order_id, [(product["id"], 3)]) for _ in range(8)))

    assert sorted(r.status_code for r in responses) == [200] * 7 + [201]
    assert len({r.json()["created_at"] for r in responses}) == 1
    assert (await availability(inventory, product["id"]))["reserved"] == 3


async def test_concurrent_releases_give_back_once(inventory: httpx.AsyncClient) -> None:
    product = await create_product(inventory, stock=10)
    order_id = new_order_id()
    assert (await reserve(inventory, order_id, [(product["id"], 6)])).status_code == 201

    responses = await asyncio.gather(
        *(inventory.post(f"/reservations/{order_id}/release", headers=as_service()) for _ in range(8))
    )

    assert [r.status_code for r in responses] == [200] * 8
    assert await availability(inventory, product["id"]) == {
        "product_id": product["id"],
        "on_hand": 10,
        "reserved": 0,
        "available": 10,
    }


async def test_release_racing_its_reserve_never_strands_stock(inventory: httpx.AsyncClient) -> None:
    product = await create_product(inventory, stock=100)
    order_ids = [new_order_id() for _ in range(10)]

    calls = []
    for order_id in order_ids:
        calls.append(reserve(inventory, order_id, [(product["id"], 2)]))
        calls.append(inventory.post(f"/reservations/{order_id}/release", headers=as_service()))
    responses = await asyncio.gather(*calls)

    for reserve_response, release_response in zip(responses[::2], responses[1::2], strict=True):
        assert reserve_response.status_code in (201, 409)
        if reserve_response.status_code == 409:
            assert reserve_response.json()["code"] == "reservation_released"
        assert release_response.status_code == 200
    # Whichever came first, every order ends released and holds nothing.
    assert (await availability(inventory, product["id"]))["reserved"] == 0
    for order_id in order_ids:
        stored = await inventory.get(f"/reservations/{order_id}", headers=as_service())
        assert stored.json()["status"] == "released"
