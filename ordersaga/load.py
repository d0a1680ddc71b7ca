"""`ordersaga load`: drive orders through the gateway and report throughput, latency and outcomes.

Open loop (`--rate`): orders are sent on a fixed schedule whatever the system's latency, which is
what real customers do. Closed loop (`--concurrency`): N customers each wait for their answer.

Completion (`--completion`): `temporal` awaits each order's saga result from Temporal (one long
poll per open order, no HTTP polling), so an order is complete when its workflow returns; `poll`
reads `GET /orders/{id}` through the gateway, at a bounded request rate in open loop and every
100 ms per customer in closed loop, so an order is complete once its status is final.

`--direct-orders URL` posts the orders to the orders service itself, with the identity headers the
gateway would set, to measure the saga without the gateway; everything else still goes through it.
"""

from __future__ import annotations

import asyncio
import base64
import json
import random
import statistics
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import httpx
from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn
from temporalio.client import Client, WorkflowFailureError
from temporalio.service import RPCError, RPCStatusCode

from ordersaga.report import measures_table
from services.kit.identity import identity_headers
from services.kit.temporal import TemporalSettings, connect
from services.kit.transport import Addresses, SpreadTransport
from workflows.contract import REVIEW_THRESHOLD_CENTS, OrderResult, workflow_id_for

CARDS = {
    "success": "4242424242424242",
    "declined": "4000000000000002",
    "transient": "4000000000000119",
}
FINAL = ("CONFIRMED", "SHIPPED", "DELIVERED", "CANCELLED")
# `auto`: Temporal when its address answers, else polling (what the CLI asks for by default).
Completion = Literal["temporal", "poll", "auto"]
# The orders service starts the saga before it answers 202; a workflow still unknown this long after
# is on another server than the one we await results from (or Temporal is down and the sweeper will
# start it later), so the run falls back to polling.
NOT_FOUND_GRACE_SECONDS = 10.0
TEMPORAL_CONNECT_SECONDS = 5.0


@dataclass
class LoadPlan:
    api: str
    orders: int | None = 100
    duration: float | None = None
    rate: float | None = None
    concurrency: int | None = None
    card_mix: dict[str, float] = field(default_factory=lambda: {"success": 0.9, "declined": 0.1})
    hot_share: float = 0.2
    lines: int = 1
    customers: int = 10
    # Every n-th customer (0: none) signs up with a phone number, so its notices go by SMS as well.
    phone_every: int = 0
    deadline: float = 120.0
    poll_rate: float = 200.0
    seed: int | None = None
    admin_email: str | None = None
    admin_password: str | None = None
    completion: Completion = "poll"
    temporal_address: str | None = None
    # The orders service's base URL (e.g. http://127.0.0.1:8004): POST /orders there, not via the gateway.
    direct_orders: str | None = None
    internal_token: str | None = None
    # Products are picked so that an order stays below it (an order above waits for an admin's review).
    review_threshold_cents: int = REVIEW_THRESHOLD_CENTS


@dataclass
class OrderRecord:
    sent_at: float
    card: str
    order_id: str | None = None
    accepted_at: float | None = None
    final_at: float | None = None
    status: str | None = None
    reason: str | None = None


@dataclass
class Customer:
    token: str
    cards: dict[str, str]
    user_id: str | None = None


def token_subject(token: str) -> str:
    """The user id (`sub`) of our own JWT; the signature was checked by the users service that issued it."""
    payload = token.split(".")[1]
    claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    return str(claims["sub"])


def parse_mix(text: str) -> dict[str, float]:
    """`success=80,declined=15,transient=5` → shares that sum to 1."""
    weights: dict[str, float] = {}
    for part in text.split(","):
        name, _, weight = part.partition("=")
        if name.strip() not in CARDS:
            raise ValueError(f"unknown card kind {name!r}; choose from {', '.join(CARDS)}")
        weights[name.strip()] = float(weight or 1)
    total = sum(weights.values())
    if total <= 0:
        raise ValueError("the card mix must have a positive weight")
    return {name: weight / total for name, weight in weights.items()}


