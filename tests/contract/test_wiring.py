"""The worker's and the gateway's links come from services/registry.py, and the worker registers
every activity of its service → activity-class table, spreading each link over all its addresses."""

from __future__ import annotations

import httpx
from temporalio import activity

from services.gateway.settings import UPSTREAMS
from services.gateway.settings import Settings as GatewaySettings
from services.registry import DATA_SERVICES, SERVICES
from tests.workflows.standins import StandIns
from workers.main import SERVICE_ACTIVITIES, build_activities
from workers.settings import WorkerSettings
from workflows.contract import REVIEW_THRESHOLD_CENTS, ChargeRequest


def names(methods: object) -> set[str]:
    return {activity._Definition.must_from_callable(m).name for m in methods}  # type: ignore[attr-defined]


def test_every_link_defaults_to_the_registrys_address() -> None:
    worker, gateway = WorkerSettings(), GatewaySettings()
    assert set(UPSTREAMS) == set(DATA_SERVICES) == set(SERVICE_ACTIVITIES)
    for name in DATA_SERVICES:
        assert worker.url_of(name) == SERVICES[name].url
        assert getattr(gateway, f"{name}_url") == SERVICES[name].url
        assert gateway.upstream(name).url == SERVICES[name].url


def test_the_worker_registers_every_activity_the_saga_calls() -> None:
    registered = names(build_activities(None, httpx.AsyncClient(), WorkerSettings()))  # type: ignore[arg-type]
    # The workflow tests' stand-ins answer every name OrderWorkflow may call (tests/workflows).
    assert names(StandIns().activities()) <= registered
    assert {"find_stranded_orders", "saga_facts"} <= registered, "the reconciler's"


async def test_the_link_to_payments_spreads_over_every_replica() -> None:
    hosts: list[str] = []

    def payments(request: httpx.Request) -> httpx.Response:
        hosts.append(request.url.host)
        return httpx.Response(201, json={"id": "p1", "amount_cents": 100, "currency": "EUR"})

    settings = WorkerSettings(payments_url="http://payments-a:8003,http://payments-b:8003")
    async with httpx.AsyncClient(transport=httpx.MockTransport(payments)) as http:
        activities = {
            activity._Definition.must_from_callable(m).name: m  # type: ignore[attr-defined]
            for m in build_activities(None, http, settings)  # type: ignore[arg-type]
        }
        request = ChargeRequest("o1", "u1", "pm1", 100, "EUR")
        for _ in range(4):
            await activities["authorize_payment"](request)
    assert sorted(set(hosts)) == ["payments-a", "payments-b"]
    assert hosts.count("payments-a") == 2


def test_the_saga_policy_is_the_workers_settings_of_the_same_names() -> None:
    settings = WorkerSettings(review_threshold_cents=5, compensation_budget_seconds=7, local_activities=False)
    policy = settings.saga_policy()
    assert (policy.review_threshold_cents, policy.compensation_budget_seconds) == (5, 7)
    assert policy.local_activities is False
    assert WorkerSettings().saga_policy().review_threshold_cents == REVIEW_THRESHOLD_CENTS
