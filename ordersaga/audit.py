"""The invariants of docs/design.md (section 4), checked across the services' databases after a run.

The databases are read where they live: SQLite files under a data dir (`ordersaga up`), or
PostgreSQL databases named `<prefix><service>` on one server (`ordersaga up --postgres`, compose,
Kubernetes), or a URL per service. Read-only either way (SQLite `mode=ro`, PostgreSQL
`default_transaction_read_only`), so an audit never changes what it judges. The mail sink (a
maildir) and the SMS sink (`sms.jsonl`) are read from the data dir.

Every id is compared in one spelling (32 hex digits): SQLAlchemy stores UUIDs that way in SQLite,
PostgreSQL returns `uuid.UUID`, and JSON columns keep the dashed form.

Each check is a named pure function of one `Snapshot`, listed in `CHECKS`, so that a test can break
each invariant alone and expect exactly its violation.
"""

from __future__ import annotations

import asyncio
import json
import mailbox
import sqlite3
import threading
import time
import uuid
from collections import Counter, defaultdict
from collections.abc import Callable, Coroutine, Mapping
from contextlib import closing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, TypeVar

import asyncpg
import typer
from sqlalchemy.engine import make_url

from services.registry import DATA_SERVICES

FINAL = ("CONFIRMED", "SHIPPED", "DELIVERED", "CANCELLED")
CONFIRMED = ("CONFIRMED", "SHIPPED", "DELIVERED")
# The notices the saga sends when an order ends (workflows/order.py, workflows/repair.py).
OUTCOME_TEMPLATES = {"confirmed": "order_confirmed", "cancelled": "order_cancelled"}
DEFAULT_DATABASE_PREFIX = "ordersaga_"

T = TypeVar("T")
Row = tuple[Any, ...]


def hex_id(value: object) -> str:
    return uuid.UUID(str(value)).hex


# ---- where the state is read from ---------------------------------------------------------------


