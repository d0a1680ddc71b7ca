"""The saga-facing routes through stand-in SagaPorts: the retry of failed compensations, the saga view."""

from __future__ import annotations

import uuid
from typing import Any

import httpx
import pytest
from temporalio.client import WorkflowUpdateFailedError
from temporalio.exceptions import ApplicationError
from temporalio.service import RPCError, RPCStatusCode

from services.kit.errors import Problem
from services.kit.identity import Identity
from services.orders.saga import NoSaga
from services.orders.saga_routes import SagaViewOut
from services.orders.temporal_saga import TemporalSaga, not_started_view
from tests.services.orders.conftest import UpdatingSaga, get_order, order_in_status, place_ok
from tests.support.identity import as_admin, as_customer, as_service
from workflows.payloads import STEP_NAMES, RetryCompensations


def _retry_path(order_id: str | uuid.UUID) -> str:
    return f"/orders/{order_id}/compensations/retry"


async def test_an_admin_retries_the_failed_compensations(orders: httpx.AsyncClient) -> None:
    saga = UpdatingSaga()
    orders.app.state.saga = saga  # type: ignore[attr-defined]
    order_id = await order_in_status(orders, "CANCELLED")
    admin = uuid.uuid4()

    response = await orders.post(_retry_path(order_id), headers=as_admin(admin))
    assert response.status_code == 202, response.text
    assert response.json() == await get_order(orders, order_id)
    assert saga.updates == [("retry_compensations", uuid.UUID(order_id), Identity("admin", admin))]


async def test_only_an_admin_may_retry_compensations(orders: httpx.AsyncClient) -> None:
    saga = UpdatingSaga()
    orders.app.state.saga = saga  # type: ignore[attr-defined]
    owner = uuid.uuid4()
    order_id = await place_ok(orders, owner)

    for headers, status, code in (
        (as_customer(owner), 403, "forbidden"),
        (as_customer(uuid.uuid4()), 403, "forbidden"),
        ({}, 401, "unauthenticated"),
    ):
        response = await orders.post(_retry_path(order_id), headers=headers)
        assert (response.status_code, response.json()["code"]) == (status, code), response.text
        assert response.headers["content-type"] == "application/problem+json"
    assert saga.updates == []


async def test_retrying_compensations_of_an_unknown_order_is_404(orders: httpx.AsyncClient) -> None:
    saga = UpdatingSaga()
    orders.app.state.saga = saga  # type: ignore[attr-defined]
    response = await orders.post(_retry_path(uuid.uuid4()), headers=as_admin())
    assert (response.status_code, response.json()["code"]) == (404, "order_not_found")
    assert (await orders.post(_retry_path("not-a-uuid"), headers=as_admin())).status_code == 422
    assert saga.updates == []


async def test_a_refused_retry_is_409_and_changes_nothing(orders: httpx.AsyncClient) -> None:
    saga = UpdatingSaga(refuse="No compensation of this saga has failed.")
    orders.app.state.saga = saga  # type: ignore[attr-defined]
    order_id = await order_in_status(orders, "CONFIRMED")
    before = await get_order(orders, order_id)

    response = await orders.post(_retry_path(order_id), headers=as_admin())
    assert response.status_code == 409, response.text
    assert response.json()["code"] == "illegal_transition"
    assert "No compensation" in response.json()["detail"]
    assert len(saga.updates) == 1
    assert await get_order(orders, order_id) == before


async def test_without_a_saga_engine_a_retry_is_503(orders: httpx.AsyncClient) -> None:
    order_id = await place_ok(orders, uuid.uuid4())  # the default port: NoSaga
    response = await orders.post(_retry_path(order_id), headers=as_admin())
    assert (response.status_code, response.json()["code"]) == (503, "saga_unavailable")
    with pytest.raises(Problem) as raised:
        await NoSaga().retry_compensations(uuid.UUID(order_id), Identity("admin", uuid.uuid4()))
    assert (raised.value.status, raised.value.code) == (503, "saga_unavailable")


