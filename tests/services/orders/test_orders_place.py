"""POST /orders: shape validation, idempotency keys, and the saga start through the port."""

from __future__ import annotations

import uuid
from datetime import timedelta
from typing import Any

import httpx

from services.orders.models import Order
from services.orders.saga import OrderStart, OrderStartLine, mark_saga_started, pending_saga_starts
from tests.services.orders.conftest import RecordingSaga, event_types, order_body, outbox_types, place
from tests.support.identity import as_admin, as_customer, as_service


async def _user_order_ids(client: httpx.AsyncClient, user_id: uuid.UUID) -> list[str]:
    response = await client.get(f"/users/{user_id}/orders", headers=as_customer(user_id))
    assert response.status_code == 200, response.text
    return [order["id"] for order in response.json()["items"]]


async def _saga_started_at(client: httpx.AsyncClient, order_id: str) -> Any:
    async with client.app.state.db.session() as session:  # type: ignore[attr-defined]
        order = await session.get(Order, uuid.UUID(order_id))
        assert order is not None
        return order.saga_started_at


async def test_place_order_records_a_pending_order(orders: httpx.AsyncClient) -> None:
    user = uuid.uuid4()
    body = order_body(2, 1)
    response = await place(orders, user, body)

    assert response.status_code == 202, response.text
    accepted = response.json()
    assert accepted["status"] == "PENDING"
    assert accepted["workflow_id"] == f"order-{accepted['id']}"
    assert response.headers["location"] == f"/orders/{accepted['id']}"

    order = (await orders.get(f"/orders/{accepted['id']}", headers=as_customer(user))).json()
    assert order["user_id"] == str(user)
    assert order["status"] == "PENDING"
    assert order["version"] == 1
    assert order["items"] == [{**line, "unit_price_cents": None} for line in body["items"]]
    assert (order["total_cents"], order["currency"], order["payment_id"], order["cancel_reason"]) == (
        None,
        None,
        None,
        None,
    )
    assert order["created_at"].endswith("Z")
    assert order["created_at"] == order["updated_at"]
    assert await event_types(orders, accepted["id"]) == [(1, "order.created")]
    assert await outbox_types(orders, accepted["id"]) == ["order.created"]


async def test_place_order_refuses_bad_shapes_without_recording_anything(orders: httpx.AsyncClient) -> None:
    user = uuid.uuid4()
    product = str(uuid.uuid4())
    pm = str(uuid.uuid4())

    def lines(n: int) -> list[dict[str, Any]]:
        return [{"product_id": str(uuid.uuid4()), "quantity": 1} for _ in range(n)]

    bad_bodies: dict[str, Any] = {
        "no lines": {"items": [], "payment_method_id": pm},
        "101 lines": {"items": lines(101), "payment_method_id": pm},
        "quantity 0": {"items": [{"product_id": product, "quantity": 0}], "payment_method_id": pm},
        "quantity 1001": {"items": [{"product_id": product, "quantity": 1001}], "payment_method_id": pm},
        "quantity as string": {"items": [{"product_id": product, "quantity": "2"}], "payment_method_id": pm},
        "quantity as float": {"items": [{"product_id": product, "quantity": 2.5}], "payment_method_id": pm},
        "missing payment method": {"items": lines(1)},
        "missing items": {"payment_method_id": pm},
        "product id not a uuid": {"items": [{"product_id": "abc", "quantity": 1}], "payment_method_id": pm},
        "payment method not a uuid": {"items": lines(1), "payment_method_id": "4242424242424242"},
        "extra field": {"items": lines(1), "payment_method_id": pm, "total_cents": 1},
        "extra line field": {
            "items": [{"product_id": product, "quantity": 1, "unit_price_cents": 1}],
            "payment_method_id": pm,
        },
        "items not a list": {"items": {"product_id": product}, "payment_method_id": pm},
        "body not an object": [1, 2],
    }
    for name, body in bad_bodies.items():
        response = await orders.post("/orders", json=body, headers=as_customer(user))
        assert response.status_code == 422, (name, response.text)
        assert response.json()["code"] == "validation_error", name
        assert "4242424242424242" not in response.text

    duplicate = {
        "items": [{"product_id": product, "quantity": 1}, {"product_id": product, "quantity": 2}],
        "payment_method_id": pm,
    }
    response = await orders.post("/orders", json=duplicate, headers=as_customer(user))
    assert response.status_code == 422
    assert response.json()["code"] == "duplicate_product"

    response = await orders.post(
        "/orders",
        content=b'{"items": [',
        headers={**as_customer(user), "content-type": "application/json"},
    )
    assert response.status_code == 400
    assert response.json()["code"] == "malformed_json"

    for key in ("", "k" * 201):
        response = await place(orders, user, order_body(), key=key)
        assert response.status_code == 422, (len(key), response.text)

    assert await _user_order_ids(orders, user) == []


async def test_place_order_accepts_the_bounds(orders: httpx.AsyncClient) -> None:
    user = uuid.uuid4()
    assert (await place(orders, user, order_body(1000))).status_code == 202
    assert (await place(orders, user, order_body(*([1] * 100)))).status_code == 202
    response = await place(orders, user, order_body(), key="k" * 200)
    assert response.status_code == 202
    assert len(await _user_order_ids(orders, user)) == 3