def _run(coro: Coroutine[Any, Any, T]) -> T:
    """Run a coroutine from sync code, in a thread of its own when an event loop already runs here."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(coro)
    outcome: dict[str, Any] = {}

    def target() -> None:
        try:
            outcome["value"] = asyncio.run(coro)
        except BaseException as exc:  # handed to the caller below
            outcome["error"] = exc

    thread = threading.Thread(target=target)
    thread.start()
    thread.join()
    if "error" in outcome:
        raise outcome["error"]
    return outcome["value"]


def postgres_database_url(server_url: str, database: str) -> str:
    """The URL of `database` on the server of `server_url`, spelled for asyncpg (no `+driver`)."""
    url = make_url(server_url).set(drivername="postgresql", database=database)
    return url.render_as_string(hide_password=False)


@dataclass(frozen=True)
class Sources:
    """Where each service's database and the notification sinks are.

    A service's database is, in this order: `databases[service]` (a SQLite path or URL, or a
    PostgreSQL URL), else `<prefix><service>` on the `postgres` server, else
    `<data_dir>/<service>.db`. The sinks are the data dir's `mail/` and `sms.jsonl`; `sinks=False`
    for a deployment whose channels are real (nothing to read, so those checks are skipped).
    """

    data_dir: Path
    postgres: str | None = None
    database_prefix: str = DEFAULT_DATABASE_PREFIX
    databases: Mapping[str, str] = field(default_factory=dict)
    sinks: bool = True

    def database(self, service: str) -> str:
        if service in self.databases:
            return self.databases[service]
        if self.postgres is not None:
            return postgres_database_url(self.postgres, f"{self.database_prefix}{service}")
        return str(self.data_dir / f"{service}.db")

    def query(self, service: str, *statements: str) -> list[list[Row]]:
        """Each statement's rows, all read over one connection to `service`'s database."""
        where = self.database(service)
        if where.startswith(("postgresql:", "postgresql+", "postgres:")):
            return _run(_postgres_rows(where, statements))
        if where.startswith("sqlite"):  # a service's own DATABASE_URL, sqlite+aiosqlite:///<path>
            where = make_url(where).database or ""
        with closing(sqlite3.connect(f"file:{where}?mode=ro", uri=True, timeout=10)) as conn:
            return [[tuple(row) for row in conn.execute(statement)] for statement in statements]

    def one(self, service: str, statement: str) -> list[Row]:
        return self.query(service, statement)[0]

    @property
    def maildir(self) -> Path | None:
        return self.data_dir / "mail" if self.sinks else None

    @property
    def sms_log(self) -> Path | None:
        return self.data_dir / "sms.jsonl" if self.sinks else None


async def _postgres_rows(url: str, statements: tuple[str, ...]) -> list[list[Row]]:
    url = make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)
    conn = await asyncpg.connect(url, timeout=10, server_settings={"default_transaction_read_only": "on"})
    try:
        async with conn.transaction(readonly=True, isolation="repeatable_read"):
            return [[tuple(record) for record in await conn.fetch(statement)] for statement in statements]
    finally:
        await conn.close()


Where = Path | Sources


def sources(where: Where) -> Sources:
    return where if isinstance(where, Sources) else Sources(data_dir=where)


# Errors of a read racing a writer (a SQLite lock) or a server restarting: the next poll retries.
TRANSIENT_READ_ERRORS: tuple[type[BaseException], ...] = (
    sqlite3.OperationalError,
    asyncpg.PostgresError,
    asyncpg.InterfaceError,
    OSError,
    asyncio.TimeoutError,
)


# ---- the baseline and quiescence ------------------------------------------------------------------


@dataclass(frozen=True)
class Baseline:
    """What existed before the load: orders to leave out, and each product's on-hand count."""

    order_ids: frozenset[str]
    on_hand: dict[str, int]

    def to_json(self) -> dict[str, Any]:
        return {"order_ids": sorted(self.order_ids), "on_hand": self.on_hand}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Baseline:
        return cls(order_ids=frozenset(data["order_ids"]), on_hand=dict(data["on_hand"]))


def baseline(where: Where) -> Baseline:
    orders = frozenset(hex_id(row[0]) for row in sources(where).one("orders", "SELECT id FROM orders"))
    return Baseline(order_ids=orders, on_hand=stock(where))


def stock(where: Where) -> dict[str, int]:
    rows = sources(where).one("inventory", "SELECT id, on_hand FROM inventory_products")
    return {hex_id(pid): int(n) for pid, n in rows}


ORDERS_QUERY = "SELECT id, status, cancel_reason, total_cents, currency, items, payment_id FROM orders"


def _orders(rows: list[Row], base: Baseline) -> list[dict[str, Any]]:
    orders = []
    for oid, status, reason, total, currency, items, payment_id in rows:
        if hex_id(oid) in base.order_ids:
            continue
        orders.append(
            {
                "id": hex_id(oid),
                "status": status,
                "reason": reason,
                "total": total,
                "currency": currency,
                "items": json.loads(items) if isinstance(items, str) else items,
                "payment_id": hex_id(payment_id) if payment_id is not None else None,
            }
        )
    return orders


def run_orders(where: Where, base: Baseline) -> list[dict[str, Any]]:
    return _orders(sources(where).one("orders", ORDERS_QUERY), base)


@dataclass
class Pending:
    """What still moves; all zero means the system is quiescent."""

    open_orders: int = 0
    live_reservations: int = 0
    # Payments of the run still authorised or in flight: each must end captured, voided or declined.
    live_payments: int = 0
    outbox: dict[str, int] = field(default_factory=dict)
    queued_notifications: int = 0
    # Final orders of the run without any outcome notice yet: a saga sends it after the final status
    # (its retries may take a while), or the reconciler does for a saga that closed without it.
    untold_orders: int = 0

    @property
    def quiet(self) -> bool:
        return not (
            self.open_orders
            or self.live_reservations
            or self.live_payments
            or any(self.outbox.values())
            or self.queued_notifications
            or self.untold_orders
        )


