"""The saga's command endpoint and the admin status route: transitions, idempotency, versions."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

import httpx

from services.orders.domain import TRANSITIONS, CancelReason, CommandType, OrderStatus
from tests.services.orders.conftest import (
    command,
    confirm_fields,
    event_types,
    get_order,
    order_body,
    order_in_status,
    outbox_types,
    place_ok,
)
from tests.support.identity import as_admin, as_customer, as_service


async def test_create_command_creates_once_and_then_returns_the_order(orders: httpx.AsyncClient) -> None:
    order_id = str(uuid.uuid4())
    user = uuid.uuid4()
    body = order_body(4)
    fields = {"user_id": str(user), "items": body["items"], "payment_method_id": body["payment_method_id"]}

    created = await command(orders, order_id, "create", "saga-create-1", **fields)
    assert created.status_code == 200, created.text
    order = created.json()
    assert (order["id"], order["user_id"], order["status"], order["version"]) == (
        order_id,
        str(user),
        "PENDING",
        1,
    )
    assert order["items"] == [{**body["items"][0], "unit_price_cents": None}]

    # The same command id, or another create of the same order, returns it unchanged.
    again = await command(orders, order_id, "create", "saga-create-1", **fields)
    other_id = await command(
        orders, order_id, "create", "saga-create-2", **{**fields, "user_id": str(uuid.uuid4())}
    )
    assert again.status_code == other_id.status_code == 200
    assert again.json() == order == other_id.json()
    assert await event_types(orders, order_id) == [(1, "order.created")]

    # An order placed through POST /orders is found by the saga's create as well.
    placed = await place_ok(orders, user, body)
    response = await command(orders, placed, "create", "saga-create-3", **fields)
    assert response.status_code == 200
    assert response.json()["id"] == placed
    assert response.json()["version"] == 1
    assert await event_types(orders, placed) == [(1, "order.created")]


async def test_the_happy_path_through_every_command(orders: httpx.AsyncClient) -> None:
    user = uuid.uuid4()
    order_id = await place_ok(orders, user, order_body(2, 3))

    response = await command(orders, order_id, "await_review", expected_version=1)
    assert response.status_code == 200, response.text
    assert (response.json()["status"], response.json()["version"]) == ("AWAITING_REVIEW", 2)

    order = response.json()
    fields = confirm_fields(order, unit_price_cents=999)
    response = await command(orders, order_id, "confirm", expected_version=2, **fields)
    assert response.status_code == 200, response.text
    confirmed = response.json()
    assert (confirmed["status"], confirmed["version"]) == ("CONFIRMED", 3)
    assert confirmed["total_cents"] == 5 * 999
    assert confirmed["currency"] == "EUR"
    assert confirmed["payment_id"] == fields["payment_id"]
    assert [line["unit_price_cents"] for line in confirmed["items"]] == [999, 999]
    assert [line["product_id"] for line in confirmed["items"]] == [
        line["product_id"] for line in order["items"]
    ]
    assert datetime.fromisoformat(confirmed["updated_at"]) > datetime.fromisoformat(confirmed["created_at"])

    response = await command(orders, order_id, "ship", expected_version=3)
    assert (response.status_code, response.json()["status"]) == (200, "SHIPPED")
    response = await command(orders, order_id, "deliver")
    assert (response.status_code, response.json()["status"], response.json()["version"]) == (
        200,
        "DELIVERED",
        5,
    )
    assert [t for _, t in await event_types(orders, order_id)] == [
        "order.created",
        "order.awaiting_review",
        "order.confirmed",
        "order.shipped",
        "order.delivered",
    ]
    assert await outbox_types(orders, order_id) == [t for _, t in await event_types(orders, order_id)]


async def test_cancel_records_the_reason_once(orders: httpx.AsyncClient) -> None:
    order_id = await place_ok(orders, uuid.uuid4())
    response = await command(orders, order_id, "cancel", "cancel-1", reason="payment_declined")
    assert response.status_code == 200, response.text
    assert (response.json()["status"], response.json()["cancel_reason"]) == ("CANCELLED", "payment_declined")

    repeat = await command(orders, order_id, "cancel", "cancel-1", reason="payment_declined")
    assert repeat.status_code == 200
    assert repeat.json() == response.json()

    another = await command(orders, order_id, "cancel", "cancel-2", reason="customer_cancelled")
    assert another.status_code == 409
    assert another.json()["code"] == "illegal_transition"
    assert (await get_order(orders, order_id))["cancel_reason"] == "payment_declined"
    assert await event_types(orders, order_id) == [(1, "order.created"), (2, "order.cancelled")]
    assert await outbox_types(orders, order_id) == ["order.created", "order.cancelled"]


async def test_cancel_from_review_and_every_reason_is_accepted(orders: httpx.AsyncClient) -> None:
    order_id = await order_in_status(orders, "AWAITING_REVIEW")
    response = await command(orders, order_id, "cancel", reason="review_timeout")
    assert (response.status_code, response.json()["status"]) == (200, "CANCELLED")
    reasons = [reason.value for reason in CancelReason]
    assert {"operator_cancelled", "saga_terminated"} <= set(reasons)
    for reason in reasons:
        fresh = await place_ok(orders, uuid.uuid4())
        response = await command(orders, fresh, "cancel", reason=reason)
        assert response.json()["cancel_reason"] == reason


async def _event_data(client: httpx.AsyncClient, order_id: str) -> list[dict[str, Any]]:
    response = await client.get(f"/orders/{order_id}/events", headers=as_admin(), params={"limit": 200})
    assert response.status_code == 200, response.text
    return [event["data"] for event in response.json()["items"]]


async def test_await_review_and_cancel_record_the_authorised_payment(orders: httpx.AsyncClient) -> None:
    order_id = await place_ok(orders, uuid.uuid4())
    payment = str(uuid.uuid4())
    review = await command(orders, order_id, "await_review", "review-1", payment_id=payment)
    assert review.status_code == 200, review.text
    assert (review.json()["status"], review.json()["payment_id"]) == ("AWAITING_REVIEW", payment)

    # A repeated command id is the first run's result, whatever payment id the repeat names.
    again = await command(orders, order_id, "await_review", "review-1", payment_id=str(uuid.uuid4()))
    assert (again.status_code, again.json()) == (200, review.json())

    # A later command without a payment id (or with null) keeps the one recorded.
    cancelled = await command(orders, order_id, "cancel", reason="review_rejected", payment_id=None)
    assert cancelled.status_code == 200, cancelled.text
    assert (
        cancelled.json()["status"],
        cancelled.json()["cancel_reason"],
        cancelled.json()["payment_id"],
    ) == (
        "CANCELLED",
        "review_rejected",
        payment,
    )
    assert (await get_order(orders, order_id))["payment_id"] == payment
    data = await _event_data(orders, order_id)
    assert data[1] == {"payment_id": payment}
    assert data[2] == {"reason": "review_rejected"}

    # Cancelled straight from PENDING, after an authorisation: the cancel names the payment.
    pending = await place_ok(orders, uuid.uuid4())
    voided = str(uuid.uuid4())
    response = await command(orders, pending, "cancel", reason="operator_cancelled", payment_id=voided)
    assert response.status_code == 200, response.text
    assert (response.json()["cancel_reason"], response.json()["payment_id"]) == ("operator_cancelled", voided)
    assert (await _event_data(orders, pending))[1] == {"reason": "operator_cancelled", "payment_id": voided}

    # Without any payment id, nothing is recorded.
    plain = await place_ok(orders, uuid.uuid4())
    response = await command(orders, plain, "await_review")
    assert (response.json()["payment_id"], (await _event_data(orders, plain))[1]) == (None, {})


async def test_confirm_after_an_authorised_review_keeps_the_payment(orders: httpx.AsyncClient) -> None:
    order_id = await place_ok(orders, uuid.uuid4())
    payment = str(uuid.uuid4())
    assert (await command(orders, order_id, "await_review", payment_id=payment)).status_code == 200
    fields = {**confirm_fields(await get_order(orders, order_id)), "payment_id": payment}
    confirmed = await command(orders, order_id, "confirm", **fields)
    assert confirmed.status_code == 200, confirmed.text
    assert (confirmed.json()["status"], confirmed.json()["payment_id"]) == ("CONFIRMED", payment)
    shipped = await command(orders, order_id, "ship")
    assert shipped.json()["payment_id"] == payment


async def test_every_illegal_transition_is_refused(orders: httpx.AsyncClient) -> None:
    for status in OrderStatus:
        order_id = await order_in_status(orders, status.value)
        before = await get_order(orders, order_id)
        for kind in TRANSITIONS:
            if status in TRANSITIONS[kind][0]:
                continue
            fields: dict[str, Any] = {}
            if kind is CommandType.CONFIRM:
                fields = confirm_fields(before)
            elif kind is CommandType.CANCEL:
                fields = {"reason": "customer_cancelled"}
            response = await command(orders, order_id, kind.value, **fields)
            assert response.status_code == 409, (status, kind, response.text)
            assert response.json()["code"] == "illegal_transition"
        assert await get_order(orders, order_id) == before


async def test_a_command_id_is_bound_to_its_command(orders: httpx.AsyncClient) -> None:
    order_id = await place_ok(orders, uuid.uuid4())
    assert (await command(orders, order_id, "await_review", "cmd-1")).status_code == 200

    reused = await command(orders, order_id, "cancel", "cmd-1", reason="review_rejected")
    assert reused.status_code == 422
    assert reused.json()["code"] == "command_id_reused"

    elsewhere = await place_ok(orders, uuid.uuid4())
    reused = await command(orders, elsewhere, "await_review", "cmd-1")
    assert reused.status_code == 422
    assert reused.json()["code"] == "command_id_reused"
    assert (await get_order(orders, elsewhere))["status"] == "PENDING"

    # A repeat returns the current order, even after later commands moved it on.
    assert (await command(orders, order_id, "cancel", reason="review_rejected")).status_code == 200
    repeat = await command(orders, order_id, "await_review", "cmd-1")
    assert (repeat.status_code, repeat.json()["status"], repeat.json()["version"]) == (200, "CANCELLED", 3)
    assert len(await event_types(orders, order_id)) == 3


async def test_a_stale_expected_version_is_a_conflict(orders: httpx.AsyncClient) -> None:
    order_id = await place_ok(orders, uuid.uuid4())
    assert (await command(orders, order_id, "await_review", expected_version=1)).status_code == 200
    for stale in (1, 3):
        response = await command(orders, order_id, "cancel", expected_version=stale, reason="internal_error")
        assert response.status_code == 409
        assert response.json()["code"] == "version_conflict"
    assert (await get_order(orders, order_id))["status"] == "AWAITING_REVIEW"


async def test_confirm_must_price_the_order_it_confirms(orders: httpx.AsyncClient) -> None:
    order_id = await place_ok(orders, uuid.uuid4(), order_body(1, 2))
    good = confirm_fields(await get_order(orders, order_id), unit_price_cents=100)
    mismatches = {
        "wrong total": {**good, "total_cents": good["total_cents"] + 1},
        "missing line": {**good, "items": good["items"][:1], "total_cents": 100},
        "other product": {
            **good,
            "items": [good["items"][0], {**good["items"][1], "product_id": str(uuid.uuid4())}],
        },
        "other quantity": {
            **good,
            "items": [good["items"][0], {**good["items"][1], "quantity": 3}],
            "total_cents": 400,
        },
    }
    for name, fields in mismatches.items():
        response = await command(orders, order_id, "confirm", **fields)
        assert response.status_code == 422, name
        assert response.json()["code"] == "confirmation_mismatch", name
    duplicated = {**good, "items": [good["items"][0], good["items"][0]], "total_cents": 200}
    response = await command(orders, order_id, "confirm", **duplicated)
    assert response.json()["code"] == "duplicate_product"
    assert (await get_order(orders, order_id))["version"] == 1


async def test_commands_refuse_bad_input(orders: httpx.AsyncClient) -> None:
    order_id = await place_ok(orders, uuid.uuid4())
    path = f"/internal/orders/{order_id}/commands"
    order = await get_order(orders, order_id)
    bad_bodies: dict[str, Any] = {
        "unknown type": {"command_id": "c", "type": "refund"},
        "missing type": {"command_id": "c"},
        "missing command id": {"type": "ship"},
        "empty command id": {"command_id": "", "type": "ship"},
        "oversized command id": {"command_id": "c" * 201, "type": "ship"},
        "cancel without reason": {"command_id": "c", "type": "cancel"},
        "cancel with unknown reason": {"command_id": "c", "type": "cancel", "reason": "bored"},
        "cancel with a bad payment id": {
            "command_id": "c",
            "type": "cancel",
            "reason": "payment_declined",
            "payment_id": "pay-1",
        },
        "await_review with a bad payment id": {"command_id": "c", "type": "await_review", "payment_id": 7},
        "ship with a payment id": {"command_id": "c", "type": "ship", "payment_id": str(uuid.uuid4())},
        "version as string": {"command_id": "c", "type": "await_review", "expected_version": "1"},
        "version zero": {"command_id": "c", "type": "await_review", "expected_version": 0},
        "extra field": {"command_id": "c", "type": "ship", "status": "SHIPPED"},
        "confirm lowercase currency": {
            "command_id": "c",
            "type": "confirm",
            **confirm_fields(order),
            "currency": "eur",
        },
        "confirm negative price": {
            "command_id": "c",
            "type": "confirm",
            **confirm_fields(order, unit_price_cents=-1),
        },
        "confirm without payment": {
            "command_id": "c",
            "type": "confirm",
            **{k: v for k, v in confirm_fields(order).items() if k != "payment_id"},
        },
        "create without items": {
            "command_id": "c",
            "type": "create",
            "user_id": str(uuid.uuid4()),
            "items": [],
            "payment_method_id": str(uuid.uuid4()),
        },
    }
    for name, body in bad_bodies.items():
        response = await orders.post(path, json=body, headers=as_service())
        assert response.status_code == 422, (name, response.text)
    response = await orders.post(
        path, content=b"{", headers={**as_service(), "content-type": "application/json"}
    )
    assert response.status_code == 400
    response = await command(orders, str(uuid.uuid4()), "ship")
    assert response.status_code == 404
    assert response.json()["code"] == "order_not_found"
    assert (await get_order(orders, order_id))["version"] == 1


async def test_commands_are_for_the_saga_only(orders: httpx.AsyncClient) -> None:
    order_id = await place_ok(orders, uuid.uuid4())
    body = {"command_id": "c", "type": "await_review"}
    path = f"/internal/orders/{order_id}/commands"
    for headers, status in (({}, 401), (as_customer(uuid.uuid4()), 403), (as_admin(), 403)):
        response = await orders.post(path, json=body, headers=headers)
        assert response.status_code == status
    assert (await get_order(orders, order_id))["status"] == "PENDING"


async def test_admin_ships_then_delivers_one_step_at_a_time(orders: httpx.AsyncClient) -> None:
    order_id = await order_in_status(orders, "CONFIRMED")
    path = f"/orders/{order_id}/status"

    skipped = await orders.put(path, json={"status": "DELIVERED"}, headers=as_admin())
    assert (skipped.status_code, skipped.json()["code"]) == (409, "illegal_transition")

    shipped = await orders.put(path, json={"status": "SHIPPED"}, headers=as_admin())
    assert shipped.status_code == 200, shipped.text
    assert (shipped.json()["status"], shipped.json()["version"]) == ("SHIPPED", 3)
    assert (await orders.put(path, json={"status": "SHIPPED"}, headers=as_admin())).status_code == 409

    delivered = await orders.put(path, json={"status": "DELIVERED"}, headers=as_admin())
    assert (delivered.status_code, delivered.json()["status"]) == (200, "DELIVERED")
    for status in ("DELIVERED", "CONFIRMED", "CANCELLED", "PENDING", "AWAITING_REVIEW", "SHIPPED"):
        response = await orders.put(path, json={"status": status}, headers=as_admin())
        assert (response.status_code, response.json()["code"]) == (409, "illegal_transition"), status
    assert [t for _, t in await event_types(orders, order_id)][-2:] == ["order.shipped", "order.delivered"]


async def test_admin_status_refuses_other_transitions_and_bad_input(orders: httpx.AsyncClient) -> None:
    owner = uuid.uuid4()
    pending = await place_ok(orders, owner)
    path = f"/orders/{pending}/status"
    for status in ("SHIPPED", "DELIVERED", "CONFIRMED", "CANCELLED"):
        response = await orders.put(path, json={"status": status}, headers=as_admin())
        assert (response.status_code, response.json()["code"]) == (409, "illegal_transition"), status

    for body in (
        {"status": "LOST"},
        {"status": "shipped"},
        {},
        {"status": "SHIPPED", "note": "x"},
        {"status": 1},
    ):
        assert (await orders.put(path, json=body, headers=as_admin())).status_code == 422, body
    response = await orders.put(
        path, content=b"{]", headers={**as_admin(), "content-type": "application/json"}
    )
    assert response.status_code == 400

    assert (await orders.put(path, json={"status": "SHIPPED"}, headers=as_customer(owner))).status_code == 403
    assert (await orders.put(path, json={"status": "SHIPPED"})).status_code == 401
    for status in ("SHIPPED", "CONFIRMED"):
        response = await orders.put(
            f"/orders/{uuid.uuid4()}/status", json={"status": status}, headers=as_admin()
        )
        assert (response.status_code, response.json()["code"]) == (404, "order_not_found")
    assert (await get_order(orders, pending))["version"] == 1
