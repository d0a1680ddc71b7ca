"""The ceiling's workflow: the saga's shape (a recorded local activity, then 7 calls), no work.

With `local` (the saga's default, WORKER_LOCAL_ACTIVITIES) the calls are local activities except the
fourth, as the saga keeps only the charge a regular activity; without it all 7 are regular.
"""

from __future__ import annotations

from datetime import timedelta

from temporalio import activity, workflow

ACTIVITIES = 7
CHARGE = 3  # create order, validate customer, reserve stock, *charge*, commit, confirm, notify


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
            if local and step != CHARGE:
                await workflow.execute_local_activity(noop, step, start_to_close_timeout=timeout)
            else:
                await workflow.execute_activity(noop, step, start_to_close_timeout=timeout)
        return ACTIVITIES
