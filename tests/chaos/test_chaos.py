"""The reduced chaos run of issues 10 and 18: the real stack under load while its processes are
killed, Temporal is paused and killed, its links are slowed, partitioned and cut, and an operator
cancels and terminates sagas.

`ordersaga.chaos` runs in a subprocess of its own (it owns a whole `ordersaga up` stack on free
ports); the tests read the JSON report it writes, then check that the auditor would have caught
broken invariants by breaking them in a copy of the databases the run left behind. The run is
`serial`: it measures recoveries, so `make test` runs it alone after the parallel part.
"""

from __future__ import annotations

import json
import random
import shutil
import sqlite3
import subprocess
import sys
from contextlib import closing
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from ordersaga import audit
from ordersaga.chaos import (
    CANCEL,
    CUT,
    LATENCY,
    PARTITION,
    PAUSE,
    TEMPORAL_KILL,
    TERMINATE,
    Fault,
    plan_faults,
)

pytestmark = pytest.mark.chaos  # part of the suite; `-m chaos` selects it alone

ORDERS = 200
# Each kind once: the five services, the gateway, the worker and NATS killed; Temporal paused and
# killed; a link slowed, partitioned and cut; a saga cancelled and one terminated (on SQLite: the
# PostgreSQL faults do not apply).
KINDS = {
    *("users", "inventory", "payments", "orders", "notifications", "gateway", "worker", "nats"),
    *(PAUSE, TEMPORAL_KILL, LATENCY, PARTITION, CUT, CANCEL, TERMINATE),
}
FAULTS = len(KINDS)
LINKS = ["orders->temporal", "worker->payments", *(f"{s}->nats" for s in ("users", "orders"))]


def _plans(schedule: list[Fault]) -> list[dict[str, Any]]:
    return [fault.plan() for fault in schedule]


def test_the_same_seed_gives_the_same_schedule() -> None:
    first = plan_faults(random.Random(7), sorted(KINDS), 40, window=100, links=LINKS)
    again = plan_faults(random.Random(7), sorted(KINDS), 40, window=100, links=LINKS)
    other = plan_faults(random.Random(8), sorted(KINDS), 40, window=100, links=LINKS)
    assert _plans(first) == _plans(again)
    assert _plans(first) != _plans(other)
    # Each kind once before any repeats, in time order, inside the window.
    assert {f.kind for f in first[: len(KINDS)]} == KINDS
    assert [f.at for f in first] == sorted(f.at for f in first)
    assert first[0].at > 0 and first[-1].at < 100
    # A network fault names its link and lasts a few seconds; so does a pause of Temporal.
    for fault in first:
        if fault.kind in (LATENCY, PARTITION, CUT):
            assert fault.target in LINKS and 2 <= fault.duration <= 5, fault
        elif fault.kind == PAUSE:
            assert fault.target is None and 2 <= fault.duration <= 5, fault
        else:
            assert fault.target is None and fault.duration == 0, fault


@dataclass
class ChaosRun:
    data_dir: Path
    report: dict[str, Any]
    output: str
    returncode: int


@pytest.fixture(scope="module")
def chaos(tmp_path_factory: pytest.TempPathFactory) -> ChaosRun:
    tmp = tmp_path_factory.mktemp("chaos")
    report_path = tmp / "chaos.json"
    argv = [sys.executable, "-m", "ordersaga.chaos", "--data-dir", str(tmp / "data")]
    argv += ["--orders", str(ORDERS), "--rate", "4", "--faults", str(FAULTS), "--seed", "10"]
    argv += ["--free-ports", "--json", str(report_path), "--kinds", ",".join(sorted(KINDS))]
    run = subprocess.run(argv, capture_output=True, text=True, timeout=400, check=False)  # our own module
    output = run.stdout[-3000:] + run.stderr[-6000:]
    assert report_path.exists(), output
    return ChaosRun(tmp / "data", json.loads(report_path.read_text()), output, run.returncode)


@pytest.mark.slow
@pytest.mark.serial
@pytest.mark.temporal
@pytest.mark.timeout(420)
def test_chaos_under_load_loses_nothing(chaos: ChaosRun) -> None:
    report = chaos.report
    assert report["violations"] == [], chaos.output
    assert chaos.returncode == 0, chaos.output
    assert report["orders_sent"] == ORDERS
    # Faults make clients retry with the same key, never give up: every order accepted exactly once.
    assert report["orders_accepted"] == ORDERS, report
    assert "gave_up" not in report["client_errors"], report
    # Every kind injected once, and every one recovered: restarted, healed and answering again.
    assert report["faults"] == FAULTS
    assert set(report["faults_by_kind"]) == KINDS, report["faults_by_kind"]
    assert all(None not in recoveries for recoveries in report["faults_by_kind"].values()), report
    log = {fault["kind"]: fault for fault in report["fault_log"]}
    for kind in (LATENCY, PARTITION, CUT):
        assert log[kind]["target"] and log[kind]["duration"] >= 2, log[kind]
    # The operator acted on a saga that was running, and the system took it from there.
    for kind in (CANCEL, TERMINATE):
        assert str(log[kind]["target"]).startswith("order-"), log[kind]
        assert log[kind]["note"] is None or not log[kind]["note"].startswith("skipped"), log[kind]
    # A mixed workload: some orders confirmed, some cancelled for a declined card or the hot product.
    assert report["outcomes"].get("CONFIRMED", 0) > 0, report["outcomes"]
    assert report["outcomes"].get("CANCELLED:payment_declined", 0) > 0, report["outcomes"]
    assert report["outcomes"].get("CANCELLED:out_of_stock", 0) > 0, report["outcomes"]
    # Every order paid by authorisation and capture; no hold outlived the run.
    payments = report["payments"]
    assert "authorized" not in payments and "pending" not in payments, payments
    assert payments.get("captured", 0) >= report["outcomes"]["CONFIRMED"], (payments, report["outcomes"])


