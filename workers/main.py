"""Build and run the worker: one pooled httpx client shared by every activity class."""

from __future__ import annotations

import asyncio
import signal
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from datetime import timedelta
from typing import Any

import httpx
import structlog
from temporalio import activity, workflow
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
from temporalio.runtime import PrometheusConfig, Runtime, TelemetryConfig
from temporalio.worker import Worker

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
from workflows.metrics import SAGA_DURATION, SAGA_DURATION_BUCKETS
from workflows.order import OrderWorkflow
from workflows.payloads import TASK_QUEUE
from workflows.repair import ReconcileWorkflow, RepairWorkflow

RECONCILER_SCHEDULE_ID = "ordersaga-reconciler"
RECONCILE_WORKFLOW_ID = "reconcile"

log = structlog.get_logger(__name__)


def build_activities(client: Client, http: httpx.AsyncClient, settings: WorkerSettings) -> Sequence[Any]:
    def caller(base_url: str) -> ServiceCaller:
        return ServiceCaller(http, base_url, settings.internal_token)

    users = UserActivities(caller(settings.users_url))
    inventory = InventoryActivities(caller(settings.inventory_url))
    payments = PaymentActivities(caller(settings.payments_url))
    orders = OrderActivities(caller(settings.orders_url))
    notifications = NotificationActivities(caller(settings.notifications_url))
    policy = PolicyActivities(settings.saga_policy())
    reconciler = ReconcilerActivities(client, caller(settings.orders_url))
    return [
        users.validate_user,
        users.lookup_contact,
        inventory.reserve_stock,
        inventory.release_stock,
        inventory.commit_stock,
        payments.charge_payment,
        payments.refund_payment,
        payments.authorize_payment,
        payments.capture_payment,
        payments.refund_capture,
        payments.void_payment,
        orders.order_command,
        notifications.notify_customer,
        policy.saga_policy,
        reconciler.find_stranded_orders,
        reconciler.saga_facts,
    ]


@asynccontextmanager
async def running_worker(
    client: Client, settings: WorkerSettings, *, task_queue: str = TASK_QUEUE
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
    async with (
        serving_health(state, settings.metrics_host, settings.metrics_port),
        running_worker(client, settings),
    ):
        await ensure_reconciler_schedule(client, settings)
        state.polling = True
        log.info("worker_started", task_queue=TASK_QUEUE, namespace=client.namespace)
        await stop.wait()
        state.polling = False
        log.info("worker_stopping", graceful_seconds=settings.graceful_shutdown_seconds)
    if tracing:
        shutdown_tracing()
    log.info("worker_stopped")
