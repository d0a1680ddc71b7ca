"""Small typed payloads exchanged between the order workflow, its activities and its callers.

Ids travel as strings so the JSON in a history stays readable and stable across SDK versions.

Compatibility rule: two worker versions run side by side during a rollout (README, "Rollouts"), and a
pinned saga's activities run on its own version's workers while its callers, queries and signals may
be of either version. So a payload only grows: a new field is optional with a default, and no field
is removed, renamed or retyped. Anything else is a new payload type or a new activity name.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

TASK_QUEUE = "orders"
WORKFLOW_ID_PREFIX = "order-"


def workflow_id_for(order_id: str) -> str:
    return f"{WORKFLOW_ID_PREFIX}{order_id}"


STEP_NAMES: tuple[str, ...] = (
    "create_order",
    "validate_user",
    "reserve_stock",
    "authorize_payment",
    "review",
    "capture_payment",
    "confirm_order",
    "notify_customer",
)

StepStatus = Literal["pending", "running", "done", "skipped", "failed", "compensated", "compensation_failed"]
CompensationStatus = Literal["running", "done", "failed"]
SagaStatus = Literal["running", "completed", "compensating", "compensated", "compensation_failed"]

CANCEL_REASONS: tuple[str, ...] = (
    "user_invalid",
    "invalid_item",
    "out_of_stock",
    "invalid_payment_method",
    "payment_declined",
    "payment_failed",
    "customer_cancelled",
    "review_rejected",
    "review_timeout",
    "operator_cancelled",
    "saga_terminated",
    "internal_error",
)


@dataclass
class OrderLine:
    product_id: str
    quantity: int


@dataclass
class OrderInput:
    order_id: str
    user_id: str
    payment_method_id: str
    lines: list[OrderLine]


@dataclass
class SagaPolicy:
    """Worker settings that shape a saga; read once per run through a local activity (recorded)."""

    review_threshold_cents: int = 100_000
    review_timeout_seconds: float = 24 * 3600
    payment_max_attempts: int = 6
    payment_initial_interval_seconds: float = 1.0
    payment_budget_seconds: float = 120.0
    # The short calls to our own services run as local activities (WORKER_LOCAL_ACTIVITIES): see
    # workflows/order.py. False for every history recorded before this field, so those replay as they ran.
    local_activities: bool = False
    # How long each compensation is retried before it is marked compensation_failed (and the others
    # still run). None: retried without end, as every saga recorded before this field did.
    compensation_budget_seconds: float | None = None


@dataclass
class CustomerContact:
    user_id: str
    email: str | None = None
    phone: str | None = None
    attempts: int = 1


@dataclass
class PricedLine:
    product_id: str
    quantity: int
    unit_price_cents: int


@dataclass
class Reservation:
    order_id: str
    lines: list[PricedLine]
    total_cents: int
    currency: str
    attempts: int = 1


@dataclass
class ChargeRequest:
    order_id: str
    user_id: str
    payment_method_id: str
    amount_cents: int
    currency: str


@dataclass
class Charge:
    payment_id: str
    amount_cents: int
    currency: str
    attempts: int = 1


@dataclass
class OrderCommand:
    """A command for the orders service; `step` names the saga step, for the idempotency key."""

    order_id: str
    step: str
    type: Literal["create", "await_review", "confirm", "cancel"]
    user_id: str | None = None
    payment_method_id: str | None = None
    lines: list[OrderLine] | None = None
    priced_lines: list[PricedLine] | None = None
    total_cents: int | None = None
    currency: str | None = None
    payment_id: str | None = None
    reason: str | None = None


@dataclass
class OrderSnapshot:
    order_id: str
    status: str
    version: int
    attempts: int = 1


@dataclass
class Notice:
    order_id: str
    user_id: str
    template: Literal["order_confirmed", "order_cancelled"]
    contact: CustomerContact
    data: dict[str, str | int | None] = field(default_factory=dict)


@dataclass
class NoticeResult:
    sent: int
    attempts: int = 1


@dataclass
class ReviewDecision:
    approve: bool
    reviewer: str | None = None


@dataclass
class CancelRequest:
    requested_by: str | None = None


@dataclass
class RetryCompensations:
    """An admin's retry of the compensations that failed, once the cause is fixed."""

    requested_by: str | None = None


@dataclass
class AbandonCompensations:
    """An operator gives up on the failed compensations; the saga then ends with them failed."""

    reason: str
    requested_by: str | None = None


@dataclass
class CompensationState:
    status: CompensationStatus
    attempts: int = 0
    error: str | None = None


@dataclass
class StepState:
    name: str
    status: StepStatus = "pending"
    attempts: int = 0
    started_at: str | None = None
    finished_at: str | None = None
    error: str | None = None
    compensation: CompensationState | None = None


@dataclass
class SagaView:
    order_id: str
    workflow_id: str
    status: SagaStatus
    order_status: str
    cancel_reason: str | None
    steps: list[StepState]
    # The trace of the request that placed the order, when tracing is on (see services/kit/tracing.py).
    trace_id: str | None = None


@dataclass
class OrderResult:
    order_id: str
    status: str
    cancel_reason: str | None = None
    payment_id: str | None = None
    total_cents: int | None = None
    currency: str | None = None


@dataclass
class SagaFacts:
    """What a repair needs of a saga whose workflow closed before its order was final."""

    order_id: str
    pivot_started: bool
    order_status: str
    reservation: Reservation | None = None
    payment_id: str | None = None
    # The plan before authorisations: one charge (the `charge_payment` key) instead of authorise+capture.
    charged_in_one_call: bool = False


@dataclass
class RepairRequest:
    order_id: str
    user_id: str


@dataclass
class RepairResult:
    order_id: str
    outcome: Literal["rolled_back", "rolled_forward"]
    status: str


@dataclass
class StrandedOrder:
    order_id: str
    user_id: str
    workflow_status: str
