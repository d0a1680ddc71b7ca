"""What open saga streams (GET /api/v1/orders/{id}/saga/stream) cost the stack: its CPU with N streams
open on sagas that wait (for review), against the same stack with none, over the same time.

    .venv/bin/python benchmarks/saga_streams.py [--streams 50] [--seconds 30] [--rounds 1]
                                                [--poll 1.0] [--quiet-poll 4.0] [--json]

It starts the whole stack as real processes (Temporal dev server, the five services on SQLite,
the worker, the gateway), places `--streams` orders big enough to wait for review, and then, for
each round, measures the CPU time (utime + stime from /proc, every process of the stack and its
children) for `--seconds` with no stream open and for `--seconds` with one stream open per order,
read by this script as the order page would (its own CPU is not counted). `--poll` and
`--quiet-poll` set ORDERS_SAGA_STREAM_POLL_SECONDS and ORDERS_SAGA_STREAM_QUIET_POLL_SECONDS: how
often each stream asks its workflow for its view while it changes, and at most while it does not
(the defaults are the shipped ones; `--quiet-poll 1` keeps asking every second).
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
from typing import Any

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.proc_cpu import cpu_seconds, descendants
from services.users.tokens import KEY_FILE_NAME, TokenIssuer, load_private_key
from tests.support.processes import VENV_BIN, ManagedProcess, free_port, http_ok
from tests.support.stack import Stack

PASSWORD = "correct-horse-battery"


def per_process(processes: dict[str, ManagedProcess]) -> dict[str, float]:
    return {
        name: sum(cpu_seconds(pid) for pid in descendants([process.proc.pid]))
        for name, process in processes.items()
        if process.proc is not None
    }


def start_gateway(stack: Stack) -> tuple[ManagedProcess, str]:
    port = free_port()
    env = dict(stack.common_env)
    env.update({f"GATEWAY_{name.upper()}_URL": stack.url(name) for name in stack.ports})
    env.update(
        GATEWAY_LOG_LEVEL="WARNING",
        GATEWAY_RATE_LIMIT_AUTH="100000/minute",
        GATEWAY_RATE_LIMIT_USER="100000/minute",
    )
    argv = [str(VENV_BIN / "ordersaga"), "serve", "gateway", "--port", str(port)]
    url = f"http://127.0.0.1:{port}"
    process = ManagedProcess(
        "gateway", argv, stack.directory / "gateway.log", env, ready=http_ok(url + "/health")
    )
    return process.start(timeout=90), url


async def waiting_orders(
    api: httpx.AsyncClient, admin: dict[str, str], count: int
) -> tuple[dict[str, str], list[str]]:
    tag = uuid.uuid4().hex[:8]
    user = await api.post(
        "/users",
        json={
            "email": f"bench{tag}@example.com",
            "username": f"bench{tag}",
            "password": PASSWORD,
            "profile": {"first_name": "Bench", "last_name": tag},
        },
    )
    user.raise_for_status()
    login = await api.post("/auth/token", data={"username": f"bench{tag}", "password": PASSWORD})
    auth = {"Authorization": f"Bearer {login.json()['access_token']}"}
    card = await api.post(
        "/payment-methods",
        json={"card_number": "4242424242424242", "exp_month": 12, "exp_year": 2035, "cvc": "123"},
        headers=auth,
    )
    card.raise_for_status()
    product = await api.post(
        "/products",
        json={
            "sku": f"BENCH-{tag}",
            "name": "Benchmark",
            "description": "waits for review",
            "price_cents": 1_250,
            "currency": "USD",
            "stock": 100 * count + 10,
        },
        headers=admin,
    )
    product.raise_for_status()
    body = {
        "items": [{"product_id": product.json()["id"], "quantity": 100}],
        "payment_method_id": card.json()["id"],
    }
    ids = []
    for _ in range(count):  # 100 x 12.50 is over the review threshold: each saga waits for review
        placed = await api.post("/orders", json=body, headers={**auth, "Idempotency-Key": uuid.uuid4().hex})
        placed.raise_for_status()
        ids.append(str(placed.json()["id"]))
    deadline = time.monotonic() + 300
    customer_id = str(user.json()["id"])
    while True:
        page = await api.get(
            "/orders",
            params={"customer_id": customer_id, "status": "AWAITING_REVIEW", "limit": 100},
            headers=admin,
        )
        if len(page.json()["items"]) == count:
            return auth, ids
        if time.monotonic() > deadline:
            raise RuntimeError(f"only {len(page.json()['items'])} of {count} orders reached review")
        await asyncio.sleep(1)


async def hold_streams(
    api: httpx.AsyncClient,
    auth: dict[str, str],
    ids: list[str],
    seconds: float,
    running: dict[str, ManagedProcess],
) -> tuple[dict[str, int], dict[str, float], dict[str, float], float]:
    """One stream per order, read to the byte; the stack's CPU is read once all are open and again
    `seconds` later, so that opening them (tokens, TLS-less connects) is not in the figure."""
    counts = {"events": 0, "keep_alives": 0, "opened": 0}
    opened = asyncio.Event()

    async def one(order_id: str) -> None:
        timeout = httpx.Timeout(10, read=None)
        async with api.stream("GET", f"/orders/{order_id}/saga/stream", headers=auth, timeout=timeout) as r:
            r.raise_for_status()
            async for line in r.aiter_lines():
                if line.startswith("event:"):
                    counts["events"] += 1
                    if counts["events"] == len(ids):  # every stream has sent its first view
                        opened.set()
                elif line.startswith(": keep-alive"):
                    counts["keep_alives"] += 1

    tasks = [asyncio.create_task(one(order_id)) for order_id in ids]
    await asyncio.wait_for(opened.wait(), 120)
    counts["opened"] = len(ids)
    await asyncio.sleep(1)
    before, started = per_process(running), time.monotonic()
    await asyncio.sleep(seconds)
    after, wall = per_process(running), time.monotonic() - started
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    return counts, before, after, wall


async def measure(args: argparse.Namespace) -> dict[str, Any]:
    load_at_start = os.getloadavg()
    with tempfile.TemporaryDirectory(prefix="saga-streams-") as raw:
        stack = Stack(
            Path(raw),
            extra_env={
                "ORDERS_SAGA_STREAM_POLL_SECONDS": str(args.poll),
                "ORDERS_SAGA_STREAM_QUIET_POLL_SECONDS": str(args.quiet_poll),
                "ORDERS_LOG_LEVEL": "WARNING",
            },
        )
        stack.start()
        gateway, url = start_gateway(stack)
        processes = {"temporal": stack.temporal, **stack.processes, "gateway": gateway}
        running = {name: process for name, process in processes.items() if process is not None}
        try:
            issuer = TokenIssuer(load_private_key((Path(raw) / "data" / KEY_FILE_NAME).read_bytes()), 3600)
            admin = {"Authorization": f"Bearer {issuer.issue(uuid.uuid4(), 'admin').access_token}"}
            async with httpx.AsyncClient(
                base_url=url + "/api/v1", timeout=30, limits=httpx.Limits(max_connections=200)
            ) as api:
                auth, ids = await waiting_orders(api, admin, args.streams)
                await asyncio.sleep(5)  # let the placements' work settle
                rounds = []
                for _ in range(args.rounds):
                    before = per_process(running)
                    started = time.monotonic()
                    await asyncio.sleep(args.seconds)
                    idle_wall = time.monotonic() - started
                    middle = per_process(running)
                    counts, opened, after, streams_wall = await hold_streams(
                        api, auth, ids, args.seconds, running
                    )
                    rounds.append(
                        {
                            "idle": {k: (middle[k] - before[k]) / idle_wall for k in before},
                            "streams": {k: (after[k] - opened[k]) / streams_wall for k in before},
                            "counts": counts,
                        }
                    )
        finally:
            gateway.stop()
            stack.stop()
    return {
        "streams": args.streams,
        "seconds": args.seconds,
        "poll": args.poll,
        "quiet_poll": args.quiet_poll,
        "rounds": rounds,
        "load_at_start": load_at_start,
        "load_average": os.getloadavg(),
    }


def report(result: dict[str, Any]) -> str:
    lines = [
        f"{result['streams']} streams on sagas waiting for review, {result['seconds']} s each phase, "
        f"poll {result['poll']} s, quiet {result['quiet_poll']} s; CPU in cores (CPU seconds per "
        f"wall second); load average {result['load_at_start']} at the start, "
        f"{result['load_average']} at the end"
    ]
    for n, one in enumerate(result["rounds"], 1):
        names = list(one["idle"])
        lines.append(f"round {n}: " + ", ".join(f"{k}" for k in names))
        idle_total, streams_total = sum(one["idle"].values()), sum(one["streams"].values())
        for name in names:
            lines.append(
                f"  {name:14} 0 streams {one['idle'][name]:.3f}   streams {one['streams'][name]:.3f}"
            )
        lines.append(
            f"  {'whole stack':14} 0 streams {idle_total:.3f}   streams {streams_total:.3f}   "
            f"difference {streams_total - idle_total:+.3f} cores "
            f"({(streams_total - idle_total) / result['streams'] * 1000:.1f} ms of CPU per stream-second)"
        )
        lines.append(f"  received: {one['counts']}")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--streams", type=int, default=50)
    parser.add_argument("--seconds", type=float, default=30.0)
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--poll", type=float, default=1.0)
    parser.add_argument("--quiet-poll", type=float, default=4.0)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    result = asyncio.run(measure(args))
    print(json.dumps(result, indent=2) if args.json else report(result))


if __name__ == "__main__":
    main()
