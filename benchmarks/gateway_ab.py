"""Two builds of the gateway side by side: each source tree's gateway in front of one inventory
service, `GET /products/{id}` alternated between them request by request, and for each the CPU time
per request (from /proc) and the latency percentiles. For judging a change to the gateway when
the machine's speed drifts between runs: both builds meet the same drift.

    git worktree add /tmp/before <commit>
    .venv/bin/python benchmarks/gateway_ab.py /tmp/before . [--requests 3000]
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.gateway_overhead import TOKEN, cpu_seconds, latencies, pct, product_path, start_all, stop
from tests.support.processes import VENV_BIN, ManagedProcess, free_port, http_ok


def start(directory: Path, trees: dict[str, Path]) -> tuple[dict[str, ManagedProcess], str, dict[str, str]]:
    inventory_port = free_port()
    direct = f"http://127.0.0.1:{inventory_port}"
    env = {
        "ORDERSAGA_INTERNAL_TOKEN": TOKEN,
        "ORDERSAGA_DATA_DIR": str(directory),
        "INVENTORY_LOG_LEVEL": "WARNING",
        "GATEWAY_LOG_LEVEL": "WARNING",
        "GATEWAY_INVENTORY_URL": direct,
        "GATEWAY_RATE_LIMIT_ANON": "1000000/minute",
    }
    serve = [str(VENV_BIN / "ordersaga"), "serve"]
    processes = {
        "inventory": ManagedProcess(
            "inventory",
            [*serve, "inventory", "--port", str(inventory_port)],
            directory / "inventory.log",
            env,
            ready=http_ok(direct + "/ready"),
        )
    }
    gateways: dict[str, str] = {}
    for name, tree in trees.items():
        port = free_port()
        processes[name] = ManagedProcess(
            name,
            [*serve, "gateway", "--port", str(port)],
            directory / f"gateway-{name}.log",
            {**env, "PYTHONPATH": str(tree)},  # that tree's code, the same installed packages
            ready=http_ok(f"http://127.0.0.1:{port}/health"),
        )
        gateways[name] = f"http://127.0.0.1:{port}/api/v1"
    start_all(processes)
    return processes, direct, gateways


async def measure(
    processes: dict[str, ManagedProcess], direct: str, gateways: dict[str, str], requests: int
) -> None:
    async with httpx.AsyncClient(timeout=30) as client:
        path = await product_path(client, direct)
        urls = {name: base + path for name, base in gateways.items()}
        for url in urls.values():
            await latencies(client, url, 200)
        before = {name: cpu_seconds(processes[name]) for name in urls}
        samples: dict[str, list[float]] = {name: [] for name in urls}
        for _ in range(requests):
            for name, url in urls.items():
                samples[name] += await latencies(client, url, 1)
        for name in urls:
            cpu_ms = (cpu_seconds(processes[name]) - before[name]) * 1000 / requests
            print(
                f"{name:<7} CPU {cpu_ms:.3f} ms/request  latency p50 {pct(samples[name], 0.5):.2f} ms"
                f"  p99 {pct(samples[name], 0.99):.2f} ms"
            )


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("a", type=Path, help="source tree of build A (its root, with services/)")
    parser.add_argument("b", type=Path, help="source tree of build B")
    parser.add_argument("--requests", type=int, default=3000, help="requests to each build")
    args = parser.parse_args()
    trees = {"A": args.a.resolve(), "B": args.b.resolve()}
    print(f"A = {trees['A']}\nB = {trees['B']}")
    with tempfile.TemporaryDirectory(prefix="ordersaga-ab-") as tmp:
        processes, direct, gateways = start(Path(tmp), trees)
        try:
            asyncio.run(measure(processes, direct, gateways, args.requests))
        finally:
            stop(processes)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
