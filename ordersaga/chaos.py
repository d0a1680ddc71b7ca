"""`ordersaga chaos`: load the whole stack while killing its processes, then audit every invariant.

The stack is `ordersaga up`'s own (`ordersaga.up.Stack`), started in this process so that its
children are ours to SIGKILL. A seeded scheduler picks the victims and the moments, so a run that
finds a violation can be replayed with the same `--seed`.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import random
import signal
import socket
import sys
import threading
import time
import uuid
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
from rich.console import Console

from ordersaga import audit
from ordersaga.load import LoadPlan, LoadRun, OrderRecord
from ordersaga.report import measures_table
from ordersaga.supervisor import Child, StartupError
from ordersaga.up import Stack, UpSettings
from services.registry import SERVICES

PAUSE = "temporal-pause"
# Answers worth repeating with the same Idempotency-Key: the request may not have been seen, or a
# process on its path was down. Any other 4xx is the client's fault and repeating cannot help.
RETRYABLE = {408, 409, 425, 429}


@dataclass
class Fault:
    kind: str
    at: float  # seconds after the load started
    injected_at: float | None = None
    recovery: float | None = None
    error: str | None = None


class ChaosLoadRun(LoadRun):
    """`LoadRun` whose POSTs survive a dead gateway or service: retried with their first key."""

    def __init__(self, plan: LoadPlan, console: Console, *, hot_stock: int, retry_for: float) -> None:
        super().__init__(plan, console)
        self.hot_stock = hot_stock
        self.retry_for = retry_for
        self.prepared = threading.Event()
        self.keys: dict[str, str] = {}

    async def prepare(self) -> None:
        await super().prepare()
        # A scarce hot product, so that some orders are cancelled for stock while others race for it.
        assert self.hot is not None and self.plan.admin_email and self.plan.admin_password
        token = await self._login(self.plan.admin_email, self.plan.admin_password)
        response = await self.http.put(
            f"/products/{self.hot['id']}/stock",
            json={"stock": self.hot_stock},
            headers={"Authorization": f"Bearer {token}"},
        )
        response.raise_for_status()
        self.prepared.set()

    async def _send_one(self) -> OrderRecord:
        customer = self.random.choice(self.customers)
        kinds, weights = zip(*self.plan.card_mix.items(), strict=True)
        card = self.random.choices(kinds, weights)[0]
        record = OrderRecord(sent_at=time.perf_counter(), card=card)
        self.records.append(record)
        body = self._order_body(customer, card)
        headers = {"Authorization": f"Bearer {customer.token}", "Idempotency-Key": uuid.uuid4().hex}
        give_up = time.perf_counter() + self.retry_for
        delay = 0.2
        while True:
            try:
                response = await self.http.post("/orders", json=body, headers=headers)
            except httpx.HTTPError as err:
                self.errors[f"transport:{type(err).__name__}"] += 1
            else:
                if response.is_success:
                    record.accepted_at = time.perf_counter()
                    record.order_id = audit.hex_id(response.json()["id"])
                    self._tokens[record.order_id] = customer.token
                    self.keys[record.order_id] = headers["Idempotency-Key"]
                    return record
                self.errors[f"http:{response.status_code}"] += 1
                if response.status_code < 500 and response.status_code not in RETRYABLE:
                    return record
            if time.perf_counter() > give_up:
                self.errors["gave_up"] += 1
                return record
            await asyncio.sleep(delay)
            delay = min(delay * 2, 2.0)

    async def _check(self, record: OrderRecord) -> None:
        # The API answers with dashed ids; the records keep hex, so path it back to the canonical form.
        assert record.order_id is not None
        dashed = str(uuid.UUID(record.order_id))
        token = self._tokens[record.order_id]
        try:
            response = await self.http.get(f"/orders/{dashed}", headers={"Authorization": f"Bearer {token}"})
        except httpx.HTTPError as err:
            self.errors[f"poll:{type(err).__name__}"] += 1
            return
        if response.status_code != 200:
            self.errors[f"poll:http:{response.status_code}"] += 1
            return
        body = response.json()
        if body["status"] in audit.FINAL and record.final_at is None:
            record.final_at = time.perf_counter()
            record.status, record.reason = body["status"], body.get("cancel_reason")


class FaultInjector:
    """Kills and restarts the stack's children, one fault at a time, on a seeded schedule."""

    def __init__(self, stack: Stack, schedule: list[Fault], console: Console) -> None:
        self.stack = stack
        self.schedule = schedule
        self.console = console
        self.stop = threading.Event()
        self.done = threading.Event()  # every fault of the schedule injected (or failed)
        self.thread = threading.Thread(target=self._run, daemon=True, name="chaos-faults")
        self.started = 0.0

    def begin(self) -> None:
        self.started = time.monotonic()
        self.thread.start()

    def join(self, timeout: float) -> None:
        self.stop.set()
        self.thread.join(timeout)

    def _run(self) -> None:
        try:
            self._inject()
        finally:
            self.done.set()
            # The children restarted here carry PR_SET_PDEATHSIG, which fires when the *thread* that
            # forked them ends: this thread must outlive them, so it waits until the stack is stopped.
            self.stop.wait()

    def _inject(self) -> None:
        for fault in self.schedule:
            wait = self.started + fault.at - time.monotonic()
            if wait > 0 and self.stop.wait(wait):
                return
            fault.injected_at = time.monotonic() - self.started
            began = time.monotonic()
            try:
                if fault.kind == PAUSE:
                    self._pause_temporal(fault)
                else:
                    self._kill_and_restart(fault.kind)
                fault.recovery = time.monotonic() - began
            except Exception as err:  # a failed restart is a finding to report, not a crash
                fault.error = f"{type(err).__name__}: {str(err)[:300]}"
            self.console.print(
                f"[yellow]fault[/] {fault.kind} at {fault.injected_at:.1f}s → "
                + (f"[red]{fault.error}[/]" if fault.error else f"recovered in {fault.recovery:.1f}s")
            )

    def child(self, name: str) -> Child:
        return next(c for c in self.stack.supervisor.children if c.name == name)

    def _kill_and_restart(self, name: str) -> None:
        child = self.child(name)
        assert child.proc is not None
        with contextlib.suppress(ProcessLookupError):
            os.killpg(child.proc.pid, signal.SIGKILL)
        child.proc.wait(timeout=10)
        # Same argv, env and health check as `Stack.start` built; the old log lines must not count
        # as the new process's readiness (the worker is ready when it logs `worker_started`).
        child.recent.clear()
        self.stack.supervisor.children.remove(child)
        self.stack.supervisor.start(child)
        self.stack.supervisor.wait_ready(child, 120)

    def _pause_temporal(self, fault: Fault) -> None:
        child = self.child("temporal")
        assert child.proc is not None
        seconds = 2 + random.Random(fault.at).random() * 3
        os.killpg(child.proc.pid, signal.SIGSTOP)
        try:
            self.stop.wait(seconds)
        finally:
            os.killpg(child.proc.pid, signal.SIGCONT)
        self.stack.supervisor.wait_ready(child, 60)


