"""Products: create, read, list with cursors, set stock, availability, and their events."""

from __future__ import annotations

import base64
import json
import uuid
from typing import Any

import httpx
import pytest

from tests.services.inventory.inventory_support import (
    availability,
    create_product,
    new_order_id,
    outbox,
    reserve,
)
from tests.support.identity import as_admin, as_customer

PRODUCT_KEYS = {"id", "sku", "name", "description", "price_cents", "currency", "available"}


async def test_created_product_is_readable_and_announced(inventory: httpx.AsyncClient) -> None:
    product = await create_product(
        inventory, sku="MUG-01", name="Mug", description="Blue.", price_cents=999, currency="USD", stock=7
    )

    assert set(product) == PRODUCT_KEYS
    assert product["sku"] == "MUG-01"
    assert product["price_cents"] == 999
    assert product["currency"] == "USD"
    assert product["available"] == 7
    uuid.UUID(product["id"])

    fetched = await inventory.get(f"/products/{product['id']}")
    assert fetched.status_code == 200
    assert fetched.json() == product
    assert await availability(inventory, product["id"]) == {
        "product_id": product["id"],
        "on_hand": 7,
        "reserved": 0,
        "available": 7,
    }

    [event] = await outbox(inventory, "product.created")
    assert event.source == "inventory"
    assert event.data["product_id"] == product["id"]
    assert event.data["sku"] == "MUG-01"


async def test_description_and_stock_default(inventory: httpx.AsyncClient) -> None:
    response = await inventory.post(
        "/products",
        json={"sku": "BARE", "name": "Bare", "price_cents": 0, "currency": "EUR"},
        headers=as_admin(),
    )
    assert response.status_code == 201, response.text
    assert response.json()["description"] == ""
    assert response.json()["available"] == 0


async def test_duplicate_sku_is_refused_without_a_second_product(inventory: httpx.AsyncClient) -> None:
    await create_product(inventory, sku="DUP-1")

    response = await inventory.post(
        "/products",
        json={"sku": "DUP-1", "name": "Other", "price_cents": 1, "currency": "EUR", "stock": 1},
        headers=as_admin(),
    )

    assert response.status_code == 409
    assert response.headers["content-type"].startswith("application/problem+json")
    assert response.json()["code"] == "sku_taken"
    listing = (await inventory.get("/products")).json()
    assert [p["sku"] for p in listing["items"]] == ["DUP-1"]
    assert len(await outbox(inventory, "product.created")) == 1


VALID_PRODUCT: dict[str, Any] = {
    "sku": "OK-1",
    "name": "Thing",
    "description": "",
    "price_cents": 100,
    "currency": "EUR",
    "stock": 1,
}

INVALID_PRODUCTS: list[tuple[str, dict[str, Any]]] = [
    ("float price", {"price_cents": 12.5}),
    ("whole float price", {"price_cents": 12.0}),
    ("string price", {"price_cents": "100"}),
    ("boolean price", {"price_cents": True}),
    ("negative price", {"price_cents": -1}),
    ("price over 10^9", {"price_cents": 10**9 + 1}),
    ("float stock", {"stock": 1.5}),
    ("negative stock", {"stock": -1}),
    ("stock over 10^7", {"stock": 10**7 + 1}),
    ("lower-case currency", {"currency": "eur"}),
    ("four-letter currency", {"currency": "EURO"}),
    ("empty sku", {"sku": ""}),
    ("sku with a space", {"sku": "A B"}),
    ("sku with a slash", {"sku": "A/B"}),
    ("sku over 64", {"sku": "S" * 65}),
    ("empty name", {"name": ""}),
    ("blank name", {"name": "   "}),
    ("name over 200", {"name": "n" * 201}),
    ("numeric name", {"name": 5}),
    ("description over 5000", {"description": "d" * 5001}),
    ("unknown field", {"colour": "red"}),
    ("missing sku", {"sku": None}),
    ("missing price", {"price_cents": None}),
    ("missing currency", {"currency": None}),
]


async def test_invalid_products_are_refused_with_422(inventory: httpx.AsyncClient) -> None:
    for label, change in INVALID_PRODUCTS:
        body = {**VALID_PRODUCT, **change}
        body = {k: v for k, v in body.items() if v is not None}
        response = await inventory.post("/products", json=body, headers=as_admin())
        assert response.status_code == 422, label
        assert response.json()["code"] == "validation_error", label

    assert (await inventory.get("/products")).json()["items"] == []


