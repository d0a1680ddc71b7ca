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
from temporalio.client import Client
from temporalio.runtime import PrometheusConfig, Runtime, TelemetryConfig
from temporalio.worker import Worker

from activities.http import ServiceCaller
from activities.inventory import InventoryActivities
from activities.notifications import NotificationActivities
from activities.orders import OrderActivities
from activities.payments import PaymentActivities
from activities.policy import PolicyActivities
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

log = structlog.get_logger(__name__)


def build_activities(http: httpx.AsyncClient, settings: WorkerSettings) -> Sequence[Any]:
    def caller(base_url: str) -> ServiceCaller:
        return ServiceCaller(http, base_url, settings.internal_token)

    users = UserActivities(caller(settings.users_url))
    inventory = InventoryActivities(caller(settings.inventory_url))
    payments = PaymentActivities(caller(settings.payments_url))
    orders = OrderActivities(caller(settings.orders_url))
    notifications = NotificationActivities(caller(settings.notifications_url))
    policy = PolicyActivities(settings.saga_policy())
    return [
        users.validate_user,
        users.lookup_contact,
        inventory.reserve_stock,
        inventory.release_stock,
        inventory.commit_stock,
        payments.charge_payment,
        payments.refund_payment,
        orders.order_command,
        notifications.notify_customer,
        policy.saga_policy,
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
            workflows=[OrderWorkflow],
            activities=build_activities(http, settings),
            max_concurrent_activities=settings.max_concurrent_activities,
            max_concurrent_workflow_tasks=settings.max_concurrent_workflow_tasks,
            graceful_shutdown_timeout=timedelta(seconds=settings.graceful_shutdown_seconds),
        )
        async with worker:
            yield worker


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
        state.polling = True
        log.info("worker_started", task_queue=TASK_QUEUE, namespace=client.namespace)
        await stop.wait()
        state.polling = False
        log.info("worker_stopping", graceful_seconds=settings.graceful_shutdown_seconds)
    if tracing:
        shutdown_tracing()
    log.info("worker_stopped")
