"""`ordersaga chaos`: load the whole stack while faults hit it, then audit every invariant.

The stack is `ordersaga up`'s own (`ordersaga.up.Stack`), started in this process so that its
children are ours to SIGKILL. Its links go through a TCP fault proxy of ours
(`ordersaga.faults.proxy`): the worker to payments, orders to Temporal, each service's relay to NATS
and, on PostgreSQL, each service to its database, so that the network can be slowed, partitioned or
cut. Operators' actions (cancel, terminate) go through the Temporal client as the Web UI's buttons
do. A seeded scheduler picks the faults, their targets and the moments, so a run that finds a
violation can be replayed with the same `--seed`.
"""

from __future__ import annotations

import asyncio
import bisect
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
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
from rich.console import Console
from sqlalchemy.engine import make_url
from temporalio.client import WorkflowExecutionStatus
from temporalio.service import RPCError

from ordersaga import audit
from ordersaga.faults.postgres import OwnPostgres
from ordersaga.faults.proxy import FaultProxy, Mode, Watch
from ordersaga.load import Customer, LoadPlan, LoadRun, OrderRecord
from ordersaga.report import measures_table
from ordersaga.supervisor import Child, StartupError, Supervisor, free_port
from ordersaga.up import PORT_SETTINGS, Stack, UpSettings
from services.kit.temporal import TemporalSettings, connect
from services.registry import DATA_SERVICES, SERVICES
from workflows.contract import order_id_of

PAUSE = "temporal-pause"
TEMPORAL_KILL = "temporal-kill"
# Network faults on one link of the proxy, for a few seconds, then healed.
LATENCY, PARTITION, CUT = "latency", "partition", "cut"
LINK_FAULTS = (LATENCY, PARTITION, CUT)
PG_KILL = "postgres-kill-connections"
PG_RESTART = "postgres-restart"
POSTGRES_FAULTS = (PG_KILL, PG_RESTART)
# The Web UI's "Request Cancellation" and "Terminate" on a running saga.
CANCEL, TERMINATE = "cancel", "terminate"
OPERATOR_ACTIONS = (CANCEL, TERMINATE)
PROCESS_KILLS = ("worker", "nats")
LATENCY_RANGE = (0.2, 0.8)
RESTART_ATTEMPTS = 3
# The preparation signs up and logs in the customers at once; on a starved CPU the users service
# sheds password hashing (503 `overloaded`, by design) for longer than a few tries span.
PREPARE_BUDGET_SECONDS = 120.0
# Answers worth repeating with the same Idempotency-Key: the request may not have been seen, or a
# process on its path was down. Any other 4xx is the client's fault and repeating cannot help.
RETRYABLE = {408, 409, 425, 429}


@dataclass
class Fault:
    kind: str
    at: float  # seconds after the load started
    target: str | None = None  # the link of a network fault
    duration: float = 0.0  # how long a network fault or a pause of Temporal lasts
    injected_at: float | None = None
    # Kills and pauses: from the fault to healthy again. Network faults: from the heal to the link's
    # next answer. Operator actions: from the request to the saga closed (cancel) or repaired (terminate).
    recovery: float | None = None
    # time.perf_counter() of the heal, the restart or the action: the next accepted order is timed from it.
    healed_at: float | None = None
    next_order: float | None = None
    error: str | None = None
    note: str | None = None  # e.g. why a fault that cannot apply to this run was skipped
    workflow_id: str | None = None
    acted_at: datetime | None = None
    watch: Watch | None = field(default=None, repr=False)

    def plan(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "at": round(self.at, 3),
            "target": self.target,
            "duration": round(self.duration, 3),
        }