async def test_boundary_values_are_accepted(inventory: httpx.AsyncClient) -> None:
    product = await create_product(
        inventory,
        sku="a.Z_9-" + "x" * 58,
        name="n" * 200,
        description="d" * 5000,
        price_cents=10**9,
        stock=10**7,
    )
    assert len(product["sku"]) == 64
    assert product["price_cents"] == 10**9
    assert product["available"] == 10**7


async def test_malformed_and_oversized_bodies(inventory: httpx.AsyncClient) -> None:
    malformed = await inventory.post(
        "/products",
        content=b'{"sku": "X",',
        headers={**as_admin(), "content-type": "application/json"},
    )
    assert malformed.status_code == 400
    assert malformed.json()["code"] == "malformed_json"

    huge = await inventory.post(
        "/products", json={**VALID_PRODUCT, "description": "d" * (1024 * 1024)}, headers=as_admin()
    )
    assert huge.status_code == 413

    not_an_object = await inventory.post("/products", json=[1, 2], headers=as_admin())
    assert not_an_object.status_code == 422


async def test_unknown_and_malformed_product_ids(inventory: httpx.AsyncClient) -> None:
    unknown = uuid.uuid4()
    for response in (
        await inventory.get(f"/products/{unknown}"),
        await inventory.get(f"/products/{unknown}/availability"),
        await inventory.put(f"/products/{unknown}/stock", json={"stock": 1}, headers=as_admin()),
    ):
        assert response.status_code == 404
        assert response.json()["code"] == "product_not_found"

    for response in (
        await inventory.get("/products/not-a-uuid"),
        await inventory.get("/products/not-a-uuid/availability"),
        await inventory.put("/products/not-a-uuid/stock", json={"stock": 1}, headers=as_admin()),
    ):
        assert response.status_code == 422


async def test_set_stock_changes_on_hand_and_announces_it(inventory: httpx.AsyncClient) -> None:
    product = await create_product(inventory, stock=10)

    response = await inventory.put(f"/products/{product['id']}/stock", json={"stock": 25}, headers=as_admin())

    assert response.status_code == 200
    assert response.json() == {"product_id": product["id"], "on_hand": 25, "reserved": 0, "available": 25}
    assert (await inventory.get(f"/products/{product['id']}")).json()["available"] == 25
    [event] = await outbox(inventory, "stock.changed")
    assert event.data == {"product_id": product["id"], "on_hand": 25, "reserved": 0, "available": 25}


async def test_set_stock_refuses_to_go_below_reserved(inventory: httpx.AsyncClient) -> None:
    product = await create_product(inventory, stock=10)
    assert (await reserve(inventory, new_order_id(), [(product["id"], 6)])).status_code == 201

    refused = await inventory.put(f"/products/{product['id']}/stock", json={"stock": 5}, headers=as_admin())
    assert refused.status_code == 409
    assert refused.json()["code"] == "stock_below_reserved"
    assert await availability(inventory, product["id"]) == {
        "product_id": product["id"],
        "on_hand": 10,
        "reserved": 6,
        "available": 4,
    }

    exact = await inventory.put(f"/products/{product['id']}/stock", json={"stock": 6}, headers=as_admin())
    assert exact.status_code == 200
    assert exact.json() == {"product_id": product["id"], "on_hand": 6, "reserved": 6, "available": 0}


async def test_set_stock_rejects_bad_bodies(inventory: httpx.AsyncClient) -> None:
    product = await create_product(inventory, stock=3)
    url = f"/products/{product['id']}/stock"
    for body in (
        {"stock": 2.5},
        {"stock": -1},
        {"stock": 10**7 + 1},
        {"stock": "4"},
        {},
        {"stock": 1, "x": 1},
    ):
        response = await inventory.put(url, json=body, headers=as_admin())
        assert response.status_code == 422, body
    malformed = await inventory.put(
        url, content=b"{stock:", headers={**as_admin(), "content-type": "application/json"}
    )
    assert malformed.status_code == 400
    assert (await availability(inventory, product["id"]))["on_hand"] == 3


