"""Every process serves /metrics; one confirmed and one declined order move the business metrics by
exactly what they did, and the worker's SDK runtime serves Temporal's own metrics."""

from __future__ import annotations

import asyncio
import time

from prometheus_client.samples import Sample

from tests.observability.conftest import ObservedStack
from tests.observability.scrape import names, scrape, scrape_all, total
from tests.support.driver import Driver

DECLINED = "4000000000000002"


async def _wait_for(
    url: str, name: str, at_least: float, timeout: float = 20.0, **labels: str
) -> list[Sample]:
    """Counters moved by a background loop (the notification sender) reach their value a bit later."""
    deadline = time.monotonic() + timeout
    samples = await scrape(url)
    while total(samples, name, **labels) < at_least and time.monotonic() < deadline:
        await asyncio.sleep(0.2)
        samples = await scrape(url)
    return samples


async def test_business_counters_move_by_exactly_what_happened(
    observed: ObservedStack, driver: Driver
) -> None:
    urls = observed.metrics_urls()
    before = await scrape_all(urls)
    payer = await driver.customer()
    decliner = await driver.customer(card=DECLINED)
    product = await driver.product(stock=10, price_cents=1_250)

    confirmed = await driver.place_order(payer, [(product, 2)])
    declined = await driver.place_order(decliner, [(product, 1)])
    assert confirmed.status_code == declined.status_code == 202
    order, _ = await driver.wait_final(confirmed.json()["id"])
    cancelled, _ = await driver.wait_final(declined.json()["id"])
    assert order["status"] == "CONFIRMED" and cancelled["cancel_reason"] == "payment_declined"

    sent = total(before["notifications"], "ordersaga_notification_deliveries_total", status="sent")
    notifications = await _wait_for(
        urls["notifications"], "ordersaga_notification_deliveries_total", sent + 4, status="sent"
    )
    after = await scrape_all(urls)
    after["notifications"] = notifications

    def moved(process: str, name: str, **labels: str) -> float:
        return total(after[process], name, **labels) - total(before[process], name, **labels)

    assert moved("orders", "ordersaga_orders_placed_total") == 2
    assert moved("payments", "ordersaga_payments_captured_cents_total") == 2_500
    # The declined card captured nothing, so its compensation refunded nothing.
    assert moved("payments", "ordersaga_payments_refunded_cents_total") == 0
    # Each customer got a welcome (from user.created) and the saga's notice: what the service lists.
    assert moved("notifications", "ordersaga_notification_deliveries_total", status="sent") == 4
    delivered = [
        n
        for user in (payer, decliner)
        for n in await driver.notifications_of(user.user_id)
        if n["status"] == "sent"
    ]
    assert moved("notifications", "ordersaga_notification_deliveries_total", status="sent") == len(
        delivered
    ), [(n["template"], n["channel"]) for n in delivered]
    assert moved("notifications", "ordersaga_notification_deliveries_total", status="failed") == 0

    # The saga's metrics come from the workflow, through the SDK runtime's endpoint.
    assert moved("worker-sdk", "ordersaga_orders_confirmed_total") == 1
    assert moved("worker-sdk", "ordersaga_orders_cancelled_total", reason="payment_declined") == 1
    assert moved("worker-sdk", "ordersaga_orders_cancelled_total") == 1
    assert moved("worker-sdk", "ordersaga_saga_duration_seconds_count", outcome="confirmed") == 1
    assert moved("worker-sdk", "ordersaga_saga_duration_seconds_count", outcome="cancelled") == 1
    # Unwinding the declined order: void the authorisation (nothing held), release stock, cancel the order.
    for step in ("authorize_payment", "reserve_stock", "create_order"):
        assert moved("worker-sdk", "ordersaga_compensations_total", step=step, outcome="done") == 1, step
    assert moved("worker-sdk", "ordersaga_compensations_total") == 3

    # RED metrics everywhere, and the relay's view of its outbox.
    for process in ("users", "inventory", "payments", "orders", "notifications", "gateway"):
        assert "http_requests_total" in names(after[process]), process
    for process in ("inventory", "payments", "orders"):
        assert "ordersaga_outbox_lag_seconds" in names(after[process]), process
        assert "ordersaga_outbox_unpublished_events" in names(after[process]), process


SDK_METRICS = (
    "temporal_workflow_task_execution_latency_bucket",  # seconds (durations_as_seconds)
    "temporal_activity_execution_latency_bucket",
    "temporal_workflow_completed_total",
    "temporal_worker_task_slots_available",
)


async def test_the_worker_serves_temporal_sdk_metrics(observed: ObservedStack, driver: Driver) -> None:
    # A saga of its own, so the histograms exist whichever test ran on this stack before.
    customer = await driver.customer()
    product = await driver.product(stock=5)
    placed = await driver.place_order(customer, [(product, 1)])
    order, _ = await driver.wait_final(placed.json()["id"])
    assert order["status"] == "CONFIRMED"
    deadline = time.monotonic() + 20
    present = names(await scrape(observed.sdk_metrics_url))
    while not set(SDK_METRICS) <= present and time.monotonic() < deadline:
        await asyncio.sleep(0.5)
        present = names(await scrape(observed.sdk_metrics_url))
    for name in SDK_METRICS:
        assert name in present, sorted(n for n in present if n.startswith("temporal_"))