class ChaosLoadRun(LoadRun):
    """`LoadRun` whose POSTs survive a dead gateway or service: retried with their first key."""

    def __init__(self, plan: LoadPlan, console: Console, *, hot_stock: int, retry_for: float) -> None:
        super().__init__(plan, console)
        self.hot_stock = hot_stock
        self.retry_for = retry_for
        self.prepared = threading.Event()
        self.keys: dict[str, str] = {}

    async def prepare(self) -> None:
        # Before any fault, a loaded machine may still answer 503 while the pools warm up: the
        # preparation (customers, cards, stock) is tried again from the start, within its budget.
        give_up = time.monotonic() + PREPARE_BUDGET_SECONDS
        attempt = 0
        while True:
            attempt += 1
            try:
                await super().prepare()
                break
            except httpx.HTTPError as err:
                if time.monotonic() > give_up:
                    raise
                self.console.print(f"[yellow]preparation failed ({type(err).__name__}); trying again[/]")
                await asyncio.sleep(min(2.0 * attempt, 10.0))
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

    async def _customer(self) -> Customer:
        # A sign-up or login shed with 503 (password hashing over its queue timeout, by design on a
        # starved CPU) is tried again alone, as a client would; retrying the whole preparation instead
        # signs up every customer again and, on a loaded machine, loses one of twelve each time.
        give_up = time.monotonic() + PREPARE_BUDGET_SECONDS
        delay = 1.0
        while True:
            try:
                return await super()._customer()
            except httpx.HTTPStatusError as err:
                if err.response.status_code != 503 or time.monotonic() > give_up:
                    raise
            except httpx.TransportError:
                if time.monotonic() > give_up:
                    raise
            await asyncio.sleep(delay)
            delay = min(delay * 2, 8.0)

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


def part(process: str) -> str:
    """`orders-2` → `orders`: the part of the stack a process belongs to."""
    name, _, index = process.rpartition("-")
    return name if name and index.isdigit() else process


@dataclass
class Links:
    """The proxy's links on the stack's network paths, and the settings that route children through them."""

    proxy: FaultProxy
    # Part (`worker`, `orders`) → the settings that point its processes at the proxy.
    env: dict[str, dict[str, str]]
    # `<service>->postgres` → the real database URL; the links are made as the services start,
    # once their database URLs are known (`up --postgres` prepares them during the start).
    databases: dict[str, str] = field(default_factory=dict)
    postgres: bool = False

    def names(self) -> list[str]:
        """Every link a network fault may pick, the database ones included before they exist."""
        names = set(self.proxy.links)
        if self.postgres:
            names |= {f"{name}->postgres" for name in DATA_SERVICES}
        return sorted(names)

    def route(self, process: str, env: Mapping[str, str]) -> dict[str, str]:
        """The settings of a child started with `env`, its links pointed at the proxy."""
        own = dict(self.env.get(part(process), {}))
        setting = f"{part(process).upper()}_DATABASE_URL"
        url = env.get(setting) or os.environ.get(setting, "")
        if part(process) in DATA_SERVICES and url.startswith("postgres"):
            real = make_url(url)
            name = f"{part(process)}->postgres"
            link = self.proxy.links.get(name) or self.proxy.add(
                name, real.host or "127.0.0.1", real.port or 5432
            )
            own[setting] = real.set(host="127.0.0.1", port=link.port).render_as_string(hide_password=False)
            self.databases[name] = url
        return own


class LinkedSupervisor(Supervisor):
    """Starts each child through its links: the proxy's listeners in place of the real addresses.

    The env is changed on the `Child` itself, so that a child restarted after a kill keeps its links.
    """

    def __init__(self, console: Console, *, echo: Any, links: Links) -> None:
        super().__init__(console, echo=echo)
        self.links = links

    def start(self, child: Child) -> None:
        if own := self.links.route(child.name, child.env):
            child.env = {**child.env, **own}
        super().start(child)


