"""The Temporal ceiling: what the dev server and one worker carry with no-op activities.

The workflow runs as many sequential activities as ordersaga's success path (7, plus the recorded
policy lookup as a local activity), each returning at once, on the same dev server flags
(tests/support/temporal.py, with services/kit/temporal.py's dynamic config) and worker settings
(workers/settings.py defaults, in its own process) as `ordersaga up`. ordersaga is measured against it.

Closed loop: `--concurrency` workflows in flight, each started when one ends. Open loop (`--rate`):
workflows started on a fixed schedule whatever their latency; latency is start → result.

    .venv/bin/python benchmarks/temporal_ceiling.py --workflows 300 --concurrency 20
    .venv/bin/python benchmarks/temporal_ceiling.py --workflows 300 --rate 10
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from temporalio.client import Client

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
# The workflow lives in its own module so that the sandbox can re-import it, as it does ours.
sys.path.insert(0, str(Path(__file__).resolve().parent))

from ceiling_worker import READY
from ceiling_workflow import CeilingWorkflow
from proc_cpu import cpu_seconds, descendants

from ordersaga.load import percentiles
from services.kit.temporal import TemporalSettings, connect
from tests.support.processes import ManagedProcess
from tests.support.temporal import dev_server
from workers.settings import WorkerSettings

WORKER_SCRIPT = Path(__file__).resolve().parent / "ceiling_worker.py"
# Shaped like the saga as ordersaga's worker would run it (WORKER_LOCAL_ACTIVITIES, default on).
LOCAL_ACTIVITIES = WorkerSettings().local_activities


@dataclass(frozen=True)
class Ceiling:
    address: str
    task_queue: str
    server_pid: int
    worker_pid: int

    def cpu(self) -> dict[str, float]:
        """CPU seconds so far of the dev server (its tree), the worker, and this process (the client)."""
        own = os.times()
        return {
            "temporal_server": sum(cpu_seconds(pid) for pid in descendants([self.server_pid])),
            "worker": cpu_seconds(self.worker_pid),
            "client": own.user + own.system,
        }


@contextmanager
def running_ceiling(directory: Path) -> Iterator[Ceiling]:
    """A dev server and the ceiling's worker process, stopped on exit."""
    server, address = dev_server(directory)
    server.start(timeout=60)
    queue = f"ceiling-{uuid.uuid4().hex[:6]}"
    log = directory / "ceiling-worker.log"
    worker = ManagedProcess(
        "ceiling-worker",
        [sys.executable, str(WORKER_SCRIPT), address, queue],
        log,
        {"PYTHONUNBUFFERED": "1"},
        ready=lambda: log.exists() and READY in log.read_text(errors="replace"),
    )
    try:
        worker.start(timeout=60)
        assert server.proc is not None and worker.proc is not None
        yield Ceiling(address, queue, server.proc.pid, worker.proc.pid)
    finally:
        worker.stop()
        server.stop()


async def _client(ceiling: Ceiling) -> Client:
    return await connect(TemporalSettings(address=ceiling.address))


async def _one(client: Client, ceiling: Ceiling) -> None:
    await client.execute_workflow(
        CeilingWorkflow.run,
        LOCAL_ACTIVITIES,
        id=f"ceiling-{uuid.uuid4()}",
        task_queue=ceiling.task_queue,
    )


async def _warm_up(client: Client, ceiling: Ceiling, count: int) -> None:
    """Connections, the worker's sandbox and the server's caches, before anything is measured."""
    await asyncio.gather(*(_one(client, ceiling) for _ in range(count)))


def _summary(
    latencies: list[float], first_start: float, last_end: float, cpu_spent: dict[str, float]
) -> dict[str, Any]:
    window = max(last_end - first_start, 1e-6)
    cuts = percentiles(latencies)
    done = max(len(latencies), 1)
    per_workflow = {name: round(seconds * 1000 / done, 1) for name, seconds in cpu_spent.items()}
    return {
        # The floor under ordersaga's CPU per order: Temporal's share of a saga of this shape.
        "cpu_ms_per_workflow": per_workflow | {"total": round(sum(per_workflow.values()), 1)},
        "completed": len(latencies),
        "workflows_per_second": round(len(latencies) / window, 2),
        "latency_ms_p50": cuts["p50"],
        "latency_ms_p95": cuts["p95"],
        "latency_ms_p99": cuts["p99"],
        "latency_ms_max": cuts["max"],
    }


def _spent(before: dict[str, float], after: dict[str, float]) -> dict[str, float]:
    return {name: after[name] - before[name] for name in after}


async def closed_loop(ceiling: Ceiling, workflows: int, concurrency: int, warmup: int = 10) -> dict[str, Any]:
    client = await _client(ceiling)
    await _warm_up(client, ceiling, warmup)
    latencies: list[float] = []
    pending = iter(range(workflows))

    async def runner() -> None:
        for _ in pending:
            started = time.perf_counter()
            await _one(client, ceiling)
            latencies.append((time.perf_counter() - started) * 1000)

    cpu_before = ceiling.cpu()
    began = time.perf_counter()
    await asyncio.gather(*(runner() for _ in range(concurrency)))
    ended = time.perf_counter()
    shape = {"local_activities": LOCAL_ACTIVITIES}
    return {"mode": "closed", "workflows": workflows, "concurrency": concurrency, **shape} | _summary(
        latencies, began, ended, _spent(cpu_before, ceiling.cpu())
    )


async def open_loop(ceiling: Ceiling, workflows: int, rate: float, warmup: int = 10) -> dict[str, Any]:
    client = await _client(ceiling)
    await _warm_up(client, ceiling, warmup)
    latencies: list[float] = []
    ends: list[float] = []

    async def timed() -> None:
        started = time.perf_counter()
        await _one(client, ceiling)
        ends.append(time.perf_counter())
        latencies.append((ends[-1] - started) * 1000)

    cpu_before = ceiling.cpu()
    began = time.perf_counter()
    tasks = []
    for index in range(workflows):
        delay = began + index / rate - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        tasks.append(asyncio.create_task(timed()))
    sending = time.perf_counter() - began
    await asyncio.gather(*tasks)
    cpu_spent = _spent(cpu_before, ceiling.cpu())
    return {
        "mode": "open",
        "local_activities": LOCAL_ACTIVITIES,
        "workflows": workflows,
        "offered_rate": rate,
        # Below the offered rate when the generator itself could not keep the schedule.
        "started_per_second": round(workflows / max(sending, 1e-6) if workflows > 1 else rate, 2),
    } | _summary(latencies, began, max(ends, default=began), cpu_spent)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--workflows", type=int, default=300)
    loop = parser.add_mutually_exclusive_group()
    loop.add_argument("--concurrency", type=int, default=20, help="closed loop: workflows in flight")
    loop.add_argument("--rate", type=float, help="open loop: workflows started per second")
    parser.add_argument("--warmup", type=int, default=10, help="workflows run first, not measured")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    with (
        tempfile.TemporaryDirectory(prefix="ordersaga-ceiling-") as directory,
        running_ceiling(Path(directory)) as ceiling,
    ):
        if args.rate:
            result = asyncio.run(open_loop(ceiling, args.workflows, args.rate, args.warmup))
        else:
            result = asyncio.run(closed_loop(ceiling, args.workflows, args.concurrency, args.warmup))
    print(json.dumps(result, indent=2))
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
