"""activities/http.py: how a service's answer becomes a retryable or final error for the saga.

The services are httpx transports answering as the real ones do (problem+json with a code); what is
under test is only the mapping from status and code to the error Temporal's retry policy sees.
"""

from __future__ import annotations

from collections.abc import Callable

import httpx
import pytest
from temporalio.exceptions import ApplicationError

from activities.http import ServiceCaller, saga_key

Handler = Callable[[httpx.Request], httpx.Response]


def problem(status: int, code: str) -> Handler:
    return lambda request: httpx.Response(status, json={"code": code, "detail": f"{code} detail"})


async def call(handler: Handler, *, base_url: str = "http://svc", **options: object) -> httpx.Response:
    async with httpx.AsyncClient(transport=httpx.MockTransport(handler)) as client:
        caller = ServiceCaller(client, base_url, "internal-token")
        return await caller.call("POST", "/things", json={}, **options)  # type: ignore[arg-type]


async def error_of(handler: Handler, **options: object) -> ApplicationError:
    with pytest.raises(ApplicationError) as caught:
        await call(handler, **options)
    return caught.value


async def test_a_known_refusal_is_final_and_typed_with_the_cancel_reason() -> None:
    err = await error_of(problem(409, "out_of_stock"), refusals={"out_of_stock": "out_of_stock"})
    assert (err.type, err.non_retryable) == ("out_of_stock", True)
    assert err.details == ({"attempt": 1},)
    assert "409 out_of_stock" in err.message


async def test_a_known_refusal_maps_to_its_reason_not_its_code() -> None:
    err = await error_of(problem(422, "duplicate_product"), refusals={"duplicate_product": "invalid_item"})
    assert (err.type, err.non_retryable) == ("invalid_item", True)


@pytest.mark.parametrize(
    ("status", "code"),
    [
        (500, "internal"),
        (503, "unknown"),
        (429, "rate_limited"),
        (408, "timeout"),
        (409, "version_conflict"),
        (409, "charge_in_progress"),
        (502, "provider_unavailable"),
    ],
)
async def test_outages_and_transient_conflicts_are_retryable(status: int, code: str) -> None:
    err = await error_of(problem(status, code))
    assert (err.type, err.non_retryable) == ("upstream_unavailable", False)


async def test_an_unknown_refusal_is_final_unless_the_call_must_succeed() -> None:
    final = await error_of(problem(422, "odd_request"))
    assert (final.type, final.non_retryable) == ("upstream_rejected", True)
    retried = await error_of(problem(422, "odd_request"), must_succeed=True)
    assert (retried.type, retried.non_retryable) == ("upstream_rejected", False)


async def test_a_body_that_is_not_json_is_still_an_error_with_its_status() -> None:
    err = await error_of(lambda request: httpx.Response(503, text="<html>bad gateway</html>"))
    assert (err.type, err.non_retryable) == ("upstream_unavailable", False)
    assert "503 unknown" in err.message


async def test_a_refused_connection_is_a_retryable_transport_error() -> None:
    def refuse(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("connection refused", request=request)

    err = await error_of(refuse)
    assert (err.type, err.non_retryable) == ("transport_error", False)


async def test_a_refused_replica_is_skipped_for_the_next_address() -> None:
    seen: list[str] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request.url.host)
        if request.url.host == "down":
            raise httpx.ConnectError("connection refused", request=request)
        return httpx.Response(200, json={"ok": True})

    response = await call(handler, base_url="http://down,http://up")
    assert response.json() == {"ok": True}
    assert seen[-1] == "up"


async def test_a_success_carries_the_idempotency_key_and_the_service_identity() -> None:
    headers: list[httpx.Headers] = []

    def handler(request: httpx.Request) -> httpx.Response:
        headers.append(request.headers)
        return httpx.Response(201, json={})

    await call(handler, idempotency_key=saga_key("42", "reserve_stock"))
    assert headers[0]["Idempotency-Key"] == "order-42:reserve_stock"
    assert any("internal-token" in value for value in headers[0].values())
