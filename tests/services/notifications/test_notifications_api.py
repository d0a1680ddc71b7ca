"""The HTTP contract: queueing (validation, idempotency), reading one, listing with ownership."""

from __future__ import annotations

import asyncio
import json
import uuid
from typing import Any

from tests.services.notifications.helpers import MANUAL, body, queue
from tests.support.identity import INTERNAL_TOKEN, as_admin, as_customer, as_service

SUMMARY_KEYS = {"id", "channel", "template", "status", "order_id", "created_at", "sent_at"}
FULL_KEYS = SUMMARY_KEYS | {"user_id", "to", "attempts", "last_error"}


def _without(key: str) -> dict[str, Any]:
    payload = body()
    del payload[key]
    return payload


INVALID_BODIES: list[tuple[str, dict[str, Any]]] = [
    ("unknown channel", body(channel="fax")),
    ("phone number on the email channel", body(channel="email", to="+14155550100")),
    ("email on the sms channel", body(channel="sms", to="ada@example.com")),
    ("not an email", body(channel="email", to="ada-at-example.com")),
    ("sms without +", body(channel="sms", to="14155550100")),
    ("sms starting with 0", body(channel="sms", to="+0155550100")),
    ("sms over 15 digits", body(channel="sms", to="+1234567890123456")),
    ("oversized to", body(to="a" * 400 + "@example.com")),
    ("unknown template", body(template="birthday")),
    ("too many data keys", body(data={f"k{i}": i for i in range(51)})),
    ("oversized data", body(data={"note": "x" * 20_000})),
    ("oversized data key", body(data={"k" * 65: 1})),
    ("data not an object", body(data=["a", "b"])),
    ("data a string", body(data="x")),
    ("empty idempotency key", body(idempotency_key="")),
    ("oversized idempotency key", body(idempotency_key="k" * 201)),
    ("idempotency key not a string", body(idempotency_key=123)),
    ("user_id not a uuid", body(user_id="not-a-uuid")),
    ("order_id not a uuid", body(order_id="order-1")),
    ("unknown field", body(priority="high")),
    *[
        (f"missing {key}", _without(key))
        for key in ("idempotency_key", "user_id", "channel", "to", "template", "data")
    ],
]


async def test_queue_returns_202_with_the_queued_notification(service_client) -> None:
    order_id = str(uuid.uuid4())
    async with service_client("notifications", **MANUAL) as client:
        payload = body(order_id=order_id, to="Ada.Lovelace@Example.COM")
        response = await client.post("/notifications", json=payload, headers=as_service())
        assert response.status_code == 202, response.text
        created = response.json()
        assert set(created) == FULL_KEYS
        assert created["status"] == "queued"
        assert created["attempts"] == 0
        assert created["sent_at"] is None
        assert created["last_error"] is None
        assert created["order_id"] == order_id
        assert created["user_id"] == payload["user_id"]
        assert created["to"] == "Ada.Lovelace@example.com"  # the domain is normalised
        assert created["created_at"].endswith("Z")

        fetched = await client.get(f"/notifications/{created['id']}", headers=as_admin())
        assert fetched.status_code == 200
        assert fetched.json() == created


async def test_sms_with_e164_number_is_accepted(service_client) -> None:
    async with service_client("notifications", **MANUAL) as client:
        created = await queue(client, channel="sms", to="+447911123456", template="welcome", data={})
        assert created["channel"] == "sms"
        assert created["to"] == "+447911123456"


async def test_invalid_bodies_are_422_and_store_nothing(service_client) -> None:
    user_id = str(uuid.uuid4())
    async with service_client("notifications", **MANUAL) as client:
        for reason, payload in INVALID_BODIES:
            if "user_id" in payload and reason != "user_id not a uuid":
                payload = {**payload, "user_id": user_id}
            response = await client.post("/notifications", json=payload, headers=as_service())
            assert response.status_code == 422, f"{reason}: {response.status_code} {response.text}"
            problem = response.json()
            assert response.headers["content-type"].startswith("application/problem+json")
            assert problem["code"] == "validation_error", reason

        listed = await client.get(f"/users/{user_id}/notifications", headers=as_admin())
        assert listed.json()["items"] == []
        assert await client.app.state.sender.send_due_once() == 0


async def test_malformed_json_is_400_and_oversized_body_is_413(service_client) -> None:
    async with service_client("notifications", **MANUAL) as client:
        headers = {**as_service(), "content-type": "application/json"}
        response = await client.post("/notifications", content=b'{"idempotency_key": ', headers=headers)
        assert response.status_code == 400
        assert response.json()["code"] == "malformed_json"

        huge = json.dumps(body(data={"blob": "x" * (1024 * 1024)})).encode()
        response = await client.post("/notifications", content=huge, headers=headers)
        assert response.status_code == 413
        assert response.json()["code"] == "payload_too_large"


