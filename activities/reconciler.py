"""The reconciler's view of the world: orders the orders service holds unfinished, and their sagas.

The orders service is the truth about which orders are not final; Temporal is the truth about
whether their saga's workflow still runs. An order is stranded when it is unfinished while its
workflow is closed: terminated, timed out, failed, or cancelled by code that predates the cancel
handling. An order whose saga never started is the orders service's own sweeper's business.

A saga can also close with its order final and a loose end left: a reservation still held (a cancel
met a reserve attempt whose result the saga never recorded) or no outcome notice (terminated between
the final status and the notice, or the notice's retries ran out). The same sweep finds those among
the recently final orders: inventory says which reservations are still held, notifications which
notice keys exist, and only orders whose saga (and repair) is closed count, since a running one
still has the step ahead of it.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field
from urllib.parse import urlencode

from temporalio import activity
from temporalio.client import Client, WorkflowExecutionStatus
from temporalio.service import RPCError, RPCStatusCode

from activities.http import ServiceCaller, saga_key
from activities.notifications import NOTIFY_STEP
from workflows.payloads import SagaFacts, StrandedOrder, workflow_id_for

# Enough to describe a page of orders quickly without flooding the frontend.
DESCRIBE_CONCURRENCY = 16
PAGE_SIZE = 500
# The server's answer to a query on a workflow closed before any workflow task started.
NEVER_RAN = "closed before WorkflowTaskStarted"
# How far back final orders are checked for loose ends. A sweep looks at the recent ones, so a loose
# end is tidied within two sweeps. The first sweep of a worker process, and one an hour, look back
# the whole window, for what was left while the reconciler was away; one left while it was away
# for longer than that stays. Every sweep over six hours cost in proportion to the orders of six
# hours, every 30 s: after 1500 orders the idle stack already spent 0.4 % of a core on it.
LOOSE_END_WINDOW_SECONDS = 6 * 3600.0
RECENT_WINDOW_SECONDS = 15 * 60.0
FULL_SWEEP_EVERY_SECONDS = 3600.0
CONFIRMED_STATUSES = frozenset({"CONFIRMED", "SHIPPED", "DELIVERED"})
REPAIR_ID_PREFIX = "repair-"  # workflows.repair.repair_id_for; imported there, not from there

# What a sweep does for a final order's loose end (FoundOrder.tidy).
RELEASE_STOCK = "release_stock"
COMMIT_STOCK = "commit_stock"
NOTIFY = "notify"


@dataclass
class FoundOrder(StrandedOrder):
    """A stranded order (tidy empty: a repair is due) or a final order with loose ends to tidy.

    A subclass with defaults, so that the results of sweeps recorded before loose ends decode too.
    """

    tidy: list[str] = field(default_factory=list)
    status: str | None = None
    cancel_reason: str | None = None
    total_cents: int | None = None
    currency: str | None = None


def notice_template(status: str) -> str:
    return "order_confirmed" if status in CONFIRMED_STATUSES else "order_cancelled"


def notice_keys(order_id: str, status: str) -> list[str]:
    """The keys the saga's notify_customer uses for this order's outcome, one per channel."""
    base = f"{saga_key(order_id, NOTIFY_STEP)}:{notice_template(status)}"
    return [f"{base}:email", f"{base}:sms"]


@dataclass
class LooseEndWindow:
    """How far back this process's next sweep looks: the whole window when a full sweep is due."""

    full_due_at: float = float("-inf")  # monotonic seconds; the first sweep is a full one

    def seconds(self, now: float, older_than_seconds: float) -> float:
        window = LOOSE_END_WINDOW_SECONDS if self.is_full(now) else RECENT_WINDOW_SECONDS
        return max(window, older_than_seconds * 4)

    def is_full(self, now: float) -> bool:
        return now >= self.full_due_at

    def swept(self, started: float) -> None:
        """A sweep that began at `started` went through; a failed full sweep stays due."""
        if self.is_full(started):
            self.full_due_at = started + FULL_SWEEP_EVERY_SECONDS