OUTBOX_QUERY = "SELECT count(*) FROM outbox WHERE published_at IS NULL"


def pending(where: Where, base: Baseline) -> Pending:
    src = sources(where)
    orders = run_orders(src, base)
    state = Pending(open_orders=sum(1 for o in orders if o["status"] not in FINAL))
    state.live_reservations = src.one(
        "inventory", "SELECT count(*) FROM inventory_reservations WHERE status = 'reserved'"
    )[0][0]
    state.live_payments = sum(
        1
        for p in payments(src)
        if p.status in LIVE_STATUSES and (p.order_id is None or p.order_id not in base.order_ids)
    )
    for service in DATA_SERVICES:
        state.outbox[service] = src.one(service, OUTBOX_QUERY)[0][0]
    queued, told = src.query(
        "notifications",
        "SELECT count(*) FROM notifications WHERE status = 'queued'",
        "SELECT DISTINCT order_id FROM notifications WHERE order_id IS NOT NULL "
        "AND template IN ('order_confirmed', 'order_cancelled')",  # OUTCOME_TEMPLATES
    )
    state.queued_notifications = queued[0][0]
    told_ids = {hex_id(order_id) for (order_id,) in told}
    state.untold_orders = sum(1 for o in orders if o["status"] in FINAL and o["id"] not in told_ids)
    return state


def wait_quiescent(where: Where, base: Baseline, timeout: float) -> tuple[bool, Pending, float]:
    """Poll until two reads a second apart both find nothing moving, or the timeout passes."""
    started = time.monotonic()
    quiet_reads = 0
    state = Pending()
    while time.monotonic() - started < timeout:
        try:
            state = pending(where, base)
        except TRANSIENT_READ_ERRORS:
            state = Pending(open_orders=-1)
        quiet_reads = quiet_reads + 1 if state.quiet else 0
        if quiet_reads >= 2:
            return True, state, time.monotonic() - started
        time.sleep(1.0)
    return False, state, time.monotonic() - started


# ---- payments -------------------------------------------------------------------------------------

# Transaction kinds that move money to us: a charge (authorised and captured at once, the plan of
# sagas started before authorisations) and the capture of an authorisation. Both count as captured.
CAPTURE_KINDS = ("charge", "capture")
# Payment statuses whose amount was captured (a refund, partial or full, keeps it counted as captured).
CAPTURED_STATUSES = ("captured", "refunded")
# Statuses that may still move money: a hold on the card, or a charge or authorisation in flight.
LIVE_STATUSES = ("authorized", "pending")


@dataclass
class PaymentRow:
    """One payment with its ledger: what it captured and refunded according to its transactions."""

    id: str
    order_id: str | None  # the order's id (hex), from the row or else from its saga key
    key: str
    status: str
    amount: int
    refunded: int
    currency: str | None = None
    captures: list[int] = field(default_factory=list)
    refunds: int = 0


def order_of_key(key: str) -> str | None:
    """`order-<order id>:<step>` (every saga key, activities/http.py `saga_key`) → the order id in hex."""
    prefix, _, rest = key.partition("-")
    if prefix != "order" or ":" not in rest:
        return None
    try:
        return hex_id(rest.partition(":")[0])
    except ValueError:
        return None


PAYMENTS_QUERIES = (
    "SELECT id, order_id, idempotency_key, status, amount_cents, refunded_cents, currency FROM payments",
    "SELECT payment_id, kind, amount_cents FROM payment_transactions",
)