def wire_links(stack: Stack, proxy: FaultProxy, *, postgres: bool) -> Links:
    """A proxy link on each network path of the stack but the databases' (made at the services' start)."""
    env: dict[str, dict[str, str]] = defaultdict(dict)
    # With replicas the worker is given the first payments process only: the link is one address.
    link = proxy.add("worker->payments", "127.0.0.1", stack.ports["payments"])
    env["worker"]["WORKER_PAYMENTS_URL"] = f"http://{link.address}"
    host, _, port = stack.temporal_address.rpartition(":")
    link = proxy.add("orders->temporal", host, int(port))
    env["orders"]["TEMPORAL_ADDRESS"] = link.address
    nats = urlsplit(stack.nats_url.split(",")[0].strip())
    for name in DATA_SERVICES:
        link = proxy.add(f"{name}->nats", nats.hostname or "127.0.0.1", nats.port or 4222)
        env[name]["NATS_URL"] = f"nats://{link.address}"
    return Links(proxy, dict(env), postgres=postgres)


class FaultInjector:
    """Injects the faults of a seeded schedule, one at a time, and heals or restarts after each."""

    def __init__(
        self,
        stack: Stack,
        schedule: list[Fault],
        console: Console,
        links: Links,
        seed: int,
        postgres: OwnPostgres | None = None,
    ) -> None:
        self.stack = stack
        self.postgres = postgres
        self.schedule = schedule
        self.console = console
        self.links = links
        self.seed = seed
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
        for index, fault in enumerate(self.schedule):
            wait = self.started + fault.at - time.monotonic()
            if wait > 0 and self.stop.wait(wait):
                return
            fault.injected_at = time.monotonic() - self.started
            began = time.monotonic()
            try:
                self._one(fault, random.Random(f"{self.seed}:{index}"))
            except Exception as err:  # a failed restart is a finding to report, not a crash
                fault.error = f"{type(err).__name__}: {str(err)[:300]}"
            self._finish(fault, began)

    def _finish(self, fault: Fault, began: float) -> None:
        """Time the fault's recovery, once it is healed or restarted (or failed), and say so."""
        if (
            fault.error is None
            and fault.recovery is None
            and fault.watch is None
            and fault.kind not in OPERATOR_ACTIONS
        ):
            fault.recovery = time.monotonic() - began
        if fault.healed_at is None:
            fault.healed_at = time.perf_counter()
        what = fault.kind + (f" {fault.target}" if fault.target else "")
        outcome = (
            f"[red]{fault.error}[/]"
            if fault.error
            else fault.note
            if fault.note
            else "healed"
            if fault.recovery is None
            else f"recovered in {fault.recovery:.1f}s"
        )
        self.console.print(f"[yellow]fault[/] {what} at {fault.injected_at:.1f}s → {outcome}")

    def _one(self, fault: Fault, rng: random.Random) -> None:
        if fault.kind == PAUSE:
            self._pause_temporal(fault)
        elif fault.kind in LINK_FAULTS:
            self._network(fault)
        elif fault.kind == TEMPORAL_KILL:
            self._kill_and_restart("temporal")
        elif fault.kind == PG_KILL:
            self._terminate_backends(fault)
        elif fault.kind == PG_RESTART:
            if self.postgres is not None:
                self.postgres.restart(self.stack.supervisor, self.child("postgres"))
            else:
                # Restarting the machine's shared server would break whatever else uses it.
                fault.note = "skipped: this run does not own its PostgreSQL"
        elif fault.kind in OPERATOR_ACTIONS:
            asyncio.run(self._operate(fault, rng))
        else:
            # One process of the part: with replicas, the seed picks which, and the others serve.
            names = sorted(c.name for c in self.stack.processes(fault.kind)) or [fault.kind]
            fault.target = names[0] if len(names) == 1 else rng.choice(names)
            self._kill_and_restart(fault.target)

    def child(self, name: str) -> Child:
        return next(c for c in self.stack.supervisor.children if c.name == name)

    def _kill_and_restart(self, name: str) -> None:
        self._restart(self._kill(name))

    def _kill(self, name: str) -> Child:
        child = self.child(name)
        assert child.proc is not None
        with contextlib.suppress(ProcessLookupError):
            os.killpg(child.proc.pid, signal.SIGKILL)
        child.proc.wait(timeout=10)
        return child

    def _restart(self, child: Child) -> None:
        name = child.name
        # Same argv, env and health check as `Stack.start` built; the old log lines must not count
        # as the new process's readiness (the worker is ready when it logs `worker_started`).
        child.recent.clear()
        self.stack.supervisor.children.remove(child)
        # As an orchestrator's restart policy does: a process that exits while it starts (its
        # database too slow to answer on a loaded machine) is started again, within one budget.
        deadline = time.monotonic() + 120
        for attempt in range(1, RESTART_ATTEMPTS + 1):
            self.stack.supervisor.start(child)
            try:
                self.stack.supervisor.wait_ready(child, max(1.0, deadline - time.monotonic()))
                return
            except StartupError:
                if attempt == RESTART_ATTEMPTS or time.monotonic() > deadline:
                    raise
                self.console.print(f"[yellow]{name} exited while starting; starting it again[/]")
                self.stack.supervisor.children.remove(child)
                child.recent.clear()

    def _pause_temporal(self, fault: Fault) -> None:
        child = self.child("temporal")
        assert child.proc is not None
        os.killpg(child.proc.pid, signal.SIGSTOP)
        try:
            self.stop.wait(fault.duration)
        finally:
            os.killpg(child.proc.pid, signal.SIGCONT)
        self.stack.supervisor.wait_ready(child, 60)

    def _network(self, fault: Fault) -> None:
        assert fault.target is not None
        if fault.target not in self.links.proxy.links:
            fault.note = f"skipped: no link {fault.target} in this run"
            return
        self.links.proxy.set(fault.target, Mode(fault.kind), latency=LATENCY_RANGE)
        try:
            self.stop.wait(fault.duration)
        finally:
            fault.watch = self.links.proxy.heal(fault.target)
            fault.healed_at = fault.watch.since
        # A quiet link (a relay with nothing to publish, the load over) carries nothing to time: a
        # probe of the link's own protocol asks its server for an answer through the healed link.
        if not self.stop.wait(PROBE_AFTER) and fault.watch.answered_at is None:
            link = self.links.proxy.links[fault.target]
            try:
                probe_link(link.address, fault.target)
            except OSError as err:
                fault.note = f"probe after the heal failed: {type(err).__name__}"
            else:
                if fault.note is None:
                    fault.note = "timed by a probe (no traffic over the link after the heal)"

    def _terminate_backends(self, fault: Fault) -> None:
        if not self.links.databases:
            fault.note = "skipped: the services are on SQLite"
            return
        import asyncpg  # only on PostgreSQL

        async def terminate() -> int:
            killed = 0
            for url in set(self.links.databases.values()):
                real = make_url(url)
                conn = await asyncpg.connect(
                    host=real.host, port=real.port, user=real.username, password=real.password,
                    database=real.database,
                )  # fmt: skip
                try:
                    rows = await conn.fetch(
                        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                        "WHERE datname = current_database() AND pid <> pg_backend_pid()"
                    )
                    killed += sum(1 for row in rows if row[0])
                finally:
                    await conn.close()
            return killed

        fault.note = f"{asyncio.run(terminate())} connections terminated"

    async def _operate(self, fault: Fault, rng: random.Random) -> None:
        """Cancel or terminate a saga still running, as an operator does from the Web UI."""
        client = await connect(TemporalSettings(address=self.stack.temporal_address))
        query = "WorkflowType = 'OrderWorkflow' AND ExecutionStatus = 'Running'"
        deadline = time.monotonic() + 15
        while True:
            running = sorted([w.id async for w in client.list_workflows(query, limit=200)])
            if running or time.monotonic() > deadline:
                break
            await asyncio.sleep(0.5)
        if not running:
            fault.note = "skipped: no saga running"
            return
        fault.workflow_id = rng.choice(running)
        handle = client.get_workflow_handle(fault.workflow_id)
        fault.acted_at = datetime.now(UTC)
        try:
            if fault.kind == CANCEL:
                await handle.cancel()
            else:
                await handle.terminate(reason="ordersaga chaos: operator terminate")
        except RPCError as err:  # it closed meanwhile: nothing left to act on
            fault.note = f"saga closed before the request: {err.message[:100]}"
        fault.target = fault.workflow_id