@pytest.fixture
def broken(chaos: ChaosRun, tmp_path: Path) -> Path:
    """A copy of the run's databases and mail, in which each invariant is then broken once."""
    copy = tmp_path / "data"
    shutil.copytree(chaos.data_dir, copy, ignore=shutil.ignore_patterns("nats", "temporal.db*", "logs"))
    return copy


def _write(data_dir: Path, service: str, sql: str) -> int:
    with closing(sqlite3.connect(data_dir / f"{service}.db")) as conn, conn:
        return conn.execute(sql).rowcount


@pytest.mark.slow
@pytest.mark.serial
@pytest.mark.temporal
@pytest.mark.timeout(420)
def test_the_audit_catches_each_broken_invariant(chaos: ChaosRun, broken: Path) -> None:
    base = audit.Baseline.from_json(chaos.report["baseline"])
    clients = set(chaos.report["client_order_ids"])
    assert audit.audit(broken, base, clients) == []

    one = "(SELECT id FROM orders WHERE status = '{}' LIMIT 1)"
    assert _write(
        broken, "orders", f"UPDATE orders SET status = 'PENDING' WHERE id = {one.format('CONFIRMED')}"
    )
    assert _write(broken, "inventory", "UPDATE inventory_products SET on_hand = on_hand + 1")
    assert _write(
        broken,
        "inventory",
        "UPDATE inventory_reservations SET status = 'reserved' WHERE order_id = "
        "(SELECT order_id FROM inventory_reservations WHERE status = 'released' LIMIT 1)",
    )
    # A declined card turned into a capture: a cancelled order with money kept.
    assert _write(
        broken,
        "payments",
        "UPDATE payment_transactions SET kind = 'capture' WHERE id = "
        "(SELECT id FROM payment_transactions WHERE kind = 'decline' LIMIT 1)",
    )
    assert _write(
        broken,
        "notifications",
        "UPDATE outbox SET published_at = NULL WHERE id = (SELECT id FROM outbox LIMIT 1)",
    )
    first_mail = next((broken / "mail" / "new").iterdir())
    shutil.copy(first_mail, first_mail.with_name(first_mail.name + ".again"))

    found = "\n".join(audit.audit(broken, base, clients))
    for expected in (
        "not final: PENDING",
        "stock of product",
        "still held after",
        "cancelled order",
        "outbox rows of notifications never published",
        "delivered 2 times",
    ):
        assert expected in found, found


@pytest.mark.slow
@pytest.mark.serial
@pytest.mark.temporal
@pytest.mark.timeout(420)
def test_the_audit_catches_an_authorisation_outliving_its_order(chaos: ChaosRun, broken: Path) -> None:
    base = audit.Baseline.from_json(chaos.report["baseline"])
    clients = set(chaos.report["client_order_ids"])
    assert audit.audit(broken, base, clients) == []
    cancelled = {o["id"] for o in audit.run_orders(broken, base) if o["status"] == "CANCELLED"}
    with closing(sqlite3.connect(broken / "payments.db")) as conn:
        released = conn.execute(
            "SELECT id, order_id FROM payments "
            "WHERE status IN ('voided', 'declined') AND order_id IS NOT NULL"
        ).fetchall()
    # A hold of a cancelled order (voided, or declined by the card) turned back into an authorisation.
    payment_id, order_id = next((p, o) for p, o in released if audit.hex_id(o) in cancelled)
    assert _write(broken, "payments", f"UPDATE payments SET status = 'authorized' WHERE id = '{payment_id}'")

    payment, order = audit.hex_id(payment_id), audit.hex_id(order_id)
    assert audit.audit(broken, base, clients) == [
        f"payment {payment} of order {order} still authorized after CANCELLED"
    ]
    assert audit.pending(broken, base).live_payments == 1


@pytest.mark.slow
@pytest.mark.serial
@pytest.mark.temporal
@pytest.mark.timeout(420)
def test_an_unknown_notification_is_final_and_counted_not_a_violation(chaos: ChaosRun, broken: Path) -> None:
    base = audit.Baseline.from_json(chaos.report["baseline"])
    clients = set(chaos.report["client_order_ids"])
    before = audit.notification_counts(broken)
    assert before == chaos.report["notifications"]
    # A sender killed after the SMTP server took the mail and before it marked the row: the
    # notification ends `unknown` and its one copy is in the sink.
    assert _write(
        broken,
        "notifications",
        "UPDATE notifications SET status = 'unknown', sent_at = NULL WHERE id = "
        "(SELECT id FROM notifications WHERE status = 'sent' AND channel = 'email' LIMIT 1)",
    )
    assert audit.audit(broken, base, clients) == []
    assert audit.pending(broken, base).quiet
    after = audit.notification_counts(broken)
    assert after["unknown"] == before.get("unknown", 0) + 1
    assert after["unknown_delivered"] == before["unknown_delivered"] + 1
    assert after["sent"] == before["sent"] - 1
