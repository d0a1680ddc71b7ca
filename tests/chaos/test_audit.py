"""The auditor on small, hand-built states: every check holds, then each is broken alone.

The databases are the services' own, migrated to head (the chaos run's are too), holding one order
of each shape the saga leaves behind: confirmed by authorisation and capture, confirmed by a charge
of the plan before authorisations, declined, voided after a rejected review, refused before the
payments service saw it (a placeholder void with no order id), refunded after a cancellation, and
cancelled before any payment; each with its reservation lines and its outcome notice, delivered to
the mail sink (a maildir) and, for a customer with a phone, to the SMS sink.

For every check in `audit.CHECKS` a breaking case below changes a copy of that state so that exactly
that invariant no longer holds, and the audit must report that check and no other: a check that
cannot fire, or one added without a case, fails here. The same runs on PostgreSQL for a few checks,
read through the `<prefix><service>` naming of `ordersaga up --postgres`. Fast: no process is
started; `tests/chaos/test_chaos.py` audits the state of a real run.
"""

from __future__ import annotations

import json
import shutil
import sqlite3
import uuid
from collections.abc import Callable
from contextlib import closing
from dataclasses import dataclass, field
from datetime import UTC, datetime
from email.message import EmailMessage
from mailbox import Maildir
from pathlib import Path

import asyncpg
import pytest

from ordersaga import audit
from services.registry import DATA_SERVICES
from tests.support.databases import PostgresDatabases, SqliteDatabases, run_in_thread

NOW = datetime(2025, 1, 1, tzinfo=UTC)
ON_HAND = 10
PHONE = "+15550100"


def _id() -> str:
    return uuid.uuid4().hex


@dataclass
class World:
    """One consistent state on one backend, written through `sql` (`?` placeholders on both)."""

    data_dir: Path
    base: audit.Baseline
    postgres: dict[str, str] | None = None  # service → database URL; None: SQLite files in data_dir
    prefix: str = audit.DEFAULT_DATABASE_PREFIX
    server: str | None = None
    product: str = ""
    orders: dict[str, str] = field(default_factory=dict)  # name → order id (hex)
    payments: dict[str, str] = field(default_factory=dict)  # name → payment id (hex)
    notices: dict[str, str] = field(default_factory=dict)  # "<order name>:<channel>" → notification id
    clients: set[str] = field(default_factory=set)  # the order ids clients saw accepted

    def sql(self, service: str, statement: str, *args: object) -> int:
        if self.postgres is None:
            sqlite_args = [a.strftime("%Y-%m-%d %H:%M:%S.%f") if isinstance(a, datetime) else a for a in args]
            with closing(sqlite3.connect(self.data_dir / f"{service}.db")) as conn, conn:
                return conn.execute(statement, sqlite_args).rowcount
        parts = statement.split("?")
        numbered = parts[0] + "".join(f"${n}{part}" for n, part in enumerate(parts[1:], start=1))
        return int(run_in_thread(_pg_execute(self.postgres[service], numbered, [_pg_arg(a) for a in args])))

    @property
    def sources(self) -> audit.Sources:
        if self.postgres is None:
            return audit.Sources(data_dir=self.data_dir)
        return audit.Sources(data_dir=self.data_dir, postgres=self.server, database_prefix=self.prefix)

    def findings(self) -> list[audit.Violation]:
        return audit.findings(self.sources, self.base, self.clients)

    def mail(self, notification_id: str) -> None:
        message = EmailMessage()
        message["Message-ID"] = f"<{uuid.UUID(notification_id)}@ordersaga>"
        message["Subject"] = "Your order"
        message.set_content("hello")
        Maildir(self.data_dir / "mail", create=True).add(message)

    def sms(self, notification_id: str) -> None:
        line = {"message_id": str(uuid.UUID(notification_id)), "channel": "sms", "to": PHONE, "body": "hi"}
        with (self.data_dir / "sms.jsonl").open("a", encoding="utf-8") as sink:
            sink.write(json.dumps(line) + "\n")


def _pg_arg(value: object) -> object:
    # SQLite keeps UUIDs as 32 hex digits; PostgreSQL wants them as UUIDs.
    if isinstance(value, str) and len(value) == 32:
        try:
            return uuid.UUID(value)
        except ValueError:
            return value
    return value


