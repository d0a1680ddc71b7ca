"""Saga-facing order routes: cancel, review and the retry of failed compensations (workflow updates),
and the saga view (its query)."""

from __future__ import annotations

import uuid
from datetime import datetime

from fastapi import APIRouter, Request
from pydantic import BaseModel, ConfigDict, Field, StrictBool

from services.kit.db import SessionDep
from services.kit.errors import Problem, problem_responses
from services.kit.identity import AdminDep, CallerDep
from services.orders.routes import _visible_order, order_out
from services.orders.saga import SagaPort
from services.orders.schemas import OrderOut
from workflows.payloads import CompensationStatus, SagaStatus, StepStatus

router = APIRouter(tags=["saga"])

CANCELLABLE = ("PENDING", "AWAITING_REVIEW")


class ReviewIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    approve: StrictBool


# The statuses are the workflow's own (workflows/payloads.py), so the view cannot drift from them.
class CompensationOut(BaseModel):
    status: CompensationStatus
    attempts: int
    error: str | None = None


class SagaStepOut(BaseModel):
    # Any name: workflows/payloads.py STEP_NAMES today, and the older names of sagas still running.
    name: str
    status: StepStatus
    attempts: int
    started_at: datetime | None = None
    finished_at: datetime | None = None
    error: str | None = None
    compensation: CompensationOut | None = None


class SagaViewOut(BaseModel):
    order_id: uuid.UUID
    workflow_id: str
    status: SagaStatus
    order_status: str
    cancel_reason: str | None = None
    steps: list[SagaStepOut]
    trace_id: str | None = Field(
        default=None, description="The trace of the request that placed the order, when tracing is on."
    )


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
