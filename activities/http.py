"""Translate a service's HTTP answers into what Temporal's retry policy understands.

A business refusal (4xx with a known problem code) becomes a non-retryable ApplicationError whose
type is the saga's cancel reason. A 5xx, a 429, a timeout or a connection error is raised as a
retryable error, so the retry policy of the step owns the retries; no loop here retries by hand.

The pivot and the compensations call with `must_succeed`: any refusal is retried too (their policy
retries without limit, and the saga view shows the attempts and the last error), because giving up
there would strand a charge or units of stock. An operator fixes the cause; the saga then finishes.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import httpx
from temporalio import activity
from temporalio.exceptions import ApplicationError

from services.kit.identity import identity_headers
from services.kit.transport import Addresses, first_reachable
from workflows.contract import workflow_id_for

# Conflicts that go away on their own: a concurrent writer, a charge still in flight.
TRANSIENT_CODES = frozenset({"version_conflict", "charge_in_progress", "provider_unavailable"})


def current_attempt() -> int:
    return activity.info().attempt if activity.in_activity() else 1


def saga_key(order_id: str, step: str) -> str:
    """The idempotency key of one saga step: `order-<order id>:<step>`.

    Derived from the order's saga workflow id and the step, so every retry, replay or reset of the
    saga, and the repair workflow of a terminated one, uses the same key.
    """
    return f"{workflow_id_for(order_id)}:{step}"


class ServiceCaller:
    def __init__(self, client: httpx.AsyncClient, base_url: str, internal_token: str) -> None:
        self._client = client
        # One address, or several comma-separated (replicas): spread, and a refused one skipped.
        self._addresses = Addresses.parse(base_url)
        self._headers = identity_headers(internal_token, "service")

    @property
    def http_client(self) -> httpx.AsyncClient:
        """The shared connection pool, for a caller of another service built from this one."""
        return self._client

    async def call(
        self,
        method: str,
        path: str,
        *,
        json: Any = None,
        idempotency_key: str | None = None,
        refusals: Mapping[str, str] | None = None,
        must_succeed: bool = False,
    ) -> httpx.Response:
        headers = dict(self._headers)
        if idempotency_key:
            headers["Idempotency-Key"] = idempotency_key
        attempt = current_attempt()
        try:

            async def send(base_url: str) -> httpx.Response:
                try:
                    return await self._client.request(method, base_url + path, json=json, headers=headers)
                except httpx.ConnectError:
                    if len(self._addresses) > 1:  # the next replica is tried at once
                        _log("service_address_refused", method, path, address=base_url)
                    raise

            response = await first_reachable(self._addresses, send)
        except httpx.HTTPError as err:
            _log("service_call_failed", method, path, error=type(err).__name__)
            raise ApplicationError(
                f"{method} {path}: {type(err).__name__}: {err}", {"attempt": attempt}, type="transport_error"
            ) from err
        if response.is_success:
            _log("service_call", method, path, status=response.status_code)
            return response
        code, detail = _problem(response)
        _log("service_call_refused", method, path, status=response.status_code, code=code)
        message = f"{method} {path} → {response.status_code} {code}: {detail}"
        if refusals and code in refusals:
            raise ApplicationError(message, {"attempt": attempt}, type=refusals[code], non_retryable=True)
        if response.status_code >= 500 or response.status_code in (408, 429) or code in TRANSIENT_CODES:
            raise ApplicationError(message, {"attempt": attempt}, type="upstream_unavailable")
        raise ApplicationError(
            message, {"attempt": attempt}, type="upstream_rejected", non_retryable=not must_succeed
        )


def _log(event: str, method: str, path: str, **fields: Any) -> None:
    # The SDK's adapter adds the workflow id and activity type (lifted into JSON by the kit's logging).
    if activity.in_activity():
        activity.logger.info(event, extra={"method": method, "path": path, **fields})


def _problem(response: httpx.Response) -> tuple[str, str]:
    try:
        body = response.json()
    except ValueError:
        return "unknown", response.text[:200]
    if isinstance(body, dict):
        return str(body.get("code", "unknown")), str(body.get("detail", ""))[:300]
    return "unknown", ""
