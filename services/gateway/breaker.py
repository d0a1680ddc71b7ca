"""One circuit breaker per upstream and route group (purgatory), its state exported as a gauge.

Keyed by (upstream, group) rather than by upstream alone: the orders service's saga views failing
(Temporal is down, say) must not refuse the placing of orders, which does not wait on that.
The groups are the route table's (routes.py).

A failure is what says the upstream itself is in trouble: a 5xx answer, a timeout or a connection
error. A 4xx is the caller's problem and counts as a success, and so does a shed request (503 with
`Retry-After`): the service is up and deliberately asking the client back later, and opening the
circuit on it would refuse all the calls it still takes. After `threshold` consecutive failures
the breaker opens and calls are refused at once (503 + `Retry-After`) for the cool-down; then it is
half-open, and the next call decides: success closes it, failure opens it again.
"""

from __future__ import annotations

import math
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import aiohttp
from prometheus_client import Gauge
from purgatory import AsyncCircuitBreakerFactory
from purgatory.domain.model import OpenedState

STATE_VALUES = {"closed": 0, "half-opened": 1, "opened": 2}

BREAKER_STATE = Gauge(
    "gateway_circuit_breaker_state",
    "Circuit breaker state per upstream and route group: 0 closed, 1 half-open, 2 open.",
    ["upstream", "group"],
)


class UpstreamFailure(Exception):
    """Raised inside the breaker for an answer that counts as a failure (5xx)."""

    def __init__(self, status: int, response: aiohttp.ClientResponse) -> None:
        super().__init__(f"upstream answered {status}")
        self.status = status
        self.response = response  # still open: relayed to the client or closed before a retry


COUNTED_FAILURES: tuple[type[BaseException], ...] = (UpstreamFailure, aiohttp.ClientError, TimeoutError)


class BreakerOpen(Exception):
    def __init__(self, upstream: str, retry_after: int) -> None:
        super().__init__(f"circuit of {upstream} is open")
        self.upstream = upstream
        self.retry_after = retry_after


def circuit_name(upstream: str, group: str) -> str:
    return f"{upstream}/{group}"


class Breakers:
    def __init__(self, groups: list[tuple[str, str]], *, threshold: int, cooldown_seconds: float) -> None:
        self.cooldown = cooldown_seconds
        # Only what says "the upstream is in trouble" counts; a client that hangs up (CancelledError)
        # or a bug in the gateway must not open the circuit.
        self.factory = AsyncCircuitBreakerFactory(
            default_threshold=threshold,
            default_ttl=cooldown_seconds,
            exclude=[(BaseException, lambda exc: not isinstance(exc, COUNTED_FAILURES))],
        )
        self.factory.add_listener(self._on_event)
        self.groups = {circuit_name(upstream, group): (upstream, group) for upstream, group in groups}
        for upstream, group in groups:
            BREAKER_STATE.labels(upstream=upstream, group=group).set(0)

    def _on_event(self, name: str, event_name: str, event: Any) -> None:
        if event_name == "state_changed" and name in self.groups:
            upstream, group = self.groups[name]
            BREAKER_STATE.labels(upstream=upstream, group=group).set(STATE_VALUES.get(event.state, 0))

    async def states(self) -> dict[str, dict[str, str]]:
        """Every breaker's state, by upstream, then group."""
        states: dict[str, dict[str, str]] = {}
        for upstream, group in self.groups.values():
            states.setdefault(upstream, {})[group] = await self.state(upstream, group)
        return states

    async def state(self, upstream: str, group: str) -> str:
        breaker = await self.factory.get_breaker(circuit_name(upstream, group))
        context = breaker.context
        if context.state == "opened" and time.time() > (context.opened_at or 0) + context.ttl:
            return "half-opened"  # purgatory moves on the next call; report what that call would see
        return context.state

    @asynccontextmanager
    async def guard(self, upstream: str, group: str) -> AsyncIterator[None]:
        """Run one attempt under the breaker of the upstream's route group; BreakerOpen if it is open."""
        breaker = await self.factory.get_breaker(circuit_name(upstream, group))
        try:
            async with breaker:
                yield
        except OpenedState as opened:
            remaining = opened.opened_at + breaker.context.ttl - time.time()
            raise BreakerOpen(upstream, max(1, math.ceil(remaining))) from None