async def test_only_the_service_role_may_queue(service_client) -> None:
    async with service_client("notifications", **MANUAL) as client:
        payload = body()
        customer = await client.post("/notifications", json=payload, headers=as_customer(payload["user_id"]))
        assert customer.status_code == 403
        assert customer.json()["code"] == "forbidden"
        admin = await client.post("/notifications", json=payload, headers=as_admin())
        assert admin.status_code == 403
        anonymous = await client.post("/notifications", json=payload)
        assert anonymous.status_code == 401
        assert anonymous.json()["code"] == "unauthenticated"
        forged = await client.post(
            "/notifications", json=payload, headers={**as_service(), "x-ordersaga-internal-token": "wrong"}
        )
        assert forged.status_code == 401
        assert INTERNAL_TOKEN != "wrong"
        assert (await client.get(f"/users/{payload['user_id']}/notifications", headers=as_admin())).json()[
            "items"
        ] == []


async def test_repeated_key_returns_the_stored_notification_with_200(service_client) -> None:
    async with service_client("notifications", **MANUAL) as client:
        payload = body()
        first = await client.post("/notifications", json=payload, headers=as_service())
        again = await client.post("/notifications", json=payload, headers=as_service())
        assert first.status_code == 202
        assert again.status_code == 200
        assert again.json() == first.json()

        listed = await client.get(f"/users/{payload['user_id']}/notifications", headers=as_admin())
        assert [item["id"] for item in listed.json()["items"]] == [first.json()["id"]]


async def test_reused_key_with_another_body_is_422(service_client) -> None:
    async with service_client("notifications", **MANUAL) as client:
        payload = body()
        assert (await client.post("/notifications", json=payload, headers=as_service())).status_code == 202
        other = {**payload, "template": "order_cancelled", "data": {"reason": "out_of_stock"}}
        response = await client.post("/notifications", json=other, headers=as_service())
        assert response.status_code == 422
        assert response.json()["code"] == "idempotency_key_reused"
        stored = await client.get(f"/users/{payload['user_id']}/notifications", headers=as_admin())
        assert [item["template"] for item in stored.json()["items"]] == ["order_confirmed"]


async def test_concurrent_requests_with_one_key_create_one_notification(service_client) -> None:
    async with service_client("notifications", **MANUAL) as client:
        payload = body()
        responses = await asyncio.gather(
            *(client.post("/notifications", json=payload, headers=as_service()) for _ in range(6))
        )
        statuses = sorted(response.status_code for response in responses)
        assert statuses == [200, 200, 200, 200, 200, 202], [r.text for r in responses]
        assert len({response.json()["id"] for response in responses}) == 1


async def test_read_one_needs_admin_or_service_and_unknown_is_404(service_client) -> None:
    async with service_client("notifications", **MANUAL) as client:
        created = await queue(client)
        path = f"/notifications/{created['id']}"
        assert (await client.get(path, headers=as_service())).status_code == 200
        assert (await client.get(path, headers=as_admin())).status_code == 200
        owner = await client.get(path, headers=as_customer(created["user_id"]))
        assert owner.status_code == 403
        assert (await client.get(path)).status_code == 401

        unknown = await client.get(f"/notifications/{uuid.uuid4()}", headers=as_admin())
        assert unknown.status_code == 404
        assert unknown.json()["code"] == "notification_not_found"
        assert (await client.get("/notifications/not-a-uuid", headers=as_admin())).status_code == 422


async def test_list_ownership_matrix_and_no_recipient(service_client) -> None:
    async with service_client("notifications", **MANUAL) as client:
        created = await queue(client)
        user_id = created["user_id"]
        path = f"/users/{user_id}/notifications"

        for headers in (as_customer(user_id), as_admin(), as_service()):
            response = await client.get(path, headers=headers)
            assert response.status_code == 200
            items = response.json()["items"]
            assert [item["id"] for item in items] == [created["id"]]
            assert set(items[0]) == SUMMARY_KEYS  # never `to`, `attempts` or `last_error`
            assert "ada@example.com" not in response.text

        stranger = await client.get(path, headers=as_customer(uuid.uuid4()))
        assert stranger.status_code == 404
        assert stranger.json()["code"] == "user_not_found"
        assert (await client.get(path)).status_code == 401
        assert (await client.get("/users/nope/notifications", headers=as_admin())).status_code == 422


async def test_list_paginates_newest_first_per_user(service_client) -> None:
    user_id = str(uuid.uuid4())
    async with service_client("notifications", **MANUAL) as client:
        mine = [(await queue(client, user_id=user_id))["id"] for _ in range(5)]
        await queue(client)  # someone else's
        path = f"/users/{user_id}/notifications"

        seen: list[str] = []
        cursor: str | None = None
        pages = 0
        while True:
            params: dict[str, Any] = {"limit": 2}
            if cursor:
                params["cursor"] = cursor
            page = (await client.get(path, params=params, headers=as_customer(user_id))).json()
            pages += 1
            seen.extend(item["id"] for item in page["items"])
            cursor = page["next_cursor"]
            if cursor is None:
                break
        assert pages == 3
        assert seen == list(reversed(mine))

        everything = (await client.get(path, headers=as_customer(user_id))).json()
        assert everything["next_cursor"] is None
        assert [item["id"] for item in everything["items"]] == list(reversed(mine))

        for params in (
            {"limit": 0},
            {"limit": 201},
            {"limit": "ten"},
            {"cursor": "%%%"},
            {"cursor": "WyJ4IiwieSJd"},
        ):
            response = await client.get(path, params=params, headers=as_customer(user_id))
            assert response.status_code == 422, params
