"""POST /users: registration, its validation rules and its uniqueness conflicts."""

from __future__ import annotations

from typing import Any

import pytest

from tests.services.users.conftest import (
    PASSWORD,
    UsersClientFactory,
    outbox_events,
    register,
    stored_users,
    unique_name,
)


async def test_register_returns_the_user_without_secrets(users_client: UsersClientFactory) -> None:
    async with users_client() as client:
        response = await client.post(
            "/users",
            json={
                "email": "Ada.Lovelace@Example.COM",
                "username": "ada.l_1-x",
                "password": PASSWORD,
                "profile": {"first_name": "Ada", "last_name": "Lovelace", "phone": "+447700900123"},
            },
        )
        assert response.status_code == 201, response.text
        user = response.json()
        assert user["email"] == "ada.lovelace@example.com"
        assert user["username"] == "ada.l_1-x"
        assert user["role"] == "customer"
        assert user["version"] == 1
        assert user["profile"] == {
            "first_name": "Ada",
            "last_name": "Lovelace",
            "avatar": None,
            "bio": None,
            "phone": "+447700900123",
        }
        assert user["created_at"].endswith("Z")
        assert user["updated_at"].endswith("Z")
        assert set(user) == {
            "id",
            "email",
            "username",
            "role",
            "profile",
            "created_at",
            "updated_at",
            "version",
        }
        assert PASSWORD not in response.text


async def test_register_without_profile_gives_an_empty_profile(users_client: UsersClientFactory) -> None:
    async with users_client() as client:
        user = await register(client)
        assert user["profile"] == dict.fromkeys(("first_name", "last_name", "avatar", "bio", "phone"))


async def test_password_is_stored_as_argon2id_and_never_in_plaintext(
    users_client: UsersClientFactory,
) -> None:
    async with users_client() as client:
        secret = "very-secret-Plaintext-42"
        user = await register(client, password=secret)
        rows = await stored_users(client)
        events = await outbox_events(client)
        assert len(rows) == 1
        assert str(rows[0].id) == user["id"]
        assert rows[0].password_hash.startswith("$argon2id$")
        assert all(secret not in str(value) for row in rows for value in row.model_dump().values())
        assert all(secret not in str(event.model_dump()) for event in events)


async def test_duplicate_email_differing_in_case_is_409(users_client: UsersClientFactory) -> None:
    async with users_client() as client:
        await register(client, email="Same@Example.com")
        response = await client.post(
            "/users", json={"email": "SAME@example.COM", "username": unique_name(), "password": PASSWORD}
        )
        assert response.status_code == 409
        assert response.headers["content-type"] == "application/problem+json"
        assert response.json()["code"] == "email_taken"


async def test_duplicate_username_is_409(users_client: UsersClientFactory) -> None:
    async with users_client() as client:
        await register(client, username="taken_name")
        response = await client.post(
            "/users", json={"email": "other@example.com", "username": "taken_name", "password": PASSWORD}
        )
        assert response.status_code == 409
        assert response.json()["code"] == "username_taken"


@pytest.mark.parametrize(("length", "status"), [(9, 422), (10, 201), (128, 201), (129, 422)])
async def test_password_length_bounds(users_client: UsersClientFactory, length: int, status: int) -> None:
    async with users_client() as client:
        password = "p" * length
        name = unique_name()
        response = await client.post(
            "/users", json={"email": f"{name}@example.com", "username": name, "password": password}
        )
        assert response.status_code == status, response.text
        assert password not in response.text


USERNAME_CASES: list[tuple[str, int]] = [
    ("abc", 201),
    ("a" * 32, 201),
    ("a.b-c_9", 201),
    ("ab", 422),
    ("a" * 33, 422),
    ("Upper", 422),
    ("with space", 422),
    ("at@sign", 422),
    ("ünïcode", 422),
    ("", 422),
]

