"""CPU per order by process, CPU per internal call by service, and outbox lag, for source trees side by
side: each tree's `ordersaga up` stack in turn (same installed packages, the tree's code first on
PYTHONPATH), the same `ordersaga load` runs against each, CPU time (utime + stime) from /proc.

    git worktree add /tmp/before <commit>
    .venv/bin/python benchmarks/order_cpu.py /tmp/before . [--orders 200] [--rounds 2] [--json out.json]

Per tree and round: a warm-up, then
- `sequential`: one order at a time (`--concurrency 1`): CPU per order by process, and each service's
  CPU divided by the requests the saga made to it (its `http_requests_total` by route, from
  /metrics), which includes the outbox work those requests triggered (the relay runs in-process);
- `closed`: `--concurrency 20`: CPU per order by process, completed/s, and the outbox lag of every
  event of the run (published_at - created_at of the outbox rows, all five services), p50/p99.

The trees alternate round by round, so that a machine whose speed drifts (a shared one) meets both.
"""

from __future__ import annotations

import argparse
import json
import re
import sqlite3
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.idle_cpu import UpStack, up_stack
from benchmarks.proc_cpu import cpu_by_process
from benchmarks.runs import Results, alternating
from tests.support.processes import VENV_BIN

SERVICES = ("users", "inventory", "payments", "orders", "notifications")
REVIEW_THRESHOLD_CENTS = 1_000_000_000
STACK_ENV = {
    "WORKER_REVIEW_THRESHOLD_CENTS": str(REVIEW_THRESHOLD_CENTS),
    **{f"GATEWAY_RATE_LIMIT_{policy}": "1000000/minute" for policy in ("AUTH", "ANON", "USER")},
}
# The requests each order makes: the saga's calls, POST /orders and the gateway's check of the
# caller's token version. The load's own setup (sign-ups, cards, stock top-ups) and the sweepers'
# listings are left out of the count; their CPU, small, stays in the service's total.
ORDER_ROUTES = frozenset({
    "GET /internal/users/{user_id}", "GET /internal/users/{user_id}/token-version",
    "POST /reservations", "POST /reservations/{order_id}/commit",
    "POST /authorizations", "POST /authorizations/{authorization_key:path}/capture",
    "POST /orders", "POST /internal/orders/{order_id}/commands", "POST /notifications",
})  # fmt: skip
_SAMPLE = re.compile(r"^http_requests_total\{(?P<labels>.*)\} (?P<value>[0-9.e+]+)$", re.M)


def requests_by_route(env: dict[str, str]) -> dict[str, dict[str, float]]:
    """service → "METHOD route" → requests served so far (health, ready and metrics left out)."""
    counts: dict[str, dict[str, float]] = {}
    for service in SERVICES:
        text = httpx.get(f"http://127.0.0.1:{env[f'{service.upper()}_PORT']}/metrics", timeout=10).text
        routes: dict[str, float] = {}
        for match in _SAMPLE.finditer(text):
            labels = dict(re.findall(r'(\w+)="([^"]*)"', match["labels"]))
            if labels.get("route") in ("/health", "/ready", "/metrics"):
                continue
            key = f"{labels['method']} {labels['route']}"
            routes[key] = routes.get(key, 0.0) + float(match["value"])
        counts[service] = routes
    return counts


def _when(value: Any) -> datetime:
    moment = value if isinstance(value, datetime) else datetime.fromisoformat(str(value))
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def outbox_lags(data: Path, since: datetime) -> list[float]:
    """Seconds from commit to JetStream's ack, of every outbox row created since `since`."""
    lags: list[float] = []
    for service in SERVICES:
        with sqlite3.connect(data / f"{service}.db") as conn:
            for created, published in conn.execute("SELECT created_at, published_at FROM outbox"):
                if published is not None and _when(created) >= since:
                    lags.append((_when(published) - _when(created)).total_seconds())
    return lags


def request_durations(data: Path, since: datetime) -> dict[str, dict[str, list[float]]]:
    """service → "METHOD route" → wall milliseconds inside the service (its `request` log lines)."""
    durations: dict[str, dict[str, list[float]]] = {}
    for service in SERVICES:
        log = data / "logs" / f"{service}.log"
        routes: dict[str, list[float]] = {}
        for line in log.read_text(errors="replace").splitlines() if log.exists() else []:
            if '"request"' not in line:
                continue
            try:
                fields = json.loads(line)
            except ValueError:
                continue
            if fields.get("event") != "request" or _when(fields["timestamp"]) < since:
                continue
            route = f"{fields['method']} {fields['route']}"
            routes.setdefault(route, []).append(float(fields["duration_ms"]))
        durations[service] = routes
    return durations


