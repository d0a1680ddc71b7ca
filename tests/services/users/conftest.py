"""Fixtures for the users service tests: cheap argon2 parameters and a shared signing key."""

from __future__ import annotations

import uuid
from collections.abc import Callable
from contextlib import AbstractAsyncContextManager
from typing import Any

import httpx
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from sqlmodel import col, select

from services.kit.outbox import OutboxEvent
from services.users.models import User

# argon2id all the same, just cheap: the suite registers hundreds of users.
FAST_ARGON2: dict[str, Any] = {"argon2_time_cost": 1, "argon2_memory_cost_kib": 64, "argon2_parallelism": 1}
PASSWORD = "correct horse battery"

UsersClientFactory = Callable[..., AbstractAsyncContextManager[httpx.AsyncClient]]


@pytest.fixture(scope="session")
def signing_key_pem() -> str:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    ).decode()


@pytest.fixture
def users_client(service_client: UsersClientFactory, signing_key_pem: str) -> UsersClientFactory:
    """`async with users_client(**settings) as client:` → the users app on a fresh database."""

    def open_client(**overrides: Any) -> AbstractAsyncContextManager[httpx.AsyncClient]:
        settings = {**FAST_ARGON2, "jwt_private_key": signing_key_pem, **overrides}
        return service_client("users", **settings)

    return open_client


def unique_name(prefix: str = "user") -> str:
    return f"{prefix}_{uuid.uuid4().hex[:10]}"


async def register(
    client: httpx.AsyncClient,
    *,
    email: str | None = None,
    username: str | None = None,
    password: str = PASSWORD,
    **extra: Any,
) -> dict[str, Any]:
    name = username or unique_name()
    body = {"email": email or f"{name}@example.com", "username": name, "password": password, **extra}
    response = await client.post("/users", json=body)
    assert response.status_code == 201, response.text
    user: dict[str, Any] = response.json()
    return user


async def outbox_events(client: httpx.AsyncClient) -> list[OutboxEvent]:
    async with client.app.state.db.session() as session:  # type: ignore[attr-defined]
        events = (await session.exec(select(OutboxEvent).order_by(col(OutboxEvent.created_at)))).all()
    return list(events)


async def stored_users(client: httpx.AsyncClient) -> list[User]:
    async with client.app.state.db.session() as session:  # type: ignore[attr-defined]
        return list((await session.exec(select(User))).all())


async def login(client: httpx.AsyncClient, username: str, password: str = PASSWORD) -> httpx.Response:
    return await client.post("/auth/token", data={"username": username, "password": password})
