"""GET /orders/{id}/saga/stream in process, with a scripted saga: what a client of the stream reads
(events only on change, the end, Last-Event-ID, keep-alives), who may open one, and the bound on
open streams. Through a real gateway and a real saga: tests/gateway/test_saga_stream.py."""

from __future__ import annotations

import asyncio
import copy
import json
import time
import uuid
from typing import Any

from services.kit.errors import Problem
from services.orders.saga_routes import StreamSlots
from tests.services.orders.conftest import RecordingSaga, place_ok
from tests.support.identity import as_admin, as_customer
from workflows.contract import Step

STEPS = (Step.CREATE_ORDER, Step.VALIDATE_USER, Step.RESERVE_STOCK, Step.NOTIFY_CUSTOMER)


def view(order_id: str, status: str, *done: str) -> dict[str, Any]:
    steps = [
        {"name": name, "status": "done" if name in done else "pending", "attempts": int(name in done)}
        for name in STEPS
    ]
    if status == "completed":
        steps = [{**step, "status": "done"} for step in steps]
    return {
        "order_id": order_id,
        "workflow_id": f"order-{order_id}",
        "status": status,
        "order_status": "CONFIRMED" if status == "completed" else "PENDING",
        "steps": steps,
    }


class ScriptedSaga(RecordingSaga):
    """Answers each `status` query with the next view of its script, then the last one forever;
    `hold` keeps answering the current one until it is set."""

    def __init__(self, views: list[dict[str, Any]], repeat: int = 1) -> None:
        super().__init__()
        # Each view answered `repeat` times: an unchanged view must not make a new event.
        self.script = [copy.deepcopy(v) for v in views for _ in range(repeat)]
        self.queries = 0
        self.hold = asyncio.Event()
        self.hold.set()

    async def describe(self, order_id: uuid.UUID) -> dict[str, Any]:
        if not self.hold.is_set() and self.queries > 0:
            return self.script[min(self.queries - 1, len(self.script) - 1)]
        self.queries += 1
        return self.script[min(self.queries - 1, len(self.script) - 1)]


def events(text: str) -> list[dict[str, Any]]:
    """The stream's events as a client parses them (comments kept as `comment`)."""
    parsed: list[dict[str, Any]] = []
    for block in text.split("\n\n"):
        if not block:
            continue
        fields: dict[str, Any] = {}
        for line in block.split("\n"):
            if line.startswith(":"):
                fields["comment"] = line[1:].strip()
            else:
                name, _, value = line.partition(": ")
                fields[name] = value
        if "data" in fields:
            fields["data"] = json.loads(fields["data"])
        parsed.append(fields)
    return parsed


async def test_events_come_on_change_and_the_stream_ends_with_the_saga(service_client: Any) -> None:
    customer = uuid.uuid4()
    async with service_client("orders", saga_stream_poll_seconds=0.01) as orders:
        order_id = await place_ok(orders, customer)
        script = [
            view(order_id, "running"),
            view(order_id, "running", "create_order"),
            view(order_id, "running", "create_order", "validate_user"),
            view(order_id, "completed"),
        ]
        orders.app.state.saga = ScriptedSaga(script, repeat=3)
        response = await orders.get(f"/orders/{order_id}/saga/stream", headers=as_customer(customer))
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        assert "no-cache" in response.headers["cache-control"]
        got = events(response.text)
        assert [e["event"] for e in got] == ["saga", "saga", "saga", "end"]
        assert [e["id"] for e in got] == ["1", "2", "3", "4"]
        assert [e["data"]["steps"][0]["status"] for e in got] == ["pending", "done", "done", "done"]
        assert got[-1]["data"]["status"] == "completed"
        # The same JSON as GET /orders/{id}/saga would give for that view.
        saga_view = await orders.get(f"/orders/{order_id}/saga", headers=as_customer(customer))
        assert saga_view.json() == got[-1]["data"]


class ClosedSaga(ScriptedSaga):
    """A workflow closed from outside: its query answers the same view for ever, or fails when it
    was terminated before its first workflow task (`views` empty)."""

    def __init__(self, views: list[dict[str, Any]], closed_after: int) -> None:
        super().__init__(views)
        self.closed_after = closed_after  # `status` queries answered while it still ran
        self.status_checks = 0

    async def describe(self, order_id: uuid.UUID) -> dict[str, Any]:
        if not self.script:
            raise Problem(503, "saga_unavailable", "The query failed.")
        return await super().describe(order_id)

    async def closed_status(self, order_id: uuid.UUID) -> str | None:
        self.status_checks += 1
        return "TERMINATED" if self.queries >= self.closed_after else None


async def test_a_workflow_closed_from_outside_ends_the_stream_with_its_last_view(
    service_client: Any,
) -> None:
    customer = uuid.uuid4()
    async with service_client("orders", saga_stream_poll_seconds=0.01) as orders:
        order_id = await place_ok(orders, customer)
        saga = ClosedSaga([view(order_id, "running"), view(order_id, "running", "create_order")], 3)
        orders.app.state.saga = saga
        response = await orders.get(f"/orders/{order_id}/saga/stream", headers=as_customer(customer))
        got = events(response.text)
        assert [e["event"] for e in got] == ["saga", "saga", "end"]
        assert got[-1]["data"] == {**got[-2]["data"], "workflow_status": "TERMINATED"}
        # Asked only when the view stayed the same: a changing view costs no second call.
        assert saga.status_checks <= saga.queries - 1

        # Terminated before its first task: no view was ever answered, every step is pending.
        orders.app.state.saga = ClosedSaga([], 0)
        response = await orders.get(f"/orders/{order_id}/saga/stream", headers=as_customer(customer))
        got = events(response.text)
        assert [e["event"] for e in got] == ["end"]
        assert got[0]["data"]["workflow_status"] == "TERMINATED"
        assert {step["status"] for step in got[0]["data"]["steps"]} == {"pending"}