def pct(values: list[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def load(
    stack: UpStack, tree: Path, data: Path, orders: int, concurrency: int, registration: float = 0.0
) -> dict[str, Any]:
    """One `ordersaga load` run; `registration` (users CPU seconds of registering and logging in the
    run's customers, which every run does) is taken off the users service's share."""
    env = stack.env
    report = data / f"load-{time.monotonic_ns()}.json"
    argv = [
        str(VENV_BIN / "ordersaga"), "load",
        "--api", f"http://127.0.0.1:{env['GATEWAY_PORT']}/api/v1",
        "--orders", str(orders), "--concurrency", str(concurrency),
        "--cards", "success=1", "--customers", "4",
        "--completion", "temporal",
        "--temporal-address", f"127.0.0.1:{env['ORDERSAGA_TEMPORAL_PORT']}",
        "--review-threshold-cents", str(REVIEW_THRESHOLD_CENTS),
        "--data-dir", str(data), "--json", str(report),
    ]  # fmt: skip
    # The customers' registration (argon2) happens before the first order: measured apart below.
    since = datetime.now(UTC)
    routes_before = requests_by_route(env)
    before = stack.cpu()
    done = subprocess.run(argv, env=env, cwd=tree, stdout=subprocess.DEVNULL, check=False)  # noqa: S603
    if not report.exists():
        raise RuntimeError(f"`ordersaga load` wrote no report (exit {done.returncode})")
    time.sleep(2.0)  # the last notices and their outbox rows settle
    after = stack.cpu()
    routes_after = requests_by_route(env)
    result = json.loads(report.read_text())
    final = max(int(result["final"]), 1)
    spent = cpu_by_process(before, after)
    raw_users = spent.get("users", 0.0)
    spent["users"] = max(raw_users - registration, 0.0)
    calls: dict[str, Any] = {}
    durations = request_durations(data, since)
    for service in SERVICES:
        made = {
            route: routes_after[service].get(route, 0.0) - routes_before[service].get(route, 0.0)
            for route in routes_after[service]
        }
        made = {route: n for route, n in made.items() if n > 0 and route in ORDER_ROUTES}
        total = sum(made.values())
        walls = [ms for route in made for ms in durations.get(service, {}).get(route, [])]
        calls[service] = {
            # Wall time inside the service, from its request log: against the CPU per request, how
            # much of a call is waiting rather than computing (the outbox relay's CPU is in the CPU).
            "wall_ms_p50_per_request": round(pct(walls, 0.5) or 0.0, 2) if walls else None,
            "requests_per_order": round(total / final, 2),
            "cpu_ms_per_request": round(1000 * spent.get(service, 0.0) / total, 2) if total else None,
            "routes_per_order": {route: round(n / final, 2) for route, n in sorted(made.items())},
        }
    lags = outbox_lags(data, since)
    return {
        "users_cpu_seconds_raw": round(raw_users, 3),
        "concurrency": concurrency,
        "orders": orders,
        "final": result["final"],
        "not_final": result["not_final"],
        "exit_code": done.returncode,
        "completed_per_second": result["completed_per_second"],
        "completion_p50_ms": result["completion_latency_ms"]["p50"],
        "cpu_ms_per_order": {name: round(1000 * s / final, 1) for name, s in sorted(spent.items())}
        | {"total": round(1000 * sum(spent.values()) / final, 1)},
        "calls": calls,
        "outbox_events": len(lags),
        "outbox_lag_ms": {
            "p50": round(1000 * (pct(lags, 0.5) or 0), 1),
            "p99": round(1000 * (pct(lags, 0.99) or 0), 1),
            "max": round(1000 * max(lags, default=0), 1),
        },
    }


def measure_tree(
    tree: Path, *, orders: int, sequential: int, extra_env: dict[str, str] | None = None
) -> dict[str, Any]:
    """One tree's stack (`extra_env` on top of the benchmark's settings): a warm-up, then one order at
    a time (`sequential` of them) and the closed loop at 20 in flight (`orders`)."""
    with tempfile.TemporaryDirectory(prefix="order-cpu-") as tmp:
        data = Path(tmp)
        with up_stack(tree, data, STACK_ENV | (extra_env or {})) as stack:
            load(stack, tree, data, 20, 5)  # warm-up: pools, caches and the stream filled
            # One order: the users service's CPU is then the run's registrations and logins.
            registration = load(stack, tree, data, 1, 1)["users_cpu_seconds_raw"]
            return {
                "tree": str(tree),
                "registration_users_cpu_s": registration,
                "sequential": load(stack, tree, data, sequential, 1, registration),
                "closed": load(stack, tree, data, orders, 20, registration),
            }


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("trees", nargs="+", type=Path)
    parser.add_argument("--orders", type=int, default=200, help="orders of the closed-loop run")
    parser.add_argument("--sequential", type=int, default=40, help="orders of the one-at-a-time run")
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    results = Results()
    for round_, tree in alternating(args.trees, args.rounds):
        results.add({"round": round_, **measure_tree(tree, orders=args.orders, sequential=args.sequential)})
    results.write(args.json)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
