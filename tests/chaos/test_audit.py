"""The auditor on small, hand-built databases: each money invariant holds, then is broken once.

The databases are the services' own, migrated to head (the chaos run's are too), holding one order
of each shape the saga leaves behind: confirmed by authorisation and capture, confirmed by a charge
of the plan before authorisations, declined, voided after a rejected review, refused before the
payments service saw it (a placeholder void with no order id), refunded after a cancellation, and
cancelled before any payment. Fast: no process is started; `tests/chaos/test_chaos.py` does the
same on the databases of a real run.
"""

from __future__ import annotations

import json
import shutil
import sqlite3
import uuid
from contextlib import closing
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from ordersaga import audit
from services.registry import DATA_SERVICES
from tests.support.databases import SqliteDatabases, run_in_thread

NOW = "2025-01-01 00:00:00.000000"
ON_HAND = 10


def _id() -> str:
    return uuid.uuid4().hex


@dataclass
class World:
    data_dir: Path
    base: audit.Baseline
    orders: dict[str, str] = field(default_factory=dict)  # name → order id (hex)
    payments: dict[str, str] = field(default_factory=dict)  # name → payment id (hex)

    def sql(self, service: str, statement: str, *args: object) -> int:
        with closing(sqlite3.connect(self.data_dir / f"{service}.db")) as conn, conn:
            return conn.execute(statement, args).rowcount

    def audit(self) -> list[str]:
        return audit.audit(self.data_dir, self.base, set(self.orders.values()))


def _key(order_id: str, step: str) -> str:
    return f"order-{uuid.UUID(order_id)}:{step}"  # dashed, as the saga's keys are


