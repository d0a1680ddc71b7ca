"""One circuit breaker per upstream (purgatory), with its state exported as a Prometheus gauge.

A failure is what says the upstream itself is in trouble: a 5xx answer, a timeout or a connection
error. A 4xx is the caller's problem and counts as a success. After `threshold` consecutive failures
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
    "Circuit breaker state per upstream: 0 closed, 1 half-open, 2 open.",
    ["upstream"],
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


class Breakers:
    def __init__(self, upstreams: list[str], *, threshold: int, cooldown_seconds: float) -> None:
        self.cooldown = cooldown_seconds
        # Only what says "the upstream is in trouble" counts; a client that hangs up (CancelledError)
        # or a bug in the gateway must not open the circuit.
        self.factory = AsyncCircuitBreakerFactory(
            default_threshold=threshold,
            default_ttl=cooldown_seconds,
            exclude=[(BaseException, lambda exc: not isinstance(exc, COUNTED_FAILURES))],
        )
        self.factory.add_listener(self._on_event)
        for name in upstreams:
            BREAKER_STATE.labels(upstream=name).set(0)

    def _on_event(self, name: str, event_name: str, event: Any) -> None:
        if event_name == "state_changed":
            BREAKER_STATE.labels(upstream=name).set(STATE_VALUES.get(event.state, 0))

    async def state(self, upstream: str) -> str:
        breaker = await self.factory.get_breaker(upstream)
        context = breaker.context
        if context.state == "opened" and time.time() > (context.opened_at or 0) + context.ttl:
            return "half-opened"  # purgatory moves on the next call; report what that call would see
        return context.state

    @asynccontextmanager
    async def guard(self, upstream: str) -> AsyncIterator[None]:
        """Run one attempt under the upstream's breaker; raise BreakerOpen if it is open."""
        breaker = await self.factory.get_breaker(upstream)
        try:
            async with breaker:
                yield
        except OpenedState as opened:
            remaining = opened.opened_at + breaker.context.ttl - time.time()
            raise BreakerOpen(upstream, max(1, math.ceil(remaining))) from None
