"""CPU per saga call of inventory, payments, notifications and orders, in-process, trees side by side.

    git worktree add /tmp/before <commit>
    .venv/bin/python benchmarks/service_calls.py /tmp/before . [--calls 300] [--rounds 4] [--json out.json]

`order_cpu.py` measures a whole stack, where a cut of a millisecond or two per call drowns in the
drift of a shared machine (the Temporal server and the worker move by 10-20 % between two runs).
This runs only the service's own code: each tree in a fresh process (its code first on PYTHONPATH),
the app in-process over httpx's ASGI transport on a migrated SQLite file, and the saga's calls made
one after another: reserve then commit (inventory), authorise then capture (payments), queue a
notice and wait until the sender recorded it sent over SMTP (notifications); then the orders
service, per order: POST /orders, the saga's `start` and `confirm` (`_measure_orders`). CPU time is
the process's (every thread: aiosqlite's too) divided by the pairs made. The SMTP sink the
notifications group sends to runs in the outer process, so its CPU is not counted. The outbox relay is off (no
NATS), so the publishing of the rows is not counted; the client's side of each call is.
The trees alternate round by round, so that a machine whose speed drifts meets both.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import resource
import subprocess
import sys
import tempfile
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

TOKEN = "benchmark-internal-token"
WARM_UP = 30


def _cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


async def _measure(calls: int, smtp_port: int) -> dict[str, float]:
    import httpx
    from asgi_lifespan import LifespanManager

    from services.kit.identity import identity_headers
    from services.registry import SERVICES

    service = identity_headers(TOKEN, "service")
    results: dict[str, float] = {}
    with tempfile.TemporaryDirectory(prefix="service-calls-") as tmp:
        for name in ("inventory", "payments"):
            spec = SERVICES[name]
            settings = spec.settings(
                database_url=f"sqlite+aiosqlite:///{tmp}/{name}.db",
                internal_token=TOKEN,
                data_dir=Path(tmp) / "data",
                nats_url="",
            )
            app = spec.create_app(settings)
            async with LifespanManager(app, startup_timeout=60) as manager:
                transport = httpx.ASGITransport(app=manager.app)
                async with httpx.AsyncClient(transport=transport, base_url=f"http://{name}") as client:
                    pair = await (
                        _inventory_pair(client, service)
                        if name == "inventory"
                        else _payments_pair(client, service)
                    )
                    for _ in range(WARM_UP):
                        await pair()
                    started = _cpu()
                    for _ in range(calls):
                        await pair()
                    results[name] = round(1000 * (_cpu() - started) / calls, 3)
        results["notifications"] = await _notifications_measure(Path(tmp), calls, smtp_port)
    return results


async def _inventory_pair(client: Any, service: dict[str, str]) -> Callable[[], Awaitable[None]]:
    admin = {**service, "x-ordersaga-role": "admin", "x-ordersaga-user-id": str(uuid.uuid4())}
    body = {"sku": "SKU-BENCH", "name": "Widget", "price_cents": 1250, "currency": "EUR", "stock": 1_000_000}
    product = (await client.post("/products", json=body, headers=admin)).json()

    async def pair() -> None:
        order_id = str(uuid.uuid4())
        lines = [{"product_id": product["id"], "quantity": 1}]
        reserved = await client.post(
            "/reservations", json={"order_id": order_id, "lines": lines}, headers=service
        )
        committed = await client.post(f"/reservations/{order_id}/commit", headers=service)
        if reserved.status_code != 201 or committed.status_code != 200:
            raise RuntimeError(f"reserve {reserved.status_code}, commit {committed.status_code}")

    return pair


async def _payments_pair(client: Any, service: dict[str, str]) -> Callable[[], Awaitable[None]]:
    user = str(uuid.uuid4())
    customer = {**service, "x-ordersaga-role": "customer", "x-ordersaga-user-id": user}
    card = {"card_number": "4242424242424242", "exp_month": 12, "exp_year": 2099, "cvc": "123"}
    method = (await client.post("/payment-methods", json=card, headers=customer)).json()

    async def pair() -> None:
        key = f"bench-{uuid.uuid4().hex}"  # any Idempotency-Key; not a saga step's
        body = {
            "order_id": str(uuid.uuid4()),
            "user_id": user,
            "payment_method_id": method["id"],
            "amount_cents": 1250,
            "currency": "EUR",
        }
        authorised = await client.post(
            "/authorizations", json=body, headers={**service, "Idempotency-Key": key}
        )
        captured = await client.post(f"/authorizations/{key}/capture", headers=service)
        if authorised.status_code != 201 or captured.status_code != 200:
            raise RuntimeError(f"authorise {authorised.status_code}, capture {captured.status_code}")

    return pair


async def _measure_with_orders(calls: int, smtp_port: int) -> dict[str, float]:
    return {**await _measure(calls, smtp_port), **await _measure_orders(calls)}


async def _measure_orders(calls: int) -> dict[str, float]:
    """One order's three calls to the orders service: POST /orders, then the saga's `start` and
    `confirm` commands. No saga engine (`none`): the start of the workflow is not counted, the
    bookkeeping around it (the saga's start marked on the order) is."""
    import httpx
    from asgi_lifespan import LifespanManager

    from services.kit.identity import identity_headers
    from services.registry import SERVICES

    service = identity_headers(TOKEN, "service")
    spec = SERVICES["orders"]
    with tempfile.TemporaryDirectory(prefix="service-calls-") as tmp:
        settings = spec.settings(
            database_url=f"sqlite+aiosqlite:///{tmp}/orders.db",
            internal_token=TOKEN,
            data_dir=Path(tmp) / "data",
            nats_url="",
            saga_engine="none",
        )
        app = spec.create_app(settings)
        async with LifespanManager(app, startup_timeout=60) as manager:
            transport = httpx.ASGITransport(app=manager.app)
            async with httpx.AsyncClient(transport=transport, base_url="http://orders") as client:
                order = _orders_triple(client, service)
                for _ in range(WARM_UP):
                    await order()
                started = _cpu()
                for _ in range(calls):
                    await order()
                return {"orders": round(1000 * (_cpu() - started) / calls, 3)}


def _orders_triple(client: Any, service: dict[str, str]) -> Callable[[], Awaitable[None]]:
    customer = {**service, "x-ordersaga-role": "customer", "x-ordersaga-user-id": str(uuid.uuid4())}
    product_id, payment_method_id = str(uuid.uuid4()), str(uuid.uuid4())
    body = {"items": [{"product_id": product_id, "quantity": 2}], "payment_method_id": payment_method_id}
    priced = [{"product_id": product_id, "quantity": 2, "unit_price_cents": 1250}]

    async def order() -> None:
        key = f"bench-{uuid.uuid4().hex}"
        placed = await client.post("/orders", json=body, headers={**customer, "Idempotency-Key": key})
        order_id = placed.json()["id"]
        path = f"/internal/orders/{order_id}/commands"
        started = await client.post(
            path, json={"command_id": f"{order_id}:create_order", "type": "start"}, headers=service
        )
        confirm = {
            "command_id": f"{order_id}:confirm_order",
            "type": "confirm",
            "items": priced,
            "total_cents": 2500,
            "currency": "EUR",
            "payment_id": str(uuid.uuid4()),
        }
        confirmed = await client.post(path, json=confirm, headers=service)
        if (placed.status_code, started.status_code, confirmed.status_code) != (202, 200, 200):
            raise RuntimeError(
                f"place {placed.status_code}, start {started.status_code}, confirm {confirmed.status_code}"
            )

    return order


async def _notifications_measure(tmp: Path, calls: int, smtp_port: int) -> float:
    """CPU ms per saga notice: the POST that queues it, and the background sender's claim, render,
    SMTP send and record, which the call waits for (the commit of its `notification.sent` row)."""
    import httpx
    from asgi_lifespan import LifespanManager

    from services.kit.identity import identity_headers
    from services.kit.outbox import on_outbox_commit
    from services.registry import SERVICES

    spec = SERVICES["notifications"]
    settings = spec.settings(
        database_url=f"sqlite+aiosqlite:///{tmp}/notifications.db",
        internal_token=TOKEN,
        data_dir=tmp / "data",
        nats_url="",
        email_backend="smtp",
        smtp_port=smtp_port,
    )
    app = spec.create_app(settings)
    async with LifespanManager(app, startup_timeout=60) as manager:
        recorded = asyncio.Event()
        on_outbox_commit(app.state.db.engine, recorded.set)
        transport = httpx.ASGITransport(app=manager.app)
        async with httpx.AsyncClient(transport=transport, base_url="http://notifications") as client:
            call = _notifications_call(client, identity_headers(TOKEN, "service"), recorded)
            for _ in range(WARM_UP):
                await call()
            started = _cpu()
            for _ in range(calls):
                await call()
            return round(1000 * (_cpu() - started) / calls, 3)


def _notifications_call(
    client: Any, service: dict[str, str], recorded: asyncio.Event
) -> Callable[[], Awaitable[None]]:
    async def call() -> None:
        order_id = str(uuid.uuid4())
        body = {
            "idempotency_key": f"order:{order_id}:order_confirmed",
            "user_id": str(uuid.uuid4()),
            "channel": "email",
            "to": "ada@example.com",
            "template": "order_confirmed",
            "data": {"order_id": order_id, "total_cents": 1250, "currency": "EUR", "username": "ada"},
            "order_id": order_id,
        }
        recorded.clear()
        queued = await client.post("/notifications", json=body, headers=service)
        if queued.status_code != 202:
            raise RuntimeError(f"queue {queued.status_code}")
        await asyncio.wait_for(recorded.wait(), timeout=10)

    return call


def _notifications_smtp_sink(tmp: Path) -> Any:
    """The SMTP sink the notices go to, in this (outer) process: its CPU is not the service's."""
    from ordersaga.smtp_sink import start_smtp_sink
    from tests.support.processes import free_port

    return start_smtp_sink(tmp / "mail", port=free_port())


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("trees", nargs="*", type=Path)
    parser.add_argument("--calls", type=int, default=300, help="pairs of calls measured per service")
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--json", type=Path)
    parser.add_argument("--inner", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--smtp-port", type=int, default=0, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.inner:  # one tree, in this process
        print(json.dumps(asyncio.run(_measure_with_orders(args.calls, args.smtp_port))))
        return 0
    # Only the outer process reads this tree's helpers: the inner one must import the services of
    # the tree under test, first on its PYTHONPATH.
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    from benchmarks.runs import Results, alternating

    results = Results()
    mail_dir = tempfile.TemporaryDirectory(prefix="service-calls-mail-")
    sink = _notifications_smtp_sink(Path(mail_dir.name))
    for round_, tree in alternating(args.trees, args.rounds):
        env = {**os.environ, "PYTHONPATH": str(tree.resolve())}
        done = subprocess.run(  # noqa: S603
            [sys.executable, __file__, "--inner", "--calls", str(args.calls), "--smtp-port", str(sink.port)],
            env=env, cwd=tree, capture_output=True, text=True, check=True,
        )  # fmt: skip
        per_pair = json.loads(done.stdout.splitlines()[-1])
        results.add({"tree": str(tree), "round": round_, "cpu_ms_per_pair": per_pair})
    sink.stop()
    mail_dir.cleanup()
    results.write(args.json)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
