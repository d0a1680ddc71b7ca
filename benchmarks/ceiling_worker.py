"""The ceiling's worker, in its own process as ordersaga's is: `ceiling_worker.py ADDRESS TASK_QUEUE`.

Same connection (services.kit.temporal.connect), the same slot and shutdown settings as
ordersaga's worker (workers/settings.py defaults), and its bytecode cache for the sandbox; it
prints `ceiling_worker_started` once polling.
"""

from __future__ import annotations

import asyncio
import signal
import sys
from datetime import timedelta
from pathlib import Path

from temporalio.worker import Worker

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from ceiling_workflow import CeilingWorkflow, noop, noop_local

from services.kit.temporal import TemporalSettings, connect
from workers.main import keep_workflow_bytecode
from workers.settings import WorkerSettings

READY = "ceiling_worker_started"


async def serve(address: str, task_queue: str) -> None:
    settings = WorkerSettings()
    keep_workflow_bytecode()
    client = await connect(TemporalSettings(address=address))
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    async with Worker(
        client,
        task_queue=task_queue,
        workflows=[CeilingWorkflow],
        activities=[noop, noop_local],
        max_concurrent_activities=settings.max_concurrent_activities,
        max_concurrent_workflow_tasks=settings.max_concurrent_workflow_tasks,
        graceful_shutdown_timeout=timedelta(seconds=settings.graceful_shutdown_seconds),
    ):
        print(READY, flush=True)
        await stop.wait()


if __name__ == "__main__":
    asyncio.run(serve(sys.argv[1], sys.argv[2]))