async def test_stock_low_is_emitted_once_per_crossing(service_client: Any) -> None:
    async with service_client("inventory", low_stock_threshold=5) as client:
        product = await create_product(client, stock=10)
        url = f"/products/{product['id']}/stock"

        async def set_stock(value: int) -> None:
            assert (await client.put(url, json={"stock": value}, headers=as_admin())).status_code == 200

        await set_stock(5)  # available 5: not below the threshold
        assert await outbox(client, "stock.low") == []
        await set_stock(4)  # crosses below
        await set_stock(2)  # already below: no second event
        [low] = await outbox(client, "stock.low")
        assert low.data["product_id"] == product["id"]
        assert low.data["available"] == 4
        assert low.data["threshold"] == 5

        await set_stock(10)
        assert (await reserve(client, new_order_id(), [(product["id"], 6)])).status_code == 201
        lows = await outbox(client, "stock.low")
        assert len(lows) == 2
        assert sorted(e.data["available"] for e in lows) == [4, 4]


async def test_products_list_pages_through_every_product_once(inventory: httpx.AsyncClient) -> None:
    created = [(await create_product(inventory, sku=f"P-{i}"))["id"] for i in range(5)]

    seen: list[str] = []
    cursor: str | None = None
    pages = 0
    while True:
        params: dict[str, Any] = {"limit": 2}
        if cursor:
            params["cursor"] = cursor
        response = await inventory.get("/products", params=params)
        assert response.status_code == 200
        page = response.json()
        assert set(page) == {"items", "next_cursor"}
        assert len(page["items"]) <= 2
        assert all(set(item) == PRODUCT_KEYS for item in page["items"])
        seen += [item["id"] for item in page["items"]]
        pages += 1
        cursor = page["next_cursor"]
        if cursor is None:
            break

    assert pages == 3
    assert seen == created  # creation order, no gaps, no repeats

    whole = (await inventory.get("/products", params={"limit": 5})).json()
    assert [item["id"] for item in whole["items"]] == created
    assert whole["next_cursor"] is None


def _cursor(parts: list[str]) -> str:
    return base64.urlsafe_b64encode(json.dumps(parts).encode()).decode().rstrip("=")


@pytest.mark.parametrize("limit", ["0", "201", "-1", "ten"])
async def test_products_list_rejects_bad_limits(inventory: httpx.AsyncClient, limit: str) -> None:
    response = await inventory.get("/products", params={"limit": limit})
    assert response.status_code == 422


async def test_products_list_rejects_unreadable_cursors(inventory: httpx.AsyncClient) -> None:
    for cursor in (
        "garbage!!",
        "bm90IGpzb24",  # "not json"
        _cursor(["only-one"]),
        _cursor(["not-a-date", str(uuid.uuid4())]),
        _cursor(["2024-01-01T00:00:00+00:00", "not-a-uuid"]),
        _cursor(["2024-01-01T00:00:00", str(uuid.uuid4())]),  # no time zone
        "x" * 600,
    ):
        response = await inventory.get("/products", params={"cursor": cursor})
        assert response.status_code == 422, cursor
        if len(cursor) <= 512:
            assert response.json()["code"] == "invalid_cursor", cursor


ADMIN_ROUTES = [
    ("POST", "/products", VALID_PRODUCT),
    ("PUT", f"/products/{uuid.uuid4()}/stock", {"stock": 1}),
]
SERVICE_ROUTES = [
    (
        "POST",
        "/reservations",
        {"order_id": str(uuid.uuid4()), "lines": [{"product_id": str(uuid.uuid4()), "quantity": 1}]},
    ),
    ("GET", f"/reservations/{uuid.uuid4()}", None),
    ("POST", f"/reservations/{uuid.uuid4()}/release", None),
    ("POST", f"/reservations/{uuid.uuid4()}/commit", None),
]


async def test_permission_matrix(inventory: httpx.AsyncClient) -> None:
    customer = as_customer(uuid.uuid4())
    forged = {**as_admin(), "x-ordersaga-internal-token": "wrong"}
    for method, url, body in ADMIN_ROUTES + SERVICE_ROUTES:
        anonymous = await inventory.request(method, url, json=body)
        assert anonymous.status_code == 401, (method, url)
        assert anonymous.json()["code"] == "unauthenticated"
        assert (await inventory.request(method, url, json=body, headers=forged)).status_code == 401
        as_a_customer = await inventory.request(method, url, json=body, headers=customer)
        assert as_a_customer.status_code == 403, (method, url)
        assert as_a_customer.json()["code"] == "forbidden"
    for method, url, body in SERVICE_ROUTES:
        admin = await inventory.request(method, url, json=body, headers=as_admin())
        assert admin.status_code == 403, (method, url)

    assert (await inventory.get("/products")).status_code == 200
    assert (await inventory.get("/products", headers=customer)).status_code == 200
    assert (await inventory.get("/products")).json()["items"] == []
