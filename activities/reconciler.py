"""The reconciler's view of the world: orders the orders service holds unfinished, and their sagas.

The orders service is the truth about which orders are not final; Temporal is the truth about
whether their saga's workflow still runs. An order is stranded when it is unfinished while its
workflow is closed: terminated, timed out, failed, or cancelled by code that predates the cancel
handling. An order whose saga never started is the orders service's own sweeper's business.
"""

from __future__ import annotations

import asyncio
from urllib.parse import urlencode

from temporalio import activity
from temporalio.client import Client, WorkflowExecutionStatus
from temporalio.service import RPCError, RPCStatusCode

from activities.http import ServiceCaller
from workflows.payloads import SagaFacts, StrandedOrder, workflow_id_for

# Enough to describe a page of orders quickly without flooding the frontend.
DESCRIBE_CONCURRENCY = 16
PAGE_SIZE = 500


class ReconcilerActivities:
    def __init__(self, client: Client, orders: ServiceCaller) -> None:
        self._client = client
        self._orders = orders

    @activity.defn(name="find_stranded_orders")
    async def find_stranded_orders(self, older_than_seconds: float) -> list[StrandedOrder]:
        unfinished = await self._unfinished(older_than_seconds)
        gate = asyncio.Semaphore(DESCRIBE_CONCURRENCY)

        async def closed(order: dict[str, str]) -> StrandedOrder | None:
            async with gate:
                status = await self._workflow_status(order["id"])
            if status is None or status is WorkflowExecutionStatus.RUNNING:
                return None
            return StrandedOrder(order_id=order["id"], user_id=order["user_id"], workflow_status=status.name)

        found = await asyncio.gather(*(closed(order) for order in unfinished))
        stranded = [order for order in found if order is not None]
        if stranded:
            activity.logger.warning(
                "stranded_orders",
                extra={"orders": [o.order_id for o in stranded], "unfinished": len(unfinished)},
            )
        return stranded

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
        return await handle.query("facts", result_type=SagaFacts)

    async def _workflow_status(self, order_id: str) -> WorkflowExecutionStatus | None:
        try:
            description = await self._client.get_workflow_handle(workflow_id_for(order_id)).describe()
        except RPCError as err:
            if err.status == RPCStatusCode.NOT_FOUND:
                return None  # never started: the orders service's sweeper starts it
            raise
        return description.status