class LoadRun:
    def __init__(self, plan: LoadPlan, console: Console) -> None:
        self.plan = plan
        self.console = console
        self.random = random.Random(plan.seed)
        self.records: list[OrderRecord] = []
        self.errors: Counter[str] = Counter()
        limits = httpx.Limits(max_connections=200, max_keepalive_connections=100)
        # Several gateways (comma-separated, same path): requests spread over them.
        apis = Addresses.parse(plan.api)
        spread = SpreadTransport(apis, httpx.AsyncHTTPTransport(limits=limits)) if len(apis) > 1 else None
        self.http = httpx.AsyncClient(base_url=apis.first, timeout=30, limits=limits, transport=spread)
        # Direct orders get their own pool, so the two paths never share a connection.
        self.orders_http = (
            httpx.AsyncClient(
                base_url=plan.direct_orders.rstrip("/"),
                timeout=30,
                limits=httpx.Limits(max_connections=200, max_keepalive_connections=100),
            )
            if plan.direct_orders
            else self.http
        )
        if plan.direct_orders and not plan.internal_token:
            raise ValueError("direct orders need the internal token (ORDERSAGA_INTERNAL_TOKEN)")
        self.customers: list[Customer] = []
        self._signed_up = 0
        self.products: list[dict[str, Any]] = []
        self.hot: dict[str, Any] | None = None
        self.done_sending = asyncio.Event()
        self._tokens: dict[str, str] = {}
        self.temporal: Client | None = None
        self.completion: Literal["temporal", "poll"] = "poll"
        self.completion_note: str | None = None

    # ---- setup ---------------------------------------------------------------------------

    async def prepare(self) -> None:
        listed = await self.http.get("/products", params={"limit": 200})
        listed.raise_for_status()
        limit = self.plan.review_threshold_cents
        self.products = [p for p in listed.json()["items"] if p["price_cents"] * self.plan.lines < limit]
        if len(self.products) < max(2, self.plan.lines):
            raise RuntimeError("not enough products below the review threshold; run `ordersaga seed` first")
        self.hot = self.products[0]
        await self._top_up_stock()
        # Customers handed over by an earlier run (the benchmark suite) are kept: registering is slow.
        if not self.customers:
            self.customers = list(
                await asyncio.gather(*(self._customer() for _ in range(self.plan.customers)))
            )

    async def _connect_temporal(self) -> None:
        """Decide how completion is detected; `auto` falls back to polling when Temporal does not answer."""
        if self.plan.completion == "poll" or not self.plan.temporal_address:
            if self.plan.completion == "temporal":
                raise ValueError("--completion temporal needs a Temporal address")
            return
        try:
            self.temporal = await asyncio.wait_for(
                connect(TemporalSettings(address=self.plan.temporal_address)), TEMPORAL_CONNECT_SECONDS
            )
        except (TimeoutError, RuntimeError, RPCError) as err:
            if self.plan.completion == "temporal":
                raise RuntimeError(f"Temporal at {self.plan.temporal_address} did not answer: {err}") from err
            self.completion_note = f"Temporal at {self.plan.temporal_address} did not answer; polled instead"
            self.console.print(f"[yellow]{self.completion_note}[/]")
            return
        self.completion = "temporal"

    async def _top_up_stock(self) -> None:
        """With admin credentials, make stock plentiful so that outcomes measure the saga, not stock-outs."""
        if not (self.plan.admin_email and self.plan.admin_password):
            return
        token = await self._login(self.plan.admin_email, self.plan.admin_password)
        for product in self.products:
            await self.http.put(
                f"/products/{product['id']}/stock",
                json={"stock": 1_000_000},
                headers={"Authorization": f"Bearer {token}"},
            )

    async def _login(self, username: str, password: str) -> str:
        response = await self.http.post("/auth/token", data={"username": username, "password": password})
        response.raise_for_status()
        return str(response.json()["access_token"])

    async def _customer(self) -> Customer:
        tag = uuid.uuid4().hex[:12]
        email, password = f"load-{tag}@example.com", f"load-{tag}-password"
        self._signed_up += 1
        every = self.plan.phone_every
        profile: dict[str, str] = {}
        if every and self._signed_up % every == 0:
            profile["phone"] = f"+1415{int(tag[:8], 16) % 10**7:07d}"
        body = {"email": email, "username": f"load_{tag}", "password": password, "profile": profile}
        registered = await self.http.post("/users", json=body)
        registered.raise_for_status()
        token = await self._login(email, password)
        cards: dict[str, str] = {}
        for kind in self.plan.card_mix:
            created = await self.http.post(
                "/payment-methods",
                json={"card_number": CARDS[kind], "exp_month": 12, "exp_year": 2040, "cvc": "123"},
                headers={"Authorization": f"Bearer {token}"},
            )
            created.raise_for_status()
            cards[kind] = created.json()["id"]
        return Customer(token, cards, token_subject(token))

    # ---- sending -------------------------------------------------------------------------

    def _order_body(self, customer: Customer, card: str) -> dict[str, Any]:
        assert self.hot is not None
        first = self.hot if self.random.random() < self.plan.hot_share else self.random.choice(self.products)
        others = [p for p in self.products if p["id"] != first["id"]]
        chosen = [first, *self.random.sample(others, k=min(len(others), self.plan.lines - 1))]
        return {
            "items": [{"product_id": p["id"], "quantity": 1} for p in chosen],
            "payment_method_id": customer.cards[card],
        }

    async def _send_one(self) -> OrderRecord:
        customer = self.random.choice(self.customers)
        kinds, weights = zip(*self.plan.card_mix.items(), strict=True)
        card = self.random.choices(kinds, weights)[0]
        record = OrderRecord(sent_at=time.perf_counter(), card=card)
        self.records.append(record)
        try:
            response = await self.orders_http.post(
                "/orders", json=self._order_body(customer, card), headers=self._order_headers(customer)
            )
        except httpx.HTTPError as err:
            self.errors[f"transport:{type(err).__name__}"] += 1
            return record
        if response.status_code != 202:
            self.errors[f"http:{response.status_code}"] += 1
            return record
        record.accepted_at = time.perf_counter()
        record.order_id = response.json()["id"]
        self._tokens[record.order_id] = customer.token
        return record

    def _order_headers(self, customer: Customer) -> dict[str, str]:
        headers = {"Idempotency-Key": uuid.uuid4().hex}
        if self.plan.direct_orders:
            # What the gateway forwards once it has checked the customer's JWT.
            assert self.plan.internal_token is not None
            return headers | identity_headers(self.plan.internal_token, "customer", customer.user_id)
        return headers | {"Authorization": f"Bearer {customer.token}"}

    def _should_send(self, sent: int, started: float) -> bool:
        if self.plan.orders is not None and sent >= self.plan.orders:
            return False
        return self.plan.duration is None or time.perf_counter() - started < self.plan.duration

    async def _open_loop(self, rate: float) -> None:
        started = time.perf_counter()
        sent = 0
        tasks: set[asyncio.Task[None]] = set()
        while self._should_send(sent, started):
            target = started + sent / rate
            delay = target - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            task = asyncio.create_task(self._send_and_await())
            tasks.add(task)
            task.add_done_callback(tasks.discard)
            sent += 1
        if tasks:
            await asyncio.gather(*tasks)

    async def _send_and_await(self) -> None:
        """Open loop: with Temporal each order awaits its own result; the poller covers `poll`."""
        record = await self._send_one()
        if record.order_id and self.completion == "temporal":
            await self._await_result(record)

    async def _closed_loop(self, concurrency: int) -> None:
        started = time.perf_counter()
        counter = {"sent": 0}

        async def customer_loop() -> None:
            while self._should_send(counter["sent"], started):
                counter["sent"] += 1
                record = await self._send_one()
                if record.order_id:
                    await self._wait_final(record)

        await asyncio.gather(*(customer_loop() for _ in range(concurrency)))

    # ---- completion ----------------------------------------------------------------------

    async def _check(self, record: OrderRecord) -> None:
        assert record.order_id is not None
        token = self._tokens[record.order_id]
        try:
            response = await self.http.get(
                f"/orders/{record.order_id}", headers={"Authorization": f"Bearer {token}"}
            )
        except httpx.HTTPError as err:
            self.errors[f"poll:{type(err).__name__}"] += 1
            return
        if response.status_code != 200:
            self.errors[f"poll:http:{response.status_code}"] += 1
            return
        body = response.json()
        if body["status"] in FINAL and record.final_at is None:
            record.final_at = time.perf_counter()
            record.status, record.reason = body["status"], body.get("cancel_reason")

    async def _wait_final(self, record: OrderRecord) -> None:
        if self.completion == "temporal":
            await self._await_result(record)
        else:
            await self._poll_until_final(record, time.perf_counter() + self.plan.deadline)

    async def _poll_until_final(self, record: OrderRecord, deadline: float) -> None:
        while record.final_at is None and time.perf_counter() < deadline:
            await asyncio.sleep(0.1)
            await self._check(record)

    async def _await_result(self, record: OrderRecord) -> None:
        """Wait for the saga's result: the client long-polls the workflow's close event, nothing else."""
        assert record.order_id is not None and self.temporal is not None
        deadline = record.sent_at + self.plan.deadline
        handle = self.temporal.get_workflow_handle(
            workflow_id_for(str(uuid.UUID(record.order_id))), result_type=OrderResult
        )
        not_found_since: float | None = None
        while record.final_at is None:
            if self.completion != "temporal":  # another order found the run on the wrong server
                return await self._poll_until_final(record, deadline)
            remaining = deadline - time.perf_counter()
            if remaining <= 0:
                return None
            try:
                result: OrderResult = await asyncio.wait_for(handle.result(), remaining)
            except TimeoutError:
                return None
            except WorkflowFailureError as err:
                self.errors[f"completion:workflow_failed:{type(err.cause).__name__}"] += 1
                return None
            except RPCError as err:
                if err.status != RPCStatusCode.NOT_FOUND:
                    self.errors[f"completion:rpc:{err.status.name}"] += 1
                    await asyncio.sleep(1.0)
                    continue
                not_found_since = not_found_since or time.perf_counter()
                if time.perf_counter() - not_found_since > NOT_FOUND_GRACE_SECONDS:
                    self._fall_back_to_polling(handle.id)
                    continue
                await asyncio.sleep(0.2)
                continue
            record.final_at = time.perf_counter()
            record.status, record.reason = result.status, result.cancel_reason
        return None

    def _fall_back_to_polling(self, workflow_id: str) -> None:
        if self.completion == "poll":
            return
        self.completion = "poll"
        self.completion_note = (
            f"workflow {workflow_id} not found on {self.plan.temporal_address} after "
            f"{NOT_FOUND_GRACE_SECONDS:.0f}s (is it the stack's Temporal?); polled instead"
        )
        self.console.print(f"[yellow]{self.completion_note}[/]")

    async def _poller(self) -> None:
        """Visit open orders round-robin at no more than `poll_rate` requests per second."""
        interval = 1.0 / self.plan.poll_rate
        give_up_at: float | None = None
        while True:
            open_orders = [r for r in self.records if r.order_id and r.final_at is None]
            if self.done_sending.is_set():
                give_up_at = give_up_at or time.perf_counter() + self.plan.deadline
                if not open_orders or time.perf_counter() > give_up_at:
                    return
            if not open_orders:
                await asyncio.sleep(0.05)
                continue
            for record in open_orders:
                await self._check(record)
                await asyncio.sleep(interval)

    # ---- the run -------------------------------------------------------------------------

    async def run(self) -> dict[str, Any]:
        await self._connect_temporal()
        await self.prepare()
        started = time.perf_counter()
        progress = Progress(
            TextColumn("[bold]orders[/]"),
            BarColumn(),
            TextColumn(
                "{task.fields[accepted]} accepted · {task.fields[final]} final · {task.fields[errors]} errors"
            ),
            TextColumn("· {task.fields[rate]:.1f}/s"),
            TimeElapsedColumn(),
            console=self.console,
            transient=False,
        )
        total = self.plan.orders or 0
        with progress:
            task = progress.add_task("load", total=total or None, accepted=0, final=0, errors=0, rate=0.0)

            async def refresh() -> None:
                while True:
                    final = sum(1 for r in self.records if r.final_at)
                    elapsed = max(time.perf_counter() - started, 1e-6)
                    progress.update(
                        task,
                        completed=final,
                        accepted=sum(1 for r in self.records if r.accepted_at),
                        final=final,
                        errors=sum(self.errors.values()),
                        rate=final / elapsed,
                    )
                    await asyncio.sleep(0.25)

            refresher = asyncio.create_task(refresh())
            if self.plan.concurrency:
                await self._closed_loop(self.plan.concurrency)
                self.done_sending.set()
            else:
                # With Temporal each order awaits its own result in its task: no poller at all.
                poller = asyncio.create_task(self._poller()) if self.completion == "poll" else None
                await self._open_loop(self.plan.rate or 10.0)
                self.done_sending.set()
                if poller is not None:
                    await poller
            refresher.cancel()
        await self.http.aclose()
        if self.orders_http is not self.http:
            await self.orders_http.aclose()
        return self.report(time.perf_counter() - started)

    def report(self, elapsed: float) -> dict[str, Any]:
        accepted = [r for r in self.records if r.accepted_at]
        final = [r for r in accepted if r.final_at]
        accept_ms = [(r.accepted_at - r.sent_at) * 1000 for r in accepted if r.accepted_at]
        complete_ms = [(r.final_at - r.sent_at) * 1000 for r in final if r.final_at]
        now = time.perf_counter()
        first_sent = min((r.sent_at for r in self.records), default=now)
        last_accepted = max((r.accepted_at for r in accepted if r.accepted_at), default=now)
        last_final = max((r.final_at for r in final if r.final_at), default=now)
        accept_window = max(last_accepted - first_sent, 1e-6)
        final_window = max(last_final - first_sent, 1e-6)
        outcomes = Counter(f"{r.status}:{r.reason}" if r.reason else str(r.status) for r in final)
        return {
            "orders_sent": len(self.records),
            "accepted": len(accepted),
            "final": len(final),
            "not_final": len(accepted) - len(final),
            "elapsed_seconds": round(elapsed, 3),
            "accepted_per_second": round(len(accepted) / accept_window, 2),
            "completed_per_second": round(len(final) / final_window, 2),
            "accept_latency_ms": percentiles(accept_ms),
            "completion_latency_ms": percentiles(complete_ms),
            "outcomes": dict(outcomes),
            "errors": dict(self.errors),
            "plan": {
                "completion": self.completion,
                "completion_note": self.completion_note,
                "temporal_address": self.plan.temporal_address if self.completion == "temporal" else None,
                "orders_via": "orders service" if self.plan.direct_orders else "gateway",
                "orders_url": self.plan.direct_orders or self.plan.api,
                "rate": self.plan.rate,
                "concurrency": self.plan.concurrency,
                "orders": self.plan.orders,
                "duration": self.plan.duration,
                "card_mix": self.plan.card_mix,
                "hot_share": self.plan.hot_share,
                "lines": self.plan.lines,
            },
        }


