"""One order placed through the gateway is one trace: gateway → orders → StartWorkflow → the workflow
→ every activity → the service each activity calls → that service's database statements."""

from __future__ import annotations

import json
import uuid
from typing import Any

import httpx

from tests.observability.conftest import ObservedStack
from tests.observability.otlp import ReceivedSpan
from tests.support.driver import FINAL_SAGA_STATES, OK_CARD, Driver

PASSWORD = "correct-horse-battery"
SERVER = 2  # SpanKind.SERVER in OTLP
# What the saga of a confirmed order runs, and which service each activity calls.
ACTIVITY_SERVICE = {
    "create_order": "orders",
    "validate_user": "users",
    "reserve_stock": "inventory",
    "authorize_payment": "payments",
    "capture_payment": "payments",
    "commit_stock": "inventory",
    "confirm_order": "orders",
    "notify_customer": "notifications",
}


async def customer_through_gateway(api: httpx.AsyncClient) -> dict[str, str]:
    tag = uuid.uuid4().hex[:10]
    created = await api.post(
        "/users",
        json={
            "email": f"t{tag}@example.com",
            "username": f"t{tag}",
            "password": PASSWORD,
            "profile": {"first_name": "Trace", "last_name": tag},
        },
    )
    assert created.status_code == 201, created.text
    login = await api.post("/auth/token", data={"username": f"t{tag}", "password": PASSWORD})
    assert login.status_code == 200, login.text
    return {"Authorization": f"Bearer {login.json()['access_token']}"}


def _below(span: ReceivedSpan, ancestors: set[str], spans: list[ReceivedSpan]) -> bool:
    parents = {s.span_id: s.parent_span_id for s in spans}
    current = span.parent_span_id
    while current:
        if current in ancestors:
            return True
        current = parents.get(current, "")
    return False


def _complete(spans: list[ReceivedSpan]) -> bool:
    names = {span.name for span in spans}
    activities = all(f"RunActivity:{name}" in names for name in ACTIVITY_SERVICE)
    # The notifications service answers the last activity; its server span closes the picture.
    notified = any(s.service == "notifications" and s.kind == SERVER for s in spans)
    return activities and "RunWorkflow:OrderWorkflow" in names and notified


async def test_one_order_is_one_trace_across_every_process(
    observed: ObservedStack, api: httpx.AsyncClient, driver: Driver
) -> None:
    auth = await customer_through_gateway(api)
    card = await api.post(
        "/payment-methods",
        json={"card_number": OK_CARD, "exp_month": 12, "exp_year": 2035, "cvc": "123"},
        headers=auth,
    )
    assert card.status_code == 201, card.text
    product_id = await driver.product(stock=5, price_cents=700)

    placed = await api.post(
        "/orders",
        json={"items": [{"product_id": product_id, "quantity": 1}], "payment_method_id": card.json()["id"]},
        headers=auth,
    )
    assert placed.status_code == 202, placed.text
    order_id = placed.json()["id"]
    view = await driver.wait_saga(
        order_id, lambda v: v["status"] in FINAL_SAGA_STATES and v["steps"][-1]["status"] == "done"
    )
    assert view["order_status"] == "CONFIRMED", view
    trace_id = view["trace_id"]
    assert trace_id and len(trace_id) == 32, view

    spans = observed.receiver.wait_trace(trace_id, _complete)
    by_name: dict[str, list[ReceivedSpan]] = {}
    for span in spans:
        by_name.setdefault(span.name, []).append(span)
    summary: Any = sorted({(s.service, s.name) for s in spans})

    # The request's path: the gateway's server span is the root, the orders service continues it.
    roots = [s for s in spans if not s.parent_span_id]
    assert [(s.service, s.kind) for s in roots] == [("gateway", SERVER)], summary
    assert any(s.service == "orders" and s.name == "POST /orders" for s in spans), summary
    assert by_name.get("StartWorkflow:OrderWorkflow"), summary
    assert by_name.get("RunWorkflow:OrderWorkflow"), summary
    for activity, service in ACTIVITY_SERVICE.items():
        runs = by_name.get(f"RunActivity:{activity}", [])
        assert runs, (activity, summary)
        # Each activity's HTTP call arrives at its service as a server span below the activity.
        run_ids = {run.span_id for run in runs}
        served = [s for s in spans if s.service == service and s.kind == SERVER and _below(s, run_ids, spans)]
        assert served, (activity, service, summary)
    # Every data service also traced its database statements in the same trace.
    for service in ("users", "inventory", "payments", "orders", "notifications"):
        statements = [s for s in spans if s.service == service and s.scope.endswith(".sqlalchemy")]
        assert statements, (service, summary)
    # The typed order activities, once each; the one order_command of older sagas is not run.
    typed = [len(by_name.get(f"RunActivity:{name}", [])) for name in ("create_order", "confirm_order")]
    assert typed == [1, 1], summary
    assert not by_name.get("RunActivity:order_command"), summary

    # The card number went through the gateway and the payments service in this trace, and into
    # no span: not an attribute, not a URL, not a SQL statement, in no process's export.
    exports = observed.receiver.exported()
    assert exports and not any(OK_CARD.encode() in export for export in exports)

    # The customer sees the same trace id in the saga view through the gateway.
    mine = await api.get(f"/orders/{order_id}/saga", headers=auth)
    assert mine.json()["trace_id"] == trace_id

    # Log lines carry it too: the access lines of the gateway and the orders service, and the worker's.
    for process in ("gateway", "orders", "payments"):
        lines = [json.loads(line) for line in _log_lines(observed, process)]
        assert any(line.get("trace_id") == trace_id for line in lines), process
    # The worker's activity lines, from the SDK's adapter: JSON, with the saga's ids bound.
    worker = [json.loads(line) for line in _log_lines(observed, "worker")]
    charged = [
        line
        for line in worker
        if line.get("activity") == "authorize_payment" and line.get("order_id") == order_id
    ]
    assert charged, worker[-5:]
    assert all(
        line["trace_id"] == trace_id and line["workflow_id"] == view["workflow_id"] for line in charged
    )
    ended = [
        line for line in worker if line.get("event") == "saga_ended" and line.get("order_id") == order_id
    ]
    assert len(ended) == 1 and ended[0]["order_status"] == "CONFIRMED", ended


def _log_lines(observed: ObservedStack, process: str) -> list[str]:
    text = (observed.stack.directory / f"{process}.log").read_text(errors="replace")
    return [line for line in text.splitlines() if line.startswith("{")]