async def settle_operator_actions(temporal_address: str, schedule: list[Fault]) -> None:
    """How long after each operator action its saga was closed (cancel) or repaired (terminate)."""
    acted = [f for f in schedule if f.kind in OPERATOR_ACTIONS and f.workflow_id and f.acted_at]
    if not acted:
        return
    client = await connect(TemporalSettings(address=temporal_address))
    for fault in acted:
        assert fault.workflow_id is not None and fault.acted_at is not None
        workflow_id = fault.workflow_id
        if fault.kind == TERMINATE:
            workflow_id = f"repair-{order_id_of(workflow_id) or workflow_id}"
        try:
            info = await client.get_workflow_handle(workflow_id).describe()
        except RPCError:
            # No repair: the saga had made its order final before it was terminated.
            fault.note = fault.note or "no repair needed: the order was final already"
            fault.recovery = 0.0
            continue
        if info.close_time is None or info.status == WorkflowExecutionStatus.RUNNING:
            fault.error = f"{workflow_id} still running after quiescence"
            continue
        fault.recovery = max(0.0, (info.close_time - fault.acted_at).total_seconds())
        if fault.kind == CANCEL:
            fault.note = f"closed {info.status.name if info.status else '?'}"


# What makes each kind of server answer a new connection: NATS greets by itself (INFO), PostgreSQL
# answers an SSLRequest with one byte, the payments service an HTTP request, Temporal's gRPC frontend
# the HTTP/2 connection preface with its SETTINGS.
PROBES = {
    "nats": b"",
    "postgres": (8).to_bytes(4, "big") + (80877103).to_bytes(4, "big"),
    "payments": b"GET /health HTTP/1.0\r\nHost: probe\r\n\r\n",
    "temporal": b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + bytes.fromhex("000000040000000000"),
}
PROBE_AFTER = 1.0


