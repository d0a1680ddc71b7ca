"""Saga-facing order routes: cancel, review and the retry of failed compensations (workflow updates),
the saga view (its query), and the saga view as a stream of Server-Sent Events.

The stream learns of changes by asking the workflow's `status` query every
`ORDERS_SAGA_STREAM_POLL_SECONDS` (less often while the view stays the same) and sending an event
only when the view's JSON changed. The
alternatives (an update or signal from the workflow to this service, or the order's events on NATS)
would change the workflow's commands or miss the steps that do not change the order (attempts,
compensations); docs/saga-stream.md has the reasons and the measured cost.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import time
import uuid
from collections.abc import AsyncIterator, Callable
from typing import Annotated, Protocol, runtime_checkable

import structlog
from fastapi import APIRouter, FastAPI, Header, Request
from prometheus_client import Gauge
from pydantic import BaseModel, ConfigDict, StrictBool
from starlette.responses import StreamingResponse
from starlette.types import Receive, Scope, Send

from services.kit.db import SessionDep
from services.kit.errors import RETRY_AFTER_SECONDS, Problem, problem_responses
from services.kit.identity import AdminDep, CallerDep
from services.orders.routes import _visible_order, order_out
from services.orders.saga import SagaPort
from services.orders.saga_view import SagaViewOut
from services.orders.schemas import OrderOut
from services.orders.settings import Settings
from workflows import contract

log = structlog.get_logger(__name__)

router = APIRouter(tags=["saga"])

SAGA_STREAMS_OPEN = Gauge("orders_saga_streams_open", "Saga streams (SSE) this process holds open.")

CANCELLABLE = ("PENDING", "AWAITING_REVIEW")


class ReviewIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    approve: StrictBool


def _saga(request: Request) -> SagaPort:
    saga: SagaPort = request.app.state.saga
    return saga


def _illegal(status: str, action: str) -> Problem:
    return Problem(409, "illegal_transition", f"An order in {status} cannot be {action}.", status_now=status)


@router.post(
    "/orders/{order_id}/cancel",
    status_code=202,
    response_model=OrderOut,
    summary="Cancel before confirmation; the saga compensates",
    responses=problem_responses(401, 404, 409, 503),
)
async def cancel_order(
    order_id: uuid.UUID, caller: CallerDep, session: SessionDep, request: Request
) -> OrderOut:
    order = await _visible_order(session, order_id, caller)
    if order.status not in CANCELLABLE:
        raise _illegal(order.status, "cancelled")
    # The workflow's update validator has the last word: it refuses once the pivot has begun.
    await _saga(request).cancel(order.id, caller)
    return order_out(await _visible_order(session, order_id, caller))


@router.post(
    "/orders/{order_id}/review",
    status_code=202,
    response_model=OrderOut,
    summary="Approve or reject an order awaiting review",
    responses=problem_responses(401, 403, 404, 409, 422, 503),
)
async def review_order(
    order_id: uuid.UUID, decision: ReviewIn, caller: AdminDep, session: SessionDep, request: Request
) -> OrderOut:
    order = await _visible_order(session, order_id, caller)
    if order.status != "AWAITING_REVIEW":
        raise _illegal(order.status, "reviewed")
    await _saga(request).review(order.id, decision.approve, caller)
    return order_out(await _visible_order(session, order_id, caller))


@router.post(
    "/orders/{order_id}/compensations/retry",
    status_code=202,
    response_model=OrderOut,
    summary="Run the saga's failed compensations again, once their cause is fixed (admin)",
    responses=problem_responses(401, 403, 404, 409, 503),
)
async def retry_compensations(
    order_id: uuid.UUID, caller: AdminDep, session: SessionDep, request: Request
) -> OrderOut:
    order = await _visible_order(session, order_id, caller)
    # The workflow's update validator decides: it refuses unless some compensation has failed.
    await _saga(request).retry_compensations(order.id, caller)
    return order_out(await _visible_order(session, order_id, caller))


@router.get(
    "/orders/{order_id}/saga",
    response_model=SagaViewOut,
    summary="Every step of the order's saga, with attempts and compensations",
    responses=problem_responses(401, 404, 503),
)
async def saga_view(
    order_id: uuid.UUID, caller: CallerDep, session: SessionDep, request: Request
) -> SagaViewOut:
    order = await _visible_order(session, order_id, caller)
    return SagaViewOut.model_validate(await _saga(request).describe(order.id))


# ---- the saga view as Server-Sent Events

# The workflow has returned: every step is settled (the last ones skipped) and no compensation is
# left to retry. A saga waiting for a retry of failed compensations still has unrun steps pending.
_FINAL_SAGA = ("completed", "compensated", "compensation_failed")
_UNSETTLED_STEP = ("pending", "running")
STREAM_DESCRIPTION = (
    "`text/event-stream`. Each change of the saga view sends `id: <n>`, `event: saga` and as `data` "
    "the JSON of GET /orders/{id}/saga; the first event, at once, is the current view. When the saga "
    "has ended, one last `event: end` with the final view, and the stream closes. A `: keep-alive` "
    "comment comes after 15 s without an event (`ORDERS_SAGA_STREAM_KEEPALIVE_SECONDS`). A client "
    "that reconnects with `Last-Event-ID` gets the current view at once, numbered after it. Past "
    "`ORDERS_SAGA_STREAM_MAX_OPEN` open streams: 503 `overloaded` with Retry-After. A saga whose "
    "workflow was closed from outside (terminated, cancelled, timed out or failed in Temporal) "
    "ends its stream too, within the quiet poll interval: the `end` event's view is the last one the "
    "workflow answered, with `workflow_status` added (Temporal's close status, e.g. `TERMINATED`)."
)


@runtime_checkable
class ClosedWorkflows(Protocol):
    """A saga port that can tell a workflow closed from outside, whose query answers the same view
    for ever (a terminated saga's last state): the stream's only way to see that it is over."""

    async def closed_status(self, order_id: uuid.UUID) -> str | None:
        """The workflow's close status (TERMINATED, CANCELED, ...) once it has closed; else None."""
        ...


def saga_has_ended(view: SagaViewOut) -> bool:
    return view.status in _FINAL_SAGA and all(step.status not in _UNSETTLED_STEP for step in view.steps)


class StreamSlots:
    """The bound on streams open at once in this process: each holds a poller and a connection."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.open = 0

    def take(self) -> bool:
        if self.open >= self.limit:
            return False
        self.open += 1
        SAGA_STREAMS_OPEN.inc()
        return True

    def give_back(self) -> None:
        self.open -= 1
        SAGA_STREAMS_OPEN.dec()


def _slots(app: FastAPI, settings: Settings) -> StreamSlots:
    slots: StreamSlots | None = getattr(app.state, "saga_stream_slots", None)
    if slots is None:
        slots = app.state.saga_stream_slots = StreamSlots(settings.saga_stream_max_open)
    return slots


class _EventStream(StreamingResponse):
    """Gives its slot back however the response ends, even if the body was never started (the
    client left before it): a generator's `finally` would not run then."""

    def __init__(self, content: AsyncIterator[bytes], release: Callable[[], None]) -> None:
        super().__init__(
            content,
            media_type="text/event-stream",
            # No proxy may hold events back to fill a buffer, or store them.
            headers={"Cache-Control": "no-cache, no-store", "X-Accel-Buffering": "no"},
        )
        self._release = release

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            self._release()


def _event(number: int, kind: str, view: bytes) -> bytes:
    return b"id: %d\nevent: %s\ndata: %s\n\n" % (number, kind.encode(), view)


async def saga_events(
    saga: SagaPort, order_id: uuid.UUID, settings: Settings, first_id: int = 0
) -> AsyncIterator[bytes]:
    """The current view at once, then each changed one, then `end`; keep-alives in between.

    The view is asked for every `saga_stream_poll_seconds` while it changes; each time it comes
    back the same, the interval doubles, up to `saga_stream_quiet_poll_seconds`: a saga that waits
    (for a review, a retry) costs a fraction of one that runs, and a change after a quiet spell
    shows within that longer interval.
    """
    fast = settings.saga_stream_poll_seconds
    slow = max(fast, settings.saga_stream_quiet_poll_seconds)
    keepalive = settings.saga_stream_keepalive_seconds
    number, sent, interval = first_id, b"", fast
    started = quiet_since = next_poll = time.monotonic()
    while time.monotonic() - started < settings.saga_stream_max_seconds:
        if time.monotonic() >= next_poll:
            try:
                view: SagaViewOut | None = SagaViewOut.model_validate(await saga.describe(order_id))
            except Problem as problem:  # Temporal away: the stream waits for it, keep-alives go on
                log.info("saga_stream_view_unavailable", order_id=str(order_id), reason=problem.detail)
                view = None
            data = view.model_dump_json().encode() if view is not None else sent
            if (view is None or data == sent) and (closed := await _closed(saga, order_id)):
                number += 1
                yield _event(number, "end", _closed_view(data, order_id, closed))
                return
            if view is not None and (saga_has_ended(view) or data != sent):
                number += 1
                if saga_has_ended(view):
                    yield _event(number, "end", data)
                    return
                yield _event(number, "saga", data)
                sent, quiet_since, interval = data, time.monotonic(), fast
            else:
                interval = min(interval * 2, slow)
            next_poll = time.monotonic() + interval
        if time.monotonic() - quiet_since >= keepalive:
            yield b": keep-alive\n\n"
            quiet_since = time.monotonic()
        await asyncio.sleep(max(0.0, min(next_poll, quiet_since + keepalive) - time.monotonic()))


async def _closed(saga: SagaPort, order_id: uuid.UUID) -> str | None:
    """Asked only when the view did not change (or could not be read): a saga that runs changes
    its view, one closed from outside never does again, so a quiet poll costs one more call."""
    if not isinstance(saga, ClosedWorkflows):
        return None
    try:
        return await saga.closed_status(order_id)
    except Problem as problem:
        log.info("saga_stream_close_status_unavailable", order_id=str(order_id), reason=problem.detail)
        return None


def _closed_view(sent: bytes, order_id: uuid.UUID, workflow_status: str) -> bytes:
    # Terminated before its first workflow task, the workflow never answered a view: every step
    # is as it was when the order was accepted.
    view = json.loads(sent) if sent else dataclasses.asdict(contract.not_started_view(str(order_id)))
    view["workflow_status"] = workflow_status
    return json.dumps(view, separators=(",", ":")).encode()


def _last_event_id(raw: str | None) -> int:
    # Ids are ours; anything else (a stale or foreign value) starts the numbering afresh.
    return int(raw) if raw is not None and raw.isdigit() and len(raw) <= 12 else 0


@router.get(
    "/orders/{order_id}/saga/stream",
    response_class=StreamingResponse,
    summary="The saga view as Server-Sent Events, until the saga ends (owner or admin)",
    description=STREAM_DESCRIPTION,
    responses={
        200: {"content": {"text/event-stream": {"schema": {"type": "string"}}}},
        **problem_responses(401, 404, 503),
    },
)
async def saga_stream(
    order_id: uuid.UUID,
    caller: CallerDep,
    session: SessionDep,
    request: Request,
    last_event_id: Annotated[
        str | None, Header(alias="Last-Event-ID", max_length=200, description="The last event's id.")
    ] = None,
) -> StreamingResponse:
    order = await _visible_order(session, order_id, caller)
    settings: Settings = request.app.state.settings
    slots = _slots(request.app, settings)
    if not slots.take():
        raise Problem(
            503,
            "overloaded",
            "Too many saga streams are open; try again later.",
            headers={"Retry-After": str(RETRY_AFTER_SECONDS)},
        )
    try:
        events = saga_events(_saga(request), order.id, settings, _last_event_id(last_event_id))
        return _EventStream(events, slots.give_back)
    except BaseException:
        slots.give_back()
        raise
