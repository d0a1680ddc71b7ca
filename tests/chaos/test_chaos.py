"""The reduced chaos run of issues 10 and 18, on the production topology: every service on
PostgreSQL with 2 replicas, 2 workers and 2 gateways, under load while its processes are killed,
Temporal is paused and killed, its links are slowed, partitioned and cut, PostgreSQL's connections
are killed and the server restarted, and an operator cancels and terminates sagas.

`ordersaga.chaos` runs in a subprocess of its own (it owns a whole `ordersaga up` stack on free
ports and, `--own-postgres`, a PostgreSQL server of its own, since it restarts it); the tests read
the JSON report it writes, then check that the auditor would have caught broken invariants by
breaking them in a copy of the databases the run left behind. The run is `serial`: it measures
recoveries, so `make test` runs it alone after the parallel part.

The gating run is the production topology; the embedded one (one process per service, SQLite
files, as `make dev` starts it) is the long variant that CI runs too (see TOPOLOGIES below).
tests/chaos/test_audit.py covers every check on SQLite either way.
"""

from __future__ import annotations

import asyncio
import json
import mailbox
import os
import random
import shutil
import sqlite3
import subprocess
import sys
import uuid
from collections.abc import Callable, Iterator
from contextlib import closing
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import asyncpg
import pytest

from ordersaga import audit
from ordersaga.chaos import (
    CANCEL,
    CUT,
    LATENCY,
    PARTITION,
    PAUSE,
    PG_KILL,
    PG_RESTART,
    TEMPORAL_KILL,
    TERMINATE,
    Fault,
    Links,
    plan_faults,
)
from ordersaga.faults.postgres import OwnPostgres, server_bin
from ordersaga.faults.proxy import FaultProxy
from tests.support.prerequisites import missing

pytestmark = pytest.mark.chaos  # part of the suite; `-m chaos` selects it alone

# The gating run is the production topology: every service on a PostgreSQL server of the run's own
# with 2 replicas, 2 workers and 2 gateways, and every fault kind once. The embedded topology that
# `make dev` starts (one process per service, SQLite files) is the long variant (marker `full`, so
# CI runs it too), and the gate wherever PostgreSQL's server binaries are not installed.
# ORDERSAGA_TEST_CHAOS_NETWORK=0 and ORDERSAGA_TEST_CHAOS_OPERATOR=0 leave those kinds out of the
# embedded run, e.g. to tell a new hole from theirs.
PROCESS_KINDS = {"users", "inventory", "payments", "orders", "notifications", "gateway", "worker", "nats"}
NETWORK_KINDS = {LATENCY, PARTITION, CUT}
OPERATOR_KINDS = {CANCEL, TERMINATE}


@dataclass(frozen=True)
class Topology:
    name: str
    orders: int
    rate: float
    kinds: frozenset[str]
    postgres: bool

    @property
    def faults(self) -> int:
        return len(self.kinds)  # each kind once


def _unless_zero(variable: str, kinds: set[str]) -> set[str]:
    return set() if os.environ.get(variable) == "0" else kinds


PRODUCTION = Topology(
    "postgres",
    orders=300,
    rate=5,
    kinds=frozenset(
        {*PROCESS_KINDS, PAUSE, TEMPORAL_KILL, *NETWORK_KINDS, *OPERATOR_KINDS, PG_KILL, PG_RESTART}
    ),
    postgres=True,
)
EMBEDDED = Topology(
    "sqlite",
    orders=200,
    rate=4,
    kinds=frozenset(
        {
            *PROCESS_KINDS,
            PAUSE,
            TEMPORAL_KILL,
            *_unless_zero("ORDERSAGA_TEST_CHAOS_NETWORK", NETWORK_KINDS),
            *_unless_zero("ORDERSAGA_TEST_CHAOS_OPERATOR", OPERATOR_KINDS),
        }
    ),
    postgres=False,
)
KINDS = set(PRODUCTION.kinds)
TOPOLOGIES = [
    pytest.param(PRODUCTION, id=PRODUCTION.name),
    pytest.param(EMBEDDED, id=EMBEDDED.name, marks=[] if server_bin() is None else [pytest.mark.full]),
]
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
    topology: Topology
    data_dir: Path
    report: dict[str, Any]
    output: str
    returncode: int
    # On PostgreSQL: the run's server, started again after the run for the audit and the breaks.
    postgres_url: str | None = None
    database_prefix: str = audit.DEFAULT_DATABASE_PREFIX

    def where(self, data_dir: Path | None = None, **databases: str) -> audit.Where:
        data_dir = data_dir or self.data_dir
        if self.postgres_url is None:
            return data_dir
        return audit.Sources(
            data_dir=data_dir,
            postgres=self.postgres_url,
            database_prefix=self.database_prefix,
            databases=databases,
        )


