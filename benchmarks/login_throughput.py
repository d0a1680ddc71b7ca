"""Logins per second and login latency (p50, p99) at 1, 10 and 50 logins in flight, with the users
service's shipped settings (argon2id cost, hashing concurrency and queue timeout).

    .venv/bin/python benchmarks/login_throughput.py [--seconds 8] [--concurrency 1 10 50] [--json]

It starts its own users service (a real process, SQLite in a temporary directory) and posts the
OAuth2 password form to it **directly** (no gateway: this measures the service's hashing capacity,
not the proxy). Each closed-loop worker logs in as its own customer, so the per-account login
throttle never applies. A 503 `overloaded` (no hashing slot within the queue timeout) is counted
apart and left out of the latencies; at 50 in flight on 2 cores none is expected.
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
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from services.users.settings import Settings
from tests.support.processes import VENV_BIN, ManagedProcess, free_port, http_ok

PASSWORD = "correct horse battery staple"


def start(directory: Path) -> tuple[ManagedProcess, str]:
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    env = {
        "ORDERSAGA_INTERNAL_TOKEN": "benchmark-internal-token",
        "ORDERSAGA_DATA_DIR": str(directory),
        "USERS_DATABASE_URL": f"sqlite+aiosqlite:///{directory / 'users.db'}",
        "USERS_LOG_LEVEL": "WARNING",
    }
    # Shipped settings only: whatever USERS_* the caller's shell has would not be what ships.
    clean = {name: value for name, value in os.environ.items() if not name.startswith("USERS_")}
    process = ManagedProcess(
        "users",
        [str(VENV_BIN / "ordersaga"), "serve", "users", "--port", str(port)],
        directory / "users.log",
        env,
        ready=http_ok(url + "/ready"),
    )
    process.env = {**clean, **env}  # ManagedProcess starts from os.environ; drop the caller's USERS_*
    process.start(timeout=60)
    return process, url


def pct(samples: list[float], q: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1000


async def sign_up_one_by_one(client: httpx.AsyncClient, count: int) -> list[str]:
    names = []
    for _ in range(count):
        name = f"bench_{uuid.uuid4().hex[:10]}"
        body = {"email": f"{name}@example.com", "username": name, "password": PASSWORD}
        response = await client.post("/users", json=body)
        response.raise_for_status()
        names.append(name)
    return names


async def closed_loop(client: httpx.AsyncClient, names: list[str], seconds: float) -> dict[str, float]:
    latencies: list[float] = []
    shed = 0
    other = 0
    deadline = time.perf_counter() + seconds

    async def worker(name: str) -> None:
        nonlocal shed, other
        form = {"username": name, "password": PASSWORD}
        while time.perf_counter() < deadline:
            started = time.perf_counter()
            response = await client.post("/auth/token", data=form)
            elapsed = time.perf_counter() - started
            if response.status_code == 200:
                latencies.append(elapsed)
            elif response.status_code == 503:
                shed += 1
            else:
                other += 1

    started = time.perf_counter()
    await asyncio.gather(*(worker(name) for name in names))
    wall = time.perf_counter() - started
    return {
        "concurrency": len(names),
        "logins": len(latencies),
        "logins_per_second": round(len(latencies) / wall, 1),
        "p50_ms": round(pct(latencies, 0.50), 1),
        "p99_ms": round(pct(latencies, 0.99), 1),
        "max_ms": round(max(latencies) * 1000, 1),
        "shed_503": shed,
        "other_errors": other,
        "seconds": round(wall, 2),
    }


async def run(url: str, levels: list[int], seconds: float) -> list[dict[str, float]]:
    limits = httpx.Limits(max_connections=max(levels), max_keepalive_connections=max(levels))
    async with httpx.AsyncClient(base_url=url, timeout=30, limits=limits) as client:
        names = await sign_up_one_by_one(client, max(levels))
        await closed_loop(client, names[:2], 1.0)  # warm up connections and the allocator
        return [await closed_loop(client, names[:level], seconds) for level in levels]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=8.0, help="closed-loop duration per level")
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 10, 50])
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    args = parser.parse_args()
    shipped = Settings()
    configuration = {
        "argon2": f"m={shipped.argon2_memory_cost_kib} KiB, t={shipped.argon2_time_cost}, "
        f"p={shipped.argon2_parallelism}",
        "hash_concurrency": shipped.password_hash_concurrency,
        "queue_timeout_seconds": shipped.password_hash_queue_timeout_seconds,
        "path": "direct to the users service",
    }
    load_before = os.getloadavg()[0]
    with tempfile.TemporaryDirectory(prefix="login-throughput-") as tmp:
        process, url = start(Path(tmp))
        try:
            rows = asyncio.run(run(url, args.concurrency, args.seconds))
        finally:
            process.stop()
    machine = {
        "cpus": os.cpu_count(),
        "load_average_before": round(load_before, 2),
        "load_average_after": round(os.getloadavg()[0], 2),
    }
    if args.json:
        print(json.dumps({"machine": machine, "configuration": configuration, "results": rows}, indent=2))
        return 0
    print(f"{machine} {configuration}")
    print("| in flight | logins/s | p50 | p99 | max | 503 overloaded | other errors |")
    print("|---|---|---|---|---|---|---|")
    for row in rows:
        print(
            f"| {row['concurrency']} | {row['logins_per_second']} | {row['p50_ms']} ms | {row['p99_ms']} ms "
            f"| {row['max_ms']} ms | {row['shed_503']} | {row['other_errors']} |"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
