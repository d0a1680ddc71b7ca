"""The orders service's saga port backed by Temporal: start; cancel, review and compensation-retry
updates; the status query."""

from __future__ import annotations

import asyncio
import dataclasses
import time
import uuid
from datetime import timedelta
from typing import Any

import structlog
from temporalio.client import (
    Client,
    WorkflowExecutionStatus,
    WorkflowUpdateFailedError,
    WorkflowUpdateRPCTimeoutOrCancelledError,
)
from temporalio.common import (
    SearchAttributePair,
    TypedSearchAttributes,
    WorkflowIDConflictPolicy,
    WorkflowIDReusePolicy,
)
from temporalio.exceptions import WorkflowAlreadyStartedError
from temporalio.service import RPCError, RPCStatusCode

from services.kit.errors import RETRY_AFTER_SECONDS, Problem
from services.kit.identity import Identity
from services.kit.temporal import TemporalSettings, connect
from services.kit.tracing import current_trace_id
from services.orders.saga import OrderStart
from workflows import contract
from workflows.contract import (
    CUSTOMER_ID,
    ORDER_STATUS,
    TASK_QUEUE,
    CancelRequest,
    OrderInput,
    OrderLine,
    RetryCompensations,
    ReviewDecision,
    SagaView,
    workflow_id_for,
)

log = structlog.get_logger(__name__)


def saga_unavailable(detail: str = "The saga engine did not answer.") -> Problem:
    return Problem(503, "saga_unavailable", detail, headers={"Retry-After": str(RETRY_AFTER_SECONDS)})


