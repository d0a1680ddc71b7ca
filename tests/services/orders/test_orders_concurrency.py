"""Concurrent writers: the database, not a prior read, decides who wins (both backends)."""

from __future__ import annotations

import asyncio
import uuid
from collections import Counter

import httpx
from sqlalchemy import insert

from services.kit.models import utcnow
from services.orders.models import OrderEvent
from tests.services.orders.conftest import command, confirm_fields, event_types, get_order, order_body, place
from tests.support.identity import as_customer


async def test_two_commands_at_one_expected_version_one_wins(orders: httpx.AsyncClient) -> None:
    for _ in range(3):
        order_id = str((await place(orders, uuid.uuid4())).json()["id"])
        fields = confirm_fields(await get_order(orders, order_id))
        confirm, cancel = await asyncio.gather(
            command(orders, order_id, "confirm", expected_version=1, **fields),
            command(orders, order_id, "cancel", expected_version=1, reason="customer_cancelled"),
        )
        statuses = sorted([confirm.status_code, cancel.status_code])
        assert statuses == [200, 409], (confirm.text, cancel.text)
        loser = confirm if confirm.status_code == 409 else cancel
        assert loser.json()["code"] == "version_conflict"

        events = await event_types(orders, order_id)
        assert [version for version, _ in events] == [1, 2]
        order = await get_order(orders, order_id)
        assert order["version"] == 2
        winner_type = "order.confirmed" if confirm.status_code == 200 else "order.cancelled"
        assert events[1][1] == winner_type


async def test_racing_commands_without_expected_version_are_decided_on_fresh_state(
    orders: httpx.AsyncClient,
) -> None:
    order_id = str((await place(orders, uuid.uuid4())).json()["id"])
    fields = confirm_fields(await get_order(orders, order_id))
    confirm, cancel = await asyncio.gather(
        command(orders, order_id, "confirm", **fields),
        command(orders, order_id, "cancel", reason="customer_cancelled"),
    )
    # Whichever came second finds a final order: an illegal transition, never a lost update.
    assert sorted([confirm.status_code, cancel.status_code]) == [200, 409]
    loser = confirm if confirm.status_code == 409 else cancel
    assert loser.json()["code"] == "illegal_transition"
    assert [version for version, _ in await event_types(orders, order_id)] == [1, 2]


async def test_one_command_retried_concurrently_applies_once(orders: httpx.AsyncClient) -> None:
    order_id = str((await place(orders, uuid.uuid4())).json()["id"])
    responses = await asyncio.gather(
        *(command(orders, order_id, "cancel", "saga-cancel", reason="out_of_stock") for _ in range(5))
    )
    assert [r.status_code for r in responses] == [200] * 5, [r.text for r in responses]
    assert {r.json()["version"] for r in responses} == {2}
    assert await event_types(orders, order_id) == [(1, "order.created"), (2, "order.cancelled")]


async def test_one_idempotency_key_under_concurrency_makes_one_order(orders: httpx.AsyncClient) -> None:
    user = uuid.uuid4()
    body = order_body(1, 1)
    responses = await asyncio.gather(*(place(orders, user, body, key="burst") for _ in range(20)))
    assert Counter(r.status_code for r in responses) == {202: 20}, [r.text for r in responses]
    assert len({r.json()["id"] for r in responses}) == 1

    listed = await orders.get(f"/users/{user}/orders", headers=as_customer(user))
    assert [order["id"] for order in listed.json()["items"]] == [responses[0].json()["id"]]


async def test_concurrent_saga_creates_of_one_order_make_one_order(orders: httpx.AsyncClient) -> None:
    order_id = str(uuid.uuid4())
    body = order_body(2)
    fields = {
        "user_id": str(uuid.uuid4()),
        "items": body["items"],
        "payment_method_id": body["payment_method_id"],
    }
    responses = await asyncio.gather(
        *(command(orders, order_id, "create", f"create-{i}", **fields) for i in range(5))
    )
    assert [r.status_code for r in responses] == [200] * 5, [r.text for r in responses]
    assert await event_types(orders, order_id) == [(1, "order.created")]


async def test_a_writer_that_read_a_stale_row_meets_the_version_guard(orders: httpx.AsyncClient) -> None:
    """A command decides on the projection's row, not on the whole log: an event the row does not
    show yet (another writer's, mid-flight) still stops it at the unique (order_id, version)."""
    order_id = str((await place(orders, uuid.uuid4())).json()["id"])
    async with orders.app.state.db.session() as session, session.begin():  # type: ignore[attr-defined]
        await session.exec(
            insert(OrderEvent).values(
                id=uuid.uuid4(),
                order_id=uuid.UUID(order_id),
                version=2,
                type="order.awaiting_review",
                data={},
                occurred_at=utcnow(),
            )
        )
    response = await command(orders, order_id, "cancel", reason="customer_cancelled")
    assert response.status_code == 409, response.text
    assert response.json()["code"] == "version_conflict"
    assert await event_types(orders, order_id) == [(1, "order.created"), (2, "order.awaiting_review")]
    assert (await get_order(orders, order_id))["version"] == 1