def percentiles(values: list[float]) -> dict[str, float | None]:
    if not values:
        return {"p50": None, "p95": None, "p99": None, "max": None}
    ordered = sorted(values)
    if len(ordered) == 1:
        only = round(ordered[0], 2)
        return {"p50": only, "p95": only, "p99": only, "max": only}
    cuts = statistics.quantiles(ordered, n=100, method="inclusive")
    return {
        "p50": round(cuts[49], 2),
        "p95": round(cuts[94], 2),
        "p99": round(cuts[98], 2),
        "max": round(ordered[-1], 2),
    }


def print_report(console: Console, report: dict[str, Any]) -> None:
    keys = ("orders_sent", "accepted", "final", "not_final", "accepted_per_second", "completed_per_second")
    table = measures_table("ordersaga load", report, keys)
    for name in ("accept_latency_ms", "completion_latency_ms"):
        values = report[name]
        table.add_row(name.replace("_", " "), " / ".join(f"{k} {v}" for k, v in values.items()))
    plan = report["plan"]
    table.add_row(
        "completion",
        plan["completion"] + (f" ({plan['temporal_address']})" if plan["temporal_address"] else ""),
    )
    table.add_row("orders sent to", plan["orders_url"])
    for prefix, counter in (("outcome", report["outcomes"]), ("error", report["errors"])):
        for name, count in sorted(counter.items()):
            table.add_row(f"{prefix} {name}", str(count))
    console.print(table)


def run_load(plan: LoadPlan, *, json_path: Path | None = None, console: Console | None = None) -> int:
    console = console or Console(stderr=True)
    report = asyncio.run(LoadRun(plan, console).run())
    print_report(console, report)
    if json_path is not None:
        json_path.write_text(json.dumps(report, indent=2) + "\n")
    return 1 if report["not_final"] else 0