async def _pg_execute(url: str, statement: str, args: list[object]) -> int:
    conn = await asyncpg.connect(url, timeout=10)
    try:
        status = await conn.execute(statement, *args)
    finally:
        await conn.close()
    return int(status.rsplit(" ", 1)[-1])


def _key(order_id: str, step: str) -> str:
    return f"order-{uuid.UUID(order_id)}:{step}"  # dashed, as the saga's keys are


def populate(world: World) -> World:
    w = world.sql
    product = world.product = _id()
    world.base = audit.Baseline(order_ids=frozenset(), on_hand={product: ON_HAND})
    w(
        "inventory",
        "INSERT INTO inventory_products (id, sku, name, description, price_cents, currency, on_hand, "
        "reserved, created_at, updated_at) VALUES (?, 'SKU-1', 'Mug', '', 1000, 'USD', ?, 0, ?, ?)",
        product,
        ON_HAND - 3,  # 2 units left with order `captured`, 1 with order `charged`
        NOW,
        NOW,
    )

    def order(
        name: str,
        status: str,
        quantity: int,
        reason: str | None = None,
        reservation: str | None = None,
        phone: bool = False,
    ) -> str:
        oid = _id()
        user = _id()
        world.orders[name] = oid
        world.clients.add(oid)
        items = json.dumps(
            [{"product_id": str(uuid.UUID(product)), "quantity": quantity, "unit_price_cents": 1000}]
        )
        w(
            "orders",
            "INSERT INTO orders (id, user_id, status, items, payment_method_id, total_cents, currency, "
            "cancel_reason, version, created_at, updated_at) VALUES (?, ?, ?, ?, ?, ?, 'USD', ?, 1, ?, ?)",
            oid,
            user,
            status,
            items,
            _id(),
            quantity * 1000,
            reason,
            NOW,
            NOW,
        )
        if reservation:
            w(
                "inventory",
                "INSERT INTO inventory_reservations (order_id, status, total_cents, currency, created_at, "
                "updated_at) VALUES (?, ?, ?, 'USD', ?, ?)",
                oid,
                reservation,
                quantity * 1000,
                NOW,
                NOW,
            )
            w(
                "inventory",
                "INSERT INTO inventory_reservation_lines (order_id, product_id, quantity, unit_price_cents) "
                "VALUES (?, ?, ?, 1000)",
                oid,
                product,
                quantity,
            )
        template = "order_cancelled" if status == "CANCELLED" else "order_confirmed"
        for channel, to in [("email", "c@example.com")] + ([("sms", PHONE)] if phone else []):
            nid = notify(name, oid, user, channel, to, template)
            (world.mail if channel == "email" else world.sms)(nid)
        return oid

    def notify(name: str, oid: str, user: str, channel: str, to: str, template: str) -> str:
        nid = _id()
        world.notices[f"{name}:{channel}"] = nid
        w(
            "notifications",
            "INSERT INTO notifications (id, idempotency_key, request_hash, user_id, channel, recipient, "
            "template, data, order_id, status, attempts, next_attempt_at, created_at, sent_at) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, 'sent', 1, ?, ?, ?)",
            nid,
            f"{_key(oid, 'notify_customer')}:{template}:{channel}",
            "0" * 64,
            user,
            channel,
            to,
            template,
            json.dumps({"order_id": str(uuid.UUID(oid))}),
            oid,
            NOW,
            NOW,
            NOW,
        )
        return nid

    def payment(
        name: str,
        order_name: str,
        status: str,
        amount: int | None,
        kinds: list[tuple[str, int]],
        *,
        step: str = "authorize_payment",
        refunded: int = 0,
        with_order_id: bool = True,
    ) -> str:
        pid = _id()
        world.payments[name] = pid
        oid = world.orders[order_name]
        w(
            "payments",
            "INSERT INTO payments (id, idempotency_key, order_id, amount_cents, currency, status, "
            "refunded_cents, created_at, updated_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
            pid,
            _key(oid, step),
            oid if with_order_id else None,
            amount,
            "USD" if amount else None,
            status,
            refunded,
            NOW,
            NOW,
        )
        for kind, cents in kinds:
            w(
                "payments",
                "INSERT INTO payment_transactions (id, payment_id, kind, amount_cents, created_at) "
                "VALUES (?, ?, ?, ?, ?)",
                _id(),
                pid,
                kind,
                cents,
                NOW,
            )
        return pid

    # Confirmed: authorised, captured after the review, and the order's payment_id is that payment.
    order("captured", "CONFIRMED", 2, reservation="committed", phone=True)
    payment("captured", "captured", "captured", 2000, [("authorization", 2000), ("capture", 2000)])
    # Confirmed by a saga of the old plan: one charge, captured at once.
    order("charged", "DELIVERED", 1, reservation="committed")
    payment("charged", "charged", "captured", 1000, [("charge", 1000)], step="charge_payment")
    for name in ("captured", "charged"):
        w("orders", "UPDATE orders SET payment_id = ? WHERE id = ?", world.payments[name], world.orders[name])
    # Cancelled: the card declined the authorisation.
    order("declined", "CANCELLED", 1, "payment_declined", "released", phone=True)
    payment("declined", "declined", "declined", 1000, [("decline", 1000)])
    # Cancelled: the reviewer rejected it, and the hold was voided.
    order("voided", "CANCELLED", 1, "review_rejected", "released")
    payment("voided", "voided", "voided", 1000, [("authorization", 1000), ("void", 1000)])
    # Cancelled: the authorisation never reached the payments service; the void left a placeholder.
    order("placeholder", "CANCELLED", 1, "internal_error", "released")
    payment("placeholder", "placeholder", "voided", None, [], with_order_id=False)
    # Cancelled during the capture: captured, then refunded in full by refund_capture.
    order("refunded", "CANCELLED", 3, "customer_cancelled", "released")
    payment(
        "refunded",
        "refunded",
        "refunded",
        3000,
        [("authorization", 3000), ("capture", 3000), ("refund", 3000)],
        refunded=3000,
    )
    # Its refund receipt: a notice of the order that is not its outcome, so not counted as one.
    world.mail(
        notify("refunded", world.orders["refunded"], _id(), "email", "c@example.com", "refund_receipt")
    )
    # Cancelled before any payment (out of stock); the repair's refund of a charge key it never used
    # (the plan before authorisations) left a placeholder too.
    order("unpaid", "CANCELLED", 1, "out_of_stock")
    payment("stray", "unpaid", "voided", None, [], step="charge_payment", with_order_id=False)
    return world


