"""Identity headers as the gateway or the saga would send them."""

from __future__ import annotations

import uuid

from services.kit.identity import identity_headers

INTERNAL_TOKEN = "test-internal-token"


def as_customer(user_id: uuid.UUID | str) -> dict[str, str]:
    return identity_headers(INTERNAL_TOKEN, "customer", user_id)


def as_admin(user_id: uuid.UUID | str | None = None) -> dict[str, str]:
    return identity_headers(INTERNAL_TOKEN, "admin", user_id or uuid.uuid4())


def as_service() -> dict[str, str]:
    return identity_headers(INTERNAL_TOKEN, "service")