class ReconcilerActivities:
    def __init__(
        self,
        client: Client,
        orders: ServiceCaller,
        inventory: ServiceCaller,
        notifications: ServiceCaller,
    ) -> None:
        self._client = client
        self._orders = orders
        self._inventory = inventory
        self._notifications = notifications
        self._window = LooseEndWindow()

    @activity.defn(name="find_stranded_orders")
    async def find_stranded_orders(self, older_than_seconds: float) -> list[FoundOrder]:
        unfinished = await self._unfinished(older_than_seconds)
        gate = asyncio.Semaphore(DESCRIBE_CONCURRENCY)

        async def closed(order: dict[str, str]) -> FoundOrder | None:
            async with gate:
                status = await self._workflow_status(order["id"])
            if status is None or status is WorkflowExecutionStatus.RUNNING:
                return None
            return FoundOrder(order_id=order["id"], user_id=order["user_id"], workflow_status=status.name)

        found = await asyncio.gather(*(closed(order) for order in unfinished))
        stranded = [order for order in found if order is not None]
        if stranded:
            activity.logger.warning(
                "stranded_orders",
                extra={"orders": [o.order_id for o in stranded], "unfinished": len(unfinished)},
            )
        return stranded + await self._loose_ends(older_than_seconds, gate)

    async def _loose_ends(self, older_than_seconds: float, gate: asyncio.Semaphore) -> list[FoundOrder]:
        inventory, notifications = self._inventory, self._notifications
        started = time.monotonic()
        window = self._window.seconds(started, older_than_seconds)
        candidates: list[FoundOrder] = []
        cursor: str | None = None
        while True:
            query = {"older_than_seconds": older_than_seconds, "within_seconds": window, "limit": PAGE_SIZE}
            path = "/internal/orders/final?" + urlencode(query | ({"cursor": cursor} if cursor else {}))
            body = (await self._orders.call("GET", path)).json()
            candidates += await self._untidy(body["items"], inventory, notifications)
            cursor = body.get("next_cursor")
            if not cursor:
                break
            activity.heartbeat(len(candidates))
        self._window.swept(started)

        async def closed(order: FoundOrder) -> FoundOrder | None:
            async with gate:
                saga = await self._workflow_status(order.order_id)
                repair = await self._status_of(REPAIR_ID_PREFIX + order.order_id)
            running = WorkflowExecutionStatus.RUNNING
            if saga is None or saga is running or repair is running:
                return None  # a running saga or repair still has the step ahead of it
            order.workflow_status = saga.name
            return order

        found = [order for order in await asyncio.gather(*(closed(o) for o in candidates)) if order]
        if found:
            activity.logger.warning(
                "final_orders_with_loose_ends",
                extra={"orders": {o.order_id: o.tidy for o in found}},
            )
        return found

    async def _untidy(
        self, items: list[dict[str, object]], inventory: ServiceCaller, notifications: ServiceCaller
    ) -> list[FoundOrder]:
        if not items:
            return []
        ids = [str(item["id"]) for item in items]
        held_body = (
            await inventory.call("POST", "/internal/reservations/held", json={"order_ids": ids})
        ).json()
        held = {str(order_id) for order_id in held_body["held"]}
        keys = {str(item["id"]): notice_keys(str(item["id"]), str(item["status"])) for item in items}
        present_body = (
            await notifications.call(
                "POST",
                "/internal/notifications/present",
                json={"idempotency_keys": [key for order_keys in keys.values() for key in order_keys]},
            )
        ).json()
        present = set(present_body["present"])
        untidy: list[FoundOrder] = []
        for item in items:
            order_id, status = str(item["id"]), str(item["status"])
            tidy: list[str] = []
            if order_id in held:
                tidy.append(COMMIT_STOCK if status in CONFIRMED_STATUSES else RELEASE_STOCK)
            if not present.intersection(keys[order_id]):
                tidy.append(NOTIFY)
            if tidy:
                total = item.get("total_cents")
                untidy.append(
                    FoundOrder(
                        order_id=order_id,
                        user_id=str(item["user_id"]),
                        workflow_status="",
                        tidy=tidy,
                        status=status,
                        cancel_reason=str(item["cancel_reason"]) if item.get("cancel_reason") else None,
                        total_cents=int(str(total)) if total is not None else None,
                        currency=str(item["currency"]) if item.get("currency") else None,
                    )
                )
        return untidy

    async def _unfinished(self, older_than_seconds: float) -> list[dict[str, str]]:
        """Every unfinished order, page by page: orders in review must not hide a stranded one."""
        orders: list[dict[str, str]] = []
        cursor: str | None = None
        while True:
            query = {"older_than_seconds": older_than_seconds, "limit": PAGE_SIZE}
            path = "/internal/orders/unfinished?" + urlencode(query | ({"cursor": cursor} if cursor else {}))
            body = (await self._orders.call("GET", path)).json()
            orders += body["items"]
            cursor = body.get("next_cursor")
            if not cursor:
                return orders
            activity.heartbeat(len(orders))

    @activity.defn(name="saga_facts")
    async def saga_facts(self, order_id: str) -> SagaFacts:
        """Asked of the closed workflow: Temporal answers a query on it by replaying its history."""
        handle = self._client.get_workflow_handle(workflow_id_for(order_id))
        try:
            return await handle.query("facts", result_type=SagaFacts)
        except RPCError as err:
            # Terminated before its first workflow task: the server has no state to answer from,
            # and no step ran, so there is nothing to undo but the order itself.
            if NEVER_RAN not in err.message:
                raise
            activity.logger.warning("saga_closed_before_it_ran", extra={"order_id": order_id})
            return SagaFacts(order_id=order_id, pivot_started=False, order_status="PENDING")

    async def _workflow_status(self, order_id: str) -> WorkflowExecutionStatus | None:
        return await self._status_of(workflow_id_for(order_id))

    async def _status_of(self, workflow_id: str) -> WorkflowExecutionStatus | None:
        try:
            description = await self._client.get_workflow_handle(workflow_id).describe()
        except RPCError as err:
            if err.status == RPCStatusCode.NOT_FOUND:
                return None  # never started: the orders service's sweeper starts it
            raise
        return description.status
