"""GET/PUT/DELETE /users/{id}: who may see and change what, optimistic concurrency, soft delete."""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

import httpx

from services.kit.identity import identity_headers
from services.users.tokens import verify_token
from tests.services.users.conftest import (
    PASSWORD,
    UsersClientFactory,
    login,
    outbox_events,
    register,
    stored_users,
)
from tests.support.identity import as_admin, as_customer, as_service


async def _put(
    client: httpx.AsyncClient, user: dict[str, Any], body: Any, headers: dict[str, str]
) -> httpx.Response:
    return await client.put(f"/users/{user['id']}", json=body, headers=headers)


async def test_get_user_permissions(users_client: UsersClientFactory) -> None:
    async with users_client() as client:
        alice = await register(client)
        bob = await register(client)
        path = f"/users/{alice['id']}"
        assert (await client.get(path, headers=as_customer(alice["id"]))).json() == alice
        assert (await client.get(path, headers=as_admin())).json() == alice
        assert (await client.get(path, headers=as_service())).status_code == 200
        other = await client.get(path, headers=as_customer(bob["id"]))
        assert other.status_code == 404
        assert other.json()["code"] == "user_not_found"
        anonymous = await client.get(path)
        assert anonymous.status_code == 401
        assert anonymous.json()["code"] == "unauthenticated"
        # Identity headers without the internal credential are not trusted.
        forged = identity_headers("not-the-token", "admin", uuid.uuid4())
        assert (await client.get(path, headers=forged)).status_code == 401
        unknown = await client.get(f"/users/{uuid.uuid4()}", headers=as_admin())
        assert unknown.status_code == 404
        assert unknown.json()["code"] == "user_not_found"
        assert (await client.get("/users/not-a-uuid", headers=as_admin())).status_code == 422


async def test_self_partial_update(users_client: UsersClientFactory) -> None:
    async with users_client() as client:
        user = await register(
            client, profile={"first_name": "Old", "last_name": "Name", "phone": "+14155550100"}
        )
        response = await _put(
            client,
            user,
            {"version": 1, "profile": {"first_name": "New", "phone": None}, "username": "renamed_user"},
            as_customer(user["id"]),
        )
        assert response.status_code == 200, response.text
        updated = response.json()
        assert updated["version"] == 2
        assert updated["username"] == "renamed_user"
        assert updated["profile"]["first_name"] == "New"
        assert updated["profile"]["last_name"] == "Name"  # left out: unchanged
        assert updated["profile"]["phone"] is None  # null: cleared
        assert updated["updated_at"] > user["updated_at"]
        assert updated["created_at"] == user["created_at"]
        assert (await client.get(f"/users/{user['id']}", headers=as_customer(user["id"]))).json() == updated
        events = [event for event in await outbox_events(client) if event.type == "user.updated"]
        assert len(events) == 1
        assert events[0].data == {
            "user_id": user["id"],
            "changed": {"first_name": "New", "phone": None, "username": "renamed_user"},
            "changed_fields": ["first_name", "phone", "username"],
        }


async def test_update_permissions(users_client: UsersClientFactory) -> None:
    async with users_client() as client:
        alice = await register(client)
        bob = await register(client)
        body = {"version": 1, "profile": {"bio": "hello"}}
        other = await _put(client, alice, body, as_customer(bob["id"]))
        assert other.status_code == 404
        assert other.json()["code"] == "user_not_found"
        assert (await _put(client, alice, body, {})).status_code == 401
        by_admin = await _put(client, alice, body, as_admin())
        assert by_admin.status_code == 200
        assert by_admin.json()["profile"]["bio"] == "hello"
        unknown = await client.put(f"/users/{uuid.uuid4()}", json=body, headers=as_admin())
        assert unknown.status_code == 404