@pytest.fixture
def world(tmp_path: Path, sqlite_databases: SqliteDatabases) -> World:
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    for service in DATA_SERVICES:
        template = run_in_thread(sqlite_databases.template(service))
        shutil.copyfile(template, data_dir / f"{service}.db")
    return populate(World(data_dir, audit.Baseline(frozenset(), {})))


@pytest.fixture
def pg_world(tmp_path: Path, postgres_databases: PostgresDatabases) -> World:
    """The same state on PostgreSQL, in databases named as `ordersaga up --postgres` names them."""
    prefix = f"audit_{uuid.uuid4().hex[:8]}_"
    urls = {}
    for service in DATA_SERVICES:
        template = run_in_thread(postgres_databases.template(service))
        name = f"{prefix}{service}"
        run_in_thread(postgres_databases._admin(f'CREATE DATABASE "{name}" TEMPLATE "{template}"'))
        postgres_databases.created.append(name)  # dropped with the session's databases
        urls[service] = audit.postgres_database_url(postgres_databases.admin_url, name)
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    world = World(
        data_dir,
        audit.Baseline(frozenset(), {}),
        postgres=urls,
        prefix=prefix,
        server=postgres_databases.admin_url,
    )
    return populate(world)


# ---- one break per check -----------------------------------------------------------------------------

Break = Callable[[World], None]


def _insert_capture(w: World, payment: str, cents: int) -> None:
    assert w.sql(
        "payments",
        "INSERT INTO payment_transactions (id, payment_id, kind, amount_cents, created_at) "
        "VALUES (?, ?, 'capture', ?, ?)",
        _id(),
        w.payments[payment],
        cents,
        NOW,
    )


def _second_capture_of_one_order(w: World) -> None:
    # A second key of the confirmed order captured too, and was then voided by status: the unique key
    # (one payment per key) holds, yet the order's money moved twice.
    extra = _id()
    assert w.sql(
        "payments",
        "INSERT INTO payments (id, idempotency_key, order_id, amount_cents, currency, status, "
        "refunded_cents, created_at, updated_at) VALUES (?, ?, ?, 2000, 'USD', 'voided', 0, ?, ?)",
        extra,
        _key(w.orders["captured"], "charge_payment"),
        w.orders["captured"],
        NOW,
        NOW,
    )
    w.payments["extra"] = extra
    _insert_capture(w, "extra", 2000)