def plan_faults(rng: random.Random, kinds: list[str], count: int, window: float) -> list[Fault]:
    """`count` faults spread over `window` seconds; each kind once before any repeats."""
    chosen: list[str] = []
    while len(chosen) < count:
        round_ = list(kinds)
        rng.shuffle(round_)
        chosen += round_
    chosen = chosen[:count]
    # Evenly spaced slots with jitter, so that faults interleave with load instead of bunching.
    slot = window / max(count, 1)
    return [Fault(kind, at=slot * (i + 0.2 + 0.6 * rng.random())) for i, kind in enumerate(chosen)]


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def use_free_ports() -> None:
    """Point every port setting of the stack at a free port (as the e2e tests do for `up`)."""
    for key in [k for k in os.environ if k.endswith(("_DATABASE_URL", "_PORT"))]:
        del os.environ[key]
    os.environ.pop("TEMPORAL_ADDRESS", None)
    os.environ.pop("NATS_URL", None)
    for name in SERVICES:
        os.environ[f"{name.upper()}_PORT"] = str(free_port())
    for setting in (
        "TEMPORAL_PORT",
        "TEMPORAL_UI_PORT",
        "NATS_PORT",
        "NATS_MONITOR_PORT",
        "SMTP_PORT",
        "WORKER_METRICS_PORT",
        "WORKER_SDK_METRICS_PORT",
    ):
        os.environ[f"ORDERSAGA_{setting}"] = str(free_port())


