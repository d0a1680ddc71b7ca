"""Business metrics of the HTTP services (Prometheus, `ordersaga_` prefix), in one place for the dashboard.

Each is incremented after the change it counts is committed, so a rolled-back transaction or an
idempotent replay never moves it. The saga's own metrics (confirmed, cancelled, compensations, saga
duration) are recorded by the workflow: see workflows/metrics.py.
"""

from __future__ import annotations

from prometheus_client import Counter, Gauge

ORDERS_PLACED = Counter("ordersaga_orders_placed_total", "Orders accepted by the orders service.")
# Without a currency label: every product here is priced in one currency, and an unlabelled counter
# is exported (at 0) from the start, so dashboards and rates work before the first refund.
PAYMENTS_CAPTURED_CENTS = Counter("ordersaga_payments_captured_cents_total", "Money captured, in cents.")
PAYMENTS_REFUNDED_CENTS = Counter("ordersaga_payments_refunded_cents_total", "Money refunded, in cents.")
NOTIFICATION_DELIVERIES = Counter(
    "ordersaga_notification_deliveries_total",
    "Notification delivery attempts by channel and status (sent, retry, failed, unknown).",
    ["channel", "status"],
)
OUTBOX_UNPUBLISHED = Gauge(
    "ordersaga_outbox_unpublished_events", "Outbox rows not yet published to NATS.", ["service"]
)
OUTBOX_LAG = Gauge(
    "ordersaga_outbox_lag_seconds",
    "Age of the oldest outbox row not yet published (0 when none waits).",
    ["service"],
)