@pytest.fixture(scope="module", params=TOPOLOGIES)
def chaos(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ChaosRun]:
    topology: Topology = request.param
    if topology.postgres and server_bin() is None:
        missing(
            "PostgreSQL's server binaries (initdb, postgres) are not installed: `apt-get install postgresql`"
        )
    tmp = tmp_path_factory.mktemp("chaos")
    report_path = tmp / "chaos.json"
    argv = [sys.executable, "-m", "ordersaga.chaos", "--data-dir", str(tmp / "data")]
    argv += ["--orders", str(topology.orders), "--rate", str(topology.rate)]
    argv += ["--faults", str(topology.faults), "--seed", "10"]
    argv += ["--free-ports", "--json", str(report_path), "--kinds", ",".join(sorted(topology.kinds))]
    if topology.postgres:
        argv += ["--own-postgres", "--keep-postgres", "--replicas", "2", "--workers", "2", "--gateways", "2"]
    run = subprocess.run(argv, capture_output=True, text=True, timeout=900, check=False)  # our own module
    output = run.stdout[-3000:] + run.stderr[-6000:]
    assert report_path.exists(), output
    report = json.loads(report_path.read_text())
    kept = (report.get("topology") or {}).get("postgres_directory")
    if not topology.postgres or not kept:
        yield ChaosRun(topology, tmp / "data", report, output, run.returncode)
        return
    server = OwnPostgres(tmp / "pg-logs", directory=Path(kept))
    proc = server.start_alone()
    try:
        yield ChaosRun(
            topology,
            tmp / "data",
            report,
            output,
            run.returncode,
            postgres_url=server.url,
            database_prefix=report["topology"]["database_prefix"],
        )
    finally:
        server.stop_alone(proc)
        server.destroy()


def test_each_process_is_routed_through_its_links() -> None:
    proxy = FaultProxy()
    try:
        links = Links(proxy, {"worker": {"WORKER_PAYMENTS_URL": "http://127.0.0.1:1"}}, postgres=True)
        # A replica of a service reaches its database through the proxy, credentials and options kept.
        real = "postgresql+asyncpg://shop:s3cret@db.internal:5433/ordersaga_orders?ssl=disable"
        routed = links.route("orders-2", {"ORDERS_DATABASE_URL": real})
        link = proxy.links["orders->postgres"]
        assert link.target == ("db.internal", 5433)
        assert routed["ORDERS_DATABASE_URL"] == (
            f"postgresql+asyncpg://shop:s3cret@127.0.0.1:{link.port}/ordersaga_orders?ssl=disable"
        )
        # A restart of the same process finds its link rather than opening another.
        assert links.route("orders-2", {"ORDERS_DATABASE_URL": real}) == routed
        assert links.route("worker-3", {}) == {"WORKER_PAYMENTS_URL": "http://127.0.0.1:1"}
        # SQLite: nothing to route.
        assert links.route("users", {"USERS_DATABASE_URL": "sqlite+aiosqlite:///x.db"}) == {}
        assert "users->postgres" in links.names() and "users->postgres" not in proxy.links
    finally:
        proxy.stop()