def run_chaos(
    data_dir: Path,
    orders: int = 200,
    rate: float = 4.0,
    faults: int = 9,
    seed: int = 1,
    *,
    hot_stock: int = 15,
    quiesce_timeout: float = 180.0,
    free_ports: bool = False,
    json_path: Path | None = None,
    console: Console | None = None,
) -> int:
    """Run the chaos scenario; 0 when every invariant holds, 1 on any violation or a stuck run."""
    console = console or Console(stderr=True)
    if free_ports:
        use_free_ports()
    settings = UpSettings(data_dir=data_dir)
    stack = Stack(settings, console, echo_logs=False)
    rng = random.Random(seed)
    kinds = [*stack.services, "worker", "nats", PAUSE]
    schedule = plan_faults(rng, kinds, faults, window=orders / rate)
    began = time.monotonic()
    injector: FaultInjector | None = None
    try:
        stack.start()
        stack.seed()
        base_orders = audit.baseline(stack.data_dir)
        plan = LoadPlan(
            api=",".join(url + "/api/v1" for url in stack.urls("gateway")),  # every gateway, spread over
            orders=orders,
            rate=rate,
            card_mix={"success": 0.75, "declined": 0.15, "transient": 0.1},
            hot_share=0.3,
            lines=2,
            customers=12,
            deadline=quiesce_timeout,
            seed=seed,
            admin_email=stack.creds.admin_email,
            admin_password=stack.creds.admin_password,
        )
        load = ChaosLoadRun(plan, console, hot_stock=hot_stock, retry_for=quiesce_timeout)
        injector = FaultInjector(stack, schedule, console)
        report = asyncio.run(_drive(load, injector, stack.data_dir, base_orders))
        injector.done.wait(timeout=300)
        with _status(console, "waiting for the stack to settle (quiescence)"):
            quiet, state, waited = audit.wait_quiescent(stack.data_dir, report["baseline"], quiesce_timeout)
        violations = audit.audit(stack.data_dir, report["baseline"], set(load.keys))
        if not quiet:
            violations.append(f"not quiescent after {waited:.0f}s: {state}")
        violations += [f"fault {f.kind} at {f.at:.1f}s failed: {f.error}" for f in schedule if f.error]
        violations += [f"fault {f.kind} never injected" for f in schedule if f.injected_at is None]
        report["records"] = load.records
        summary = _summary(stack.data_dir, report, schedule, violations, waited, time.monotonic() - began)
    except StartupError as err:
        console.print(f"[red bold]ordersaga chaos could not start the stack:[/] {err}")
        return 1
    except (httpx.HTTPError, RuntimeError, ValueError) as err:
        # The preparation (customers, stock top-up) failed, e.g. sign-ups answered 504: no fault ran.
        console.print(f"[red bold]ordersaga chaos could not prepare its run:[/] {_describe(err)}")
        return 1
    finally:
        # A SIGSTOPped Temporal would not answer the SIGTERM of stop_all.
        with contextlib.suppress(Exception):
            temporal = next(c for c in stack.supervisor.children if c.name == "temporal")
            if temporal.proc is not None:
                os.killpg(temporal.proc.pid, signal.SIGCONT)
        stack.stop()
        if injector is not None and injector.thread.is_alive():
            injector.join(timeout=10)
    print_summary(console, summary)
    if json_path is not None:
        json_path.write_text(json.dumps(summary, indent=2) + "\n")
    return 1 if violations else 0


