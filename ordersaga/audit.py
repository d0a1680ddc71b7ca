"""The invariants of docs/design.md (section 4), checked across the services' SQLite databases after a run.

Read-only: each database is opened with `mode=ro`, so an audit never changes what it judges. Every
id is compared in one spelling (32 hex digits), because SQLAlchemy stores UUIDs that way in SQLite
while JSON columns keep the dashed form.
"""

from __future__ import annotations

import mailbox
import sqlite3
import time
import uuid
from collections import Counter, defaultdict
from collections.abc import Iterator
from contextlib import closing, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from services.registry import DATA_SERVICES

FINAL = ("CONFIRMED", "SHIPPED", "DELIVERED", "CANCELLED")
CONFIRMED = ("CONFIRMED", "SHIPPED", "DELIVERED")


def hex_id(value: object) -> str:
    return uuid.UUID(str(value)).hex


@contextmanager
def database(data_dir: Path, service: str) -> Iterator[sqlite3.Connection]:
    path = data_dir / f"{service}.db"
    with closing(sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=10)) as conn:
        yield conn


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


def baseline(data_dir: Path) -> Baseline:
    with database(data_dir, "orders") as conn:
        orders = frozenset(hex_id(row[0]) for row in conn.execute("SELECT id FROM orders"))
    return Baseline(order_ids=orders, on_hand=stock(data_dir))


def stock(data_dir: Path) -> dict[str, int]:
    with database(data_dir, "inventory") as conn:
        return {hex_id(pid): int(n) for pid, n in conn.execute("SELECT id, on_hand FROM inventory_products")}


def run_orders(data_dir: Path, base: Baseline) -> list[dict[str, Any]]:
    import json

    with database(data_dir, "orders") as conn:
        rows = conn.execute(
            "SELECT id, status, cancel_reason, total_cents, items, payment_id FROM orders"
        ).fetchall()
    orders = []
    for oid, status, reason, total, items, payment_id in rows:
        if hex_id(oid) in base.order_ids:
            continue
        parsed = json.loads(items) if isinstance(items, str) else items
        orders.append(
            {
                "id": hex_id(oid),
                "status": status,
                "reason": reason,
                "total": total,
                "items": parsed,
                "payment_id": payment_id,
            }
        )
    return orders


@dataclass
class Pending:
    """What still moves; all zero means the system is quiescent."""

    open_orders: int = 0
    live_reservations: int = 0
    # Payments of the run still authorised or in flight: each must end captured, voided or declined.
    live_payments: int = 0
    outbox: dict[str, int] = field(default_factory=dict)
    queued_notifications: int = 0

    @property
    def quiet(self) -> bool:
        return not (
            self.open_orders
            or self.live_reservations
            or self.live_payments
            or any(self.outbox.values())
            or self.queued_notifications
        )


def pending(data_dir: Path, base: Baseline) -> Pending:
    state = Pending(open_orders=sum(1 for o in run_orders(data_dir, base) if o["status"] not in FINAL))
    with database(data_dir, "inventory") as conn:
        state.live_reservations = conn.execute(
            "SELECT count(*) FROM inventory_reservations WHERE status = 'reserved'"
        ).fetchone()[0]
    state.live_payments = sum(
        1
        for p in payments(data_dir)
        if p.status in LIVE_STATUSES and (p.order_id is None or p.order_id not in base.order_ids)
    )
    for service in DATA_SERVICES:
        with database(data_dir, service) as conn:
            state.outbox[service] = conn.execute(
                "SELECT count(*) FROM outbox WHERE published_at IS NULL"
            ).fetchone()[0]
    with database(data_dir, "notifications") as conn:
        state.queued_notifications = conn.execute(
            "SELECT count(*) FROM notifications WHERE status = 'queued'"
        ).fetchone()[0]
    return state


def wait_quiescent(data_dir: Path, base: Baseline, timeout: float) -> tuple[bool, Pending, float]:
    """Poll until two reads a second apart both find nothing moving, or the timeout passes."""
    started = time.monotonic()
    quiet_reads = 0
    state = Pending()
    while time.monotonic() - started < timeout:
        try:
            state = pending(data_dir, base)
        except sqlite3.OperationalError:  # a writer holds the lock for a moment
            state = Pending(open_orders=-1)
        quiet_reads = quiet_reads + 1 if state.quiet else 0
        if quiet_reads >= 2:
            return True, state, time.monotonic() - started
        time.sleep(1.0)
    return False, state, time.monotonic() - started