async def test_only_an_admin_changes_roles(users_client: UsersClientFactory) -> None:
    async with users_client() as client:
        user = await register(client)
        for role in ("admin", "customer"):
            refused = await _put(client, user, {"version": 1, "role": role}, as_customer(user["id"]))
            assert refused.status_code == 403
            assert refused.json()["code"] == "forbidden"
        promoted = await _put(client, user, {"version": 1, "role": "admin"}, as_admin())
        assert promoted.status_code == 200
        assert promoted.json()["role"] == "admin"
        token = (await login(client, user["username"])).json()["access_token"]
        jwks = (await client.get("/.well-known/jwks.json")).json()
        assert verify_token(token, jwks).role == "admin"
        bad_role = await _put(client, user, {"version": 2, "role": "service"}, as_admin())
        assert bad_role.status_code == 422


async def test_stale_version_is_409_and_changes_nothing(users_client: UsersClientFactory) -> None:
    async with users_client() as client:
        user = await register(client)
        me = as_customer(user["id"])
        assert (await _put(client, user, {"version": 1, "profile": {"bio": "first"}}, me)).status_code == 200
        stale = await _put(client, user, {"version": 1, "profile": {"bio": "second"}}, me)
        assert stale.status_code == 409
        assert stale.json()["code"] == "version_conflict"
        future = await _put(client, user, {"version": 7, "profile": {"bio": "third"}}, me)
        assert future.status_code == 409
        current = (await client.get(f"/users/{user['id']}", headers=me)).json()
        assert current["profile"]["bio"] == "first"
        assert current["version"] == 2


async def test_an_update_that_changes_nothing_keeps_the_version(users_client: UsersClientFactory) -> None:
    async with users_client() as client:
        user = await register(client, profile={"first_name": "Same"})
        response = await _put(
            client,
            user,
            {
                "version": 1,
                "username": user["username"],
                "email": user["email"].upper(),
                "profile": {"first_name": "Same"},
            },
            as_customer(user["id"]),
        )
        assert response.status_code == 200
        assert response.json() == user
        assert [event.type for event in await outbox_events(client)] == ["user.created"]


async def test_email_and_username_changes_obey_uniqueness(users_client: UsersClientFactory) -> None:
    async with users_client() as client:
        alice = await register(client)
        bob = await register(client)
        me = as_customer(alice["id"])
        proof = {"current_password": PASSWORD}
        email_clash = await _put(client, alice, {"version": 1, "email": bob["email"].upper(), **proof}, me)
        assert email_clash.status_code == 409
        assert email_clash.json()["code"] == "email_taken"
        name_clash = await _put(client, alice, {"version": 1, "username": bob["username"]}, me)
        assert name_clash.status_code == 409
        assert name_clash.json()["code"] == "username_taken"
        moved = await _put(client, alice, {"version": 1, "email": "New.Address@Example.com", **proof}, me)
        assert moved.status_code == 200
        assert moved.json()["email"] == "new.address@example.com"
        assert moved.json()["version"] == 2
        assert (await login(client, "new.address@example.com")).status_code == 200
        assert (await login(client, alice["email"])).status_code == 401


async def test_password_change(users_client: UsersClientFactory) -> None:
    async with users_client() as client:
        user = await register(client)
        new_password = "a brand new passphrase"
        body = {"version": 1, "password": new_password, "current_password": PASSWORD}
        response = await _put(client, user, body, as_customer(user["id"]))
        assert response.status_code == 200
        assert response.json()["version"] == 2
        assert new_password not in response.text
        assert (await login(client, user["username"])).status_code == 401
        assert (await login(client, user["username"], new_password)).status_code == 200
        [stored] = await stored_users(client)
        assert stored.password_hash.startswith("$argon2id$")
        [event] = [event for event in await outbox_events(client) if event.type == "user.updated"]
        assert event.data == {"user_id": user["id"], "changed": {}, "changed_fields": ["password"]}
        assert stored.password_hash not in str(event.data)
        too_short = await _put(client, user, {"version": 2, "password": "Zq9#xy"}, as_customer(user["id"]))
        assert too_short.status_code == 422
        assert "Zq9#xy" not in too_short.text