def _payments(rows: list[Row], transactions: list[Row]) -> list[PaymentRow]:
    by_id: dict[str, PaymentRow] = {}
    for pid, oid, key, status, amount, refunded, currency in rows:
        # A placeholder void (no order id) is tied to its key's order.
        order = hex_id(oid) if oid is not None else order_of_key(str(key))
        by_id[hex_id(pid)] = PaymentRow(
            id=hex_id(pid),
            order_id=order,
            key=str(key),
            status=str(status),
            amount=int(amount or 0),
            refunded=int(refunded or 0),
            currency=currency,
        )
    for pid, kind, amount in transactions:
        payment = by_id.get(hex_id(pid))
        if payment is None:
            continue  # a foreign key holds in the service; nothing to tie it to here
        if kind in CAPTURE_KINDS:
            payment.captures.append(int(amount))
        elif kind == "refund":
            payment.refunds += int(amount)
    return list(by_id.values())


def payments(where: Where) -> list[PaymentRow]:
    """Every payment with its transactions."""
    return _payments(*sources(where).query("payments", *PAYMENTS_QUERIES))


def payment_counts(where: Where, base: Baseline) -> dict[str, int]:
    """The run's payments by status (a placeholder void, with no order id, counted as `voided`)."""
    counts: Counter[str] = Counter(
        p.status for p in payments(where) if p.order_id is None or p.order_id not in base.order_ids
    )
    return dict(sorted(counts.items()))


# ---- the snapshot the checks judge ----------------------------------------------------------------


@dataclass(frozen=True)
class Notice:
    id: str
    order_id: str | None
    channel: str
    template: str
    status: str


@dataclass
class Snapshot:
    """Everything the checks read, taken once: each check is then a pure function of it."""

    base: Baseline
    client_order_ids: set[str]
    orders: list[dict[str, Any]]  # the run's orders (the baseline's left out)
    known_orders: set[str]  # every order id the orders service holds, the baseline's included
    on_hand: dict[str, int]
    reserved: dict[str, int]  # each product's `reserved` counter
    held: Counter[str]  # units of each product in reservations still `reserved`
    reservations: list[tuple[str, str]]  # (order id, status)
    payments: list[PaymentRow]
    notices: list[Notice]
    outbox: dict[str, int]
    emails: list[str] | None  # Message-IDs in the mail sink; None when it is not read
    sms: list[str] | None  # notification ids in the SMS sink; None when it is not read

    @property
    def by_id(self) -> dict[str, dict[str, Any]]:
        return {o["id"]: o for o in self.orders}

    def payments_of(self) -> dict[str, list[PaymentRow]]:
        mine: dict[str, list[PaymentRow]] = defaultdict(list)
        for payment in self.payments:
            if payment.order_id is not None:
                mine[payment.order_id].append(payment)
        return mine


def snapshot(where: Where, base: Baseline, client_order_ids: set[str]) -> Snapshot:
    src = sources(where)
    (order_rows,) = src.query("orders", ORDERS_QUERY)
    products, reservations, lines = src.query(
        "inventory",
        "SELECT id, on_hand, reserved FROM inventory_products",
        "SELECT order_id, status FROM inventory_reservations",
        "SELECT r.status, l.product_id, l.quantity FROM inventory_reservation_lines l "
        "JOIN inventory_reservations r ON r.order_id = l.order_id",
    )
    held: Counter[str] = Counter()
    for status, pid, quantity in lines:
        if status == "reserved":
            held[hex_id(pid)] += int(quantity)
    (notice_rows,) = src.query(
        "notifications", "SELECT id, order_id, channel, template, status FROM notifications"
    )
    return Snapshot(
        base=base,
        client_order_ids=set(client_order_ids),
        orders=_orders(order_rows, base),
        known_orders={hex_id(row[0]) for row in order_rows},
        on_hand={hex_id(pid): int(n) for pid, n, _ in products},
        reserved={hex_id(pid): int(r) for pid, _, r in products},
        held=held,
        reservations=[(hex_id(oid), str(status)) for oid, status in reservations],
        payments=_payments(*src.query("payments", *PAYMENTS_QUERIES)),
        notices=[
            Notice(hex_id(nid), hex_id(oid) if oid is not None else None, str(ch), str(tpl), str(st))
            for nid, oid, ch, tpl, st in notice_rows
        ],
        outbox={service: int(src.one(service, OUTBOX_QUERY)[0][0]) for service in DATA_SERVICES},
        emails=None if src.maildir is None else mail_ids(src.maildir),
        sms=None if src.sms_log is None else sms_ids(src.sms_log),
    )