def probe_link(address: str, link: str, timeout: float = 5.0) -> None:
    """Open a connection through `address` (a link's listener), send what its server answers, read."""
    host, _, port = address.rpartition(":")
    with socket.create_connection((host, int(port)), timeout=timeout) as sock:
        if payload := PROBES[link.rpartition("->")[2]]:
            sock.sendall(payload)
        if not sock.recv(1):
            raise ConnectionResetError("closed without an answer")


def fault_kinds(stack: Stack, links: Links, *, owns_postgres: bool = False) -> list[str]:
    """Every fault this run can inject: a PostgreSQL fault only when the services are on PostgreSQL."""
    kinds = [*stack.services, *PROCESS_KILLS, PAUSE, TEMPORAL_KILL, *LINK_FAULTS, *OPERATOR_ACTIONS]
    if links.postgres:
        kinds.append(PG_KILL)
        if owns_postgres:
            kinds.append(PG_RESTART)
    return kinds


def plan_faults(
    rng: random.Random, kinds: list[str], count: int, window: float, links: list[str] | None = None
) -> list[Fault]:
    """`count` faults spread over `window` seconds; each kind once before any repeats.

    Everything random about a fault is drawn here (kind, moment, link, duration), so that the same
    seed gives the same schedule; only an operator action's saga is picked at run time, among those
    then running.
    """
    chosen: list[str] = []
    while len(chosen) < count:
        round_ = list(kinds)
        rng.shuffle(round_)
        chosen += round_
    chosen = chosen[:count]
    # Evenly spaced slots with jitter, so that faults interleave with load instead of bunching.
    slot = window / max(count, 1)
    schedule = []
    for i, kind in enumerate(chosen):
        fault = Fault(kind, at=slot * (i + 0.2 + 0.6 * rng.random()))
        if kind in LINK_FAULTS and links:
            fault.target = rng.choice(sorted(links))
            fault.duration = 2 + rng.random() * 3
        elif kind == PAUSE:
            fault.duration = 2 + rng.random() * 3
        schedule.append(fault)
    return schedule


