"""The Temporal ceiling: what the dev server and one worker carry with no-op activities.

The workflow runs as many sequential activities as ordersaga's success path (7, plus the recorded
policy lookup as a local activity), each returning at once, on the same dev server flags and worker
settings as `ordersaga up`. ordersaga's figures are measured against this.

    .venv/bin/python benchmarks/temporal_ceiling.py --workflows 300 --concurrency 20
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path

from temporalio.client import Client
from temporalio.worker import Worker

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
# The workflow lives in its own module so that the sandbox can re-import it, as it does ours.
sys.path.insert(0, str(Path(__file__).resolve().parent))

from ceiling_workflow import CeilingWorkflow, noop, noop_local

from tests.support.temporal import dev_server


def percentile(values: list[float], q: int) -> float:
    if len(values) < 2:
        return values[0] if values else float("nan")
    return statistics.quantiles(values, n=100, method="inclusive")[q - 1]


async def measure(address: str, workflows: int, concurrency: int) -> dict[str, float]:
    client = await Client.connect(address)
    queue = f"ceiling-{uuid.uuid4().hex[:6]}"
    latencies: list[float] = []
    pending = iter(range(workflows))

    async def runner() -> None:
        for _ in pending:
            started = time.perf_counter()
            await client.execute_workflow(CeilingWorkflow.run, id=f"ceiling-{uuid.uuid4()}", task_queue=queue)
            latencies.append((time.perf_counter() - started) * 1000)

    async with Worker(
        client,
        task_queue=queue,
        workflows=[CeilingWorkflow],
        activities=[noop, noop_local],
        max_concurrent_activities=200,
        max_concurrent_workflow_tasks=100,
    ):
        began = time.perf_counter()
        await asyncio.gather(*(runner() for _ in range(concurrency)))
        elapsed = time.perf_counter() - began
    return {
        "workflows": workflows,
        "concurrency": concurrency,
        "workflows_per_second": round(workflows / elapsed, 2),
        "latency_ms_p50": round(percentile(latencies, 50), 1),
        "latency_ms_p95": round(percentile(latencies, 95), 1),
        "latency_ms_p99": round(percentile(latencies, 99), 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--workflows", type=int, default=300)
    parser.add_argument("--concurrency", type=int, default=20)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as directory:
        server, address = dev_server(Path(directory))
        server.start(timeout=60)
        try:
            result = asyncio.run(measure(address, args.workflows, args.concurrency))
        finally:
            server.stop()
    print(json.dumps(result, indent=2))
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
