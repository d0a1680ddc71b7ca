"""The saga's lookup, the admin bootstrap, settings from the environment, and migrations vs models."""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import inspect
from sqlalchemy.engine import Connection

from services.kit.models import service_metadata
from services.kit.outbox import OutboxEvent
from services.users.bootstrap import ensure_admin
from services.users.models import User
from services.users.passwords import Passwords
from services.users.settings import Settings
from tests.services.users.conftest import UsersClientFactory, login, register, stored_users
from tests.support.identity import as_admin, as_customer, as_service

ADMIN_PASSWORD = "admin-password-123"


async def test_internal_lookup_for_the_saga(users_client: UsersClientFactory) -> None:
    async with users_client() as client:
        user = await register(client, profile={"phone": "+14155550123"})
        path = f"/internal/users/{user['id']}"
        response = await client.get(path, headers=as_service())
        assert response.status_code == 200
        assert response.json() == {
            "user_id": user["id"],
            "active": True,
            "email": user["email"],
            "username": user["username"],
            "phone": "+14155550123",
            "role": "customer",
        }
        assert (await client.delete(f"/users/{user['id']}", headers=as_admin())).status_code == 204
        deleted = await client.get(path, headers=as_service())
        assert deleted.status_code == 200
        assert deleted.json()["active"] is False
        unknown = await client.get(f"/internal/users/{uuid.uuid4()}", headers=as_service())
        assert unknown.status_code == 404
        assert unknown.json()["code"] == "user_not_found"
        assert (await client.get("/internal/users/xyz", headers=as_service())).status_code == 422


async def test_internal_lookup_is_for_the_service_role_only(users_client: UsersClientFactory) -> None:
    async with users_client() as client:
        user = await register(client)
        path = f"/internal/users/{user['id']}"
        for headers in (as_customer(user["id"]), as_admin()):
            response = await client.get(path, headers=headers)
            assert response.status_code == 403
            assert response.json()["code"] == "forbidden"
        anonymous = await client.get(path)
        assert anonymous.status_code == 401
        assert anonymous.json()["code"] == "unauthenticated"


async def test_admin_is_bootstrapped_once(users_client: UsersClientFactory) -> None:
    settings = {"admin_email": "Root@Example.com", "admin_password": ADMIN_PASSWORD}
    async with users_client(**settings) as client:
        response = await login(client, "root@example.com", ADMIN_PASSWORD)
        assert response.status_code == 200
        [admin] = await stored_users(client)
        assert (admin.email, admin.username, admin.role) == ("root@example.com", "admin", "admin")
        assert admin.password_hash.startswith("$argon2id$")
        database_url = client.app.state.db.url  # type: ignore[attr-defined]
        passwords: Passwords = client.app.state.passwords  # type: ignore[attr-defined]
        assert (
            await ensure_admin(client.app.state.db, "root@example.com", ADMIN_PASSWORD, passwords=passwords)
            is False
        )  # type: ignore[attr-defined]
    async with users_client(database_url=database_url, **settings) as client:
        assert len(await stored_users(client)) == 1
        admin_view = await client.get(f"/users/{admin.id}", headers=as_admin())
        assert admin_view.json()["role"] == "admin"


async def test_no_admin_without_a_password(users_client: UsersClientFactory) -> None:
    async with users_client(admin_password="") as client:
        assert await stored_users(client) == []
        assert (await login(client, "admin@example.com", ADMIN_PASSWORD)).status_code == 401


async def test_concurrent_bootstraps_create_one_admin(users_client: UsersClientFactory) -> None:
    async with users_client() as client:
        db = client.app.state.db  # type: ignore[attr-defined]
        passwords: Passwords = client.app.state.passwords  # type: ignore[attr-defined]
        results = await asyncio.gather(
            *(ensure_admin(db, "admin@example.com", ADMIN_PASSWORD, passwords=passwords) for _ in range(4))
        )
        assert sorted(results) == [False, False, False, True]
        assert [user.username for user in await stored_users(client)] == ["admin"]


