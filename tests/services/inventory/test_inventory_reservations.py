"""Reservations: all-or-nothing reserve, idempotent reserve/release/commit, tombstones, events."""

from __future__ import annotations

import uuid
from typing import Any

import httpx

from tests.services.inventory.inventory_support import (
    availability,
    create_product,
    new_order_id,
    outbox,
    reserve,
)
from tests.support.identity import as_service

RESERVATION_KEYS = {"order_id", "status", "lines", "total_cents", "currency", "created_at"}


async def _level(client: httpx.AsyncClient, product: dict[str, Any]) -> tuple[int, int, int]:
    level = await availability(client, product["id"])
    assert level["on_hand"] == level["reserved"] + level["available"]
    return level["on_hand"], level["reserved"], level["available"]


async def test_reserve_holds_every_line_and_prices_it(inventory: httpx.AsyncClient) -> None:
    mug = await create_product(inventory, price_cents=1250, stock=10)
    pen = await create_product(inventory, price_cents=199, stock=5)
    order_id = new_order_id()

    response = await reserve(inventory, order_id, [(mug["id"], 3), (pen["id"], 5)])

    assert response.status_code == 201, response.text
    reservation = response.json()
    assert set(reservation) == RESERVATION_KEYS
    assert reservation["order_id"] == order_id
    assert reservation["status"] == "reserved"
    assert reservation["currency"] == "EUR"
    assert reservation["total_cents"] == 3 * 1250 + 5 * 199
    assert sorted(reservation["lines"], key=lambda line: line["quantity"]) == [
        {"product_id": mug["id"], "quantity": 3, "unit_price_cents": 1250},
        {"product_id": pen["id"], "quantity": 5, "unit_price_cents": 199},
    ]
    assert reservation["created_at"].endswith(("Z", "+00:00"))
    assert await _level(inventory, mug) == (10, 3, 7)
    assert await _level(inventory, pen) == (5, 5, 0)
    assert (await inventory.get(f"/products/{pen['id']}")).json()["available"] == 0

    stored = await inventory.get(f"/reservations/{order_id}", headers=as_service())
    assert stored.status_code == 200
    assert stored.json() == reservation
    assert {e.data["product_id"] for e in await outbox(inventory, "stock.changed")} == {mug["id"], pen["id"]}
    assert len(await outbox(inventory, "reservation.created")) == 1


async def test_repeated_reserve_returns_the_stored_reservation_without_a_second_hold(
    inventory: httpx.AsyncClient,
) -> None:
    product = await create_product(inventory, stock=10)
    order_id = new_order_id()
    first = await reserve(inventory, order_id, [(product["id"], 4)])
    assert first.status_code == 201

    again = await reserve(inventory, order_id, [(product["id"], 4)])
    other_body = await reserve(inventory, order_id, [(product["id"], 1)])

    assert again.status_code == 200
    assert again.json() == first.json()
    assert other_body.status_code == 200
    assert other_body.json() == first.json()
    assert await _level(inventory, product) == (10, 4, 6)
    assert len(await outbox(inventory, "reservation.created")) == 1


async def test_repeated_reserve_answers_the_stored_reservation_before_judging_its_lines(
    inventory: httpx.AsyncClient,
) -> None:
    # The prices are read before the header goes in: the order id must still decide first.
    euro = await create_product(inventory, currency="EUR", stock=5)
    dollar = await create_product(inventory, currency="USD", stock=5)
    order_id = new_order_id()
    first = await reserve(inventory, order_id, [(euro["id"], 5)])
    assert first.status_code == 201

    unknown = await reserve(inventory, order_id, [(str(uuid.uuid4()), 1)])
    mixed = await reserve(inventory, order_id, [(euro["id"], 1), (dollar["id"], 1)])
    short = await reserve(inventory, order_id, [(euro["id"], 5)])

    for again in (unknown, mixed, short):
        assert again.status_code == 200, again.text
        assert again.json() == first.json()
    assert await _level(inventory, euro) == (5, 5, 0)
    assert await _level(inventory, dollar) == (5, 0, 5)
    assert len(await outbox(inventory, "reservation.created")) == 1

    released = await inventory.post(f"/reservations/{order_id}/release", headers=as_service())
    assert released.status_code == 200
    late = await reserve(inventory, order_id, [(str(uuid.uuid4()), 1)])
    assert late.status_code == 409
    assert late.json()["code"] == "reservation_released"


