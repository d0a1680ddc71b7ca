"""`ordersaga deploy`: roll a new worker version out beside the old one and retire the old one safely.

Each command is a thin layer over the Worker Deployment RPCs of the workflow service, the same calls
`temporal worker deployment describe / set-current-version / set-ramping-version` make, plus a
visibility count of the sagas running on each version (`TemporalWorkerDeploymentVersion`).
"""

from __future__ import annotations

import asyncio
import os
import sys
import time
from collections.abc import Coroutine
from dataclasses import dataclass
from typing import TYPE_CHECKING, Annotated, Any

import typer

# The CLI imports this module at start; the SDK loads only when a deploy command runs.
if TYPE_CHECKING:
    from temporalio.api.enums.v1 import WorkerDeploymentVersionStatus
    from temporalio.client import Client

DEFAULT_DEPLOYMENT = "ordersaga-worker"
SAGA_TYPE = "OrderWorkflow"

app = typer.Typer(
    help="Worker versions: which is current or ramping, promote a new one, drain an old one.",
    no_args_is_help=True,
)

DeploymentOption = Annotated[
    str,
    typer.Option(
        "--deployment",
        envvar="WORKER_DEPLOYMENT_NAME",
        show_envvar=True,
        help="The Worker Deployment (the workers' WORKER_DEPLOYMENT_NAME).",
    ),
]


@dataclass
class VersionState:
    build_id: str
    status: str  # the server's view: CURRENT, RAMPING, DRAINING, DRAINED, INACTIVE
    running_sagas: int
    pinned_running: int


@dataclass
class DeploymentState:
    name: str
    current: str | None
    ramping: str | None
    ramp_percent: float
    versions: list[VersionState]

    def role(self, build_id: str) -> str:
        if build_id == self.current:
            return "current"
        if build_id == self.ramping:
            return f"ramping {self.ramp_percent:g}%"
        return "-"


def version_key(deployment: str, build_id: str) -> str:
    """The value of the TemporalWorkerDeploymentVersion search attribute."""
    return f"{deployment}:{build_id}"


def _quote(value: str) -> str:
    return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"


async def running_on(client: Client, deployment: str, build_id: str, *, pinned_only: bool = False) -> int:
    query = (
        f"TemporalWorkerDeploymentVersion={_quote(version_key(deployment, build_id))} "
        "AND ExecutionStatus='Running'"
    )
    if pinned_only:
        # Any pinned workflow keeps the version busy; AUTO_UPGRADE ones move to the current version.
        query += " AND TemporalWorkflowVersioningBehavior='Pinned'"
    else:
        query += f" AND WorkflowType={_quote(SAGA_TYPE)}"
    return (await client.count_workflows(query)).count


async def describe(client: Client, deployment: str) -> DeploymentState:
    from temporalio.api.workflowservice.v1 import DescribeWorkerDeploymentRequest

    response = await client.workflow_service.describe_worker_deployment(
        DescribeWorkerDeploymentRequest(namespace=client.namespace, deployment_name=deployment)
    )
    info = response.worker_deployment_info
    routing = info.routing_config
    versions = []
    for summary in sorted(info.version_summaries, key=lambda s: s.create_time.ToDatetime()):
        build_id = summary.deployment_version.build_id
        versions.append(
            VersionState(
                build_id=build_id,
                status=_status_name(summary.status),
                running_sagas=await running_on(client, deployment, build_id),
                pinned_running=await running_on(client, deployment, build_id, pinned_only=True),
            )
        )
    return DeploymentState(
        name=deployment,
        current=routing.current_deployment_version.build_id or None,
        ramping=routing.ramping_deployment_version.build_id or None,
        ramp_percent=routing.ramping_version_percentage,
        versions=versions,
    )


def _status_name(status: WorkerDeploymentVersionStatus.ValueType) -> str:
    from temporalio.api.enums.v1 import WorkerDeploymentVersionStatus

    return WorkerDeploymentVersionStatus.Name(status).removeprefix("WORKER_DEPLOYMENT_VERSION_STATUS_")


async def promote(client: Client, deployment: str, build_id: str, ramp: float | None) -> None:
    """`ramp` None: the version becomes current (and stops ramping); else it takes that share of new sagas."""
    from temporalio.api.workflowservice.v1 import (
        SetWorkerDeploymentCurrentVersionRequest,
        SetWorkerDeploymentRampingVersionRequest,
    )

    if ramp is None:
        await client.workflow_service.set_worker_deployment_current_version(
            SetWorkerDeploymentCurrentVersionRequest(
                namespace=client.namespace,
                deployment_name=deployment,
                build_id=build_id,
                identity=client.identity,
            )
        )
    else:
        await client.workflow_service.set_worker_deployment_ramping_version(
            SetWorkerDeploymentRampingVersionRequest(
                namespace=client.namespace,
                deployment_name=deployment,
                build_id=build_id,
                percentage=ramp,
                identity=client.identity,
            )
        )