def audit(data_dir: Path, base: Baseline, client_order_ids: set[str]) -> list[str]:
    """Every invariant of RELIABILITY.md's table; returns one line per violation (empty = all hold).

    - every order a client saw accepted exists, and is final (a cancelled one with its reason);
    - stock is conserved, and no reservation outlives its order (committed only for a confirmed one);
    - money (`_money`): no key captured twice; no authorisation outlives its order (no payment of a
      final order still `authorized` or `pending`); a confirmed order has exactly one captured
      payment, of its total, unrefunded, and it is the order's `payment_id`; a cancelled order nets 0;
    - each notification sent at most once; every outbox drained.
    """
    violations: list[str] = []
    orders = run_orders(data_dir, base)
    by_id = {o["id"]: o for o in orders}

    # No accepted request lost: every order a client saw accepted is in the database.
    violations += [f"order {oid} accepted by the API but absent" for oid in client_order_ids - by_id.keys()]
    # Every accepted order final, a cancellation with its reason.
    for order in orders:
        if order["status"] not in FINAL:
            violations.append(f"order {order['id']} not final: {order['status']}")
        elif order["status"] == "CANCELLED" and not order["reason"]:
            violations.append(f"order {order['id']} cancelled without a reason")

    # Stock conserved: start = now + units that left with confirmed orders.
    shipped: Counter[str] = Counter()
    for order in orders:
        if order["status"] in CONFIRMED:
            for line in order["items"]:
                shipped[hex_id(line["product_id"])] += int(line["quantity"])
    now = stock(data_dir)
    for pid, start in base.on_hand.items():
        if start != now.get(pid, 0) + shipped[pid]:
            violations.append(
                f"stock of product {pid}: start {start} != now {now.get(pid)} + confirmed {shipped[pid]}"
            )

    # No live reservation without a live order; a committed one only for a confirmed order.
    with database(data_dir, "inventory") as conn:
        reservations = conn.execute("SELECT order_id, status FROM inventory_reservations").fetchall()
    for oid, status in reservations:
        held = by_id.get(hex_id(oid))
        if held is None:
            continue
        if status == "reserved" and held["status"] in FINAL:
            violations.append(f"reservation of order {held['id']} still held after {held['status']}")
        if status == "committed" and held["status"] not in CONFIRMED:
            violations.append(f"reservation of order {held['id']} committed but order {held['status']}")

    violations += _money(data_dir, by_id)
    violations += _notifications(data_dir)
    violations += _outbox(data_dir)
    return violations


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