# ---- the checks -----------------------------------------------------------------------------------

Check = Callable[[Snapshot], list[str]]
CHECKS: dict[str, Check] = {}


def check(name: str) -> Callable[[Check], Check]:
    def register(fn: Check) -> Check:
        CHECKS[name] = fn
        return fn

    return register


@check("accepted_order_exists")
def _accepted_order_exists(s: Snapshot) -> list[str]:
    """No accepted request lost: every order a client saw accepted is in the database."""
    absent = sorted(s.client_order_ids - s.by_id.keys())
    return [f"order {oid} accepted by the API but absent" for oid in absent]


@check("order_final")
def _order_final(s: Snapshot) -> list[str]:
    return [f"order {o['id']} not final: {o['status']}" for o in s.orders if o["status"] not in FINAL]


@check("cancel_reason")
def _cancel_reason(s: Snapshot) -> list[str]:
    return [
        f"order {o['id']} cancelled without a reason"
        for o in s.orders
        if o["status"] == "CANCELLED" and not o["reason"]
    ]


@check("stock_conserved")
def _stock_conserved(s: Snapshot) -> list[str]:
    """Start = now + units that left with confirmed orders."""
    shipped: Counter[str] = Counter()
    for order in s.orders:
        if order["status"] in CONFIRMED:
            for line in order["items"]:
                shipped[hex_id(line["product_id"])] += int(line["quantity"])
    return [
        f"stock of product {pid}: start {start} != now {s.on_hand.get(pid)} + confirmed {shipped[pid]}"
        for pid, start in s.base.on_hand.items()
        if start != s.on_hand.get(pid, 0) + shipped[pid]
    ]


@check("reserved_matches_reservations")
def _reserved_matches(s: Snapshot) -> list[str]:
    """A product's `reserved` counter is the units of its reservations still held, no more, no less."""
    return [
        f"product {pid}: reserved {count} != {s.held[pid]} units in live reservations"
        for pid, count in sorted(s.reserved.items())
        if count != s.held[pid]
    ] + [
        f"product {pid} held by live reservations but unknown to inventory"
        for pid in sorted(s.held.keys() - s.reserved.keys())
    ]


@check("reservation_order_known")
def _reservation_order_known(s: Snapshot) -> list[str]:
    return [
        f"reservation of order {oid} ({status}) but no such order"
        for oid, status in s.reservations
        if oid not in s.known_orders
    ]


@check("reservation_released_when_final")
def _reservation_released(s: Snapshot) -> list[str]:
    by_id = s.by_id
    return [
        f"reservation of order {oid} still held after {by_id[oid]['status']}"
        for oid, status in s.reservations
        if status == "reserved" and oid in by_id and by_id[oid]["status"] in FINAL
    ]


@check("reservation_committed_only_confirmed")
def _reservation_committed(s: Snapshot) -> list[str]:
    by_id = s.by_id
    return [
        f"reservation of order {oid} committed but order {by_id[oid]['status']}"
        for oid, status in s.reservations
        if status == "committed" and oid in by_id and by_id[oid]["status"] not in CONFIRMED
    ]


@check("one_capture_per_order")
def _one_capture_per_order(s: Snapshot) -> list[str]:
    """Across all of an order's payments (every key it used), money moved to us at most once.

    The unique key makes one payment per key; it does not stop two keys of one order, or two
    capture rows of one payment, from both taking the money.
    """
    mine = s.payments_of()
    violations = []
    for order in s.orders:
        ledger = [(p.id, c) for p in mine.get(order["id"], []) for c in p.captures]
        if len(ledger) > 1:
            violations.append(f"order {order['id']} captured {len(ledger)} times: {ledger}")
    return violations


