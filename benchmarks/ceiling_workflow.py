"""The ceiling's workflow: the saga's shape (a recorded local activity, then 7 activities), no work."""

from __future__ import annotations

from datetime import timedelta

from temporalio import activity, workflow

ACTIVITIES = 7


@activity.defn
async def noop(step: int) -> int:
    return step


@activity.defn
async def noop_local() -> int:
    return 0


@workflow.defn
class CeilingWorkflow:
    @workflow.run
    async def run(self) -> int:
        await workflow.execute_local_activity(noop_local, start_to_close_timeout=timedelta(seconds=5))
        for step in range(ACTIVITIES):
            await workflow.execute_activity(noop, step, start_to_close_timeout=timedelta(seconds=10))
        return ACTIVITIES