@pytest.mark.slow
@pytest.mark.serial
@pytest.mark.temporal
@pytest.mark.timeout(960)
def test_chaos_under_load_loses_nothing(chaos: ChaosRun) -> None:
    report, topology = chaos.report, chaos.topology
    assert report["violations"] == [], chaos.output
    assert chaos.returncode == 0, chaos.output
    shape = report["topology"]
    if topology.postgres:  # the production topology: replicas on PostgreSQL, audited there
        assert shape["database"].startswith("postgresql"), shape
        assert (shape["replicas"], shape["workers"], shape["gateways"]) == (2, 2, 2), shape
    else:
        assert (shape["database"], shape["replicas"]) == ("sqlite", 1), shape
    assert report["orders_sent"] == topology.orders
    # Faults make clients retry with the same key, never give up: every order accepted exactly once.
    assert report["orders_accepted"] == topology.orders, report
    assert "gave_up" not in report["client_errors"], report
    # Every kind injected once, and every one recovered: restarted, healed and answering again.
    assert report["faults"] == topology.faults
    assert set(report["faults_by_kind"]) == topology.kinds, report["faults_by_kind"]
    assert all(None not in recoveries for recoveries in report["faults_by_kind"].values()), report
    log = {fault["kind"]: fault for fault in report["fault_log"]}
    for kind in NETWORK_KINDS & topology.kinds:
        assert log[kind]["target"] and log[kind]["duration"] >= 2, log[kind]
    # The operator acted on a saga that was running, and the system took it from there.
    for kind in OPERATOR_KINDS & topology.kinds:
        assert str(log[kind]["target"]).startswith("order-"), log[kind]
        assert log[kind]["note"] is None or not log[kind]["note"].startswith("skipped"), log[kind]
    # Half the customers have a phone: their notices went by SMS too, and the audit read that sink.
    assert (chaos.data_dir / "sms.jsonl").read_text().strip(), "no SMS was sent"
    # A mixed workload: some orders confirmed, some cancelled for a declined card or the hot product.
    assert report["outcomes"].get("CONFIRMED", 0) > 0, report["outcomes"]
    assert report["outcomes"].get("CANCELLED:payment_declined", 0) > 0, report["outcomes"]
    assert report["outcomes"].get("CANCELLED:out_of_stock", 0) > 0, report["outcomes"]
    # Every order paid by authorisation and capture; no hold outlived the run.
    payments = report["payments"]
    assert "authorized" not in payments and "pending" not in payments, payments
    assert payments.get("captured", 0) >= report["outcomes"]["CONFIRMED"], (payments, report["outcomes"])


@dataclass
class Broken:
    """A copy of the run's state to break: the data dir (mail, SMS) and, on PostgreSQL, a copy of each
    database that is written to (`CREATE DATABASE ... TEMPLATE`), the rest read where the run left them."""

    run: ChaosRun
    data_dir: Path
    copies: dict[str, str]

    def where(self) -> audit.Where:
        return self.run.where(self.data_dir, **self.copies)

    def id(self, hex_id: str) -> str:
        """An id as an SQL literal of the database's uuid type (SQLite stores the 32 hex digits)."""
        return f"'{hex_id}'" if self.run.postgres_url is None else f"'{hex_id}'::uuid"

    def execute(self, service: str, statement: str) -> int:
        """Run one statement in the copy of `service`'s database; its row count."""
        if self.run.postgres_url is None:
            with closing(sqlite3.connect(self.data_dir / f"{service}.db")) as conn, conn:
                return conn.execute(statement).rowcount
        url = self.run.postgres_url
        if service not in self.copies:
            name = f"{self.run.database_prefix}broken_{uuid.uuid4().hex[:8]}_{service}"
            asyncio.run(_pg(url, f'CREATE DATABASE "{name}" TEMPLATE "{self.run.database_prefix}{service}"'))
            self.copies[service] = audit.postgres_database_url(url, name)
        status = asyncio.run(_pg(self.copies[service], statement))
        return int(status.rsplit(" ", 1)[-1])


async def _pg(url: str, statement: str) -> str:
    conn = await asyncpg.connect(url, timeout=10)
    try:
        return str(await conn.execute(statement))
    finally:
        await conn.close()


@pytest.fixture
def broken(chaos: ChaosRun, tmp_path: Path) -> Iterator[Broken]:
    """A copy of the run's databases and mail, in which each invariant is then broken once."""
    copy = tmp_path / "data"
    shutil.copytree(chaos.data_dir, copy, ignore=shutil.ignore_patterns("nats", "temporal.db*", "logs"))
    state = Broken(chaos, copy, {})
    yield state
    for url in state.copies.values():
        database = url.rsplit("/", 1)[-1]
        assert chaos.postgres_url is not None
        asyncio.run(_pg(chaos.postgres_url, f'DROP DATABASE IF EXISTS "{database}"'))


# ---- the audit on the run's real state: each break fires its own check -----------------------------

RealBreak = Callable[[Broken, list[dict[str, Any]], set[str]], None]