async def test_a_reconnecting_client_gets_the_current_view_numbered_after_its_last(
    service_client: Any,
) -> None:
    customer = uuid.uuid4()
    async with service_client("orders", saga_stream_poll_seconds=0.01) as orders:
        order_id = await place_ok(orders, customer)
        orders.app.state.saga = ScriptedSaga([view(order_id, "completed")])
        again = await orders.get(
            f"/orders/{order_id}/saga/stream", headers={**as_customer(customer), "Last-Event-ID": "41"}
        )
        assert [(e["id"], e["event"]) for e in events(again.text)] == [("42", "end")]
        foreign = await orders.get(
            f"/orders/{order_id}/saga/stream", headers={**as_customer(customer), "Last-Event-ID": "x"}
        )
        assert [e["id"] for e in events(foreign.text)] == ["1"]


async def test_only_the_owner_or_an_admin_opens_a_stream(service_client: Any) -> None:
    customer, stranger = uuid.uuid4(), uuid.uuid4()
    async with service_client("orders", saga_stream_poll_seconds=0.01) as orders:
        order_id = await place_ok(orders, customer)
        saga = ScriptedSaga([view(order_id, "completed")])
        orders.app.state.saga = saga
        path = f"/orders/{order_id}/saga/stream"
        refused = await orders.get(path, headers=as_customer(stranger))
        assert refused.status_code == 404
        assert refused.json()["code"] == "order_not_found"
        assert (
            await orders.get(f"/orders/{uuid.uuid4()}/saga/stream", headers=as_admin())
        ).status_code == 404
        assert (await orders.get(path)).status_code == 401
        assert saga.queries == 0  # nobody refused reached the workflow
        assert (await orders.get(path, headers=as_admin())).status_code == 200


async def test_keep_alive_comments_fill_a_quiet_stream(service_client: Any) -> None:
    customer = uuid.uuid4()
    async with service_client(
        "orders",
        saga_stream_poll_seconds=0.01,
        saga_stream_quiet_poll_seconds=0.01,
        saga_stream_keepalive_seconds=0.05,
    ) as orders:
        order_id = await place_ok(orders, customer)
        # 30 polls (about 0.3 s) of one unchanged view, then the end.
        script = [view(order_id, "running")] * 30 + [view(order_id, "completed")]
        orders.app.state.saga = ScriptedSaga(script)
        response = await orders.get(f"/orders/{order_id}/saga/stream", headers=as_customer(customer))
        got = events(response.text)
        assert got[0]["event"] == "saga" and got[-1]["event"] == "end"
        middle = got[1:-1]
        assert middle and all(e == {"comment": "keep-alive"} for e in middle), got


async def test_open_streams_are_bounded_and_the_slot_comes_back(service_client: Any) -> None:
    customer = uuid.uuid4()
    async with service_client("orders", saga_stream_poll_seconds=0.01, saga_stream_max_open=1) as orders:
        order_id = await place_ok(orders, customer)
        saga = ScriptedSaga([view(order_id, "running"), view(order_id, "completed")])
        saga.hold.clear()  # the first stream stays open on its running view
        orders.app.state.saga = saga
        path = f"/orders/{order_id}/saga/stream"
        first = asyncio.create_task(orders.get(path, headers=as_customer(customer)))
        slots: StreamSlots | None = None
        for _ in range(500):
            slots = getattr(orders.app.state, "saga_stream_slots", None)
            if slots is not None and slots.open == 1:
                break
            await asyncio.sleep(0.01)
        assert slots is not None and slots.open == 1
        shed = await orders.get(path, headers=as_customer(customer))
        assert shed.status_code == 503
        assert shed.json()["code"] == "overloaded"
        assert int(shed.headers["retry-after"]) > 0
        saga.hold.set()
        assert [e["event"] for e in events((await asyncio.wait_for(first, 30)).text)] == ["saga", "end"]
        assert slots.open == 0
        assert (await orders.get(path, headers=as_customer(customer))).status_code == 200


class TimedSaga(RecordingSaga):
    """One unchanged running view for `seconds`, then the completed one; counts the queries."""

    def __init__(self, order_id: str, seconds: float) -> None:
        super().__init__()
        self.running, self.completed = view(order_id, "running"), view(order_id, "completed")
        self.until = time.monotonic() + seconds
        self.queries = 0

    async def describe(self, order_id: uuid.UUID) -> dict[str, Any]:
        self.queries += 1
        return self.running if time.monotonic() < self.until else self.completed


async def test_a_quiet_saga_is_asked_less_and_less_often(service_client: Any) -> None:
    """Polling every 0.01 s while the view changes would be about 100 queries in a quiet second;
    doubling up to 0.2 s it is at most 6 + 5 (0.01 ... 0.16, then every 0.2 s)."""
    customer = uuid.uuid4()
    async with service_client(
        "orders", saga_stream_poll_seconds=0.01, saga_stream_quiet_poll_seconds=0.2
    ) as orders:
        order_id = await place_ok(orders, customer)
        saga = TimedSaga(order_id, seconds=1.0)
        orders.app.state.saga = saga
        response = await orders.get(f"/orders/{order_id}/saga/stream", headers=as_customer(customer))
        assert [e["event"] for e in events(response.text)] == ["saga", "end"]
        assert 3 <= saga.queries <= 12, saga.queries