@check("no_live_payment_after_final")
def _no_live_payment_after_final(s: Snapshot) -> list[str]:
    """No authorisation outlives its order: once final, nothing may still hold or move money."""
    mine = s.payments_of()
    return [
        f"payment {p.id} of order {o['id']} still {p.status} after {o['status']}"
        for o in s.orders
        if o["status"] in FINAL
        for p in mine.get(o["id"], [])
        if p.status in LIVE_STATUSES
    ]


@check("no_live_payment_without_order")
def _no_live_payment_without_order(s: Snapshot) -> list[str]:
    return [
        f"payment {p.id} {p.status} for no order (key {p.key})"
        for p in s.payments
        if p.order_id is None and p.status in LIVE_STATUSES
    ]


def _captured(payments: list[PaymentRow]) -> list[PaymentRow]:
    return [p for p in payments if p.status in CAPTURED_STATUSES]


def _confirmed_capture(s: Snapshot) -> list[tuple[dict[str, Any], PaymentRow]]:
    """(confirmed order, its one captured payment) for every confirmed order that has exactly one."""
    mine = s.payments_of()
    pairs = []
    for order in s.orders:
        if order["status"] in CONFIRMED and len(captured := _captured(mine.get(order["id"], []))) == 1:
            pairs.append((order, captured[0]))
    return pairs


@check("confirmed_order_captured")
def _confirmed_order_captured(s: Snapshot) -> list[str]:
    """A confirmed order has exactly one captured payment (by status) and a capture in its ledger."""
    mine = s.payments_of()
    violations = []
    for order in s.orders:
        if order["status"] not in CONFIRMED:
            continue
        paid = mine.get(order["id"], [])
        captured = _captured(paid)
        if len(captured) != 1 or not any(p.captures for p in paid):
            violations.append(
                f"confirmed order {order['id']}: captured payments "
                f"{[(p.id, p.status) for p in captured]}, captures {[c for p in paid for c in p.captures]}"
            )
    return violations


@check("confirmed_order_unrefunded")
def _confirmed_order_unrefunded(s: Snapshot) -> list[str]:
    mine = s.payments_of()
    return [
        f"confirmed order {o['id']}: payment {p.id} refunded {max(p.refunds, p.refunded)}"
        for o in s.orders
        if o["status"] in CONFIRMED
        for p in mine.get(o["id"], [])
        if p.refunds or p.refunded
    ]


@check("amount_agrees")
def _amount_agrees(s: Snapshot) -> list[str]:
    """The captured payment, and what its ledger captured, are the order's total."""
    return [
        f"confirmed order {o['id']}: total {o['total']}, payment {p.id} of {p.amount}, captured {p.captures}"
        for o, p in _confirmed_capture(s)
        if p.amount != o["total"] or sum(p.captures) != o["total"]
    ]


@check("currency_agrees")
def _currency_agrees(s: Snapshot) -> list[str]:
    return [
        f"confirmed order {o['id']} in {o['currency']}: payment {p.id} in {p.currency}"
        for o, p in _confirmed_capture(s)
        if p.currency != o["currency"]
    ]


@check("payment_id_names_capture")
def _payment_id_names_capture(s: Snapshot) -> list[str]:
    return [
        f"confirmed order {o['id']}: its payment_id {o['payment_id']} is not its captured payment {p.id}"
        for o, p in _confirmed_capture(s)
        if o["payment_id"] != p.id
    ]


@check("cancelled_order_nets_zero")
def _cancelled_order_nets_zero(s: Snapshot) -> list[str]:
    """Captured minus refunded = 0 over a cancelled order's payments, by status and by ledger."""
    mine = s.payments_of()
    violations = []
    for order in s.orders:
        if order["status"] != "CANCELLED":
            continue
        paid = mine.get(order["id"], [])
        kept = sum(p.amount - p.refunded for p in _captured(paid))
        charged = sum(c for p in paid for c in p.captures)
        refunds = sum(p.refunds for p in paid)
        if kept or charged != refunds:
            violations.append(
                f"cancelled order {order['id']}: charged {charged}, refunded {refunds}, "
                f"kept by its payments {kept}"
            )
    return violations


