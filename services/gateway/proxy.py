"""Forwarding one request to its upstream: headers, retries, timeouts, the breaker, streaming.

- One pooled `httpx.AsyncClient` for the process. Response bodies are streamed back as they arrive;
  request bodies are streamed too, except when the call may be retried (then the body, at most the
  1 MiB the gateway accepts, is kept so that it can be sent again).
- Retries: only idempotent methods (GET, HEAD, OPTIONS, PUT, DELETE), and POST only with an
  `Idempotency-Key`, which makes a repeat harmless upstream. A connection error and a 502/503/504
  answer are retried with a short backoff. A timeout is not: the upstream is slow, and a retry
  would double both the wait and its load; the caller gets 504 within the upstream's timeout.
- Each attempt runs under the upstream's circuit breaker (see breaker.py).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterable
from urllib.parse import quote

import httpx
import structlog
from prometheus_client import Counter, Histogram
from starlette.background import BackgroundTask
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse

from services.gateway.breaker import BreakerOpen, Breakers, UpstreamFailure
from services.gateway.routes import PublicRoute
from services.gateway.settings import Upstream
from services.kit.errors import Problem
from services.kit.metrics import LATENCY_BUCKETS

log = structlog.get_logger(__name__)

UPSTREAM_REQUESTS = Counter(
    "gateway_upstream_requests_total",
    "Calls the gateway answered per upstream and public route; status is the answer the client got.",
    ["upstream", "method", "route", "status"],
)
UPSTREAM_DURATION = Histogram(
    "gateway_upstream_request_duration_seconds",
    "Time until the upstream's response headers (or the gateway's own error), retries included.",
    ["upstream", "method", "route"],
    buckets=LATENCY_BUCKETS,
)
UPSTREAM_ATTEMPT_ERRORS = Counter(
    "gateway_upstream_attempt_errors_total",
    "Failed attempts per upstream, by kind (timeout, connect, status_5xx, breaker_open).",
    ["upstream", "kind"],
)

# RFC 9110 7.6.1: connection-specific fields never cross a proxy.
HOP_BY_HOP = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-authenticate",
        "proxy-authorization",
        "proxy-connection",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
    }
)
# Set by the gateway itself, so a client's copy is dropped rather than trusted or forwarded.
_REQUEST_DROP = frozenset({"host", "authorization", "forwarded", "x-request-id", "expect"})
_RESPONSE_DROP = frozenset({"date", "server", "x-request-id"})
IDEMPOTENT_METHODS = frozenset({"GET", "HEAD", "OPTIONS", "PUT", "DELETE"})
RETRIED_STATUSES = frozenset({502, 503, 504})
SMALL_BODY_BYTES = 64 * 1024


def _connection_tokens(headers: Iterable[tuple[bytes, bytes]]) -> set[bytes]:
    """Header names listed in `Connection` are hop-by-hop for this message too."""
    tokens: set[bytes] = set()
    for name, value in headers:
        if name.lower() == b"connection":
            tokens.update(token.strip().lower() for token in value.split(b",") if token.strip())
    return tokens


def request_headers(request: Request, extra: dict[str, str]) -> list[tuple[bytes, bytes]]:
    raw = request.headers.raw
    drop = _connection_tokens(raw)
    kept = [
        (name, value)
        for name, value in raw
        if (lower := name.lower().decode("latin-1")) not in HOP_BY_HOP
        and lower not in _REQUEST_DROP
        and not lower.startswith(("x-ordersaga-", "x-forwarded-"))
        and name.lower() not in drop
    ]
    return kept + [(k.encode("latin-1"), v.encode("latin-1")) for k, v in extra.items()]


def response_headers(raw: Iterable[tuple[bytes, bytes]]) -> list[tuple[bytes, bytes]]:
    raw = list(raw)
    drop = _connection_tokens(raw)
    return [
        (name, value)
        for name, value in raw
        if (lower := name.lower()).decode("latin-1") not in HOP_BY_HOP
        and lower.decode("latin-1") not in _RESPONSE_DROP
        and lower not in drop
    ]


def forwarded_headers(request: Request) -> dict[str, str]:
    """The gateway is the edge: it states what it saw instead of extending a client-supplied chain."""
    client = request.client.host if request.client else ""
    headers = {
        "x-forwarded-for": client,
        "x-forwarded-proto": request.url.scheme,
        "x-request-id": str(request.scope.get("state", {}).get("request_id", "")),
    }
    host = request.headers.get("host")
    if host:
        headers["x-forwarded-host"] = host
    return headers


def upstream_path(route: PublicRoute, params: dict[str, str]) -> str:
    for value in params.values():
        if value in (".", ".."):  # would be normalised away into another path upstream
            raise Problem(404, "not_found", "No such route.")
    return route.path.format(**{name: quote(value, safe="") for name, value in params.items()})


class Proxy:
    def __init__(self, client: httpx.AsyncClient, breakers: Breakers, backoff_seconds: float) -> None:
        self.client = client
        self.breakers = breakers
        self.backoff = backoff_seconds

    async def forward(
        self,
        request: Request,
        route: PublicRoute,
        upstream: Upstream,
        params: dict[str, str],
        extra_headers: dict[str, str],
    ) -> Response:
        started = time.perf_counter()
        status = 500
        try:
            response = await self._forward(request, route, upstream, params, extra_headers)
            status = response.status_code
            return response
        except Problem as problem:
            status = problem.status
            raise
        finally:
            labels = {"upstream": upstream.name, "method": request.method, "route": route.public_path}
            UPSTREAM_REQUESTS.labels(**labels, status=str(status)).inc()
            UPSTREAM_DURATION.labels(**labels).observe(time.perf_counter() - started)

    async def _forward(
        self,
        request: Request,
        route: PublicRoute,
        upstream: Upstream,
        params: dict[str, str],
        extra_headers: dict[str, str],
    ) -> Response:
        url = upstream.url + upstream_path(route, params)
        query = request.scope.get("query_string", b"")
        if query:
            url += "?" + query.decode("latin-1")
        headers = request_headers(request, extra_headers)
        method = request.method
        retriable = method in IDEMPOTENT_METHODS or (
            method == "POST" and "idempotency-key" in request.headers
        )
        has_body = method in ("POST", "PUT", "PATCH", "DELETE")
        if not has_body:
            # A body sent with a GET is not forwarded, so neither is its length: a Content-Length
            # with no bytes behind it would break the upstream request (a 500 before this).
            headers = [(name, value) for name, value in headers if name.lower() != b"content-length"]
        if has_body and retriable:
            content: bytes | None = await request.body()
        else:
            content = None
        attempts = 1 + (upstream.retries if retriable else 0)
        for attempt in range(1, attempts + 1):
            last = attempt == attempts
            body = content if content is not None or not has_body else request.stream()
            outgoing = self.client.build_request(method, url, headers=headers, content=body)
            outgoing.extensions["timeout"] = httpx.Timeout(upstream.timeout).as_dict()
            try:
                async with self.breakers.guard(upstream.name):
                    # The whole wait for the answer's head, not each socket read, is bounded.
                    async with asyncio.timeout(upstream.timeout):
                        answer = await self.client.send(outgoing, stream=True)
                    if answer.status_code >= 500:
                        raise UpstreamFailure(answer.status_code, answer)
            except BreakerOpen as opened:
                UPSTREAM_ATTEMPT_ERRORS.labels(upstream=upstream.name, kind="breaker_open").inc()
                raise Problem(
                    503,
                    "upstream_unavailable",
                    f"The {upstream.name} service is unavailable; try again later.",
                    headers={"Retry-After": str(opened.retry_after)},
                ) from None
            except (TimeoutError, httpx.TimeoutException):
                UPSTREAM_ATTEMPT_ERRORS.labels(upstream=upstream.name, kind="timeout").inc()
                log.warning("upstream_timeout", upstream=upstream.name, url=url, attempt=attempt)
                raise Problem(
                    504, "upstream_timeout", f"The {upstream.name} service did not answer in time."
                ) from None
            except httpx.TransportError as exc:
                UPSTREAM_ATTEMPT_ERRORS.labels(upstream=upstream.name, kind="connect").inc()
                log.warning("upstream_unreachable", upstream=upstream.name, error=repr(exc), attempt=attempt)
                if last:
                    raise Problem(
                        502, "upstream_unreachable", f"The {upstream.name} service cannot be reached."
                    ) from None
            except UpstreamFailure as failure:
                UPSTREAM_ATTEMPT_ERRORS.labels(upstream=upstream.name, kind="status_5xx").inc()
                if last or failure.status not in RETRIED_STATUSES:
                    return self._relay(failure.response)
                await failure.response.aclose()
            else:
                return await self._relay_small(answer)
            await asyncio.sleep(self.backoff * 2 ** (attempt - 1))
        raise AssertionError("unreachable: the last attempt returns or raises")

    async def _relay_small(self, answer: httpx.Response) -> Response:
        """A small answer of known size is read whole: one send instead of a streamed series."""
        declared = answer.headers.get("content-length", "")
        if not declared.isdigit() or int(declared) > SMALL_BODY_BYTES:
            return self._relay(answer)
        try:
            body = await answer.aread()
        finally:
            await answer.aclose()
        relayed = Response(body, status_code=answer.status_code)
        relayed.raw_headers = response_headers(answer.headers.raw)
        return relayed

    @staticmethod
    def _relay(answer: httpx.Response) -> Response:
        relayed = StreamingResponse(
            answer.aiter_raw(), status_code=answer.status_code, background=BackgroundTask(answer.aclose)
        )
        relayed.raw_headers = response_headers(answer.headers.raw)
        return relayed