def _reservation_held_after_final(w: World) -> None:
    # Held again, and counted in the product's counter so that only the order's end contradicts it.
    assert w.sql(
        "inventory",
        "UPDATE inventory_reservations SET status = 'reserved' WHERE order_id = ?",
        w.orders["declined"],
    )
    assert w.sql("inventory", "UPDATE inventory_products SET reserved = reserved + 1")


def _reservation_of_unknown_order(w: World) -> None:
    assert w.sql(
        "inventory",
        "INSERT INTO inventory_reservations (order_id, status, total_cents, currency, created_at, "
        "updated_at) VALUES (?, 'released', 0, 'USD', ?, ?)",
        _id(),
        NOW,
        NOW,
    )


def _a_confirmed_order_told_it_was_cancelled(w: World) -> None:
    oid = w.orders["charged"]
    assert w.sql(
        "notifications",
        "UPDATE notifications SET template = 'order_cancelled', idempotency_key = ? WHERE id = ?",
        f"{_key(oid, 'notify_customer')}:order_cancelled:email",
        w.notices["charged:email"],
    )


def _refund_lost(w: World) -> None:
    # The ledger and the payment's status both keep the money of a cancelled order.
    pid = w.payments["refunded"]
    assert w.sql("payments", "DELETE FROM payment_transactions WHERE payment_id = ? AND kind = 'refund'", pid)
    assert w.sql("payments", "UPDATE payments SET status = 'captured', refunded_cents = 0 WHERE id = ?", pid)


def _duplicate_mail(w: World) -> None:
    first = next((w.data_dir / "mail" / "new").iterdir())
    shutil.copy(first, first.with_name(first.name + ".again"))


def _duplicate_sms(w: World) -> None:
    sink = w.data_dir / "sms.jsonl"
    lines = sink.read_text().splitlines(keepends=True)
    sink.write_text("".join([*lines, lines[0]]))


def _sent_sms_lost(w: World) -> None:
    sink = w.data_dir / "sms.jsonl"
    lost = str(uuid.UUID(w.notices["captured:sms"]))
    sink.write_text("".join(line for line in sink.read_text().splitlines(keepends=True) if lost not in line))


BREAKS: dict[str, Break] = {
    "accepted_order_exists": lambda w: w.clients.add(_id()),
    "order_final": lambda w: _assert(
        w.sql("orders", "UPDATE orders SET status = 'PENDING' WHERE id = ?", w.orders["unpaid"])
    ),
    "cancel_reason": lambda w: _assert(
        w.sql("orders", "UPDATE orders SET cancel_reason = NULL WHERE id = ?", w.orders["voided"])
    ),
    "stock_conserved": lambda w: _assert(
        w.sql("inventory", "UPDATE inventory_products SET on_hand = on_hand + 1")
    ),
    "reserved_matches_reservations": lambda w: _assert(
        w.sql("inventory", "UPDATE inventory_products SET reserved = 1")
    ),
    "reservation_order_known": _reservation_of_unknown_order,
    "reservation_released_when_final": _reservation_held_after_final,
    "reservation_committed_only_confirmed": lambda w: _assert(
        w.sql(
            "inventory",
            "UPDATE inventory_reservations SET status = 'committed' WHERE order_id = ?",
            w.orders["declined"],
        )
    ),
    "one_capture_per_order": _second_capture_of_one_order,
    "no_live_payment_after_final": lambda w: _assert(
        w.sql("payments", "UPDATE payments SET status = 'authorized' WHERE id = ?", w.payments["voided"])
    ),
    "no_live_payment_without_order": lambda w: _assert(
        w.sql(
            "payments",
            "UPDATE payments SET status = 'authorized', idempotency_key = 'not-a-saga-key' WHERE id = ?",
            w.payments["placeholder"],
        )
    ),
    # Its one payment is no longer captured (the ledger still shows the capture).
    "confirmed_order_captured": lambda w: _assert(
        w.sql("payments", "UPDATE payments SET status = 'voided' WHERE id = ?", w.payments["charged"])
    ),
    "confirmed_order_unrefunded": lambda w: _assert(
        w.sql(
            "payments",
            "INSERT INTO payment_transactions (id, payment_id, kind, amount_cents, created_at) "
            "VALUES (?, ?, 'refund', 500, ?)",
            _id(),
            w.payments["captured"],
            NOW,
        )
    ),
    "amount_agrees": lambda w: _assert(
        w.sql(
            "payments",
            "UPDATE payment_transactions SET amount_cents = 1500 WHERE payment_id = ? AND kind = 'capture'",
            w.payments["captured"],
        )
    ),
    "currency_agrees": lambda w: _assert(
        w.sql("payments", "UPDATE payments SET currency = 'EUR' WHERE id = ?", w.payments["charged"])
    ),
    "payment_id_names_capture": lambda w: _assert(
        w.sql(
            "orders",
            "UPDATE orders SET payment_id = ? WHERE id = ?",
            w.payments["declined"],
            w.orders["captured"],
        )
    ),
    "cancelled_order_nets_zero": _refund_lost,
    "one_outcome_notice": _a_confirmed_order_told_it_was_cancelled,
    "email_at_most_once": _duplicate_mail,
    "sms_at_most_once": _duplicate_sms,
    "sent_notice_delivered": _sent_sms_lost,
    "outbox_drained": lambda w: _assert(
        w.sql(
            "notifications",
            "INSERT INTO outbox (id, source, type, data, created_at, attempts) "
            "VALUES (?, 'notifications', 'notification.sent', '{}', ?, 0)",
            _id(),
            NOW,
        )
    ),
}