async def test_the_saga_view_has_the_workflows_steps(orders: httpx.AsyncClient) -> None:
    owner = uuid.uuid4()
    order_id = await place_ok(orders, owner)
    orders.app.state.saga = UpdatingSaga(view=not_started_view(uuid.UUID(order_id)))  # type: ignore[attr-defined]

    for headers in (as_customer(owner), as_admin(), as_service()):
        response = await orders.get(f"/orders/{order_id}/saga", headers=headers)
        assert response.status_code == 200, response.text
        view = response.json()
        assert (view["order_id"], view["workflow_id"]) == (order_id, f"order-{order_id}")
        assert [step["name"] for step in view["steps"]] == list(STEP_NAMES)
        assert {step["status"] for step in view["steps"]} == {"pending"}
    response = await orders.get(f"/orders/{order_id}/saga", headers=as_customer(uuid.uuid4()))
    assert response.status_code == 404


def test_the_saga_view_takes_any_step_name() -> None:
    # A saga started before a change of its steps still answers its query with its own step names.
    view = not_started_view(uuid.uuid4())
    assert [step["name"] for step in view["steps"]] == list(STEP_NAMES)
    view["steps"].append({**view["steps"][0], "name": "a_step_of_an_older_saga", "status": "done"})
    view["status"] = "compensation_failed"
    parsed = SagaViewOut.model_validate(view)
    assert [step.name for step in parsed.steps] == [*STEP_NAMES, "a_step_of_an_older_saga"]


class _Handle:
    def __init__(self, client: _Client, workflow_id: str) -> None:
        self.client, self.workflow_id = client, workflow_id

    async def execute_update(self, name: str, argument: Any, **_options: Any) -> None:
        self.client.updates.append((self.workflow_id, name, argument))
        if self.client.error is not None:
            raise self.client.error


class _Client:
    """Just enough of temporalio's Client for TemporalSaga's updates."""

    def __init__(self, error: BaseException | None = None) -> None:
        self.error = error
        self.updates: list[tuple[str, str, Any]] = []

    def get_workflow_handle(self, workflow_id: str) -> _Handle:
        return _Handle(self, workflow_id)


def _temporal_saga(client: _Client) -> TemporalSaga:
    saga = TemporalSaga()
    saga._client = client  # type: ignore[assignment]  # connected already: no Temporal server needed
    return saga


async def test_temporal_saga_retries_compensations_through_a_workflow_update() -> None:
    client = _Client()
    order_id, admin = uuid.uuid4(), uuid.uuid4()
    await _temporal_saga(client).retry_compensations(order_id, Identity("admin", admin))
    assert client.updates == [
        (f"order-{order_id}", "retry_compensations", RetryCompensations(requested_by=str(admin)))
    ]


@pytest.mark.parametrize(
    ("error", "status", "code"),
    [
        (WorkflowUpdateFailedError(ApplicationError("Nothing to retry.")), 409, "illegal_transition"),
        (
            RPCError("workflow execution already completed", RPCStatusCode.NOT_FOUND, b""),
            409,
            "illegal_transition",
        ),
        (RPCError("closed", RPCStatusCode.FAILED_PRECONDITION, b""), 409, "illegal_transition"),
        (RPCError("down", RPCStatusCode.UNAVAILABLE, b""), 503, "saga_unavailable"),
    ],
    ids=["refused", "not-found", "closed", "unavailable"],
)
async def test_temporal_saga_maps_a_failed_retry(error: BaseException, status: int, code: str) -> None:
    saga = _temporal_saga(_Client(error))
    with pytest.raises(Problem) as raised:
        await saga.retry_compensations(uuid.uuid4(), Identity("service"))
    assert (raised.value.status, raised.value.code) == (status, code)
    if isinstance(error, WorkflowUpdateFailedError):
        assert raised.value.detail == "Nothing to retry."
