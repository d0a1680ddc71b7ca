"""The saga's business metrics, recorded through the workflow's SDK meter.

`workflow.metric_meter()` skips recording while a workflow replays, so a worker restart or a cache
eviction never counts an order twice; nothing here adds a command to the workflow's history. The
worker's SDK runtime serves them on its Prometheus endpoint, next to the SDK's own metrics.
"""

from __future__ import annotations

from datetime import timedelta

from temporalio import workflow

ORDERS_CONFIRMED = "ordersaga_orders_confirmed"
ORDERS_CANCELLED = "ordersaga_orders_cancelled"
COMPENSATIONS = "ordersaga_compensations"
SAGA_DURATION = "ordersaga_saga_duration_seconds"
# A saga here ends in 0.2-2 s when every service answers, 5-30 s when payments retry, and a reviewed
# order waits for a human (minutes to hours): fine below 2 s, coarse above.
SAGA_DURATION_BUCKETS = (0.1, 0.25, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0, 5.0, 10.0, 30.0, 60.0, 300.0, 3600.0)


def saga_ended(order_status: str, cancel_reason: str | None, elapsed: timedelta) -> None:
    meter = workflow.metric_meter()
    outcome = "confirmed" if order_status == "CONFIRMED" else "cancelled"
    if outcome == "confirmed":
        meter.create_counter(ORDERS_CONFIRMED, "Orders the saga confirmed.").add(1)
    else:
        meter.create_counter(ORDERS_CANCELLED, "Orders the saga cancelled, by reason.").add(
            1, {"reason": cancel_reason or "unknown"}
        )
    meter.create_histogram_float(SAGA_DURATION, "From the saga's start to its end.", "s").record(
        elapsed.total_seconds(), {"outcome": outcome}
    )


def compensation_ran(step: str, status: str) -> None:
    """`status` is the compensation's end: done or failed (a running one is not counted)."""
    workflow.metric_meter().create_counter(COMPENSATIONS, "Compensations run, by step and outcome.").add(
        1, {"step": step, "outcome": status}
    )