async def test_place_order_needs_a_customer(orders: httpx.AsyncClient) -> None:
    for headers, status in (({}, 401), (as_admin(), 403), (as_service(), 403)):
        response = await orders.post("/orders", json=order_body(), headers=headers)
        assert response.status_code == status, response.text
        assert response.headers["content-type"] == "application/problem+json"
    forged = {**as_customer(uuid.uuid4()), "x-ordersaga-internal-token": "wrong"}
    response = await orders.post("/orders", json=order_body(), headers=forged)
    assert response.status_code == 401
    assert response.json()["code"] == "unauthenticated"


async def test_idempotency_key_returns_the_same_order(orders: httpx.AsyncClient) -> None:
    user = uuid.uuid4()
    body = order_body(1, 2)
    first = await place(orders, user, body, key="checkout-1")
    again = await place(orders, user, body, key="checkout-1")
    assert first.status_code == again.status_code == 202
    assert again.json() == first.json()
    assert again.headers["location"] == first.headers["location"]

    reordered = {**body, "items": list(reversed(body["items"]))}
    assert (await place(orders, user, reordered, key="checkout-1")).json()["id"] == first.json()["id"]

    other = await place(orders, user, order_body(1, 2), key="checkout-1")
    assert other.status_code == 422
    assert other.json()["code"] == "idempotency_key_reused"

    assert await _user_order_ids(orders, user) == [first.json()["id"]]
    assert await event_types(orders, first.json()["id"]) == [(1, "order.created")]


async def test_idempotency_keys_belong_to_one_user(orders: httpx.AsyncClient) -> None:
    alice, bob = uuid.uuid4(), uuid.uuid4()
    body = order_body()
    for_alice = await place(orders, alice, body, key="same-key")
    for_bob = await place(orders, bob, body, key="same-key")
    assert for_alice.status_code == for_bob.status_code == 202
    assert for_alice.json()["id"] != for_bob.json()["id"]
    assert await _user_order_ids(orders, alice) == [for_alice.json()["id"]]
    assert await _user_order_ids(orders, bob) == [for_bob.json()["id"]]


async def test_without_a_key_every_request_is_a_new_order(orders: httpx.AsyncClient) -> None:
    user = uuid.uuid4()
    body = order_body()
    ids = {(await place(orders, user, body)).json()["id"] for _ in range(2)}
    assert len(ids) == 2


async def test_placing_an_order_starts_its_saga(orders: httpx.AsyncClient) -> None:
    saga = RecordingSaga()
    orders.app.state.saga = saga  # type: ignore[attr-defined]
    user = uuid.uuid4()
    body = order_body(3)
    response = await place(orders, user, body, key="k1")
    order_id = response.json()["id"]

    assert saga.started == [
        OrderStart(
            order_id=uuid.UUID(order_id),
            user_id=user,
            items=(OrderStartLine(uuid.UUID(body["items"][0]["product_id"]), 3),),
            payment_method_id=uuid.UUID(body["payment_method_id"]),
        )
    ]
    assert await _saga_started_at(orders, order_id) is not None

    # A repeated request for an order whose saga already runs does not start it again.
    assert (await place(orders, user, body, key="k1")).status_code == 202
    assert len(saga.started) == 1
    async with orders.app.state.db.session() as session:  # type: ignore[attr-defined]
        assert await pending_saga_starts(session, timedelta(0), 10) == []


async def test_a_failing_saga_start_still_accepts_the_order(orders: httpx.AsyncClient) -> None:
    saga = RecordingSaga(fail=True)
    orders.app.state.saga = saga  # type: ignore[attr-defined]
    user = uuid.uuid4()
    body = order_body(1)
    response = await place(orders, user, body, key="k1")

    assert response.status_code == 202, response.text
    order_id = uuid.UUID(response.json()["id"])
    assert len(saga.started) == 1
    assert await _saga_started_at(orders, str(order_id)) is None

    # The client's retry tries the start again, since the first one never succeeded.
    assert (await place(orders, user, body, key="k1")).status_code == 202
    assert len(saga.started) == 2

    db = orders.app.state.db  # type: ignore[attr-defined]
    async with db.session() as session:
        pending = await pending_saga_starts(session, timedelta(0), 10)
        assert [start.order_id for start in pending] == [order_id]
        assert pending[0].user_id == user
        assert await pending_saga_starts(session, timedelta(hours=1), 10) == []
        assert await mark_saga_started(session, order_id) is True
        assert await mark_saga_started(session, order_id) is False
        assert await pending_saga_starts(session, timedelta(0), 10) == []
    assert await _saga_started_at(orders, str(order_id)) is not None


async def test_pending_saga_starts_are_oldest_first_and_limited(orders: httpx.AsyncClient) -> None:
    orders.app.state.saga = RecordingSaga(fail=True)  # type: ignore[attr-defined]
    placed = [(await place(orders, uuid.uuid4())).json()["id"] for _ in range(3)]
    async with orders.app.state.db.session() as session:  # type: ignore[attr-defined]
        first_two = await pending_saga_starts(session, timedelta(0), 2)
    assert [str(start.order_id) for start in first_two] == placed[:2]


async def test_the_default_port_starts_nothing_and_accepts_orders(orders: httpx.AsyncClient) -> None:
    response = await place(orders, uuid.uuid4())
    assert response.status_code == 202