async def test_bootstrap_leaves_a_customer_with_that_email_alone(users_client: UsersClientFactory) -> None:
    async with users_client() as client:
        customer = await register(client, email="admin@example.com", username="not_admin")
        created = await ensure_admin(
            client.app.state.db,  # type: ignore[attr-defined]
            "admin@example.com",
            ADMIN_PASSWORD,
            passwords=client.app.state.passwords,  # type: ignore[attr-defined]
        )
        assert created is False
        [stored] = await stored_users(client)
        assert (str(stored.id), stored.role) == (customer["id"], "customer")


@pytest.mark.parametrize(
    ("email", "password"),
    [("admin@example.com", "short"), ("admin@example.com", "p" * 129), ("nope", ADMIN_PASSWORD)],
)
async def test_bootstrap_refuses_bad_credentials(email: str, password: str) -> None:
    # Validated before any database access, so no database is needed.
    with pytest.raises(ValueError, match="admin"):
        await ensure_admin(None, email, password)  # type: ignore[arg-type]


def test_settings_read_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ORDERSAGA_ADMIN_EMAIL", "boss@example.com")
    monkeypatch.setenv("ORDERSAGA_ADMIN_PASSWORD", ADMIN_PASSWORD)
    monkeypatch.setenv("USERS_TOKEN_TTL_SECONDS", "120")
    monkeypatch.setenv("USERS_PORT", "9001")
    settings = Settings()
    assert settings.admin_email == "boss@example.com"
    assert settings.admin_password.get_secret_value() == ADMIN_PASSWORD
    assert ADMIN_PASSWORD not in repr(settings)
    assert settings.token_ttl_seconds == 120
    assert settings.port == 9001
    assert settings.service_name == "users"


def test_settings_defaults(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in (
        "ORDERSAGA_ADMIN_EMAIL",
        "ORDERSAGA_ADMIN_PASSWORD",
        "USERS_TOKEN_TTL_SECONDS",
        "USERS_PORT",
    ):
        monkeypatch.delenv(name, raising=False)
    settings = Settings()
    assert (settings.admin_email, settings.admin_password.get_secret_value()) == ("admin@example.com", "")
    assert (settings.token_ttl_seconds, settings.port) == (900, 8001)


async def test_migration_matches_the_models(users_client: UsersClientFactory) -> None:
    async with users_client() as client:
        engine = client.app.state.db.engine  # type: ignore[attr-defined]

        def diff(connection: Connection) -> list[Any]:
            context = MigrationContext.configure(
                connection,
                opts={
                    "compare_type": True,
                    "include_name": lambda name, kind, _parent: (
                        not (kind == "table" and name.startswith("alembic_"))
                    ),
                },
            )
            return list(compare_metadata(context, service_metadata(User, OutboxEvent)))

        # alembic's type comparison does not see length changes through SQLModel's AutoString.
        expected = {
            column.name: column.type.length
            for column in User.__table__.columns  # type: ignore[attr-defined]
            if getattr(column.type, "length", None) is not None
        }

        def lengths(connection: Connection) -> dict[str, int | None]:
            columns = inspect(connection).get_columns("users")
            return {column["name"]: column["type"].length for column in columns if column["name"] in expected}

        async with engine.connect() as connection:
            assert await connection.run_sync(diff) == []
            assert await connection.run_sync(lengths) == expected


async def test_openapi_documents_every_endpoint(users_client: UsersClientFactory) -> None:
    async with users_client() as client:
        schema = (await client.get("/openapi.json")).json()
        assert {
            "/users",
            "/users/{user_id}",
            "/auth/token",
            "/.well-known/jwks.json",
            "/internal/users/{user_id}",
        } <= set(schema["paths"])
        assert "409" in schema["paths"]["/users"]["post"]["responses"]