def _assert(rowcount: int) -> None:
    assert rowcount, "the break changed nothing"


def test_every_check_has_a_breaking_case() -> None:
    assert set(BREAKS) == set(audit.CHECKS)


def test_every_shape_of_a_finished_saga_passes(world: World) -> None:
    assert world.findings() == []
    assert audit.pending(world.data_dir, world.base).quiet


@pytest.mark.parametrize("check", sorted(BREAKS))
def test_each_check_catches_its_broken_invariant_alone(world: World, check: str) -> None:
    BREAKS[check](world)
    found = world.findings()
    assert [v.check for v in found] == [check], found


PG_CHECKS = [
    "reserved_matches_reservations",
    "one_capture_per_order",
    "payment_id_names_capture",
    "one_outcome_notice",
    "outbox_drained",
    "order_final",
]


def test_each_service_database_is_found_where_up_puts_it(world: World) -> None:
    server = audit.Sources(world.data_dir, postgres="postgresql+asyncpg://app:pw@db:5433/postgres")
    assert server.database("orders") == "postgresql://app:pw@db:5433/ordersaga_orders"
    prefixed = audit.Sources(world.data_dir, postgres="postgresql://db/postgres", database_prefix="shop_")
    assert prefixed.database("payments") == "postgresql://db/shop_payments"
    # One service elsewhere, by the URL its own settings use: read like the others.
    moved = world.data_dir / "elsewhere.db"
    shutil.move(world.data_dir / "orders.db", moved)
    elsewhere = audit.Sources(world.data_dir, databases={"orders": f"sqlite+aiosqlite:///{moved}"})
    assert audit.findings(elsewhere, world.base, world.clients) == []
    with pytest.raises(sqlite3.OperationalError):  # read-only: a missing file is not created
        world.findings()


@pytest.mark.postgres
def test_the_audit_reads_postgresql(pg_world: World) -> None:
    assert pg_world.findings() == []
    assert audit.pending(pg_world.sources, pg_world.base).quiet
    assert audit.payment_counts(pg_world.sources, pg_world.base) == {
        "captured": 2,
        "declined": 1,
        "refunded": 1,
        "voided": 3,
    }


@pytest.mark.postgres
@pytest.mark.parametrize("check", PG_CHECKS)
def test_each_check_catches_its_broken_invariant_on_postgresql(pg_world: World, check: str) -> None:
    BREAKS[check](pg_world)
    found = pg_world.findings()
    assert [v.check for v in found] == [check], found


# ---- the messages an operator reads ----------------------------------------------------------------


def _messages(world: World) -> list[str]:
    return [v.message for v in world.findings()]