async def drain(
    client: Client,
    deployment: str,
    build_id: str,
    *,
    within_seconds: float,
    poll_seconds: float = 1.0,
) -> int:
    """Wait until no pinned workflow runs on `build_id`; the pinned ones still running at the timeout."""
    deadline = time.monotonic() + within_seconds
    last: int | None = None
    while True:
        left = await running_on(client, deployment, build_id, pinned_only=True)
        if left != last:
            print(f"{build_id}: {left} pinned workflow(s) still running", flush=True)
            last = left
        if left == 0 or time.monotonic() >= deadline:
            return left
        await asyncio.sleep(poll_seconds)


async def _client() -> Client:
    from services.kit.temporal import connect

    return await connect()


def _run(coro: Coroutine[Any, Any, int]) -> None:
    from temporalio.service import RPCError

    try:
        code = asyncio.run(coro)
    except RPCError as err:
        print(f"error  {err.message or err}")
        code = 2
    # The SDK's native runtime can crash during interpreter teardown (temporalio/sdk-python#300):
    # leave without it, so that the exit code is the command's own.
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


@app.command(epilog="Example: ordersaga deploy status --deployment ordersaga-worker")
def status(deployment: DeploymentOption = DEFAULT_DEPLOYMENT) -> None:
    """The deployment's versions: current, ramping, and the sagas still running on each."""

    async def run() -> int:
        state = await describe(await _client(), deployment)
        print(f"deployment {state.name}")
        print(f"{'BUILD ID':<16} {'ROLE':<14} {'STATUS':<10} {'RUNNING SAGAS':>13} {'PINNED':>7}")
        for version in state.versions:
            print(
                f"{version.build_id:<16} {state.role(version.build_id):<14} {version.status:<10} "
                f"{version.running_sagas:>13} {version.pinned_running:>7}"
            )
        if state.current is None:
            print("no current version: new sagas go to unversioned workers")
        return 0

    _run(run())


@app.command(
    "promote",
    epilog="Examples: ordersaga deploy promote 3f9c2a1b7d4e --ramp 10 ; "
    "ordersaga deploy promote 3f9c2a1b7d4e",
)
def promote_cmd(
    build_id: Annotated[
        str,
        typer.Argument(
            help='The new workers\' build id (WORKER_BUILD_ID); "" routes to unversioned workers.'
        ),
    ],
    ramp: Annotated[
        float | None,
        typer.Option(min=0, max=100, help="Send this percent of new sagas to it; omit to make it current."),
    ] = None,
    deployment: DeploymentOption = DEFAULT_DEPLOYMENT,
) -> None:
    """Make BUILD_ID the current version (new sagas start there), or ramp a share of new sagas to it.

    Running sagas stay on the version they started on (OrderWorkflow is PINNED).
    """

    async def run() -> int:
        client = await _client()
        await promote(client, deployment, build_id, ramp)
        state = await describe(client, deployment)
        if ramp is None and not build_id:
            print(f"no current version in {deployment}: new sagas go to unversioned workers")
        elif ramp is None:
            print(f"{build_id} is now current in {deployment}: new sagas start on it")
        else:
            print(f"{build_id} is ramping at {ramp:g}% in {deployment} (current: {state.current})")
        return 0

    _run(run())


@app.command("drain", epilog="Example: ordersaga deploy drain 1a2b3c4d5e6f --timeout 3600")
def drain_cmd(
    build_id: Annotated[str, typer.Argument(help="The old version to retire.")],
    timeout: Annotated[float, typer.Option(help="Seconds to wait for its pinned sagas to finish.")] = 600.0,
    poll: Annotated[float, typer.Option(help="Seconds between counts.")] = 2.0,
    deployment: DeploymentOption = DEFAULT_DEPLOYMENT,
) -> None:
    """Wait until no pinned saga is left on BUILD_ID, then say its workers can be retired.

    Exit 0 when it is empty, 1 when sagas were still running at the timeout, 2 when BUILD_ID still
    receives new sagas (it is current or ramping: promote another version first).
    """

    async def run() -> int:
        client = await _client()
        state = await describe(client, deployment)
        if build_id in (state.current, state.ramping):
            print(f"{build_id} is {state.role(build_id)}: new sagas still start on it; promote another first")
            return 2
        left = await drain(client, deployment, build_id, within_seconds=timeout, poll_seconds=poll)
        if left:
            print(f"{build_id} not drained: {left} pinned workflow(s) still running after {timeout:g} s")
            return 1
        print(f"{build_id} is drained: no pinned saga left; its workers can be retired")
        return 0

    _run(run())
