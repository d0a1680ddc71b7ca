"""Order rules without I/O: statuses, commands, the state machine, event types, pricing checks, and
the fold of an order's events into its state (the aggregate's LoadFromHistory)."""

from __future__ import annotations

import hashlib
import json
import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace
from datetime import datetime
from enum import StrEnum
from typing import Any, Protocol

from workflows.contract import CancelReason, workflow_id_for


class OrderStatus(StrEnum):
    PENDING = "PENDING"
    AWAITING_REVIEW = "AWAITING_REVIEW"
    CONFIRMED = "CONFIRMED"
    SHIPPED = "SHIPPED"
    DELIVERED = "DELIVERED"
    CANCELLED = "CANCELLED"


class CommandType(StrEnum):
    CREATE = "create"
    AWAIT_REVIEW = "await_review"
    CONFIRM = "confirm"
    CANCEL = "cancel"
    SHIP = "ship"
    DELIVER = "deliver"


EVENT_TYPES: dict[CommandType, str] = {
    CommandType.CREATE: "order.created",
    CommandType.AWAIT_REVIEW: "order.awaiting_review",
    CommandType.CONFIRM: "order.confirmed",
    CommandType.CANCEL: "order.cancelled",
    CommandType.SHIP: "order.shipped",
    CommandType.DELIVER: "order.delivered",
}

_BEFORE_CONFIRMATION = frozenset({OrderStatus.PENDING, OrderStatus.AWAITING_REVIEW})

# Commands that may name the payment authorised so far (`confirm` always names its own).
_CARRIES_PAYMENT = frozenset({CommandType.AWAIT_REVIEW, CommandType.CANCEL})

# command → (statuses it may be applied in, status it leads to); `create` is not a transition.
TRANSITIONS: dict[CommandType, tuple[frozenset[OrderStatus], OrderStatus]] = {
    CommandType.AWAIT_REVIEW: (frozenset({OrderStatus.PENDING}), OrderStatus.AWAITING_REVIEW),
    CommandType.CONFIRM: (_BEFORE_CONFIRMATION, OrderStatus.CONFIRMED),
    CommandType.CANCEL: (_BEFORE_CONFIRMATION, OrderStatus.CANCELLED),
    CommandType.SHIP: (frozenset({OrderStatus.CONFIRMED}), OrderStatus.SHIPPED),
    CommandType.DELIVER: (frozenset({OrderStatus.SHIPPED}), OrderStatus.DELIVERED),
}

# What an admin may set through PUT /orders/{id}/status, and the command that does it.
ADMIN_STATUS_COMMANDS: dict[OrderStatus, CommandType] = {
    OrderStatus.SHIPPED: CommandType.SHIP,
    OrderStatus.DELIVERED: CommandType.DELIVER,
}


class IllegalTransition(Exception):
    def __init__(self, current: OrderStatus, command: CommandType) -> None:
        super().__init__(f"An order in status {current} cannot take the command '{command}'.")
        self.current = current
        self.command = command


class ConfirmationMismatch(Exception):
    """The priced lines of a confirmation do not describe the order that was placed."""


def next_status(current: OrderStatus, command: CommandType) -> OrderStatus:
    rule = TRANSITIONS.get(command)
    if rule is None or current not in rule[0]:
        raise IllegalTransition(current, command)
    return rule[1]


@dataclass(frozen=True)
class Line:
    product_id: uuid.UUID
    quantity: int
    unit_price_cents: int | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "product_id": str(self.product_id),
            "quantity": self.quantity,
            "unit_price_cents": self.unit_price_cents,
        }

    @classmethod
    def from_json(cls, raw: dict[str, Any]) -> Line:
        return cls(
            product_id=uuid.UUID(str(raw["product_id"])),
            quantity=int(raw["quantity"]),
            unit_price_cents=raw.get("unit_price_cents"),
        )


def repeated_product(lines: Sequence[Line]) -> uuid.UUID | None:
    seen: set[uuid.UUID] = set()
    for line in lines:
        if line.product_id in seen:
            return line.product_id
        seen.add(line.product_id)
    return None


def price_lines(ordered: Sequence[Line], priced: Sequence[Line], total_cents: int) -> list[Line]:
    """The order's lines, in their original order, carrying the confirmed unit prices.

    The saga confirms what inventory priced; a confirmation naming other products or quantities, or
    whose total is not the sum of its lines, would make the read model contradict its own money.
    """
    prices = {line.product_id: line for line in priced}
    if len(prices) != len(priced) or set(prices) != {line.product_id for line in ordered}:
        raise ConfirmationMismatch("The confirmed lines are not the products of the order.")
    result: list[Line] = []
    for line in ordered:
        match = prices[line.product_id]
        if match.quantity != line.quantity or match.unit_price_cents is None:
            raise ConfirmationMismatch(f"The confirmed quantity of {line.product_id} differs from the order.")
        result.append(Line(line.product_id, line.quantity, match.unit_price_cents))
    if sum(line.quantity * (line.unit_price_cents or 0) for line in result) != total_cents:
        raise ConfirmationMismatch("total_cents is not the sum of the priced lines.")
    return result


def request_fingerprint(lines: Sequence[Line], payment_method_id: uuid.UUID) -> str:
    """A stable hash of what a POST /orders asked for; the line order does not change the request."""
    canonical = {
        "items": sorted([str(line.product_id), line.quantity] for line in lines),
        "payment_method_id": str(payment_method_id),
    }
    return hashlib.sha256(json.dumps(canonical, separators=(",", ":")).encode()).hexdigest()