def _one(orders: list[dict[str, Any]], *statuses: str, reason: str | None = None) -> str:
    return next(
        o["id"] for o in orders if o["status"] in statuses and (reason is None or o["reason"] == reason)
    )


def _mail_files(state: Broken, status: str) -> list[Path]:
    """The sink's files of notifications recorded with `status`."""
    rows = audit.sources(state.where()).one(
        "notifications", f"SELECT id FROM notifications WHERE status = '{status}'"
    )
    ids = {audit.hex_id(n) for (n,) in rows}
    files = []
    for path in sorted((state.data_dir / "mail" / "new").iterdir()):
        message_id = str(mailbox.MaildirMessage(path.read_bytes())["Message-ID"])
        if message_id.strip("<>").partition("@")[0].replace("-", "") in ids:
            files.append(path)
    return files


def _duplicate_a_mail(state: Broken, orders: list[dict[str, Any]], clients: set[str]) -> None:
    first = _mail_files(state, "sent")[0]
    shutil.copy(first, first.with_name(first.name + ".again"))


def _lose_a_sent_mail(state: Broken, orders: list[dict[str, Any]], clients: set[str]) -> None:
    _mail_files(state, "sent")[0].unlink()


def _duplicate_an_sms(state: Broken, orders: list[dict[str, Any]], clients: set[str]) -> None:
    sink = state.data_dir / "sms.jsonl"
    lines = sink.read_text().splitlines(keepends=True)
    sink.write_text("".join([*lines, lines[0]]))


def _sql(
    service: str, statement: str, pick: Callable[[list[dict[str, Any]]], str] | None = None
) -> RealBreak:
    """`statement` with `{id}` the picked order's id and `{new}` a fresh one, as SQL literals."""

    def apply(state: Broken, orders: list[dict[str, Any]], clients: set[str]) -> None:
        picked = state.id(pick(orders)) if pick else ""
        sql = statement.format(id=picked, new=state.id(uuid.uuid4().hex))
        assert state.execute(service, sql), sql

    return apply


