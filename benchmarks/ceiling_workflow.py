"""The ceiling's workflow: the saga's shape (a recorded local activity, then 8 calls), no work.

With `local` (the saga's default, WORKER_LOCAL_ACTIVITIES) the calls are local activities except the
fourth, fifth and sixth, as the saga keeps the payment calls and the pivot's first call (the stock's
commit) regular activities; without it all 8 are. So a saga's history and the ceiling's have the same
events but for the saga's two search-attribute upserts and its patch marker (which cost the server
nothing measurable: benchmarks/README.md).
"""

from __future__ import annotations

from datetime import timedelta

from temporalio import activity, workflow

ACTIVITIES = 8
# create order, validate customer, reserve stock, *authorise*, *capture*, *commit*, confirm, notify
REGULAR_CALLS = frozenset({3, 4, 5})


@activity.defn
async def noop(step: int) -> int:
    return step


@activity.defn
async def noop_local() -> int:
    return 0


@workflow.defn
class CeilingWorkflow:
    @workflow.run
    async def run(self, local: bool = False) -> int:
        await workflow.execute_local_activity(noop_local, start_to_close_timeout=timedelta(seconds=5))
        timeout = timedelta(seconds=10)
        for step in range(ACTIVITIES):
            if local and step not in REGULAR_CALLS:
                await workflow.execute_local_activity(noop, step, start_to_close_timeout=timeout)
            else:
                await workflow.execute_activity(noop, step, start_to_close_timeout=timeout)
        return ACTIVITIES