@check("one_outcome_notice")
def _one_outcome_notice(s: Snapshot) -> list[str]:
    """Each final order told its customer its outcome once per channel: its own notice, not the other.

    The unique key (order, template, channel) stops a notice twice; it does not stop none at all, nor
    a confirmation and a cancellation both. Every customer has an email address, so email is expected.
    """
    templates: dict[str, dict[str, list[str]]] = defaultdict(lambda: defaultdict(list))
    for notice in s.notices:
        if notice.order_id is not None and notice.template in OUTCOME_TEMPLATES.values():
            templates[notice.order_id][notice.channel].append(notice.template)
    violations = []
    for order in s.orders:
        if order["status"] not in FINAL:
            continue
        expected = OUTCOME_TEMPLATES["confirmed" if order["status"] in CONFIRMED else "cancelled"]
        got = templates.get(order["id"], {})
        if any(sent != [expected] for sent in {"email": got.get("email", []), **got}.values()):
            violations.append(
                f"order {order['id']} {order['status']}: outcome notices {dict(sorted(got.items()))}, "
                f"expected one {expected} per channel"
            )
    return violations


@check("email_at_most_once")
def _email_at_most_once(s: Snapshot) -> list[str]:
    """At most once, a crash included: one Message-ID (one notification) reaching SMTP twice."""
    if s.emails is None:
        return []
    return [f"email {mid} delivered {n} times (same Message-ID)" for mid, n in _twice(s.emails).items()]


@check("sms_at_most_once")
def _sms_at_most_once(s: Snapshot) -> list[str]:
    if s.sms is None:
        return []
    return [f"sms of notification {nid} delivered {n} times" for nid, n in _twice(s.sms).items()]


@check("sent_notice_delivered")
def _sent_notice_delivered(s: Snapshot) -> list[str]:
    """A notification recorded `sent` is in its sink (an `unknown` one may or may not be)."""
    delivered = {
        "email": None if s.emails is None else {_notification_of(mid) for mid in s.emails},
        "sms": None if s.sms is None else {_notification_of(nid) for nid in s.sms},
    }
    return [
        f"notification {n.id} ({n.channel}) recorded sent but not in the {n.channel} sink"
        for n in s.notices
        if n.status == "sent" and (sink := delivered.get(n.channel)) is not None and n.id not in sink
    ]


@check("outbox_drained")
def _outbox_drained(s: Snapshot) -> list[str]:
    return [f"{n} outbox rows of {service} never published" for service, n in s.outbox.items() if n]


@dataclass(frozen=True)
class Violation:
    check: str
    message: str


def findings(where: Where, base: Baseline, client_order_ids: set[str]) -> list[Violation]:
    """Every violation with the name of the check (`CHECKS`) that found it."""
    state = snapshot(where, base, client_order_ids)
    return [Violation(name, message) for name, fn in CHECKS.items() for message in fn(state)]


def audit(where: Where, base: Baseline, client_order_ids: set[str]) -> list[str]:
    """Every invariant of RELIABILITY.md's table; one line per violation (empty = all hold)."""
    return [v.message for v in findings(where, base, client_order_ids)]


# ---- the sinks ------------------------------------------------------------------------------------


def _twice(ids: list[str]) -> dict[str, int]:
    return {i: n for i, n in Counter(ids).items() if n > 1}


def mail_ids(maildir: Path) -> list[str]:
    return [str(message["Message-ID"]) for message in mail_messages(maildir)]


def sms_ids(path: Path) -> list[str]:
    """The notification id of each message the simulated SMS gateway took (one JSON line each)."""
    if not path.exists():
        return []
    lines = path.read_text(encoding="utf-8").splitlines()
    return [str(json.loads(line)["message_id"]) for line in lines if line.strip()]