@pytest.mark.parametrize("name", ["voided", "declined", "placeholder", "stray"])
def test_an_authorisation_outliving_its_cancelled_order_is_reported(world: World, name: str) -> None:
    assert world.sql(
        "payments", "UPDATE payments SET status = 'authorized' WHERE id = ?", world.payments[name]
    )
    order = world.orders["unpaid" if name == "stray" else name]
    assert _messages(world) == [
        f"payment {world.payments[name]} of order {order} still authorized after CANCELLED"
    ]
    # Still holding money: not quiescent either.
    assert audit.pending(world.data_dir, world.base).live_payments == 1


def test_a_pending_payment_of_a_final_order_is_reported(world: World) -> None:
    assert world.sql(
        "payments", "UPDATE payments SET status = 'pending' WHERE id = ?", world.payments["voided"]
    )
    assert _messages(world) == [
        f"payment {world.payments['voided']} of order {world.orders['voided']} still pending after CANCELLED"
    ]


def test_a_confirmed_order_whose_capture_is_still_an_authorisation_is_reported(world: World) -> None:
    assert world.sql(
        "payments", "UPDATE payments SET status = 'authorized' WHERE id = ?", world.payments["captured"]
    )
    found = world.findings()
    assert [v.check for v in found] == ["no_live_payment_after_final", "confirmed_order_captured"], found


def test_a_confirmed_order_without_its_payment_id_is_reported(world: World) -> None:
    assert world.sql("orders", "UPDATE orders SET payment_id = NULL WHERE id = ?", world.orders["charged"])
    assert _messages(world) == [
        f"confirmed order {world.orders['charged']}: its payment_id None "
        f"is not its captured payment {world.payments['charged']}"
    ]


def test_a_declined_payment_recorded_as_captured_is_reported(world: World) -> None:
    # The status alone says captured (no capture in the ledger): still money a cancelled order keeps.
    assert world.sql(
        "payments", "UPDATE payments SET status = 'captured' WHERE id = ?", world.payments["declined"]
    )
    assert _messages(world) == [
        f"cancelled order {world.orders['declined']}: charged 0, refunded 0, kept by its payments 1000"
    ]


def test_a_second_capture_row_of_one_payment_is_reported(world: World) -> None:
    _insert_capture(world, "captured", 2000)
    found = world.findings()
    assert [v.check for v in found] == ["one_capture_per_order", "amount_agrees"], found


def test_a_final_order_without_its_notice_is_reported(world: World) -> None:
    assert world.sql("notifications", "DELETE FROM notifications WHERE id = ?", world.notices["unpaid:email"])
    assert _messages(world) == [
        f"order {world.orders['unpaid']} CANCELLED: outcome notices {{}}, expected one order_cancelled "
        "per channel"
    ]


def test_an_order_told_both_outcomes_is_reported(world: World) -> None:
    oid = world.orders["declined"]
    assert world.sql(
        "notifications",
        "UPDATE notifications SET template = 'order_confirmed', idempotency_key = ? WHERE id = ?",
        f"{_key(oid, 'notify_customer')}:order_confirmed:sms",
        world.notices["declined:sms"],
    )
    assert [v.check for v in world.findings()] == ["one_outcome_notice"]


def test_an_unknown_notification_is_final_whether_or_not_it_arrived(world: World) -> None:
    # Killed after the gateway took the SMS and before the row was marked: `unknown`, not a violation.
    assert world.sql(
        "notifications",
        "UPDATE notifications SET status = 'unknown', sent_at = NULL WHERE id = ?",
        world.notices["captured:sms"],
    )
    assert world.findings() == []
    counts = audit.notification_counts(world.data_dir)
    assert counts["unknown"] == 1 and counts["unknown_delivered"] == 1, counts


def test_the_command_exits_1_on_a_violation(world: World, tmp_path: Path) -> None:
    from typer.testing import CliRunner

    report = tmp_path / "chaos.json"
    report.write_text(
        json.dumps({"baseline": world.base.to_json(), "client_order_ids": sorted(world.clients)})
    )
    argv = ["--data-dir", str(world.data_dir), "--report", str(report)]
    clean = CliRunner().invoke(audit.cli, argv)
    assert clean.exit_code == 0, clean.output
    assert f"{len(audit.CHECKS)} checks, 0 violations" in clean.output
    BREAKS["stock_conserved"](world)
    broken = CliRunner().invoke(audit.cli, argv)
    assert broken.exit_code == 1, broken.output
    assert "stock_conserved: stock of product" in broken.output