async def test_one_short_line_reserves_nothing(inventory: httpx.AsyncClient) -> None:
    plenty = await create_product(inventory, stock=10)
    scarce = await create_product(inventory, stock=1)
    order_id = new_order_id()

    response = await reserve(inventory, order_id, [(plenty["id"], 5), (scarce["id"], 2)])

    assert response.status_code == 409
    problem = response.json()
    assert problem["code"] == "out_of_stock"
    assert problem["product_id"] == scarce["id"]
    assert await _level(inventory, plenty) == (10, 0, 10)
    assert await _level(inventory, scarce) == (1, 0, 1)
    missing = await inventory.get(f"/reservations/{order_id}", headers=as_service())
    assert missing.status_code == 404
    assert await outbox(inventory, "stock.changed") == []
    assert await outbox(inventory, "reservation.created") == []

    # Nothing of the refused attempt remains: the order can still be reserved once stock allows.
    retry = await reserve(inventory, order_id, [(plenty["id"], 5), (scarce["id"], 1)])
    assert retry.status_code == 201
    assert await _level(inventory, scarce) == (1, 1, 0)


async def test_unknown_product_and_mixed_currencies_are_invalid_items(inventory: httpx.AsyncClient) -> None:
    euro = await create_product(inventory, currency="EUR", stock=5)
    dollar = await create_product(inventory, currency="USD", stock=5)
    unknown = str(uuid.uuid4())

    no_such = await reserve(inventory, new_order_id(), [(euro["id"], 1), (unknown, 1)])
    assert no_such.status_code == 422
    assert no_such.json()["code"] == "invalid_item"
    assert no_such.json()["product_id"] == unknown

    mixed = await reserve(inventory, new_order_id(), [(euro["id"], 1), (dollar["id"], 1)])
    assert mixed.status_code == 422
    assert mixed.json()["code"] == "invalid_item"

    assert await _level(inventory, euro) == (5, 0, 5)
    assert await _level(inventory, dollar) == (5, 0, 5)


async def test_repeated_product_is_refused(inventory: httpx.AsyncClient) -> None:
    product = await create_product(inventory, stock=5)

    response = await reserve(inventory, new_order_id(), [(product["id"], 1), (product["id"], 2)])

    assert response.status_code == 422
    assert response.json()["code"] == "duplicate_product"
    assert await _level(inventory, product) == (5, 0, 5)


async def test_invalid_reservation_bodies(inventory: httpx.AsyncClient) -> None:
    product = await create_product(inventory, stock=5)
    line = {"product_id": product["id"], "quantity": 1}
    order_id = new_order_id()
    bodies: list[dict[str, Any]] = [
        {"order_id": order_id, "lines": []},
        {
            "order_id": order_id,
            "lines": [{"product_id": str(uuid.uuid4()), "quantity": 1} for _ in range(101)],
        },
        {"order_id": order_id, "lines": [{**line, "quantity": 0}]},
        {"order_id": order_id, "lines": [{**line, "quantity": 1001}]},
        {"order_id": order_id, "lines": [{**line, "quantity": 1.5}]},
        {"order_id": order_id, "lines": [{**line, "quantity": "2"}]},
        {"order_id": order_id, "lines": [{"product_id": "nope", "quantity": 1}]},
        {"order_id": order_id, "lines": [{"product_id": product["id"]}]},
        {"order_id": order_id, "lines": [{**line, "price_cents": 1}]},
        {"order_id": "not-a-uuid", "lines": [line]},
        {"lines": [line]},
        {"order_id": order_id},
        {"order_id": order_id, "lines": line},
    ]
    for body in bodies:
        response = await inventory.post("/reservations", json=body, headers=as_service())
        assert response.status_code == 422, body
        assert response.json()["code"] == "validation_error", body

    malformed = await inventory.post(
        "/reservations",
        content=b'{"order_id": ',
        headers={**as_service(), "content-type": "application/json"},
    )
    assert malformed.status_code == 400
    assert malformed.json()["code"] == "malformed_json"
    assert await _level(inventory, product) == (5, 0, 5)

    for url in ("/reservations/nope", "/reservations/nope/release", "/reservations/nope/commit"):
        method = "GET" if url.count("/") == 2 else "POST"
        assert (await inventory.request(method, url, headers=as_service())).status_code == 422, url


