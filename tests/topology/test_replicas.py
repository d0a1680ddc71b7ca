"""The production topology on one machine: `ordersaga up --postgres URL --replicas 2 --workers 2
--gateways 2`, a real PostgreSQL server with a database per service, and orders placed through both
gateways while one inventory replica is killed.

The run has its own data dir, free ports and database prefix (its databases are dropped afterwards).
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import pytest

from ordersaga.status import service_processes
from ordersaga.up import PORT_SETTINGS
from services.registry import DATA_SERVICES, SERVICES
from tests.support.databases import postgres_admin_url, postgres_reachable, run_in_thread
from tests.support.prerequisites import missing
from tests.support.processes import VENV_BIN, free_port

ORDERS = 36
ORDERSAGA = str(VENV_BIN / "ordersaga")


@dataclass
class Replicated:
    data_dir: Path
    state: dict[str, Any]
    env: dict[str, str]
    log: Path
    prefix: str

    @property
    def processes(self) -> dict[str, str]:
        return service_processes(self.state["services"])

    def reload(self) -> None:
        self.state = json.loads((self.data_dir / "up.json").read_text())


def free_ports_env(data_dir: Path, prefix: str) -> dict[str, str]:
    env = {
        key: value
        for key, value in os.environ.items()
        if not key.endswith(("_DATABASE_URL", "_PORT", "_URL")) and key not in ("TEMPORAL_ADDRESS",)
    }
    env |= {f"{name.upper()}_PORT": str(free_port()) for name in SERVICES}
    for setting in PORT_SETTINGS:
        env[f"ORDERSAGA_{setting}"] = str(free_port())
    env |= {
        "ORDERSAGA_DATA_DIR": str(data_dir),
        "ORDERSAGA_DATABASE_PREFIX": prefix,
        "ORDERSAGA_LOG_FORMAT": "json",
        "ORDERSAGA_PAYLOAD_KEYS": "",
    }
    return env


async def drop_databases(admin_url: str, prefix: str) -> None:
    conn = await asyncpg.connect(admin_url, timeout=10)
    try:
        names = await conn.fetch("SELECT datname FROM pg_database WHERE starts_with(datname, $1)", prefix)
        for row in names:
            await conn.execute(f'DROP DATABASE IF EXISTS "{row["datname"]}" WITH (FORCE)')
    finally:
        await conn.close()


async def database_names(admin_url: str, prefix: str) -> set[str]:
    conn = await asyncpg.connect(admin_url, timeout=10)
    try:
        rows = await conn.fetch("SELECT datname FROM pg_database WHERE starts_with(datname, $1)", prefix)
    finally:
        await conn.close()
    return {str(row["datname"]) for row in rows}


@pytest.fixture(scope="module")
def replicated(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Replicated]:
    admin_url = postgres_admin_url()
    if (reason := postgres_reachable(admin_url)) is not None:
        missing(f"PostgreSQL not reachable at {admin_url}: {reason}")
    data_dir = tmp_path_factory.mktemp("replicas") / "data"
    prefix = f"ordersaga_t{uuid.uuid4().hex[:8]}_"
    env = free_ports_env(data_dir, prefix)
    log = data_dir.parent / "up.out"
    argv = [ORDERSAGA, "up", "--postgres", admin_url, "--replicas", "2", "--workers", "2", "--gateways", "2"]
    with log.open("wb") as out:
        up = subprocess.Popen(argv, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.monotonic() + 150
        while not (data_dir / "up.json").exists():
            assert up.poll() is None, log.read_text()[-4000:]
            assert time.monotonic() < deadline, log.read_text()[-4000:]
            time.sleep(0.5)
        yield Replicated(data_dir, json.loads((data_dir / "up.json").read_text()), env, log, prefix)
    finally:
        up.send_signal(signal.SIGINT)
        try:
            up.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(up.pid, signal.SIGKILL)
            up.wait(timeout=10)
        run_in_thread(drop_databases(admin_url, prefix))


def served(metrics: str, route: str | None = None) -> float:
    """Requests a service answered (on routes starting with `route` only, if given), its probes and
    scrapes left out."""
    total = 0.0
    for line in metrics.splitlines():
        found = re.fullmatch(r"http_requests_total\{(.*)\} (\S+)", line)
        if not found or re.search(r'route="/(ready|health|metrics)"', found[1]):
            continue
        if route is None or f'route="{route}' in found[1]:
            total += float(found[2])
    return total


def gateway_orders(metrics: str) -> float:
    total = 0.0
    for line in metrics.splitlines():
        found = re.fullmatch(r"gateway_upstream_requests_total\{(.*)\} (\S+)", line)
        if found and 'upstream="orders"' in found[1] and 'method="POST"' in found[1]:
            total += float(found[2])
    return total


def scrape(urls: dict[str, str]) -> dict[str, str]:
    with httpx.Client(timeout=5) as client:
        return {name: client.get(url + "/metrics").text for name, url in urls.items()}


@pytest.mark.slow
@pytest.mark.postgres
def test_orders_through_both_gateways_confirm_while_an_inventory_replica_is_killed(
    replicated: Replicated,
) -> None:
    processes = replicated.processes
    expected = {f"{name}-{index}" for name in [*DATA_SERVICES, "gateway"] for index in (1, 2)}
    assert set(processes) == expected
    assert {"worker-1", "worker-2"} <= set(replicated.state["children"])
    # Each service in its own database on the server, created by `up`.
    databases = run_in_thread(database_names(postgres_admin_url(), replicated.prefix))
    assert databases == {replicated.prefix + name for name in DATA_SERVICES}

    gateways = [processes["gateway-1"], processes["gateway-2"]]
    report_path = replicated.data_dir.parent / "load.json"
    argv = [ORDERSAGA, "load", "--api", ",".join(url + "/api/v1" for url in gateways)]
    argv += ["--orders", str(ORDERS), "--rate", "3", "--cards", "success=100", "--customers", "4"]
    argv += ["--data-dir", str(replicated.data_dir), "--json", str(report_path), "--deadline", "60"]
    argv += ["--temporal-address", replicated.state["temporal_address"], "--seed", "18"]
    load = subprocess.Popen(
        argv, env=replicated.env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    victim = "inventory-2"
    old_pid = replicated.state["children"][victim]
    # Killed once orders are under way and it has served a saga's call (a reservation or its commit;
    # the load's stock top-up comes first): on a busy machine the load's customers take longer to
    # sign up, so a fixed delay could kill it, and `up` restart it, before the first order.
    deadline = time.monotonic() + 60
    while served(scrape({victim: processes[victim]})[victim], route="/reservations") == 0:
        assert load.poll() is None and time.monotonic() < deadline, "inventory-2 got no request"
        time.sleep(0.2)
    os.kill(old_pid, signal.SIGKILL)
    output, _ = load.communicate(timeout=120)
    assert load.returncode == 0, output[-3000:]
    report = json.loads(report_path.read_text())

    # Every order confirmed: the other replica took the traffic, refused connects went on to it.
    assert report["outcomes"] == {"CONFIRMED": ORDERS}, (report, output[-2000:])
    assert report["errors"] == {}, report["errors"]

    metrics = scrape({name: url for name, url in processes.items() if name != victim})  # it restarts
    for gateway in ("gateway-1", "gateway-2"):
        assert gateway_orders(metrics[gateway]) > 0, f"{gateway} placed no order"
    for name in expected - {"gateway-1", "gateway-2", victim}:
        assert served(metrics[name]) > 0, f"{name} served no request"
    # While it was down, the workers' calls to it were refused and went on to inventory-1 at once:
    # no call failed for a refused connection.
    worker_lines = [
        json.loads(line)
        for name in ("worker-1", "worker-2")
        for line in (replicated.data_dir / "logs" / f"{name}.log").read_text().splitlines()
        if line.startswith("{")
    ]
    refused = [line for line in worker_lines if line.get("event") == "service_address_refused"]
    assert {line["address"] for line in refused} == {processes[victim]}, refused
    failed = [line for line in worker_lines if line.get("event") == "service_call_failed"]
    assert not [line for line in failed if line.get("error") == "ConnectError"], failed

    # `up` restarted the killed replica (a new pid in up.json), and `status` sees every process.
    deadline = time.monotonic() + 30
    while True:
        replicated.reload()
        if replicated.state["children"][victim] != old_pid:
            break
        assert time.monotonic() < deadline, replicated.log.read_text()[-3000:]
        time.sleep(0.5)
    status = subprocess.run(
        [ORDERSAGA, "status", "--data-dir", str(replicated.data_dir), "--json"],
        env=replicated.env,
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    parts = {part["name"]: part["up"] for part in json.loads(status.stdout)["parts"]}
    assert {name for name, up in parts.items() if up} >= expected | {"worker", "temporal", "nats"}, parts
    assert status.returncode == 0, status.stdout


def test_replicas_without_postgres_are_refused_with_a_usage_error(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k != "ORDERSAGA_POSTGRES_URL"}
    argv = [ORDERSAGA, "up", "--data-dir", str(tmp_path), "--replicas", "2"]
    run = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=30, check=False)
    assert run.returncode == 2
    assert "--postgres" in run.stderr and "SQLite" in run.stderr
    assert not (tmp_path / "up.json").exists()
