"""Build and run the worker: one pooled httpx client shared by every activity class."""

from __future__ import annotations

import asyncio
import signal
import sys
import tempfile
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from datetime import timedelta
from pathlib import Path
from typing import Any

import httpx
import structlog
from temporalio import activity, workflow
from temporalio.api.workflowservice.v1 import (
    DescribeWorkerDeploymentRequest,
    SetWorkerDeploymentCurrentVersionRequest,
)
from temporalio.client import (
    Client,
    Schedule,
    ScheduleActionStartWorkflow,
    ScheduleAlreadyRunningError,
    ScheduleIntervalSpec,
    ScheduleOverlapPolicy,
    SchedulePolicy,
    ScheduleSpec,
    ScheduleUpdate,
)
from temporalio.common import VersioningBehavior, WorkerDeploymentVersion
from temporalio.runtime import PrometheusConfig, Runtime, TelemetryConfig
from temporalio.service import RPCError, RPCStatusCode
from temporalio.worker import UnsandboxedWorkflowRunner, Worker, WorkerDeploymentConfig
from temporalio.worker.workflow_sandbox import SandboxedWorkflowRunner

from activities.http import ServiceCaller
from activities.inventory import InventoryActivities
from activities.notifications import NotificationActivities
from activities.orders import OrderActivities
from activities.payments import PaymentActivities
from activities.policy import PolicyActivities
from activities.reconciler import ReconcilerActivities
from activities.users import UserActivities
from services.kit.logging import configure_logging
from services.kit.temporal import TemporalSettings, connect
from services.kit.tracing import setup_tracing, shutdown_tracing
from services.kit.transport import service_client
from workers.health import WorkerState, serving_health
from workers.settings import WorkerSettings
from workflows.contract import TASK_QUEUE
from workflows.metrics import SAGA_DURATION, SAGA_DURATION_BUCKETS
from workflows.order import OrderWorkflow
from workflows.repair import ReconcileWorkflow, RepairWorkflow

RECONCILER_SCHEDULE_ID = "ordersaga-reconciler"
RECONCILE_WORKFLOW_ID = "reconcile"

log = structlog.get_logger(__name__)


# The service each activity class speaks to: one row per service the saga calls (services/registry.py
# names them and gives their default URLs). Every @activity.defn method of a class is registered.
SERVICE_ACTIVITIES: dict[str, type[Any]] = {
    "users": UserActivities,
    "inventory": InventoryActivities,
    "payments": PaymentActivities,
    "orders": OrderActivities,
    "notifications": NotificationActivities,
}


def keep_workflow_bytecode() -> None:
    """Let the sandbox's imports find compiled workflow code, even under PYTHONDONTWRITEBYTECODE.

    The sandbox imports the workflow modules afresh for every workflow it runs. With no bytecode
    cache (the variable set, as in a dev shell or the image, and an editable install), each import
    compiles workflows/order.py from source: 8 ms of the worker's ~68 ms of CPU per order
    (benchmarks/README.md, 2026-12-04 22:00). The cache goes to the temp dir, not the source tree,
    which the variable asked to keep clean.
    """
    if sys.dont_write_bytecode and sys.pycache_prefix is None:
        sys.pycache_prefix = str(Path(tempfile.gettempdir()) / "ordersaga-pycache")
        sys.dont_write_bytecode = False


def activity_methods(instance: object) -> list[Callable[..., Any]]:
    """The bound @activity.defn methods of an activity class's instance, in definition order."""
    # temporalio (1.35) has no public way to ask whether a callable is an activity: `_Definition` is
    # what its own Worker reads (a public helper is requested in temporalio/sdk-python#758). If it
    # moves, tests/workflows and every saga test fail at worker start, not in production silently.
    return [
        getattr(instance, name)
        for name, member in vars(type(instance)).items()
        if callable(member) and activity._Definition.from_callable(member) is not None
    ]


def build_activities(client: Client, http: httpx.AsyncClient, settings: WorkerSettings) -> Sequence[Any]:
    def caller(service: str) -> ServiceCaller:
        return ServiceCaller(http, settings.url_of(service), settings.internal_token)

    instances: list[object] = [cls(caller(service)) for service, cls in SERVICE_ACTIVITIES.items()]
    # Not a service's: the worker's own settings, and the reconciler, which asks Temporal too.
    instances += [
        PolicyActivities(settings.saga_policy()),
        ReconcilerActivities(client, caller("orders"), caller("inventory"), caller("notifications")),
    ]
    return [method for instance in instances for method in activity_methods(instance)]


def deployment_config(settings: WorkerSettings) -> WorkerDeploymentConfig | None:
    """This worker's version in its Worker Deployment, or None to poll unversioned.

    Every workflow of a versioned worker is PINNED: a saga ends on the version that started it. The
    behaviour is the worker's default rather than declared on the definitions, because the SDK
    refuses a declared behaviour on an unversioned worker (`WORKER_VERSIONING=off`, the tests'
    own workers). The repair and reconcile workflows are pinned too: they last seconds, so a drain
    waits for them only briefly, and a change to them is still guarded with `workflow.patched`.
    """
    if settings.versioning == "off":
        return None
    return WorkerDeploymentConfig(
        version=WorkerDeploymentVersion(settings.deployment_name, settings.worker_build_id()),
        use_worker_versioning=True,
        default_versioning_behavior=VersioningBehavior.PINNED,
    )