async def test_largest_order_is_accepted(inventory: httpx.AsyncClient) -> None:
    products = [await create_product(inventory, stock=1000, price_cents=10**9) for _ in range(3)]

    response = await reserve(inventory, new_order_id(), [(p["id"], 1000) for p in products])

    assert response.status_code == 201
    assert response.json()["total_cents"] == 3 * 1000 * 10**9


async def test_release_gives_units_back_once(inventory: httpx.AsyncClient) -> None:
    product = await create_product(inventory, stock=10)
    order_id = new_order_id()
    assert (await reserve(inventory, order_id, [(product["id"], 4)])).status_code == 201

    first = await inventory.post(f"/reservations/{order_id}/release", headers=as_service())
    again = await inventory.post(f"/reservations/{order_id}/release", headers=as_service())

    assert first.status_code == 200
    assert first.json() == {"order_id": order_id, "status": "released"}
    assert again.status_code == 200
    assert again.json() == {"order_id": order_id, "status": "released"}
    assert await _level(inventory, product) == (10, 0, 10)
    stored = (await inventory.get(f"/reservations/{order_id}", headers=as_service())).json()
    assert stored["status"] == "released"
    assert stored["lines"] == [{"product_id": product["id"], "quantity": 4, "unit_price_cents": 1250}]

    late = await reserve(inventory, order_id, [(product["id"], 4)])
    assert late.status_code == 409
    assert late.json()["code"] == "reservation_released"
    assert await _level(inventory, product) == (10, 0, 10)

    commit = await inventory.post(f"/reservations/{order_id}/commit", headers=as_service())
    assert commit.status_code == 409
    assert commit.json()["code"] == "reservation_released"
    assert len(await outbox(inventory, "reservation.released")) == 1


async def test_release_of_an_unknown_order_blocks_a_late_reserve(inventory: httpx.AsyncClient) -> None:
    product = await create_product(inventory, stock=10)
    order_id = new_order_id()

    released = await inventory.post(f"/reservations/{order_id}/release", headers=as_service())

    assert released.status_code == 200
    assert released.json() == {"order_id": order_id, "status": "released"}
    tombstone = (await inventory.get(f"/reservations/{order_id}", headers=as_service())).json()
    assert tombstone["status"] == "released"
    assert tombstone["lines"] == []
    assert tombstone["total_cents"] == 0

    late = await reserve(inventory, order_id, [(product["id"], 2)])
    assert late.status_code == 409
    assert late.json()["code"] == "reservation_released"
    assert await _level(inventory, product) == (10, 0, 10)
    assert (
        await inventory.post(f"/reservations/{order_id}/release", headers=as_service())
    ).status_code == 200


async def test_commit_takes_units_out_of_stock_once(inventory: httpx.AsyncClient) -> None:
    product = await create_product(inventory, stock=10)
    order_id = new_order_id()
    reserved = (await reserve(inventory, order_id, [(product["id"], 3)])).json()

    first = await inventory.post(f"/reservations/{order_id}/commit", headers=as_service())
    again = await inventory.post(f"/reservations/{order_id}/commit", headers=as_service())

    assert first.status_code == 200
    assert first.json() == {**reserved, "status": "committed"}
    assert again.status_code == 200
    assert again.json() == first.json()
    assert await _level(inventory, product) == (7, 0, 7)
    assert [e.data for e in await outbox(inventory, "stock.changed")][-1] == {
        "product_id": product["id"],
        "on_hand": 7,
        "reserved": 0,
        "available": 7,
    }

    release = await inventory.post(f"/reservations/{order_id}/release", headers=as_service())
    assert release.status_code == 409
    assert release.json()["code"] == "reservation_committed"
    repeat = await reserve(inventory, order_id, [(product["id"], 3)])
    assert repeat.status_code == 200
    assert repeat.json()["status"] == "committed"
    assert await _level(inventory, product) == (7, 0, 7)
    assert len(await outbox(inventory, "reservation.committed")) == 1


async def test_unknown_reservations_are_not_found(inventory: httpx.AsyncClient) -> None:
    order_id = new_order_id()
    for response in (
        await inventory.get(f"/reservations/{order_id}", headers=as_service()),
        await inventory.post(f"/reservations/{order_id}/commit", headers=as_service()),
    ):
        assert response.status_code == 404
        assert response.json()["code"] == "reservation_not_found"
