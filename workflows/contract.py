"""The saga's contract: every fact the workflow, its activities, the services, the CLI and the tests
share, declared once. Nothing here imports a service, an activity or the workflow.

- where sagas run: the task queue, and the workflow id of an order (`order-<order id>`);
- the vocabulary of the saga view: step names, step/compensation/saga statuses, cancel reasons;
- the search attributes the orders service indexes sagas by;
- the review threshold default;
- the payload types of every activity, update and query (dataclasses, JSON in the history).

Ids travel as strings so the JSON in a history stays readable and stable across SDK versions.

Compatibility rule: two worker versions run side by side during a rollout (README, "Rollouts"), and a
pinned saga's activities run on its own version's workers while its callers, queries and signals may
be of either version. So a payload only grows: a new field is optional with a default, and no field
is removed, renamed or retyped. Anything else is a new payload type or a new activity name.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum
from typing import Literal

from temporalio.common import SearchAttributeKey

TASK_QUEUE = "orders"
WORKFLOW_ID_PREFIX = "order-"


def workflow_id_for(order_id: str) -> str:
    return f"{WORKFLOW_ID_PREFIX}{order_id}"


def order_id_of(workflow_id: str) -> str | None:
    """The order of an order saga's workflow id; None for any other workflow (repair, reconcile)."""
    if workflow_id.startswith(WORKFLOW_ID_PREFIX):
        return workflow_id.removeprefix(WORKFLOW_ID_PREFIX)
    return None


class Step(StrEnum):
    """The saga's steps, in the order of the saga view. A step's name is also its idempotency-key
    suffix (activities/http.saga_key), so a name never changes once sagas ran with it."""

    CREATE_ORDER = "create_order"
    VALIDATE_USER = "validate_user"
    RESERVE_STOCK = "reserve_stock"
    AUTHORIZE_PAYMENT = "authorize_payment"
    REVIEW = "review"
    CAPTURE_PAYMENT = "capture_payment"
    CONFIRM_ORDER = "confirm_order"
    NOTIFY_CUSTOMER = "notify_customer"


# Plain strings: what the saga view and the histories hold.
STEP_NAMES: tuple[str, ...] = tuple(step.value for step in Step)

StepStatus = Literal["pending", "running", "done", "skipped", "failed", "compensated", "compensation_failed"]
CompensationStatus = Literal["running", "done", "failed"]
SagaStatus = Literal["running", "completed", "compensating", "compensated", "compensation_failed"]


class CancelReason(StrEnum):
    """Why an order was cancelled: the saga's failure reasons, the customer's and the operator's."""

    USER_INVALID = "user_invalid"
    INVALID_ITEM = "invalid_item"
    OUT_OF_STOCK = "out_of_stock"
    INVALID_PAYMENT_METHOD = "invalid_payment_method"
    PAYMENT_DECLINED = "payment_declined"
    PAYMENT_FAILED = "payment_failed"
    CUSTOMER_CANCELLED = "customer_cancelled"
    REVIEW_REJECTED = "review_rejected"
    REVIEW_TIMEOUT = "review_timeout"
    # An operator cancelled the saga's workflow (Temporal Web UI or CLI) before its pivot.
    OPERATOR_CANCELLED = "operator_cancelled"
    # The workflow was terminated, timed out or failed before the order was final; the reconciler
    # rolled the order back.
    SAGA_TERMINATED = "saga_terminated"
    INTERNAL_ERROR = "internal_error"


CANCEL_REASONS: tuple[str, ...] = tuple(reason.value for reason in CancelReason)

# What the orders service indexes each saga by (a visibility query, `ordersaga replay -q ...`); the
# Temporal server must know them (the dev server's --search-attribute, `ordersaga up`).
ORDER_STATUS = SearchAttributeKey.for_keyword("OrderStatus")
CUSTOMER_ID = SearchAttributeKey.for_keyword("CustomerId")
SEARCH_ATTRIBUTES: tuple[SearchAttributeKey[str], ...] = (ORDER_STATUS, CUSTOMER_ID)


def search_attribute_flags() -> tuple[str, ...]:
    """`NAME=Keyword` for the dev server's --search-attribute."""
    return tuple(f"{key.name}=Keyword" for key in SEARCH_ATTRIBUTES)


# An order at or above this total waits for a human review (WORKER_REVIEW_THRESHOLD_CENTS).
REVIEW_THRESHOLD_CENTS = 100_000


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

    review_threshold_cents: int = REVIEW_THRESHOLD_CENTS
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


# The order's own steps, one typed input each (the sagas before them sent an OrderCommand to the one
# `order_command` activity; it stays registered for their histories).


@dataclass
class CreateOrder:
    """The saga's first step: the order exists (POST /orders wrote it); the saga marks it started."""

    order_id: str


@dataclass
class AwaitReview:
    order_id: str
    # The authorisation the reviewer's decision will capture or void; recorded on the order.
    payment_id: str | None = None


@dataclass
class ConfirmOrder:
    """The pivot's second half: the priced lines and the captured payment."""

    order_id: str
    priced_lines: list[PricedLine]
    total_cents: int
    currency: str
    payment_id: str


@dataclass
class CancelOrder:
    """The create step's compensation: cancel the order with the saga's reason."""

    order_id: str
    reason: str | None
    payment_id: str | None = None


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


def not_started_view(order_id: str) -> SagaView:
    """The view of an accepted order whose saga has not started yet: every step still pending."""
    return SagaView(
        order_id=order_id,
        workflow_id=workflow_id_for(order_id),
        status="running",
        order_status="PENDING",
        cancel_reason=None,
        steps=[StepState(name=name) for name in STEP_NAMES],
    )


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