CAPTURED_OF = "(SELECT id FROM payments WHERE order_id = {id} AND status = 'captured')"
# check → how to break it in the run's state, and every check that must then fire (on real data a
# break may carry a second one with it, e.g. a second capture is also a wrong amount).
REAL_BREAKS: dict[str, tuple[RealBreak, set[str]]] = {
    "accepted_order_exists": (lambda d, o, clients: clients.add(uuid.uuid4().hex), {"accepted_order_exists"}),
    "order_final": (
        _sql(
            "orders",
            "UPDATE orders SET status = 'PENDING' WHERE id = {id}",
            lambda o: _one(o, "CANCELLED", reason="out_of_stock"),
        ),
        {"order_final"},
    ),
    "cancel_reason": (
        _sql(
            "orders", "UPDATE orders SET cancel_reason = NULL WHERE id = {id}", lambda o: _one(o, "CANCELLED")
        ),
        {"cancel_reason"},
    ),
    "stock_conserved": (
        _sql("inventory", "UPDATE inventory_products SET on_hand = on_hand + 1"),
        {"stock_conserved"},
    ),
    "reserved_matches_reservations": (
        _sql(
            "inventory",
            "UPDATE inventory_products SET reserved = reserved + 1 WHERE id = "
            "(SELECT id FROM inventory_products WHERE on_hand > reserved LIMIT 1)",
        ),
        {"reserved_matches_reservations"},
    ),
    "reservation_order_known": (
        _sql(
            "inventory",
            "INSERT INTO inventory_reservations (order_id, status, total_cents, created_at, updated_at) "
            "VALUES ({new}, 'released', 0, '2025-01-01 00:00:00', '2025-01-01 00:00:00')",
        ),
        {"reservation_order_known"},
    ),
    "reservation_committed_only_confirmed": (
        _sql(
            "inventory",
            "UPDATE inventory_reservations SET status = 'committed' WHERE order_id = {id}",
            lambda o: _one(o, "CANCELLED", reason="payment_declined"),
        ),
        {"reservation_committed_only_confirmed"},
    ),
    "one_capture_per_order": (
        _sql(
            "payments",
            "INSERT INTO payment_transactions (id, payment_id, kind, amount_cents, created_at) "
            "SELECT {new}, id, 'capture', amount_cents, created_at FROM payments "
            "WHERE order_id = {id} AND status = 'captured'",
            lambda o: _one(o, *audit.CONFIRMED),
        ),
        {"one_capture_per_order", "amount_agrees"},
    ),
    # A hold of a cancelled order (voided, or declined by the card) turned back into an authorisation.
    "no_live_payment_after_final": (
        _sql(
            "payments",
            "UPDATE payments SET status = 'authorized' WHERE order_id = {id} AND status = 'declined'",
            lambda o: _one(o, "CANCELLED", reason="payment_declined"),
        ),
        {"no_live_payment_after_final"},
    ),
    "confirmed_order_unrefunded": (
        _sql(
            "payments",
            "UPDATE payments SET refunded_cents = 1 WHERE id = " + CAPTURED_OF,
            lambda o: _one(o, *audit.CONFIRMED),
        ),
        {"confirmed_order_unrefunded"},
    ),
    "currency_agrees": (
        _sql(
            "payments",
            "UPDATE payments SET currency = 'XTS' WHERE id = " + CAPTURED_OF,
            lambda o: _one(o, *audit.CONFIRMED),
        ),
        {"currency_agrees"},
    ),
    "payment_id_names_capture": (
        _sql(
            "orders",
            "UPDATE orders SET payment_id = NULL WHERE id = {id}",
            lambda o: _one(o, *audit.CONFIRMED),
        ),
        {"payment_id_names_capture"},
    ),
    # A declined card turned into a capture: a cancelled order with money kept.
    "cancelled_order_nets_zero": (
        _sql(
            "payments",
            "UPDATE payment_transactions SET kind = 'capture' WHERE id = "
            "(SELECT id FROM payment_transactions WHERE kind = 'decline' LIMIT 1)",
        ),
        {"cancelled_order_nets_zero"},
    ),
    "one_outcome_notice": (
        _sql(
            "notifications",
            "DELETE FROM notifications WHERE order_id = {id} AND template = 'order_confirmed'",
            lambda o: _one(o, *audit.CONFIRMED),
        ),
        {"one_outcome_notice"},
    ),
    # The run's captured payment of a confirmed order, voided after the fact (its ledger still shows
    # the capture); or its ledger's capture of another amount than the order's total.
    "confirmed_order_captured": (
        _sql(
            "payments",
            "UPDATE payments SET status = 'voided' WHERE id = " + CAPTURED_OF,
            lambda o: _one(o, *audit.CONFIRMED),
        ),
        {"confirmed_order_captured"},
    ),
    "amount_agrees": (
        _sql(
            "payments",
            "UPDATE payment_transactions SET amount_cents = amount_cents + 1 "
            "WHERE kind = 'capture' AND payment_id = " + CAPTURED_OF,
            lambda o: _one(o, *audit.CONFIRMED),
        ),
        {"amount_agrees"},
    ),
    # A declined card's hold turned live again and cut loose from its order (its key too: the audit
    # also finds a payment's order by the saga's key).
    "no_live_payment_without_order": (
        _sql(
            "payments",
            "UPDATE payments SET status = 'authorized', order_id = NULL, "
            "idempotency_key = 'not-a-saga-key' WHERE id = "
            "(SELECT id FROM payments WHERE order_id = {id} AND status = 'declined')",
            lambda o: _one(o, "CANCELLED", reason="payment_declined"),
        ),
        {"no_live_payment_without_order"},
    ),
    # A cancelled order's released stock held again: its product's `reserved` counter no longer
    # matches the live reservations either.
    "reservation_released_when_final": (
        _sql(
            "inventory",
            "UPDATE inventory_reservations SET status = 'reserved' WHERE order_id = {id}",
            lambda o: _one(o, "CANCELLED", reason="payment_declined"),
        ),
        {"reservation_released_when_final", "reserved_matches_reservations"},
    ),
    "email_at_most_once": (_duplicate_a_mail, {"email_at_most_once"}),
    "sms_at_most_once": (_duplicate_an_sms, {"sms_at_most_once"}),
    "sent_notice_delivered": (_lose_a_sent_mail, {"sent_notice_delivered"}),
    "outbox_drained": (
        _sql(
            "notifications",
            "UPDATE outbox SET published_at = NULL WHERE id = (SELECT id FROM outbox LIMIT 1)",
        ),
        {"outbox_drained"},
    ),
}