async def promote_if_wanted(client: Client, settings: WorkerSettings, *, attempts: int = 40) -> None:
    """Make this worker's version current when `WORKER_PROMOTE` says so (a fresh deployment by default).

    The server knows a version only once its first poll arrived, so the call is retried briefly.
    """
    if settings.versioning == "off" or settings.promote == "never":
        return
    name, build_id = settings.deployment_name, settings.worker_build_id()
    service = client.workflow_service
    for _ in range(attempts):
        try:
            if settings.promote == "first":
                described = await service.describe_worker_deployment(
                    DescribeWorkerDeploymentRequest(namespace=client.namespace, deployment_name=name)
                )
                current = described.worker_deployment_info.routing_config.current_deployment_version
                if current.build_id:
                    if current.build_id != build_id:
                        log.warning(
                            "worker_version_not_current",
                            build_id=build_id,
                            current_build_id=current.build_id,
                            hint=f"ordersaga deploy promote {build_id}",
                        )
                    return
            await service.set_worker_deployment_current_version(
                SetWorkerDeploymentCurrentVersionRequest(
                    namespace=client.namespace,
                    deployment_name=name,
                    build_id=build_id,
                    identity=client.identity,
                )
            )
            log.info("worker_version_promoted", deployment=name, build_id=build_id)
            return
        except RPCError as err:
            # NOT_FOUND / FAILED_PRECONDITION until the server has seen this version poll.
            if err.status not in (RPCStatusCode.NOT_FOUND, RPCStatusCode.FAILED_PRECONDITION):
                raise
            await asyncio.sleep(0.25)
    log.warning("worker_version_not_promoted", deployment=name, build_id=build_id)


@asynccontextmanager
async def running_worker(
    client: Client,
    settings: WorkerSettings,
    *,
    task_queue: str = TASK_QUEUE,
    deployment: WorkerDeploymentConfig | None = None,
) -> AsyncIterator[Worker]:
    timeout = httpx.Timeout(settings.http_timeout_seconds, connect=3.0)
    async with service_client(timeout) as http:
        worker = Worker(
            client,
            task_queue=task_queue,
            workflows=[OrderWorkflow, RepairWorkflow, ReconcileWorkflow],
            activities=build_activities(client, http, settings),
            max_concurrent_activities=settings.max_concurrent_activities,
            max_concurrent_workflow_tasks=settings.max_concurrent_workflow_tasks,
            graceful_shutdown_timeout=timedelta(seconds=settings.graceful_shutdown_seconds),
            deployment_config=deployment,
            workflow_runner=SandboxedWorkflowRunner() if settings.sandbox else UnsandboxedWorkflowRunner(),
        )
        async with worker:
            yield worker


async def ensure_reconciler_schedule(client: Client, settings: WorkerSettings) -> None:
    """The reconciler's Schedule, created by the first worker and brought to this worker's interval.

    Each run is one `ReconcileWorkflow`; a sweep still running when the next is due is skipped.
    It looks at orders untouched for one interval, so a stranded order is repaired within two.
    """
    if settings.reconcile_interval_seconds <= 0:
        return
    interval = timedelta(seconds=settings.reconcile_interval_seconds)
    schedule = Schedule(
        action=ScheduleActionStartWorkflow(
            ReconcileWorkflow.run,
            settings.reconcile_interval_seconds,
            id=RECONCILE_WORKFLOW_ID,
            task_queue=TASK_QUEUE,
            execution_timeout=max(interval * 4, timedelta(minutes=5)),
            static_summary="repair orders whose saga closed before the order was final",
        ),
        spec=ScheduleSpec(intervals=[ScheduleIntervalSpec(every=interval)]),
        policy=SchedulePolicy(overlap=ScheduleOverlapPolicy.SKIP),
    )
    try:
        await client.create_schedule(RECONCILER_SCHEDULE_ID, schedule)
        log.info("reconciler_schedule_created", every_seconds=settings.reconcile_interval_seconds)
    except ScheduleAlreadyRunningError:
        await client.get_schedule_handle(RECONCILER_SCHEDULE_ID).update(
            lambda _: ScheduleUpdate(schedule=schedule)
        )


def sdk_runtime(settings: WorkerSettings) -> Runtime | None:
    """A runtime whose Prometheus endpoint serves the SDK's metrics and the workflow's business metrics."""
    if settings.sdk_metrics_port is None:
        return None
    prometheus = PrometheusConfig(
        bind_address=f"{settings.metrics_host}:{settings.sdk_metrics_port}",
        counters_total_suffix=True,
        durations_as_seconds=True,
        histogram_bucket_overrides={SAGA_DURATION: SAGA_DURATION_BUCKETS},
    )
    return Runtime(telemetry=TelemetryConfig(metrics=prometheus))


async def serve(settings: WorkerSettings | None = None, temporal: TemporalSettings | None = None) -> None:
    settings = settings or WorkerSettings()
    keep_workflow_bytecode()
    configure_logging(settings.log_level, service="worker")
    # The SDK's workflow/activity loggers carry their context as `extra` (lifted into JSON fields).
    workflow.logger.workflow_info_on_message = False
    activity.logger.activity_info_on_message = False
    tracing = setup_tracing("worker")
    runtime = sdk_runtime(settings)
    client = await (connect(temporal, runtime=runtime) if runtime else connect(temporal))
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    state = WorkerState()
    deployment = deployment_config(settings)
    async with (
        serving_health(state, settings.metrics_host, settings.metrics_port),
        running_worker(client, settings, deployment=deployment),
    ):
        await promote_if_wanted(client, settings)
        await ensure_reconciler_schedule(client, settings)
        state.polling = True
        log.info(
            "worker_started",
            task_queue=TASK_QUEUE,
            namespace=client.namespace,
            deployment=deployment.version.deployment_name if deployment else None,
            build_id=deployment.version.build_id if deployment else None,
            sandbox=settings.sandbox,
        )
        await stop.wait()
        state.polling = False
        log.info("worker_stopping", graceful_seconds=settings.graceful_shutdown_seconds)
    if tracing:
        shutdown_tracing()
    log.info("worker_stopped")