async def test_update_bad_input(users_client: UsersClientFactory) -> None:
    async with users_client() as client:
        user = await register(client)
        me = as_customer(user["id"])
        bad_bodies: list[Any] = [
            {},
            {"profile": {"bio": "no version"}},
            {"version": "one"},
            {"version": 0},
            {"version": 1, "email": None},
            {"version": 1, "username": None},
            {"version": 1, "password": None},
            {"version": 1, "profile": None},
            {"version": 1, "email": "not-an-email"},
            {"version": 1, "username": "NO"},
            {"version": 1, "password": "p" * 129},
            {"version": 1, "profile": {"phone": "12345"}},
            {"version": 1, "profile": {"bio": "b" * 2001}},
            {"version": 1, "id": str(uuid.uuid4())},
            {"version": 1, "password_hash": "$argon2id$..."},
            [1],
        ]
        for body in bad_bodies:
            response = await _put(client, user, body, me)
            assert response.status_code == 422, (body, response.text)
        malformed = await client.put(
            f"/users/{user['id']}",
            content=b"{version: 1}",
            headers={**me, "content-type": "application/json"},
        )
        assert malformed.status_code == 400
        assert malformed.json()["code"] == "malformed_json"
        assert (await client.get(f"/users/{user['id']}", headers=me)).json() == user


async def test_concurrent_updates_with_one_version_have_one_winner(users_client: UsersClientFactory) -> None:
    async with users_client() as client:
        user = await register(client)
        contenders = 6
        responses = await asyncio.gather(
            *(
                _put(client, user, {"version": 1, "profile": {"bio": f"writer {n}"}}, as_customer(user["id"]))
                for n in range(contenders)
            )
        )
        statuses = sorted(response.status_code for response in responses)
        assert statuses == [200] + [409] * (contenders - 1)
        assert all(r.json()["code"] == "version_conflict" for r in responses if r.status_code == 409)
        [winner] = [r.json() for r in responses if r.status_code == 200]
        current = (await client.get(f"/users/{user['id']}", headers=as_admin())).json()
        assert current == winner
        assert current["version"] == 2
        assert [event.type for event in await outbox_events(client)].count("user.updated") == 1


async def test_delete_is_soft_and_final(users_client: UsersClientFactory) -> None:
    async with users_client() as client:
        user = await register(client)
        bob = await register(client)
        path = f"/users/{user['id']}"
        assert (await client.delete(path)).status_code == 401
        other = await client.delete(path, headers=as_customer(bob["id"]))
        assert other.status_code == 404
        response = await client.delete(path, headers=as_customer(user["id"]))
        assert response.status_code == 204
        assert response.content == b""
        gone = await client.get(path, headers=as_customer(user["id"]))
        assert gone.status_code == 404
        assert gone.json()["code"] == "user_not_found"
        assert (await client.get(path, headers=as_admin())).status_code == 404
        again = await client.delete(path, headers=as_customer(user["id"]))
        assert again.status_code == 404
        assert again.json()["code"] == "user_not_found"
        assert (
            await _put(client, user, {"version": 1, "profile": {"bio": "x"}}, as_admin())
        ).status_code == 404
        assert (await login(client, user["username"], PASSWORD)).status_code == 401
        # The row stays, marked deleted, so the saga can tell "deleted" from "never existed".
        [row] = [row for row in await stored_users(client) if str(row.id) == user["id"]]
        assert row.deleted_at is not None
        assert [event.type for event in await outbox_events(client)][-1] == "user.deleted"
        assert (await outbox_events(client))[-1].data == {"user_id": user["id"]}


async def test_admin_deletes_anyone(users_client: UsersClientFactory) -> None:
    async with users_client() as client:
        user = await register(client)
        assert (await client.delete(f"/users/{user['id']}", headers=as_admin())).status_code == 204
        assert (await client.delete(f"/users/{uuid.uuid4()}", headers=as_admin())).status_code == 404
        assert (await client.delete("/users/123", headers=as_admin())).status_code == 422