INVALID_EMAILS = ["not-an-email", "a@", "@example.com", "two@@example.com", "x" * 300 + "@example.com", ""]

INVALID_PROFILES: list[dict[str, Any]] = [
    {"phone": "0044 7700 900123"},
    {"phone": "+0123456"},
    {"phone": "+1234567890123456"},
    {"phone": "+1"},
    {"avatar": "not a url"},
    {"avatar": "https://example.com/" + "a" * 2048},
    {"first_name": "x" * 101},
    {"first_name": ""},
    {"bio": "b" * 2001},
    {"nickname": "unknown field"},
    {"first_name": 42},
]

SCHEMA_VIOLATIONS: list[Any] = [
    {"username": "no_email", "password": PASSWORD},
    {"email": "no-username@example.com", "password": PASSWORD},
    {"email": "no-password@example.com", "username": "no_password"},
    {"email": 1, "username": "wrongtype", "password": PASSWORD},
    {"email": "e@example.com", "username": "x_y_z", "password": 1234567890},
    {"email": "e@example.com", "username": "x_y_z", "password": PASSWORD, "role": "admin"},
    {"email": "e@example.com", "username": "x_y_z", "password": PASSWORD, "profile": "text"},
    [],
    "just a string",
]


# The validation cases share one app per backend: they differ only in the body.
async def test_username_rules(users_client: UsersClientFactory) -> None:
    async with users_client() as client:
        for username, status in USERNAME_CASES:
            response = await client.post(
                "/users",
                json={"email": f"{unique_name()}@example.com", "username": username, "password": PASSWORD},
            )
            assert response.status_code == status, (username, response.text)


async def test_invalid_email_is_422(users_client: UsersClientFactory) -> None:
    async with users_client() as client:
        for email in INVALID_EMAILS:
            response = await client.post(
                "/users", json={"email": email, "username": unique_name(), "password": PASSWORD}
            )
            assert response.status_code == 422, email
            assert response.json()["code"] == "validation_error"


async def test_invalid_profile_is_422(users_client: UsersClientFactory) -> None:
    async with users_client() as client:
        for profile in INVALID_PROFILES:
            name = unique_name()
            response = await client.post(
                "/users",
                json={
                    "email": f"{name}@example.com",
                    "username": name,
                    "password": PASSWORD,
                    "profile": profile,
                },
            )
            assert response.status_code == 422, (profile, response.text)
        assert await stored_users(client) == []


async def test_schema_violations_are_422_without_echoing_the_password(
    users_client: UsersClientFactory,
) -> None:
    async with users_client() as client:
        for body in SCHEMA_VIOLATIONS:
            response = await client.post("/users", json=body)
            assert response.status_code == 422, (body, response.text)
            assert response.headers["content-type"] == "application/problem+json"
            assert PASSWORD not in response.text
        assert await stored_users(client) == []


async def test_malformed_json_is_400_and_oversized_body_is_413(users_client: UsersClientFactory) -> None:
    async with users_client() as client:
        response = await client.post(
            "/users", content=b'{"email": "x@example.com",', headers={"content-type": "application/json"}
        )
        assert response.status_code == 400
        assert response.json()["code"] == "malformed_json"
        huge = {
            "email": "x@example.com",
            "username": "xyz",
            "password": PASSWORD,
            "profile": {"bio": "b" * 2_000_000},
        }
        response = await client.post("/users", json=huge)
        assert response.status_code == 413
        assert await stored_users(client) == []


async def test_registration_writes_a_user_created_event(users_client: UsersClientFactory) -> None:
    async with users_client() as client:
        user = await register(client, profile={"phone": "+14155550123"})
        events = await outbox_events(client)
        assert [(event.type, event.source, event.subject) for event in events] == [
            ("user.created", "users", user["id"])
        ]
        assert events[0].data == {
            "user_id": user["id"],
            "email": user["email"],
            "username": user["username"],
            "role": "customer",
            "phone": "+14155550123",
        }