class TemporalSaga:
    """Connects lazily, so the service boots and accepts orders while Temporal is down (the sweeper
    starts their sagas once it is back); every call is bounded by `rpc_timeout` seconds, updates by
    `update_timeout`, so Temporal being away costs a request that long at most."""

    def __init__(
        self,
        settings: TemporalSettings | None = None,
        *,
        task_queue: str = TASK_QUEUE,
        rpc_timeout: float = 2.0,
        update_timeout: float = 3.0,
    ) -> None:
        self._settings = settings or TemporalSettings()
        self._task_queue = task_queue
        self._rpc_timeout = timedelta(seconds=rpc_timeout)
        self._update_timeout = timedelta(seconds=update_timeout)
        self._client: Client | None = None
        self._lock = asyncio.Lock()
        # Until then a start does not wait for Temporal again (monotonic seconds): see `start`.
        self._away_until = 0.0

    async def client(self) -> Client:
        """The connected client; a failed connect is retried by the next call (503 for this one)."""
        if self._client is not None:
            return self._client
        try:
            # The bound covers the wait for another request's connect attempt too.
            return await asyncio.wait_for(self._connect(), self._rpc_timeout.total_seconds())
        except Exception as err:  # TimeoutError, or the SDK's RuntimeError "Failed client connect"
            log.warning("temporal_connect_failed", error=f"{type(err).__name__}: {err}")
            raise saga_unavailable("The saga engine is not reachable.") from err

    async def _connect(self) -> Client:
        async with self._lock:
            if self._client is None:
                self._client = await connect(self._settings)
            return self._client

    async def start(self, order: OrderStart) -> None:
        """Start the saga, or raise a 503 Problem when Temporal is away (the sweeper starts it later).

        After a start found Temporal away, the next ones for as long as an attempt takes give up at
        once instead of waiting out the timeout again: each accepted order would otherwise hold
        its request that long, and the service's capacity with it. The next start after that tries.
        """
        if time.monotonic() < self._away_until:
            raise saga_unavailable("The saga engine did not answer just now.")
        try:
            await self._start(order)
        except Problem:
            self._away_until = time.monotonic() + self._rpc_timeout.total_seconds()
            raise
        self._away_until = 0.0

    async def _start(self, order: OrderStart) -> None:
        client = await self.client()
        order_id = str(order.order_id)
        try:
            async with _within(self._rpc_timeout):
                await client.start_workflow(
                    "OrderWorkflow",
                    OrderInput(
                        order_id=order_id,
                        user_id=str(order.user_id),
                        payment_method_id=str(order.payment_method_id),
                        lines=[OrderLine(str(line.product_id), line.quantity) for line in order.items],
                    ),
                    id=workflow_id_for(order_id),
                    task_queue=self._task_queue,
                    # A repeated start (retry, sweeper) attaches to the running saga or is refused once it
                    # has ended; it never starts a second saga for the same order.
                    id_conflict_policy=WorkflowIDConflictPolicy.USE_EXISTING,
                    id_reuse_policy=WorkflowIDReusePolicy.REJECT_DUPLICATE,
                    search_attributes=TypedSearchAttributes(
                        [
                            SearchAttributePair(CUSTOMER_ID, str(order.user_id)),
                            SearchAttributePair(ORDER_STATUS, "PENDING"),
                        ]
                    ),
                    static_summary=f"Order {order_id}: {_lines(len(order.items))}",
                    # The saga view shows it; a sweeper's restart has no request trace and sets none.
                    memo={"trace_id": trace_id} if (trace_id := current_trace_id()) else None,
                    rpc_timeout=self._rpc_timeout,
                )
        except WorkflowAlreadyStartedError:
            log.info("saga_already_started", order_id=order_id)
        except TimeoutError as err:
            raise saga_unavailable() from err
        except RPCError as err:
            if err.status in (RPCStatusCode.UNAVAILABLE, RPCStatusCode.DEADLINE_EXCEEDED):
                raise saga_unavailable() from err
            raise

    async def cancel(self, order_id: uuid.UUID, by: Identity) -> None:
        await self._update(order_id, "cancel", CancelRequest(requested_by=str(by.user_id or by.role)))

    async def review(self, order_id: uuid.UUID, approve: bool, by: Identity) -> None:
        await self._update(
            order_id, "review", ReviewDecision(approve=approve, reviewer=str(by.user_id or by.role))
        )

    async def retry_compensations(self, order_id: uuid.UUID, by: Identity) -> None:
        await self._update(
            order_id, "retry_compensations", RetryCompensations(requested_by=str(by.user_id or by.role))
        )

    async def describe(self, order_id: uuid.UUID) -> dict[str, Any]:
        client = await self.client()
        handle = client.get_workflow_handle(workflow_id_for(str(order_id)))
        try:
            async with _within(self._rpc_timeout):
                view = await handle.query("status", result_type=SagaView, rpc_timeout=self._rpc_timeout)
        except TimeoutError as err:
            raise saga_unavailable() from err
        except RPCError as err:
            if err.status == RPCStatusCode.NOT_FOUND:
                return not_started_view(order_id)
            raise saga_unavailable() from err
        return dataclasses.asdict(view)

    async def closed_status(self, order_id: uuid.UUID) -> str | None:
        """The saga workflow's close status (`TERMINATED`, `CANCELED`, `TIMED_OUT`, `FAILED`,
        `COMPLETED`) once it has closed; None while it runs or before it has started."""
        client = await self.client()
        handle = client.get_workflow_handle(workflow_id_for(str(order_id)))
        try:
            async with _within(self._rpc_timeout):
                described = await handle.describe(rpc_timeout=self._rpc_timeout)
        except TimeoutError as err:
            raise saga_unavailable() from err
        except RPCError as err:
            if err.status == RPCStatusCode.NOT_FOUND:
                return None
            raise saga_unavailable() from err
        if described.status in (None, WorkflowExecutionStatus.RUNNING):
            return None
        return described.status.name

    async def _update(self, order_id: uuid.UUID, name: str, argument: Any) -> None:
        client = await self.client()
        handle = client.get_workflow_handle(workflow_id_for(str(order_id)))
        try:
            async with _within(self._update_timeout):
                await handle.execute_update(name, argument, rpc_timeout=self._update_timeout)
        except (WorkflowUpdateRPCTimeoutOrCancelledError, TimeoutError) as err:
            # Whether the workflow took the update is unknown; repeating it is safe (the validator
            # refuses a second cancel or review with 409).
            raise saga_unavailable(
                "The saga engine did not answer in time; the request may still take effect."
            ) from err
        except WorkflowUpdateFailedError as err:
            detail = str(err.cause.message if hasattr(err.cause, "message") else err.cause)
            raise Problem(409, "illegal_transition", detail) from err
        except RPCError as err:
            if err.status in (RPCStatusCode.NOT_FOUND, RPCStatusCode.FAILED_PRECONDITION):
                raise Problem(409, "illegal_transition", "The order's saga has already ended.") from err
            raise saga_unavailable() from err


def _within(timeout: timedelta) -> asyncio.Timeout:
    """The whole call's deadline. `rpc_timeout` bounds each attempt only: the SDK retries an
    unreachable server (connection refused) for several seconds more."""
    return asyncio.timeout(timeout.total_seconds())


def _lines(count: int) -> str:
    return f"{count} line" if count == 1 else f"{count} lines"


def not_started_view(order_id: uuid.UUID) -> dict[str, Any]:
    """An accepted order whose saga the sweeper has not started yet (the contract's view, as JSON)."""
    return dataclasses.asdict(contract.not_started_view(str(order_id)))