@pytest.fixture
def world(tmp_path: Path, sqlite_databases: SqliteDatabases) -> World:
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    for service in DATA_SERVICES:
        template = run_in_thread(sqlite_databases.template(service))
        shutil.copyfile(template, data_dir / f"{service}.db")
    product = _id()
    world = World(data_dir, audit.Baseline(order_ids=frozenset(), on_hand={product: ON_HAND}))
    w = world.sql
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
        name: str, status: str, quantity: int, reason: str | None = None, reservation: str | None = None
    ) -> str:
        oid = _id()
        world.orders[name] = oid
        items = json.dumps(
            [{"product_id": str(uuid.UUID(product)), "quantity": quantity, "unit_price_cents": 1000}]
        )
        w(
            "orders",
            "INSERT INTO orders (id, user_id, status, items, payment_method_id, total_cents, currency, "
            "cancel_reason, version, created_at, updated_at) VALUES (?, ?, ?, ?, ?, ?, 'USD', ?, 1, ?, ?)",
            oid,
            _id(),
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
        return oid

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
    order("captured", "CONFIRMED", 2, reservation="committed")
    payment("captured", "captured", "captured", 2000, [("authorization", 2000), ("capture", 2000)])
    # Confirmed by a saga of the old plan: one charge, captured at once.
    order("charged", "DELIVERED", 1, reservation="committed")
    payment("charged", "charged", "captured", 1000, [("charge", 1000)], step="charge_payment")
    for name in ("captured", "charged"):
        w("orders", "UPDATE orders SET payment_id = ? WHERE id = ?", world.payments[name], world.orders[name])
    # Cancelled: the card declined the authorisation.
    order("declined", "CANCELLED", 1, "payment_declined", "released")
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
    # Cancelled before any payment (out of stock); the repair's refund of a charge key it never used
    # (the plan before authorisations) left a placeholder too.
    order("unpaid", "CANCELLED", 1, "out_of_stock")
    payment("stray", "unpaid", "voided", None, [], step="charge_payment", with_order_id=False)
    return world


def test_every_shape_of_a_finished_saga_passes(world: World) -> None:
    assert world.audit() == []
    assert audit.pending(world.data_dir, world.base).quiet


@pytest.mark.parametrize("name", ["voided", "declined", "placeholder", "stray"])
def test_an_authorisation_outliving_its_cancelled_order_is_reported(world: World, name: str) -> None:
    assert world.sql(
        "payments", "UPDATE payments SET status = 'authorized' WHERE id = ?", world.payments[name]
    )
    order = world.orders["unpaid" if name == "stray" else name]
    assert world.audit() == [
        f"payment {world.payments[name]} of order {order} still authorized after CANCELLED"
    ]
    # Still holding money: not quiescent either.
    assert audit.pending(world.data_dir, world.base).live_payments == 1


def test_a_pending_payment_of_a_final_order_is_reported(world: World) -> None:
    assert world.sql(
        "payments", "UPDATE payments SET status = 'pending' WHERE id = ?", world.payments["voided"]
    )
    assert world.audit() == [
        f"payment {world.payments['voided']} of order {world.orders['voided']} still pending after CANCELLED"
    ]


def test_a_confirmed_order_whose_capture_is_still_an_authorisation_is_reported(world: World) -> None:
    assert world.sql(
        "payments", "UPDATE payments SET status = 'authorized' WHERE id = ?", world.payments["captured"]
    )
    found = world.audit()
    oid, pid = world.orders["captured"], world.payments["captured"]
    assert len(found) == 2, found
    assert found[0] == f"payment {pid} of order {oid} still authorized after CONFIRMED"
    assert found[1].startswith(f"confirmed order {oid}: captured payments []"), found


def test_an_authorisation_of_no_order_is_reported(world: World) -> None:
    assert world.sql(
        "payments",
        "UPDATE payments SET status = 'authorized', idempotency_key = 'not-a-saga-key' WHERE id = ?",
        world.payments["placeholder"],
    )
    assert world.audit() == [
        f"payment {world.payments['placeholder']} authorized for no order (key not-a-saga-key)"
    ]


def test_a_confirmed_order_must_name_its_captured_payment(world: World) -> None:
    assert world.sql(
        "orders",
        "UPDATE orders SET payment_id = ? WHERE id = ?",
        world.payments["declined"],
        world.orders["captured"],
    )
    assert world.audit() == [
        f"confirmed order {world.orders['captured']}: its payment_id {world.payments['declined']} "
        f"is not its captured payment {world.payments['captured']}"
    ]


def test_a_confirmed_order_without_its_payment_id_is_reported(world: World) -> None:
    assert world.sql("orders", "UPDATE orders SET payment_id = NULL WHERE id = ?", world.orders["charged"])
    assert world.audit() == [
        f"confirmed order {world.orders['charged']}: its payment_id None "
        f"is not its captured payment {world.payments['charged']}"
    ]


def test_a_capture_kept_by_a_cancelled_order_is_reported(world: World) -> None:
    # The refund lost: the ledger and the payment's status both keep the money.
    pid = world.payments["refunded"]
    assert world.sql(
        "payments", "DELETE FROM payment_transactions WHERE payment_id = ? AND kind = 'refund'", pid
    )
    assert world.sql(
        "payments", "UPDATE payments SET status = 'captured', refunded_cents = 0 WHERE id = ?", pid
    )
    assert world.audit() == [
        f"cancelled order {world.orders['refunded']}: charged 3000, refunded 0, kept by its payments 3000"
    ]


def test_a_declined_payment_recorded_as_captured_is_reported(world: World) -> None:
    # The status alone says captured (no capture in the ledger): still money a cancelled order keeps.
    assert world.sql(
        "payments", "UPDATE payments SET status = 'captured' WHERE id = ?", world.payments["declined"]
    )
    assert world.audit() == [
        f"cancelled order {world.orders['declined']}: charged 0, refunded 0, kept by its payments 1000"
    ]


def test_a_key_captured_twice_is_reported(world: World) -> None:
    pid = world.payments["captured"]
    assert world.sql(
        "payments",
        "INSERT INTO payment_transactions (id, payment_id, kind, amount_cents, created_at) "
        "VALUES (?, ?, 'capture', 2000, ?)",
        _id(),
        pid,
        NOW,
    )
    found = world.audit()
    key = _key(world.orders["captured"], "authorize_payment")
    assert found[0] == f"idempotency key {key} charged 2 times", found
    assert found[1].startswith(f"confirmed order {world.orders['captured']}:"), found
    assert len(found) == 2, found


def test_a_refunded_charge_of_a_confirmed_order_is_reported(world: World) -> None:
    pid = world.payments["charged"]
    assert world.sql(
        "payments",
        "INSERT INTO payment_transactions (id, payment_id, kind, amount_cents, created_at) "
        "VALUES (?, ?, 'refund', 1000, ?)",
        _id(),
        pid,
        NOW,
    )
    assert world.sql(
        "payments", "UPDATE payments SET status = 'refunded', refunded_cents = 1000 WHERE id = ?", pid
    )
    found = world.audit()
    assert len(found) == 1 and found[0].startswith(f"confirmed order {world.orders['charged']}:"), found