def use_free_ports() -> None:
    """Point every port setting of the stack at a free port (as the e2e tests do for `up`)."""
    for key in [k for k in os.environ if k.endswith(("_DATABASE_URL", "_PORT"))]:
        del os.environ[key]
    os.environ.pop("TEMPORAL_ADDRESS", None)
    os.environ.pop("NATS_URL", None)
    for name in SERVICES:
        os.environ[f"{name.upper()}_PORT"] = str(free_port())
    for setting in PORT_SETTINGS:
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
    kinds: list[str] | None = None,
    postgres_url: str | None = None,
    database_prefix: str | None = None,
    replicas: int = 1,
    workers: int = 1,
    gateways: int = 1,
    own_postgres: bool = False,
    keep_postgres: bool = False,
) -> int:
    """Run the chaos scenario; 0 when every invariant holds, 1 on any violation or a stuck run.

    `kinds` limits the faults to those (default: every kind this run can inject, `fault_kinds`).
    `postgres_url` puts every service on that server (`up --postgres`), in databases of a prefix of
    this run's own (`chaos_<seed>_<random>_`, unless `database_prefix`), so that the audit reads
    exactly this run; `replicas`, `workers` and `gateways` are `up`'s. `own_postgres` starts a
    private PostgreSQL server for the run (so that `postgres-restart` applies) in place of `postgres_url`;
    `keep_postgres` leaves its directory behind, stopped (the summary's `postgres_directory`).
    """
    console = console or Console(stderr=True)
    if free_ports:
        use_free_ports()
    postgres: OwnPostgres | None = None
    if own_postgres:
        postgres = OwnPostgres(data_dir.resolve() / "logs")
        postgres.init()
        postgres_url = postgres.url
    if postgres_url and database_prefix is None:
        database_prefix = f"chaos_{seed}_{uuid.uuid4().hex[:6]}_"
    settings = UpSettings(
        data_dir=data_dir,
        postgres_url=postgres_url,
        replicas=replicas,
        workers=workers,
        gateways=gateways,
    )
    if database_prefix:
        settings.database_prefix = database_prefix
    stack = Stack(settings, console, echo_logs=False)
    where: audit.Where = (
        audit.Sources(
            data_dir=stack.data_dir, postgres=postgres_url, database_prefix=settings.database_prefix
        )
        if postgres_url
        else stack.data_dir
    )
    proxy = FaultProxy(seed)
    links = wire_links(stack, proxy, postgres=_on_postgres(settings))
    stack.supervisor = LinkedSupervisor(console, echo=stack.supervisor.echo, links=links)
    available = fault_kinds(stack, links, owns_postgres=postgres is not None)
    if kinds:
        unknown = sorted(set(kinds) - {*available, *POSTGRES_FAULTS})
        if unknown:
            proxy.stop()
            console.print(f"[red]unknown fault kinds {unknown}; known: {', '.join(available)}[/]")
            return 2
    rng = random.Random(seed)
    schedule = plan_faults(rng, kinds or available, faults, window=orders / rate, links=links.names())
    began = time.monotonic()
    # Start-up (own PostgreSQL, the stack, its seed data), orders (the load and its faults),
    # quiescence (and the operator actions' sagas looked up), audit.
    phases: dict[str, float] = {}
    load_at_start = [round(v, 2) for v in os.getloadavg()]
    injector: FaultInjector | None = None
    summary: dict[str, Any] = {}
    violations: list[str] = []
    try:
        if postgres is not None:
            child = postgres.child()
            stack.supervisor.start(child)
            stack.supervisor.wait_ready(child, 60)
        stack.start()
        stack.seed()
        phases["startup"] = time.monotonic() - began
        base_orders = audit.baseline(where)
        plan = LoadPlan(
            api=",".join(url + "/api/v1" for url in stack.urls("gateway")),  # every gateway, spread over
            orders=orders,
            rate=rate,
            card_mix={"success": 0.75, "declined": 0.15, "transient": 0.1},
            hot_share=0.3,
            lines=2,
            customers=12,
            phone_every=2,  # half of them told by SMS too, so that the SMS sink is audited
            deadline=quiesce_timeout,
            seed=seed,
            admin_email=stack.creds.admin_email,
            admin_password=stack.creds.admin_password,
        )
        load = ChaosLoadRun(plan, console, hot_stock=hot_stock, retry_for=quiesce_timeout)
        injector = FaultInjector(stack, schedule, console, links, seed, postgres)
        mark = time.monotonic()
        report = asyncio.run(_drive(load, injector, where, base_orders))
        injector.done.wait(timeout=300)
        phases["orders"] = time.monotonic() - mark
        mark = time.monotonic()
        with _status(console, "waiting for the stack to settle (quiescence)"):
            quiet, state, waited = audit.wait_quiescent(where, report["baseline"], quiesce_timeout)
        try:
            asyncio.run(settle_operator_actions(stack.temporal_address, schedule))
        except RPCError as err:
            console.print(f"[red]could not look up the operator actions' sagas:[/] {err}")
        _time_recoveries(schedule, load.records)
        phases["quiescence"] = time.monotonic() - mark
        mark = time.monotonic()
        violations = audit.audit(where, report["baseline"], set(load.keys))
        phases["audit"] = time.monotonic() - mark
        if not quiet:
            violations.append(f"not quiescent after {waited:.0f}s: {state}")
        violations += [f"fault {f.kind} at {f.at:.1f}s failed: {f.error}" for f in schedule if f.error]
        violations += [f"fault {f.kind} never injected" for f in schedule if f.injected_at is None]
        report["records"] = load.records
        topology = {
            "database": "postgresql (its own server)"
            if postgres
            else "postgresql"
            if postgres_url
            else "sqlite",
            "database_prefix": settings.database_prefix if postgres_url else None,
            "postgres_directory": str(postgres.directory) if postgres and keep_postgres else None,
            "replicas": replicas,
            "workers": workers,
            "gateways": gateways,
        }
        summary = _summary(where, report, schedule, violations, waited, time.monotonic() - began, topology)
        # Where the wall time went, and how busy the machine was (a shared one makes every figure noisy).
        summary["phase_seconds"] = {name: round(seconds, 1) for name, seconds in phases.items()}
        summary["load_average"] = {"start": load_at_start, "end": [round(v, 2) for v in os.getloadavg()]}
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
        proxy.stop()
        if injector is not None and injector.thread.is_alive():
            injector.join(timeout=10)
        if postgres is not None:
            postgres.wait_stopped()
            if not keep_postgres:
                postgres.destroy()
    print_summary(console, summary)
    if json_path is not None:
        json_path.write_text(json.dumps(summary, indent=2) + "\n")
    return 1 if violations else 0