def email_redeliveries(where: Where) -> dict[str, int]:
    """Message-IDs the SMTP sink received more than once (the Message-ID is the notification id)."""
    maildir = sources(where).maildir
    return {} if maildir is None else _twice(mail_ids(maildir))


def notification_counts(where: Where) -> dict[str, int]:
    """Notifications by status, plus `unknown_delivered`: `unknown` ones a sink did receive."""
    src = sources(where)
    by_status, unknown_rows = src.query(
        "notifications",
        "SELECT status, count(*) FROM notifications GROUP BY status",
        "SELECT id FROM notifications WHERE status = 'unknown'",
    )
    counts = {str(status): int(n) for status, n in by_status}
    unknown = {hex_id(nid) for (nid,) in unknown_rows}
    delivered: set[str | None] = set()
    if src.maildir is not None:
        delivered |= {_notification_of(mid) for mid in mail_ids(src.maildir)}
    if src.sms_log is not None:
        delivered |= {_notification_of(nid) for nid in sms_ids(src.sms_log)}
    counts["unknown_delivered"] = len(unknown & delivered)
    return counts


def _notification_of(message_id: str) -> str | None:
    """`<notification id@ordersaga>` (or the bare id of an SMS) → the id in hex; None if not ours."""
    local = message_id.strip().strip("<>").partition("@")[0]
    try:
        return hex_id(local)
    except ValueError:
        return None


def mail_messages(maildir: Path) -> list[mailbox.MaildirMessage]:
    if not (maildir / "new").is_dir():
        return []
    return list(mailbox.Maildir(maildir, create=False).values())


# ---- the command ----------------------------------------------------------------------------------

cli = typer.Typer(add_completion=False)


# A callback, not a command: `ordersaga audit --data-dir D` runs it without a subcommand name.
@cli.callback(
    invoke_without_command=True,
    epilog="Examples: ordersaga audit --data-dir .data · ordersaga audit --data-dir /tmp/chaos/data "
    "--report /tmp/chaos/chaos.json · ordersaga audit --data-dir .data --postgres "
    "postgresql://postgres@127.0.0.1/postgres",
)
def main(
    data_dir: Annotated[Path, typer.Option(help="The stack's data dir: SQLite files, mail/ and sms.jsonl.")],
    postgres: Annotated[
        str | None, typer.Option(help="A PostgreSQL server URL; each database is <prefix><service>.")
    ] = None,
    database_prefix: Annotated[str, typer.Option(help="Prefix of the databases on --postgres.")] = (
        DEFAULT_DATABASE_PREFIX
    ),
    report: Annotated[
        Path | None,
        typer.Option(
            help="A chaos JSON report: its baseline and accepted orders (else all; no stock check)."
        ),
    ] = None,
    no_sinks: Annotated[bool, typer.Option(help="Real channels: no mail or SMS sink to read.")] = False,
) -> None:
    """Audit every invariant of a stack's state; exit 1 on any violation."""
    where = Sources(data_dir=data_dir, postgres=postgres, database_prefix=database_prefix, sinks=not no_sinks)
    base, clients = Baseline(order_ids=frozenset(), on_hand={}), set[str]()
    if report is not None:
        data = json.loads(report.read_text())
        base, clients = Baseline.from_json(data["baseline"]), set(data["client_order_ids"])
    try:
        found = findings(where, base, clients)
    except (sqlite3.Error, OSError) as err:  # no such data dir or database, a server refusing
        typer.echo(f"ordersaga audit: cannot read the stack's state ({data_dir}): {err}", err=True)
        raise typer.Exit(2) from None
    for violation in found:
        typer.echo(f"{violation.check}: {violation.message}")
    typer.echo(f"{len(CHECKS)} checks, {len(found)} violations")
    raise typer.Exit(1 if found else 0)


if __name__ == "__main__":
    cli()