def payments(data_dir: Path) -> list[PaymentRow]:
    """Every payment with its transactions; a placeholder void (no order id) is tied to its key's order."""
    with database(data_dir, "payments") as conn:
        rows = conn.execute(
            "SELECT id, order_id, idempotency_key, status, amount_cents, refunded_cents FROM payments"
        ).fetchall()
        transactions = conn.execute(
            "SELECT payment_id, kind, amount_cents FROM payment_transactions"
        ).fetchall()
    by_id: dict[str, PaymentRow] = {}
    for pid, oid, key, status, amount, refunded in rows:
        order = hex_id(oid) if oid is not None else order_of_key(str(key))
        by_id[hex_id(pid)] = PaymentRow(
            id=hex_id(pid),
            order_id=order,
            key=str(key),
            status=str(status),
            amount=int(amount or 0),
            refunded=int(refunded or 0),
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


def payment_counts(data_dir: Path, base: Baseline) -> dict[str, int]:
    """The run's payments by status (a placeholder void, with no order id, counted as `voided`)."""
    counts: Counter[str] = Counter(
        p.status for p in payments(data_dir) if p.order_id is None or p.order_id not in base.order_ids
    )
    return dict(sorted(counts.items()))


def _money(data_dir: Path, by_id: dict[str, dict[str, Any]]) -> list[str]:
    violations: list[str] = []
    rows = payments(data_dir)
    of_order: dict[str, list[PaymentRow]] = defaultdict(list)
    for payment in rows:
        # No key charged twice: one capture per key (a key is one payment, its charge or authorisation).
        if len(payment.captures) > 1:
            violations.append(f"idempotency key {payment.key} charged {len(payment.captures)} times")
        if payment.order_id in by_id:
            of_order[payment.order_id].append(payment)
        elif payment.order_id is None and payment.status in LIVE_STATUSES:
            violations.append(f"payment {payment.id} {payment.status} for no order (key {payment.key})")

    for oid, order in by_id.items():
        mine = of_order.get(oid, [])
        status = order["status"]
        # No authorisation outlives its order: once final, nothing may still hold or move money.
        if status in FINAL:
            violations += [
                f"payment {p.id} of order {oid} still {p.status} after {status}"
                for p in mine
                if p.status in LIVE_STATUSES
            ]
        captured = [p for p in mine if p.status in CAPTURED_STATUSES]
        ledger = [amount for p in mine for amount in p.captures]
        refunds = sum(p.refunds for p in mine)
        if status in CONFIRMED:
            one = captured[0] if len(captured) == 1 else None
            if (
                one is None
                or one.amount != order["total"]
                or one.refunded
                or ledger != [order["total"]]
                or refunds
            ):
                violations.append(
                    f"confirmed order {oid}: captured payments "
                    f"{[(p.id, p.status, p.amount, p.refunded) for p in captured]}, "
                    f"captures {ledger}, refunds {refunds}, total {order['total']}"
                )
            elif (named := hex_id(order["payment_id"]) if order["payment_id"] else None) != one.id:
                violations.append(
                    f"confirmed order {oid}: its payment_id {named} is not its captured payment {one.id}"
                )
        elif status == "CANCELLED":
            kept = sum(p.amount - p.refunded for p in captured)
            if kept or sum(ledger) != refunds:
                violations.append(
                    f"cancelled order {oid}: charged {sum(ledger)}, refunded {refunds}, "
                    f"kept by its payments {kept}"
                )
    return violations


def _notifications(data_dir: Path) -> list[str]:
    # A notification whose sender died mid-send is `unknown`: final and not re-sent, so no violation.
    with database(data_dir, "notifications") as conn:
        sent = conn.execute(
            "SELECT idempotency_key, count(*) FROM notifications WHERE status = 'sent' "
            "GROUP BY idempotency_key HAVING count(*) > 1"
        ).fetchall()
    violations = [f"notification {key} sent {n} times" for key, n in sent]
    # The sender is at most once, a crash included: one Message-ID (one notification) reaching the
    # SMTP server twice is always a violation.
    violations += [
        f"email {mid} delivered {n} times (same Message-ID)"
        for mid, n in email_redeliveries(data_dir).items()
    ]
    return violations


def email_redeliveries(data_dir: Path) -> dict[str, int]:
    """Message-IDs the SMTP sink received more than once (the Message-ID is the notification id)."""
    ids = Counter(str(message["Message-ID"]) for message in mail_messages(data_dir / "mail"))
    return {mid: n for mid, n in ids.items() if n > 1}


def notification_counts(data_dir: Path) -> dict[str, int]:
    """Notifications by status, plus `unknown_delivered`: `unknown` ones the SMTP sink did receive."""
    with database(data_dir, "notifications") as conn:
        counts = {
            str(status): int(n)
            for status, n in conn.execute("SELECT status, count(*) FROM notifications GROUP BY status")
        }
        unknown = {
            hex_id(nid) for (nid,) in conn.execute("SELECT id FROM notifications WHERE status = 'unknown'")
        }
    delivered = {_notification_of(str(m["Message-ID"])) for m in mail_messages(data_dir / "mail")}
    counts["unknown_delivered"] = len(unknown & delivered)
    return counts


def _notification_of(message_id: str) -> str | None:
    """`<notification id@ordersaga>` → the id in hex; None for a message ordersaga did not send."""
    local = message_id.strip().strip("<>").partition("@")[0]
    try:
        return hex_id(local)
    except ValueError:
        return None


def mail_messages(maildir: Path) -> list[mailbox.MaildirMessage]:
    if not (maildir / "new").is_dir():
        return []
    return list(mailbox.Maildir(maildir, create=False).values())


def _outbox(data_dir: Path) -> list[str]:
    violations = []
    for service in DATA_SERVICES:
        with database(data_dir, service) as conn:
            stuck = conn.execute("SELECT count(*) FROM outbox WHERE published_at IS NULL").fetchone()[0]
        if stuck:
            violations.append(f"{stuck} outbox rows of {service} never published")
    return violations