def _on_postgres(settings: UpSettings) -> bool:
    """Whether the services will be on PostgreSQL: `up --postgres`, or their own database URLs."""
    if getattr(settings, "postgres_url", None):
        return True
    return any(
        os.environ.get(f"{name.upper()}_DATABASE_URL", "").startswith("postgres") for name in DATA_SERVICES
    )


def _time_recoveries(schedule: list[Fault], records: list[OrderRecord]) -> None:
    """Network faults: the link's first answer after the heal. Every fault: the next accepted order."""
    accepted = sorted(r.accepted_at for r in records if r.accepted_at is not None)
    for fault in schedule:
        if fault.healed_at is not None:
            after = bisect.bisect_left(accepted, fault.healed_at)
            if after < len(accepted):
                fault.next_order = accepted[after] - fault.healed_at
        if fault.watch is not None:
            fault.recovery = fault.watch.recovery
            if fault.recovery is None and fault.error is None:
                if fault.next_order is not None:
                    # A quiet link (the orders service talks to Temporal in bursts) may carry nothing
                    # after the heal; an order accepted afterwards shows the system went on.
                    fault.recovery = fault.next_order
                    fault.note = f"no traffic over {fault.target} after the heal; timed by the next order"
                else:
                    fault.error = f"no answer over {fault.target} after the heal"