def workflow_id(order_id: uuid.UUID) -> str:
    """The order's saga workflow id (the contract's helper, for a UUID)."""
    return workflow_id_for(str(order_id))


@dataclass(frozen=True)
class Confirmation:
    lines: tuple[Line, ...]
    total_cents: int
    currency: str
    payment_id: uuid.UUID


@dataclass(frozen=True)
class Decision:
    """What a command does to an order: its new status and the data of the event that records it
    (what that does to each column is `OrderState.apply`'s, the one place it is said)."""

    status: OrderStatus
    event_data: dict[str, Any]


def decide(
    current: OrderStatus,
    lines: Sequence[Line],
    command: CommandType,
    *,
    reason: CancelReason | None = None,
    confirmation: Confirmation | None = None,
    payment_id: uuid.UUID | None = None,
) -> Decision:
    """`payment_id` (await_review, cancel) records the payment the saga authorised; None leaves it be."""
    status = next_status(current, command)
    data: dict[str, Any] = {}
    if command is CommandType.CONFIRM:
        if confirmation is None:
            raise ValueError("confirm needs a confirmation")
        priced = [line.to_json() for line in price_lines(lines, confirmation.lines, confirmation.total_cents)]
        data = {
            "items": priced,
            "total_cents": confirmation.total_cents,
            "currency": confirmation.currency,
            "payment_id": str(confirmation.payment_id),
        }
        return Decision(status, data)
    if command is CommandType.CANCEL:
        if reason is None:
            raise ValueError("cancel needs a reason")
        data["reason"] = reason.value
    if payment_id is not None:
        if command not in _CARRIES_PAYMENT:
            raise ValueError(f"{command} does not carry a payment_id")
        data["payment_id"] = str(payment_id)
    return Decision(status, data)


# event type → the command that wrote it
_COMMAND_OF_EVENT: dict[str, CommandType] = {event: command for command, event in EVENT_TYPES.items()}


class RecordedEvent(Protocol):
    """One entry of an order's event log, as stored (an `OrderEvent` row, or one about to be)."""

    @property
    def version(self) -> int: ...
    @property
    def type(self) -> str: ...
    @property
    def data(self) -> dict[str, Any]: ...
    @property
    def occurred_at(self) -> datetime: ...


class CorruptHistory(Exception):
    """The events do not form one order's history: no creation first, a gap, or an unknown type."""


@dataclass(frozen=True)
class OrderState:
    """An order as its events add up to: every column of the `orders` projection but the saga's
    start (`saga_started_at`, the start sweeper's bookkeeping, kept in `order_saga_starts`)."""

    order_id: uuid.UUID
    user_id: uuid.UUID
    status: OrderStatus
    items: list[dict[str, Any]]
    payment_method_id: uuid.UUID
    version: int
    created_at: datetime
    updated_at: datetime
    total_cents: int | None = None
    currency: str | None = None
    payment_id: uuid.UUID | None = None
    cancel_reason: str | None = None
    idempotency_key: str | None = None
    request_hash: str | None = None

    @classmethod
    def created(cls, order_id: uuid.UUID, event: RecordedEvent) -> OrderState:
        if event.type != EVENT_TYPES[CommandType.CREATE] or event.version != 1:
            raise CorruptHistory(f"order {order_id}: the first event is {event.type} v{event.version}")
        data = event.data
        return cls(
            order_id=order_id,
            user_id=uuid.UUID(data["user_id"]),
            status=OrderStatus.PENDING,
            items=list(data["items"]),
            payment_method_id=uuid.UUID(data["payment_method_id"]),
            version=1,
            created_at=event.occurred_at,
            updated_at=event.occurred_at,
            idempotency_key=data.get("idempotency_key"),
            request_hash=data.get("request_hash"),
        )

    @classmethod
    def from_history(cls, order_id: uuid.UUID, events: Iterable[RecordedEvent]) -> OrderState:
        """Fold the order's events, oldest first, into its state."""
        ordered = iter(events)
        first = next(ordered, None)
        if first is None:
            raise CorruptHistory(f"order {order_id} has no events")
        state = cls.created(order_id, first)
        for event in ordered:
            state = state.apply(event)
        return state

    def apply(self, event: RecordedEvent) -> OrderState:
        """The state after one more event; pure, so the live write path and a rebuild agree."""
        command = _COMMAND_OF_EVENT.get(event.type)
        if command is None or command is CommandType.CREATE or event.version != self.version + 1:
            raise CorruptHistory(
                f"order {self.order_id}: {event.type} v{event.version} cannot follow v{self.version}"
            )
        data = event.data
        changes: dict[str, Any] = {
            "status": TRANSITIONS[command][1],
            "version": event.version,
            "updated_at": event.occurred_at,
        }
        if command is CommandType.CONFIRM:
            changes.update(
                items=list(data["items"]), total_cents=data["total_cents"], currency=data["currency"]
            )
        if command is CommandType.CANCEL:
            changes["cancel_reason"] = data["reason"]
        if data.get("payment_id") is not None:
            changes["payment_id"] = uuid.UUID(data["payment_id"])
        return replace(self, **changes)

    def lines(self) -> list[Line]:
        return [Line.from_json(raw) for raw in self.items]
