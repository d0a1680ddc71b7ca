"""schemathesis against the OpenAPI of every service and of the gateway, on the running stack.

Each operation gets valid (positive) and invalid (negative) generated requests, sent in turn as an
admin, a customer and the saga, so that the handlers behind authentication are reached too.
Checks: never a 5xx, and every response conforms to the schema its operation documents.
Failures are collected over all operations so one run shows every finding; the number of
generated cases is printed and has a floor.
"""

from __future__ import annotations

import itertools
import uuid
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field

import pytest
import requests
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from schemathesis import APIOperation, Case, GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.core.result import Err
from schemathesis.specs.openapi.checks import response_schema_conformance

from services.registry import DATA_SERVICES
from tests.gateway.conftest import RunningGateway, Tokens
from tests.support.identity import as_admin, as_customer, as_service
from tests.support.stack import Stack

pytestmark = [pytest.mark.slow, pytest.mark.temporal]

EXAMPLES_PER_MODE = 8  # per operation and generation mode: keeps the whole file well under 90 s
CHECKS = [not_a_server_error, response_schema_conformance]


@dataclass
class Tally:
    cases: int = 0
    operations: int = 0
    failures: list[str] = field(default_factory=list)
    statuses: Counter[int] = field(default_factory=Counter)


def fuzz(openapi_url: str, base_url: str, headers: Callable[[], dict[str, str]]) -> Tally:
    schema = schemathesis.openapi.from_url(openapi_url)
    tally = Tally()
    with requests.Session() as http:
        for result in schema.get_all_operations():
            if isinstance(result, Err):  # an operation schemathesis cannot even read is a finding
                tally.failures.append(f"unreadable operation: {result.err()}")
                continue
            tally.operations += 1
            recorded = len(tally.failures)
            try:
                fuzz_operation(result.ok(), tally, http, base_url, headers)
            except (Exception, BaseExceptionGroup):  # schemathesis' FailureGroup is a BaseExceptionGroup
                # hypothesis re-raises the (shrunk) failure, already recorded; anything else is a bug here.
                if len(tally.failures) == recorded:
                    raise
    statuses = dict(sorted(tally.statuses.items()))
    print(f"\nschemathesis {base_url}: {tally.operations} operations, {tally.cases} cases, {statuses=}")
    return tally


def fuzz_operation(
    operation: APIOperation,
    tally: Tally,
    http: requests.Session,
    base_url: str,
    headers: Callable[[], dict[str, str]],
) -> None:
    strategy = st.one_of(
        operation.as_strategy(GenerationMode.POSITIVE), operation.as_strategy(GenerationMode.NEGATIVE)
    )

    @settings(
        max_examples=2 * EXAMPLES_PER_MODE,
        deadline=None,
        database=None,
        derandomize=True,  # the same cases every run: a finding reproduces
        suppress_health_check=list(HealthCheck),
    )
    @given(case=strategy)
    def run(case: Case) -> None:
        tally.cases += 1
        response = case.call(base_url=base_url, session=http, headers=headers())
        tally.statuses[response.status_code] += 1
        try:
            case.validate_response(response, checks=CHECKS)
        except (Exception, BaseExceptionGroup) as exc:  # collected, reported together by the caller
            tally.failures.append(f"{operation.label}: {str(exc).strip()[:800]}")
            raise

    run()


def _report(tally: Tally) -> str:
    unique = list(dict.fromkeys(tally.failures))
    return f"{len(unique)} findings:\n" + "\n\n".join(unique[:20])


@pytest.mark.parametrize("service", DATA_SERVICES)
def test_service_api_never_5xx_and_conforms(stack: Stack, service: str) -> None:
    base = stack.url(service)
    # Each case goes as the next of three callers, so handlers behind every role are reached.
    callers = itertools.cycle([as_admin, lambda: as_customer(uuid.uuid4()), as_service])
    tally = fuzz(base + "/openapi.json", base, lambda: next(callers)())
    assert tally.operations >= 3
    assert tally.cases >= tally.operations * EXAMPLES_PER_MODE
    assert not tally.failures, _report(tally)


def test_gateway_api_never_5xx_and_conforms(gateway: RunningGateway, tokens: Tokens) -> None:
    callers = itertools.cycle([tokens.bearer("admin", uuid.uuid4()), tokens.bearer("customer", uuid.uuid4())])
    tally = fuzz(gateway.url + "/openapi.json", gateway.url, lambda: next(callers))
    assert tally.operations >= 20
    assert tally.cases >= tally.operations * EXAMPLES_PER_MODE
    assert not tally.failures, _report(tally)