async def _drive(
    load: ChaosLoadRun, injector: FaultInjector, data_dir: Path, base_orders: audit.Baseline
) -> dict[str, Any]:
    """The load, with the faults starting once the customers exist and the stock is set."""
    run = asyncio.create_task(load.run())
    while not load.prepared.is_set():
        if run.done():
            run.result()  # preparation failed: raise its error
        await asyncio.sleep(0.05)
    # The baseline of stock is taken after the top-up and before the first order.
    base = audit.Baseline(order_ids=base_orders.order_ids, on_hand=audit.stock(data_dir))
    injector.begin()
    result = await run
    result["baseline"] = base
    return result


def _summary(
    data_dir: Path,
    load: dict[str, Any],
    schedule: list[Fault],
    violations: list[str],
    waited: float,
    elapsed: float,
) -> dict[str, Any]:
    orders = audit.run_orders(data_dir, load["baseline"])
    notifications = audit.notification_counts(data_dir)
    load_records: list[OrderRecord] = load["records"]
    outcomes: dict[str, int] = defaultdict(int)
    for order in orders:
        outcomes[f"{order['status']}:{order['reason']}" if order["reason"] else order["status"]] += 1
    by_kind: dict[str, list[float | None]] = defaultdict(list)
    for fault in schedule:
        by_kind[fault.kind].append(None if fault.recovery is None else round(fault.recovery, 2))
    return {
        "orders_sent": load["orders_sent"],
        "orders_accepted": len(orders),
        "outcomes": dict(outcomes),
        "client_errors": load["errors"],
        "faults": len([f for f in schedule if f.injected_at is not None]),
        "faults_by_kind": dict(by_kind),
        "quiescence_seconds": round(waited, 1),
        "email_redeliveries": len(audit.email_redeliveries(data_dir)),
        # By status: every authorisation of the run ends captured, voided or declined, none `authorized`.
        "payments": audit.payment_counts(data_dir, load["baseline"]),
        # By status; `unknown` = killed mid-send, not re-sent (`unknown_delivered`: it did arrive).
        "notifications": notifications,
        "notifications_unknown": notifications.get("unknown", 0),
        "elapsed_seconds": round(elapsed, 1),
        "violations": violations,
        # With the data dir, enough to audit the run again later (`ordersaga.audit.audit`).
        "baseline": load["baseline"].to_json(),
        "client_order_ids": sorted(r.order_id for r in load_records if r.order_id),
    }


def print_summary(console: Console, summary: dict[str, Any]) -> None:
    keys = (
        "orders_sent",
        "orders_accepted",
        "faults",
        "quiescence_seconds",
        "elapsed_seconds",
        "email_redeliveries",
    )
    counts = {
        "outcome": summary["outcomes"],
        "payments": summary.get("payments", {}),
        "notifications": summary["notifications"],
    }
    table = measures_table("ordersaga chaos", summary, keys, counts)
    for kind, recoveries in sorted(summary["faults_by_kind"].items()):
        shown = ", ".join("failed" if r is None else f"{r}s" for r in recoveries)
        table.add_row(f"fault {kind} x{len(recoveries)}", f"recovered in {shown}")
    for error, count in sorted(summary["client_errors"].items()):
        table.add_row(f"client error {error}", str(count))
    table.add_row("violations", str(len(summary["violations"])))
    console.print(table)
    for violation in summary["violations"]:
        console.print(f"[red]violation:[/] {violation}", soft_wrap=True)


def _status(console: Console, what: str) -> contextlib.AbstractContextManager[Any]:
    """A spinner in a terminal; a plain line otherwise (a log file has no use for animation)."""
    if console.is_terminal:
        return console.status(what)
    console.print(what + " ...")
    return contextlib.nullcontext()


def _describe(err: Exception) -> str:
    if isinstance(err, httpx.HTTPStatusError):
        return f"{err.request.method} {err.request.url} answered {err.response.status_code}"
    return f"{type(err).__name__}: {err}"


if __name__ == "__main__":
    from ordersaga.cli import app

    app(["chaos", *sys.argv[1:]])
