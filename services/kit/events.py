"""Domain events on the wire: CloudEvents 1.0 JSON on one JetStream stream, and how to reach it.

Every event is published on `ordersaga.<entity plural>.<action>` (`user.created` travels on
`ordersaga.users.created`), so a consumer can filter by entity (`ordersaga.users.>`) or by fact.
The CloudEvent `id` is the outbox row id, and it is also the JetStream message id (`Nats-Msg-Id`):
a row published twice (a relay that crashed before marking it) is dropped by the stream's
duplicate window, and a consumer that sees it anyway deduplicates by the same id.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
from datetime import datetime
from typing import Any, Literal

import nats
import structlog
from nats.aio.client import Client as NatsClient
from nats.js import JetStreamContext
from nats.js.api import StorageType, StreamConfig
from nats.js.errors import BadRequestError, NotFoundError
from pydantic import BaseModel, ConfigDict, Field

log = structlog.get_logger(__name__)

STREAM = "ORDERSAGA"
SUBJECT_PREFIX = "ordersaga"
CONTENT_TYPE = "application/json"
# Republishing within this window is deduplicated by JetStream; it must outlast a relay restart.
DUPLICATE_WINDOW_SECONDS = 600.0
MAX_AGE_SECONDS = 7 * 24 * 3600.0

_TOKEN = re.compile(r"^[a-z0-9_-]+$")
# Entities whose plural is not "+s".
_PLURALS = {"stock": "stock"}


class MalformedEvent(ValueError):
    """A message that is not a CloudEvent we can read: it will never become valid by retrying."""


def subject_for(event_type: str) -> str:
    """`user.created` → `ordersaga.users.created`; `stock.low` → `ordersaga.stock.low`."""
    entity, _, action = event_type.partition(".")
    if not _TOKEN.match(entity) or not action or not all(_TOKEN.match(part) for part in action.split(".")):
        raise ValueError(f"event type {event_type!r} is not <entity>.<action> in [a-z0-9_-]")
    plural = _PLURALS.get(entity) or (entity if entity.endswith("s") else entity + "s")
    return f"{SUBJECT_PREFIX}.{plural}.{action}"


class CloudEvent(BaseModel):
    """A CloudEvents 1.0 event in structured JSON mode, as published and as consumed."""

    model_config = ConfigDict(extra="allow")

    specversion: Literal["1.0"] = "1.0"
    id: str = Field(min_length=1, max_length=128)
    source: str = Field(min_length=1)
    type: str = Field(min_length=1)
    time: datetime
    datacontenttype: Literal["application/json"] = "application/json"
    subject: str | None = None
    data: dict[str, Any]

    def to_json(self) -> bytes:
        return self.model_dump_json(exclude_none=True).encode()

    @classmethod
    def parse(cls, raw: bytes) -> CloudEvent:
        try:
            return cls.model_validate_json(raw)
        except ValueError as exc:  # pydantic's ValidationError is a ValueError
            raise MalformedEvent(_short(exc)) from None


def _short(exc: Exception) -> str:
    return " ".join(str(exc).split())[:300]


def event_source(service: str) -> str:
    """The CloudEvents `source`: a URI reference naming the producing service."""
    return f"/ordersaga/{service}"


def encode(payload: dict[str, Any]) -> bytes:
    return json.dumps(payload, separators=(",", ":")).encode()


async def connect(url: str, *, name: str) -> NatsClient:
    """A connection that reconnects forever: an outage delays events, it never ends the process.

    The first connect also keeps trying until a server answers (the caller's task is cancellable).
    """

    async def on_error(exc: Exception) -> None:
        # Every failed reconnect attempt lands here; the disconnect itself is logged once below.
        log.debug("nats_error", connection=name, error=f"{type(exc).__name__}: {exc}")

    async def on_disconnected() -> None:
        log.warning("nats_disconnected", connection=name)

    async def on_reconnected() -> None:
        log.info("nats_reconnected", connection=name)

    return await nats.connect(
        servers=[u.strip() for u in url.split(",") if u.strip()],
        name=name,
        connect_timeout=2,
        reconnect_time_wait=0.5,
        max_reconnect_attempts=-1,
        allow_reconnect=True,
        error_cb=on_error,
        disconnected_cb=on_disconnected,
        reconnected_cb=on_reconnected,
    )


# How long shutdown waits for each of the task and the connection: with the server gone, a
# connection that is reconnecting can hold `close()` for ever, and a stop must not hang on it.
CLOSE_SECONDS = 5.0


async def close_connection_task(task: asyncio.Task[Any] | None, nc: NatsClient | None) -> None:
    """Stop a background task that owns a NATS connection, then close the connection; on shutdown
    neither may raise nor hang (the server may be gone already)."""
    if task is not None:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await asyncio.wait_for(asyncio.shield(task), CLOSE_SECONDS)
    if nc is not None:
        with contextlib.suppress(Exception):
            await asyncio.wait_for(nc.close(), CLOSE_SECONDS)


async def ensure_stream(js: JetStreamContext) -> None:
    """Create the stream if absent; concurrent creators with the same config are harmless."""
    try:
        await js.stream_info(STREAM)
        return
    except NotFoundError:
        pass
    config = StreamConfig(
        name=STREAM,
        subjects=[f"{SUBJECT_PREFIX}.>"],
        storage=StorageType.FILE,
        duplicate_window=DUPLICATE_WINDOW_SECONDS,
        max_age=MAX_AGE_SECONDS,
    )
    try:
        await js.add_stream(config)
        log.info("event_stream_created", stream=STREAM)
    except BadRequestError:
        await js.stream_info(STREAM)  # someone else created it meanwhile; fail if it is still missing
