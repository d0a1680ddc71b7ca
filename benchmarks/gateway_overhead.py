"""What the gateway adds to `GET /products/{id}`: latency (p50, p99) and throughput, direct vs through
the gateway, measured in the same run against the same inventory process.

    .venv/bin/python benchmarks/gateway_overhead.py [--requests 2000] [--seconds 8] [--concurrency 32]
                                                    [--bare-relay] [--json]

It starts its own inventory service and gateway (real processes, SQLite in a temporary directory),
creates one product, then alternates the paths so that drift on the machine hits them alike.
Latency is measured one request at a time; throughput with `--concurrency` requests in flight.
It also reads the gateway's CPU time per request from /proc, a figure that the machine's other
load does not distort the way it distorts latency. `--bare-relay` adds a third path, the floor of
`bare_relay.py` (uvicorn + aiohttp, no gateway logic).
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

from benchmarks import proc_cpu
from services.kit.identity import identity_headers
from tests.support.processes import VENV_BIN, ManagedProcess, free_port, http_ok, tcp_open

TOKEN = "benchmark-internal-token"


def cpu_seconds(process: ManagedProcess) -> float:
    assert process.proc is not None
    return proc_cpu.cpu_seconds(process.proc.pid)


def start(directory: Path, *, bare_relay: bool = False) -> tuple[dict[str, ManagedProcess], dict[str, str]]:
    inventory_port, gateway_port, relay_port = free_port(), free_port(), free_port()
    env = {
        "ORDERSAGA_INTERNAL_TOKEN": TOKEN,
        "ORDERSAGA_DATA_DIR": str(directory),
        "INVENTORY_LOG_LEVEL": "WARNING",
        "GATEWAY_LOG_LEVEL": "WARNING",
        "GATEWAY_INVENTORY_URL": f"http://127.0.0.1:{inventory_port}",
        "GATEWAY_RATE_LIMIT_ANON": "1000000/minute",  # measure the proxy, not the limiter's refusals
    }
    direct, gateway = f"http://127.0.0.1:{inventory_port}", f"http://127.0.0.1:{gateway_port}"
    processes = {
        "direct": ManagedProcess(
            "inventory",
            [str(VENV_BIN / "ordersaga"), "serve", "inventory", "--port", str(inventory_port)],
            directory / "inventory.log",
            env,
            ready=http_ok(direct + "/ready"),
        ),
        "gateway": ManagedProcess(
            "gateway",
            [str(VENV_BIN / "ordersaga"), "serve", "gateway", "--port", str(gateway_port)],
            directory / "gateway.log",
            env,
            ready=http_ok(gateway + "/health"),
        ),
    }
    bases = {"direct": direct, "gateway": gateway + "/api/v1"}
    if bare_relay:
        relay = f"http://127.0.0.1:{relay_port}"
        argv = [str(VENV_BIN / "uvicorn"), "--app-dir", str(Path(__file__).parent), "bare_relay:app"]
        processes["bare_relay"] = ManagedProcess(
            "bare_relay",
            [*argv, "--port", str(relay_port), "--no-access-log", "--log-level", "warning"],
            directory / "bare_relay.log",
            {"BARE_RELAY_UPSTREAM": direct},
            ready=lambda: tcp_open(relay_port),
        )
        bases["bare_relay"] = relay + "/api/v1"
    start_all(processes)
    return processes, bases


def start_all(processes: dict[str, ManagedProcess]) -> None:
    try:
        for process in processes.values():
            process.start(timeout=60)
    except BaseException:
        stop(processes)  # one that failed to start must not leave the others running
        raise


def stop(processes: dict[str, ManagedProcess]) -> None:
    for process in reversed(processes.values()):
        process.stop()


async def product_path(client: httpx.AsyncClient, inventory: str) -> str:
    """Creates the product every request reads, straight at the inventory service; its path."""
    created = await client.post(
        inventory + "/products",
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
    return f"/products/{created.json()['id']}"


async def latencies(client: httpx.AsyncClient, url: str, count: int) -> list[float]:
    samples = []
    for _ in range(count):
        started = time.perf_counter()
        response = await client.get(url)
        samples.append(time.perf_counter() - started)
        assert response.status_code == 200, response.text
    return samples


async def throughput(
    client: httpx.AsyncClient, url: str, seconds: float, concurrency: int
) -> tuple[int, float]:
    """Requests done and the seconds they took, `concurrency` in flight."""
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
    return done, time.perf_counter() - started


def pct(samples: list[float], q: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1000


async def run(
    args: argparse.Namespace, processes: dict[str, ManagedProcess], bases: dict[str, str]
) -> dict[str, float]:
    limits = httpx.Limits(max_connections=args.concurrency, max_keepalive_connections=args.concurrency)
    async with httpx.AsyncClient(timeout=30, limits=limits) as client:
        path = await product_path(client, bases["direct"])
        urls = {name: base + path for name, base in bases.items()}
        for url in urls.values():  # warm up connections, caches and the JIT-less interpreter alike
            await latencies(client, url, 200)
        samples: dict[str, list[float]] = {name: [] for name in urls}
        rates: dict[str, list[float]] = {name: [] for name in urls}
        # CPU of the proxying processes, and how many requests they served, per phase.
        proxies = [name for name in urls if name != "direct"]
        cpu = {(name, phase): 0.0 for name in proxies for phase in ("sequential", "concurrent")}
        served = {(name, phase): 0 for name in proxies for phase in ("sequential", "concurrent")}
        rounds = 4
        for _ in range(rounds):
            # One request each way in turn, so that whatever else the machine does hits all alike.
            before = {name: cpu_seconds(processes[name]) for name in proxies}
            for _ in range(args.requests // rounds):
                for name, url in urls.items():
                    samples[name] += await latencies(client, url, 1)
            for name in proxies:
                cpu[name, "sequential"] += cpu_seconds(processes[name]) - before[name]
                served[name, "sequential"] += args.requests // rounds
            for name, url in urls.items():
                before_one = cpu_seconds(processes[name])
                done, elapsed = await throughput(client, url, args.seconds / rounds, args.concurrency)
                rates[name].append(done / elapsed)
                if name in proxies:
                    cpu[name, "concurrent"] += cpu_seconds(processes[name]) - before_one
                    served[name, "concurrent"] += done
    result: dict[str, float] = {}
    for name in urls:
        result[f"{name}_p50_ms"] = pct(samples[name], 0.50)
        result[f"{name}_p99_ms"] = pct(samples[name], 0.99)
        result[f"{name}_rps"] = statistics.fmean(rates[name])
    for name in proxies:
        label = "" if name == "gateway" else f"{name}_"
        result[f"{label}added_p50_ms"] = result[f"{name}_p50_ms"] - result["direct_p50_ms"]
        result[f"{label}added_p99_ms"] = result[f"{name}_p99_ms"] - result["direct_p99_ms"]
        result[f"{label}throughput_ratio"] = result[f"{name}_rps"] / result["direct_rps"]
        for phase in ("sequential", "concurrent"):
            result[f"{name}_cpu_ms_per_request_{phase}"] = 1000 * cpu[name, phase] / served[name, phase]
    return result


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--requests", type=int, default=2000, help="sequential requests per path")
    parser.add_argument("--seconds", type=float, default=8.0, help="throughput time per path")
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--json", action="store_true", help="print the figures as JSON")
    parser.add_argument("--bare-relay", action="store_true", help="also measure bare_relay.py, the floor")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="ordersaga-bench-") as tmp:
        processes, bases = start(Path(tmp), bare_relay=args.bare_relay)
        try:
            result = asyncio.run(run(args, processes, bases))
        finally:
            stop(processes)
    if args.json:
        print(json.dumps(result, indent=2))
        return 0
    print(f"machine: {os.cpu_count()} CPUs; load generator on the same machine")
    for name in bases:
        p50, p99, rps = (result[f"{name}_{key}"] for key in ("p50_ms", "p99_ms", "rps"))
        print(f"latency    {name:<10} p50 {p50:.2f} ms  p99 {p99:.2f} ms  throughput {rps:.0f} req/s")
    for name in bases:
        if name == "direct":
            continue
        label = "" if name == "gateway" else f"{name}_"
        added50, added99, ratio = (
            result[f"{label}{key}"] for key in ("added_p50_ms", "added_p99_ms", "throughput_ratio")
        )
        one, many = (result[f"{name}_cpu_ms_per_request_{phase}"] for phase in ("sequential", "concurrent"))
        print(
            f"{name:<10} adds p50 {added50:.2f} ms, p99 {added99:.2f} ms; throughput {ratio:.0%} of direct;"
            f" CPU {one:.2f} ms/request one at a time, {many:.2f} with {args.concurrency} in flight"
        )
    print("targets: gateway adds < 2 ms at p50, keeps >= 60% of direct throughput")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