async def _drive(
    load: ChaosLoadRun, injector: FaultInjector, data_dir: audit.Where, base_orders: audit.Baseline
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
    data_dir: audit.Where,
    load: dict[str, Any],
    schedule: list[Fault],
    violations: list[str],
    waited: float,
    elapsed: float,
    topology: dict[str, Any] | None = None,
) -> dict[str, Any]:
    orders = audit.run_orders(data_dir, load["baseline"])
    notifications = audit.notification_counts(data_dir)
    load_records: list[OrderRecord] = load["records"]
    outcomes: dict[str, int] = defaultdict(int)
    for order in orders:
        outcomes[f"{order['status']}:{order['reason']}" if order["reason"] else order["status"]] += 1
    by_kind: dict[str, list[float | None]] = defaultdict(list)
    next_order: dict[str, list[float | None]] = defaultdict(list)
    applied = [f for f in schedule if not (f.note or "").startswith("skipped")]
    for fault in applied:
        by_kind[fault.kind].append(None if fault.recovery is None else round(fault.recovery, 2))
        next_order[fault.kind].append(None if fault.next_order is None else round(fault.next_order, 2))
    return {
        "orders_sent": load["orders_sent"],
        "orders_accepted": len(orders),
        "outcomes": dict(outcomes),
        "client_errors": load["errors"],
        "faults": len([f for f in schedule if f.injected_at is not None]),
        "faults_by_kind": dict(by_kind),
        # From the heal, the restart or the operator's action to the next order the gateway accepted.
        "next_order_by_kind": dict(next_order),
        "faults_skipped": [f"{f.kind}: {f.note}" for f in schedule if f not in applied],
        "fault_log": [
            {
                **f.plan(),
                "injected_at": None if f.injected_at is None else round(f.injected_at, 2),
                "recovery": None if f.recovery is None else round(f.recovery, 2),
                "next_order": None if f.next_order is None else round(f.next_order, 2),
                "error": f.error,
                "note": f.note,
            }
            for f in schedule
        ],
        "quiescence_seconds": round(waited, 1),
        "email_redeliveries": len(audit.email_redeliveries(data_dir)),
        # By status: every authorisation of the run ends captured, voided or declined, none `authorized`.
        "payments": audit.payment_counts(data_dir, load["baseline"]),
        # By status; `unknown` = killed mid-send, not re-sent (`unknown_delivered`: it did arrive).
        "notifications": notifications,
        "notifications_unknown": notifications.get("unknown", 0),
        "elapsed_seconds": round(elapsed, 1),
        "violations": violations,
        "topology": topology,
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
    for phase, seconds in summary.get("phase_seconds", {}).items():
        table.add_row(f"{phase} seconds", str(seconds))
    if load_average := summary.get("load_average"):
        table.add_row(
            "load average (1 min) at start, end", f"{load_average['start'][0]}, {load_average['end'][0]}"
        )
    for kind, recoveries in sorted(summary["faults_by_kind"].items()):
        shown = ", ".join("failed" if r is None else f"{r}s" for r in recoveries)
        table.add_row(f"fault {kind} x{len(recoveries)}", f"recovered in {shown}")
    for kind, waits in sorted(summary.get("next_order_by_kind", {}).items()):
        shown = ", ".join("none" if w is None else f"{w}s" for w in waits)
        table.add_row(f"next order after {kind}", shown)
    for skipped in summary.get("faults_skipped", []):
        table.add_row("fault skipped", skipped)
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
