"""`ordersaga status`: which parts of a stack started by `ordersaga up` answer right now.

The addresses come from `<data dir>/up.json`, which `up` writes once it is ready and removes when it
stops; without it, from the same settings `up` would use (ports from the environment). Every check
runs at once with a short timeout, so that a stack that is not there is reported within seconds.
"""

from __future__ import annotations

import asyncio
import json
import os
from dataclasses import asdict, dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
from rich.console import Console
from rich.table import Table

TIMEOUT = 2.0
# Temporal keeps a poller listed for a while after it stopped polling; one seen this recently is live.
POLLER_FRESH = timedelta(seconds=90)


@dataclass
class Part:
    name: str
    up: bool
    address: str
    detail: str = ""


def expected_state(data_dir: Path) -> tuple[dict[str, Any], bool]:
    """The state `up` recorded, or the one its settings imply (and whether it was recorded)."""
    state_file = data_dir / "up.json"
    if state_file.exists():
        return dict(json.loads(state_file.read_text())), True
    from ordersaga.up import UpSettings, addresses

    return addresses(UpSettings(data_dir=data_dir)) | {"pid": None, "children": {}}, False


def _alive(pid: object) -> bool:
    if not isinstance(pid, int):
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _why(err: BaseException) -> str:
    if isinstance(err, httpx.ConnectError | ConnectionRefusedError):
        return "not listening"
    if isinstance(err, httpx.TimeoutException | TimeoutError):
        return f"no answer in {TIMEOUT:.0f}s"
    return type(err).__name__


async def _http(client: httpx.AsyncClient, name: str, url: str) -> Part:
    try:
        response = await client.get(url)
    except httpx.HTTPError as err:
        return Part(name, False, url, _why(err))
    return Part(name, response.status_code == 200, url, f"HTTP {response.status_code}")


async def _tcp(name: str, url: str, host: str, port: int) -> Part:
    try:
        _, writer = await asyncio.wait_for(asyncio.open_connection(host, port), TIMEOUT)
    except (OSError, TimeoutError) as err:
        return Part(name, False, url, _why(err))
    writer.close()
    return Part(name, True, url, "accepts connections")


async def _temporal(address: str, namespace: str, worker_pids: list[int]) -> list[Part]:
    """The frontend's gRPC health, and the worker seen as pollers of the `orders` task queue."""
    from temporalio.api.enums.v1 import TaskQueueType
    from temporalio.api.taskqueue.v1 import PollerInfo, TaskQueue
    from temporalio.api.workflowservice.v1 import DescribeTaskQueueRequest
    from temporalio.client import Client

    from services.kit.temporal import TemporalSettings, connect_config
    from workflows.payloads import TASK_QUEUE

    host, _, port = address.rpartition(":")
    reachable = await _tcp("temporal", address, host or "127.0.0.1", int(port))
    if not reachable.up:
        return [reachable, Part("worker", False, f"task queue {TASK_QUEUE}", "Temporal is down")]
    try:
        # The same connection options as the stack's (TLS, API key from the SDK's env config).
        config = connect_config(TemporalSettings(address=address, namespace=namespace))
        client = await asyncio.wait_for(Client.connect(**config), TIMEOUT * 2)
        healthy = await asyncio.wait_for(client.service_client.check_health(), TIMEOUT)
        pollers: list[PollerInfo] = []
        for kind in (TaskQueueType.TASK_QUEUE_TYPE_WORKFLOW, TaskQueueType.TASK_QUEUE_TYPE_ACTIVITY):
            request = DescribeTaskQueueRequest(
                namespace=namespace, task_queue=TaskQueue(name=TASK_QUEUE), task_queue_type=kind
            )
            described = await asyncio.wait_for(client.workflow_service.describe_task_queue(request), TIMEOUT)
            pollers.extend(described.pollers)
    except Exception as err:  # an RPC error or a timeout: the frontend does not serve
        return [
            Part("temporal", False, address, f"{type(err).__name__}: {err}"[:120]),
            Part("worker", False, f"task queue {TASK_QUEUE}", "Temporal does not answer"),
        ]
    now = datetime.now(UTC)
    fresh = {p.identity for p in pollers if now - p.last_access_time.ToDatetime(UTC) < POLLER_FRESH}
    # A killed worker stays listed as a poller for a while: its process must be alive too.
    dead = [pid for pid in worker_pids if not _alive(pid)]
    worker_up = bool(fresh) and not dead
    detail = f"{len(fresh)} polling" + (f"; worker pid {dead} not running" if dead else "")
    return [
        Part("temporal", healthy, address, "serving" if healthy else "not serving"),
        Part("worker", worker_up, f"task queue {TASK_QUEUE}", detail),
    ]


def service_processes(services: dict[str, Any]) -> dict[str, str]:
    """Each process's address by its name: a service is one address, or several by process name
    (`up --replicas N`: `{"orders-1": url, "orders-2": url}`)."""
    processes: dict[str, str] = {}
    for name, where in services.items():
        if isinstance(where, dict):
            processes.update({str(process): str(url) for process, url in where.items()})
        else:
            processes[name] = str(where)
    return processes


async def check(data_dir: Path) -> list[Part]:
    state, recorded = expected_state(data_dir)
    pid = state.get("pid")
    supervisor = Part(
        "ordersaga up",
        recorded and _alive(pid),
        str(data_dir / "up.json"),
        f"pid {pid}" if recorded else "no up.json here (not running, or still starting)",
    )
    children = state.get("children", {})
    worker_pids = [p for name, p in children.items() if name == "worker" or name.startswith("worker-")]
    async with httpx.AsyncClient(timeout=TIMEOUT) as client:
        checks: list[Any] = [_temporal(state["temporal_address"], state["temporal_namespace"], worker_pids)]
        if state.get("temporal_ui"):
            checks.append(_http(client, "temporal web UI", state["temporal_ui"]))
        if state.get("nats_monitor"):
            checks.append(_http(client, "nats", state["nats_monitor"] + "/healthz"))
        else:
            url = state["nats_url"]
            host, _, port = url.split("://", 1)[-1].rpartition(":")
            checks.append(_tcp("nats", url, host, int(port)))
        for name, url in service_processes(state["services"]).items():
            checks.append(_http(client, name, url + "/ready"))
        if state.get("codec"):
            url = state["codec"]
            host, _, port = url.split("://", 1)[-1].rpartition(":")
            checks.append(_tcp("codec", url, host, int(port)))
        results = await asyncio.gather(*checks)
    parts = [supervisor]
    for result in results:
        parts.extend(result if isinstance(result, list) else [result])
    order = ["ordersaga up", "temporal", "temporal web UI", "nats", *service_processes(state["services"])]
    order += ["worker", "codec"]
    return sorted(parts, key=lambda p: order.index(p.name) if p.name in order else len(order))


def status_command(data_dir: Path, *, as_json: bool, console: Console) -> int:
    parts = asyncio.run(check(data_dir.resolve()))
    all_up = all(p.up for p in parts)
    if as_json:
        print(json.dumps({"up": all_up, "parts": [asdict(p) for p in parts]}, indent=2))
        return 0 if all_up else 1
    table = Table(title=f"ordersaga status ({data_dir})")
    for column in ("part", "state", "address", "detail"):
        table.add_column(column)
    for part in parts:
        state = "[green]up[/]" if part.up else "[red]down[/]"
        table.add_row(part.name, state, part.address, part.detail)
    console.print(table)
    down = [p.name for p in parts if not p.up]
    console.print("[green]all up[/]" if all_up else f"[red]down:[/] {', '.join(down)}")
    return 0 if all_up else 1