def test_every_check_of_the_audit_is_broken_in_the_runs_state() -> None:
    assert set(REAL_BREAKS) == set(audit.CHECKS)


@pytest.mark.slow
@pytest.mark.serial
@pytest.mark.temporal
@pytest.mark.timeout(960)
@pytest.mark.parametrize("check", sorted(REAL_BREAKS))
def test_the_audit_catches_each_broken_invariant_in_a_real_run(
    chaos: ChaosRun, broken: Broken, check: str
) -> None:
    """Every check of `audit.CHECKS` broken alone in a copy of the run's own state (its databases and
    sinks), so that the audit is not blind to real rows; tests/chaos/test_audit.py does the same on a
    state built by hand, on SQLite."""
    base = audit.Baseline.from_json(chaos.report["baseline"])
    clients = set(chaos.report["client_order_ids"])
    assert audit.audit(broken.where(), base, clients) == []
    apply, expected = REAL_BREAKS[check]
    apply(broken, audit.run_orders(broken.where(), base), clients)
    found = audit.findings(broken.where(), base, clients)
    assert {v.check for v in found} == expected, found
    if check == "no_live_payment_after_final":
        assert audit.pending(broken.where(), base).live_payments == 1


@pytest.mark.slow
@pytest.mark.serial
@pytest.mark.temporal
@pytest.mark.timeout(960)
def test_an_unknown_notification_is_final_and_counted_not_a_violation(
    chaos: ChaosRun, broken: Broken
) -> None:
    base = audit.Baseline.from_json(chaos.report["baseline"])
    clients = set(chaos.report["client_order_ids"])
    before = audit.notification_counts(broken.where())
    assert before == chaos.report["notifications"]
    # A sender killed after the SMTP server took the mail and before it marked the row: the
    # notification ends `unknown` and its one copy is in the sink.
    assert broken.execute(
        "notifications",
        "UPDATE notifications SET status = 'unknown', sent_at = NULL WHERE id = "
        "(SELECT id FROM notifications WHERE status = 'sent' AND channel = 'email' LIMIT 1)",
    )
    assert audit.audit(broken.where(), base, clients) == []
    assert audit.pending(broken.where(), base).quiet
    after = audit.notification_counts(broken.where())
    assert after["unknown"] == before.get("unknown", 0) + 1
    assert after["unknown_delivered"] == before["unknown_delivered"] + 1
    assert after["sent"] == before["sent"] - 1


def _orders_rebuild(*args: str) -> tuple[int, str]:
    run = subprocess.run(
        [sys.executable, "-m", "ordersaga.cli", "orders", "rebuild", *args],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
        env={key: value for key, value in os.environ.items() if key != "ORDERS_DATABASE_URL"},
    )
    return run.returncode, run.stdout + run.stderr


@pytest.mark.slow
@pytest.mark.serial
@pytest.mark.temporal
@pytest.mark.timeout(960)
def test_the_orders_projection_of_the_run_rebuilds_from_its_events(chaos: ChaosRun, broken: Broken) -> None:
    """The `orders` table the run left (orders confirmed, cancelled for each reason it reached,
    compensated, reviewed, under kills) is what its event log folds to, byte for byte."""
    accepted = chaos.report["orders_accepted"]
    original = ["--data-dir", str(chaos.data_dir)]
    if chaos.postgres_url is not None:
        original = ["--postgres", chaos.postgres_url, "--database-prefix", chaos.database_prefix]
    code, output = _orders_rebuild("--check", *original)
    total = int(output.split("checked ", 1)[1].split(" ", 1)[0]) if "checked " in output else -1
    assert (code, output.strip().splitlines()[-1]) == (
        0,
        f"checked {total} orders from their events; 0 differed",
    ), output
    assert total >= accepted, output  # every accepted order, and the baseline's
    # Dropped and written again for real, in a copy: the same rows, column for column.
    assert broken.execute("orders", "UPDATE orders SET version = version WHERE 1 = 0") == 0
    copy = ["--data-dir", str(broken.data_dir)]
    if chaos.postgres_url is not None:
        copy = ["--database-url", broken.copies["orders"]]
    code, output = _orders_rebuild(*copy)
    assert (code, output.strip().splitlines()[-1]) == (
        0,
        f"rebuilt {total} orders from their events; 0 differed",
    ), output
