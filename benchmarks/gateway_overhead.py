"""What the gateway adds to `GET /products/{id}`: latency (p50, p99) and throughput, direct vs through
the gateway, measured in the same run against the same inventory process.

    .venv/bin/python benchmarks/gateway_overhead.py [--requests 2000] [--seconds 8] [--concurrency 32]

It starts its own inventory service and gateway (real processes, SQLite in a temporary directory),
creates one product, then alternates the two paths so that drift on the machine hits both alike.
Latency is measured one request at a time; throughput with `--concurrency` requests in flight.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from services.kit.identity import identity_headers
from tests.support.processes import VENV_BIN, ManagedProcess, free_port, http_ok

TOKEN = "benchmark-internal-token"


def start(directory: Path) -> tuple[list[ManagedProcess], str, str]:
    inventory_port, gateway_port = free_port(), free_port()
    env = {
        "ORDERSAGA_INTERNAL_TOKEN": TOKEN,
        "ORDERSAGA_DATA_DIR": str(directory),
        "INVENTORY_LOG_LEVEL": "WARNING",
        "GATEWAY_LOG_LEVEL": "WARNING",
        "GATEWAY_INVENTORY_URL": f"http://127.0.0.1:{inventory_port}",
        "GATEWAY_RATE_LIMIT_ANON": "1000000/minute",  # measure the proxy, not the limiter's refusals
    }
    direct, gateway = f"http://127.0.0.1:{inventory_port}", f"http://127.0.0.1:{gateway_port}"
    processes = [
        ManagedProcess(
            "inventory",
            [str(VENV_BIN / "ordersaga"), "serve", "inventory", "--port", str(inventory_port)],
            directory / "inventory.log",
            env,
            ready=http_ok(direct + "/ready"),
        ),
        ManagedProcess(
            "gateway",
            [str(VENV_BIN / "ordersaga"), "serve", "gateway", "--port", str(gateway_port)],
            directory / "gateway.log",
            env,
            ready=http_ok(gateway + "/health"),
        ),
    ]
    for process in processes:
        process.start(timeout=60)
    return processes, direct, gateway + "/api/v1"


async def latencies(client: httpx.AsyncClient, url: str, count: int) -> list[float]:
    samples = []
    for _ in range(count):
        started = time.perf_counter()
        response = await client.get(url)
        samples.append(time.perf_counter() - started)
        assert response.status_code == 200, response.text
    return samples


async def throughput(client: httpx.AsyncClient, url: str, seconds: float, concurrency: int) -> float:
    done = 0
    deadline = time.perf_counter() + seconds

    async def worker() -> None:
        nonlocal done
        while time.perf_counter() < deadline:
            response = await client.get(url)
            assert response.status_code == 200, response.text
            done += 1

    started = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return done / (time.perf_counter() - started)


def pct(samples: list[float], q: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1000


async def run(args: argparse.Namespace, direct: str, gateway: str) -> dict[str, float]:
    limits = httpx.Limits(max_connections=args.concurrency, max_keepalive_connections=args.concurrency)
    async with httpx.AsyncClient(timeout=30, limits=limits) as client:
        created = await client.post(
            direct + "/products",
            json={
                "sku": "BENCH-1",
                "name": "bench",
                "description": "",
                "price_cents": 100,
                "currency": "USD",
                "stock": 5,
            },
            headers=identity_headers(TOKEN, "admin", "00000000-0000-0000-0000-000000000001"),
        )
        assert created.status_code == 201, created.text
        path = f"/products/{created.json()['id']}"
        urls = {"direct": direct + path, "gateway": gateway + path}
        for url in urls.values():  # warm up connections, caches and the JIT-less interpreter alike
            await latencies(client, url, 200)
        samples: dict[str, list[float]] = {"direct": [], "gateway": []}
        rates: dict[str, list[float]] = {"direct": [], "gateway": []}
        rounds = 4
        for _ in range(rounds):
            # One request each way in turn, so that whatever else the machine does hits both alike.
            for _ in range(args.requests // rounds):
                for name, url in urls.items():
                    samples[name] += await latencies(client, url, 1)
            for name, url in urls.items():
                rates[name].append(await throughput(client, url, args.seconds / rounds, args.concurrency))
    result = {}
    for name in urls:
        result[f"{name}_p50_ms"] = pct(samples[name], 0.50)
        result[f"{name}_p99_ms"] = pct(samples[name], 0.99)
        result[f"{name}_rps"] = statistics.fmean(rates[name])
    result["added_p50_ms"] = result["gateway_p50_ms"] - result["direct_p50_ms"]
    result["added_p99_ms"] = result["gateway_p99_ms"] - result["direct_p99_ms"]
    result["throughput_ratio"] = result["gateway_rps"] / result["direct_rps"]
    return result


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--requests", type=int, default=2000, help="sequential requests per path")
    parser.add_argument("--seconds", type=float, default=8.0, help="throughput time per path")
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--json", action="store_true", help="print the figures as JSON")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="ordersaga-bench-") as tmp:
        processes, direct, gateway = start(Path(tmp))
        try:
            result = asyncio.run(run(args, direct, gateway))
        finally:
            for process in reversed(processes):
                process.stop()
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        print(f"machine: {os.cpu_count()} CPUs; load generator on the same machine")
        print(f"latency  direct  p50 {result['direct_p50_ms']:.2f} ms  p99 {result['direct_p99_ms']:.2f} ms")
        print(
            f"latency  gateway p50 {result['gateway_p50_ms']:.2f} ms  p99 {result['gateway_p99_ms']:.2f} ms"
        )
        print(
            f"added    p50 {result['added_p50_ms']:.2f} ms  p99 {result['added_p99_ms']:.2f} ms"
            "  (target p50 < 2 ms)"
        )
        print(
            f"throughput direct {result['direct_rps']:.0f} req/s, gateway {result['gateway_rps']:.0f} req/s"
            f" = {result['throughput_ratio']:.0%} (target >= 60%)"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
