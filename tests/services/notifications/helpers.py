"""Shared helpers of the notifications tests: request bodies, sink reading, direct row access."""

from __future__ import annotations

import json
import uuid
from pathlib import Path
from typing import Any

import httpx
from sqlmodel import select

from services.kit.outbox import OutboxEvent
from services.notifications.models import Notification
from services.notifications.sender import Sender
from tests.support.identity import as_service

# Settings for tests that drive the sender by hand.
MANUAL = {"sender_enabled": False}


def body(**overrides: Any) -> dict[str, Any]:
    payload: dict[str, Any] = {
        "idempotency_key": f"key-{uuid.uuid4()}",
        "user_id": str(uuid.uuid4()),
        "channel": "email",
        "to": "ada@example.com",
        "template": "order_confirmed",
        "data": {"order_id": "o-1", "total_cents": 12345, "currency": "USD"},
    }
    payload.update(overrides)
    return payload


async def queue(client: httpx.AsyncClient, **overrides: Any) -> dict[str, Any]:
    response = await client.post("/notifications", json=body(**overrides), headers=as_service())
    assert response.status_code == 202, response.text
    result: dict[str, Any] = response.json()
    return result


def sender_of(client: httpx.AsyncClient) -> Sender:
    sender: Sender = client.app.state.sender  # type: ignore[attr-defined]
    return sender


def sink_lines(data_dir: Path, channel: str) -> list[dict[str, Any]]:
    path = data_dir / ("mail.jsonl" if channel == "email" else "sms.jsonl")
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


async def row(client: httpx.AsyncClient, notification_id: str) -> Notification:
    async with client.app.state.db.session() as session:  # type: ignore[attr-defined]
        found = await session.get(Notification, uuid.UUID(notification_id))
        assert found is not None
        return found


async def events(client: httpx.AsyncClient) -> list[OutboxEvent]:
    async with client.app.state.db.session() as session:  # type: ignore[attr-defined]
        result = await session.exec(select(OutboxEvent).order_by(OutboxEvent.created_at))  # type: ignore[arg-type]
        return list(result.all())
