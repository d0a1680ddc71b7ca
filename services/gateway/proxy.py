"""Forwarding one request to its upstream: headers, retries, timeouts, the breaker, streaming.

- ASGI on the client's side and the process's connection pool (services/kit/transport.py) on the
  upstream's, with nothing in between: a proxy must not follow redirects, keep cookies, re-encode a
  URL or re-frame a body, which is most of what an HTTP client's request layer does. Going around
  httpx's client layer and FastAPI's routing, middleware and response objects took the gateway's
  CPU per proxied request from 2.2 to 1.25 ms (benchmarks/README.md, "Gateway overhead").
- Response bodies are relayed as they arrive; a small one of known size goes out in one piece.
  Request bodies are streamed too, except when the call may be retried (then the body, at most the
  1 MiB the gateway accepts, is kept so that it can be sent again).
- Retries: only idempotent methods (GET, HEAD, OPTIONS, PUT, DELETE), and POST only on a route
  whose service honours `Idempotency-Key` (routes.py; today only `POST /orders`) and only with the
  header: elsewhere the service would act twice (a second card saved, a second user registered).
  A connection error and a 502/503/504 answer are retried with a short backoff. A timeout is not:
  the upstream is slow, and a retry would double both the wait and its load; the caller gets 504
  within the upstream's timeout.
- A shed request (503 with `Retry-After`) is relayed as it is, not retried and not counted against
  the breaker: the service is up, and asked the client to come back later, not the gateway now.
- Each attempt runs under the circuit breaker of the route's group at its upstream (breaker.py).
- Streams (Server-Sent Events, routes with `stream=True`): relayed chunk by chunk as they arrive,
  on connections of their own (`GATEWAY_STREAM_MAX_OPEN` per upstream, 503 `overloaded` past it,
  counted in `gateway_open_streams`), so that long-lived streams never take the bulkhead's. The
  head waits at most the upstream's timeout as any answer; the body has no overall deadline, only
  `GATEWAY_STREAM_IDLE_TIMEOUT_SECONDS` of silence. When the client leaves, the upstream
  connection is closed at once, which ends the stream upstream too.
- Bulkheads: each upstream has its own connections (`GATEWAY_<SERVICE>_MAX_CONNECTIONS`) and as
  many requests in flight. A request that finds them all taken waits at most
  `connection_wait_seconds`, then gets 503 with `Retry-After`, rather than queueing behind a slow
  service until its own timeout; requests to the other upstreams are not held up at all.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Iterable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from functools import cache
from urllib.parse import quote

import aiohttp
import structlog
from prometheus_client import Counter, Gauge, Histogram
from starlette.requests import ClientDisconnect
from starlette.types import Receive, Scope, Send
from yarl import URL

from services.gateway.breaker import BreakerOpen, Breakers, UpstreamFailure
from services.gateway.routes import PublicRoute
from services.gateway.settings import Upstream
from services.kit.errors import Problem
from services.kit.metrics import LATENCY_BUCKETS, labelled
from services.kit.transport import (
    CHUNK_BYTES,
    SKIP_AUTO_HEADERS,
    Addresses,
    ServicePool,
    failure_kind,
    first_reachable,
)

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
    "Failed attempts per upstream, by kind (timeout, connect, status_5xx, breaker_open, shed, "
    "no_connection: its bulkhead was full for the whole wait).",
    ["upstream", "kind"],
)
OPEN_STREAMS = Gauge(
    "gateway_open_streams",
    "Streams (Server-Sent Events) the gateway is relaying from each upstream, at most its budget.",
    ["upstream"],
)
UPSTREAM_ACTIVE = Gauge(
    "gateway_upstream_active_requests",
    "Requests in flight to each upstream (holding one of its connections), at most its budget.",
    ["upstream"],
)

# RFC 9110 7.6.1: connection-specific fields never cross a proxy.
HOP_BY_HOP = frozenset(
    {
        b"connection",
        b"keep-alive",
        b"proxy-authenticate",
        b"proxy-authorization",
        b"proxy-connection",
        b"te",
        b"trailer",
        b"transfer-encoding",
        b"upgrade",
    }
)
# Set by the gateway itself, so a client's copy is dropped rather than trusted or forwarded.
_REQUEST_DROP = HOP_BY_HOP | {b"host", b"authorization", b"forwarded", b"x-request-id", b"expect"}
_REQUEST_DROP_PREFIXES = (b"x-ordersaga-", b"x-forwarded-")
_RESPONSE_DROP = HOP_BY_HOP | {b"date", b"server", b"x-request-id"}
IDEMPOTENT_METHODS = frozenset({"GET", "HEAD", "OPTIONS", "PUT", "DELETE"})
BODY_METHODS = frozenset({"POST", "PUT", "PATCH", "DELETE"})
RETRIED_STATUSES = frozenset({502, 503, 504})
BUSY_RETRY_AFTER_SECONDS = 1
SMALL_BODY_BYTES = 64 * 1024


@dataclass(frozen=True)
class ClientRequest:
    """What the proxy needs of the client's request, read from the ASGI scope in one pass."""

    method: str
    headers: list[tuple[str, str]]  # to forward: hop-by-hop, identity and forwarding headers removed
    authorization: str | None
    idempotency_key: str | None
    host: str | None

    @classmethod
    def from_scope(cls, scope: Scope) -> ClientRequest:
        raw: list[tuple[bytes, bytes]] = scope["headers"]
        named = _connection_tokens(raw)
        kept: list[tuple[str, str]] = []
        authorization = idempotency_key = host = None
        for name, value in raw:  # ASGI servers give header names in lower case
            if name == b"authorization":
                authorization = value.decode("latin-1")
            elif name == b"host":
                host = value.decode("latin-1")
            elif name == b"idempotency-key":
                idempotency_key = value.decode("latin-1")
            if name in _REQUEST_DROP or name.startswith(_REQUEST_DROP_PREFIXES) or name in named:
                continue
            kept.append((name.decode("latin-1"), value.decode("latin-1")))
        return cls(scope["method"], kept, authorization, idempotency_key, host)

    def forwarded(self, scope: Scope) -> list[tuple[str, str]]:
        """The gateway is the edge: it states what it saw instead of extending a client-supplied chain."""
        client = scope.get("client")
        headers = [
            ("x-forwarded-for", client[0] if client else ""),
            ("x-forwarded-proto", scope.get("scheme", "http")),
            ("x-request-id", str(scope.get("state", {}).get("request_id", ""))),
        ]
        if self.host:
            headers.append(("x-forwarded-host", self.host))
        return headers


def _connection_tokens(headers: Iterable[tuple[bytes, bytes]]) -> set[bytes]:
    """Header names listed in `Connection` are hop-by-hop for this message too."""
    tokens: set[bytes] = set()
    for name, value in headers:
        if name.lower() == b"connection":
            tokens.update(token.strip().lower() for token in value.split(b",") if token.strip())
    return tokens


def response_headers(raw: Iterable[tuple[bytes, bytes]]) -> list[tuple[bytes, bytes]]:
    raw = list(raw)
    named = _connection_tokens(raw)
    return [
        (lower, value)
        for name, value in raw
        if (lower := name.lower()) not in _RESPONSE_DROP and lower not in named
    ]


def upstream_path(route: PublicRoute, params: dict[str, str]) -> str:
    for value in params.values():
        if value in (".", ".."):  # would be normalised away into another path upstream
            raise Problem(404, "not_found", "No such route.")
    return route.path.format(**{name: quote(value, safe="") for name, value in params.items()})


class RelayInterrupted(Exception):
    """The upstream's body broke off after its head was relayed: the client's connection must drop."""


class _ClientBody:
    """The client's body as aiohttp reads it, remembering why it broke off (over the size limit, say).

    aiohttp reports a failing body as a connection error; the gateway must answer with the cause.
    """

    def __init__(self, receive: Receive) -> None:
        self._receive = receive
        self.error: Exception | None = None

    async def __aiter__(self) -> AsyncIterator[bytes]:
        try:
            async for chunk in _body_chunks(self._receive):
                yield chunk
        except Exception as exc:
            self.error = exc
            raise


async def _body_chunks(receive: Receive) -> AsyncIterator[bytes]:
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise ClientDisconnect()
        if body := message.get("body", b""):
            yield body
        if not message.get("more_body", False):
            return


async def _read_body(receive: Receive) -> bytes:
    return b"".join([chunk async for chunk in _body_chunks(receive)])


@cache
def _client_timeout(connect: float, read: float) -> aiohttp.ClientTimeout:
    return aiohttp.ClientTimeout(sock_connect=connect, sock_read=read)


def is_shed(answer: aiohttp.ClientResponse) -> bool:
    """The service refused the request on purpose, to protect itself, and said when to come back."""
    return answer.status == 503 and "Retry-After" in answer.headers


def stream_budget(upstream: str) -> str:
    """The name of an upstream's stream connections in the pool (apart from its bulkhead's)."""
    return f"{upstream}:streams"


class Proxy:
    def __init__(
        self,
        pool: ServicePool,
        breakers: Breakers,
        upstreams: Iterable[Upstream],
        *,
        backoff_seconds: float,
        connect_timeout: float,
        connection_wait: float,
    ) -> None:
        self.pool = pool
        self.breakers = breakers
        self.backoff = backoff_seconds
        self.connect_timeout = connect_timeout
        self.connection_wait = connection_wait
        # As many requests in flight as the upstream's connector has connections, so aiohttp never
        # queues one: the wait is bounded here, where it can be told apart from a slow connect.
        self.bulkheads: dict[str, asyncio.Semaphore] = {}
        # One bulkhead per upstream whatever its number of addresses: its replicas share the budget.
        self.addresses: dict[str, Addresses] = {}
        self.open_streams: dict[str, int] = {}
        for upstream in upstreams:
            self.addresses[upstream.name] = Addresses(upstream.urls or (upstream.url,))
            self.bulkheads[upstream.name] = asyncio.Semaphore(pool.limit(upstream.name))
            UPSTREAM_ACTIVE.labels(upstream=upstream.name).set(0)
            self.open_streams[upstream.name] = 0
            OPEN_STREAMS.labels(upstream=upstream.name).set(0)

    def _addresses(self, upstream: Upstream) -> Addresses:
        known = self.addresses.get(upstream.name)
        if known is None:
            known = self.addresses[upstream.name] = Addresses(upstream.urls or (upstream.url,))
        return known

    @asynccontextmanager
    async def _slot(self, upstream: Upstream) -> AsyncIterator[None]:
        """One of the upstream's connections for the request's lifetime, answer relayed included."""
        slots = self.bulkheads[upstream.name]
        if slots.locked():
            try:
                async with asyncio.timeout(self.connection_wait):
                    await slots.acquire()
            except TimeoutError:
                UPSTREAM_ATTEMPT_ERRORS.labels(upstream=upstream.name, kind="no_connection").inc()
                log.warning("upstream_busy", upstream=upstream.name, limit=self.pool.limit(upstream.name))
                raise Problem(
                    503,
                    "upstream_busy",
                    f"The {upstream.name} service is busy; try again later.",
                    headers={"Retry-After": str(BUSY_RETRY_AFTER_SECONDS)},
                ) from None
        else:
            await slots.acquire()  # free: returns at once
        active = labelled(UPSTREAM_ACTIVE, upstream.name)
        active.inc()
        try:
            yield
        finally:
            active.dec()
            slots.release()

    @asynccontextmanager
    async def _stream_slot(self, upstream: Upstream) -> AsyncIterator[None]:
        """One of the upstream's stream connections, or 503 at once: a stream holds it for minutes,
        so waiting for one would only pile clients up."""
        open_now = self.open_streams.get(upstream.name, 0)
        if open_now >= upstream.max_streams:
            UPSTREAM_ATTEMPT_ERRORS.labels(upstream=upstream.name, kind="no_connection").inc()
            log.warning("streams_full", upstream=upstream.name, limit=upstream.max_streams)
            raise Problem(
                503,
                "overloaded",
                "Too many streams are open; try again later.",
                headers={"Retry-After": str(BUSY_RETRY_AFTER_SECONDS)},
            )
        self.open_streams[upstream.name] = open_now + 1
        gauge = labelled(OPEN_STREAMS, upstream.name)
        gauge.inc()
        try:
            yield
        finally:
            self.open_streams[upstream.name] -= 1
            gauge.dec()

    async def forward(
        self,
        scope: Scope,
        receive: Receive,
        send: Send,
        request: ClientRequest,
        route: PublicRoute,
        upstream: Upstream,
        params: dict[str, str],
        *,
        identity: list[tuple[str, str]],
        answer_headers: list[tuple[bytes, bytes]],
    ) -> None:
        """Sends the request on with the caller's `identity` headers and relays the answer to `send`
        with `answer_headers` added; raises Problem only before a byte of the answer went out."""
        started = time.perf_counter()
        status = 500
        try:
            async with self._stream_slot(upstream) if route.stream else self._slot(upstream):
                try:
                    answer = await self._answer(scope, receive, request, route, upstream, params, identity)
                finally:
                    labelled(UPSTREAM_DURATION, upstream.name, request.method, route.public_path).observe(
                        time.perf_counter() - started
                    )
                status = answer.status
                if route.stream and "Content-Length" not in answer.headers:
                    await self._relay_stream(answer, receive, send, answer_headers)
                else:  # a refusal (404, 503) is an ordinary answer
                    await self._relay(answer, send, answer_headers)
        except Problem as problem:
            status = problem.status
            raise
        finally:
            labelled(UPSTREAM_REQUESTS, upstream.name, request.method, route.public_path, str(status)).inc()

    async def _answer(
        self,
        scope: Scope,
        receive: Receive,
        request: ClientRequest,
        route: PublicRoute,
        upstream: Upstream,
        params: dict[str, str],
        identity: list[tuple[str, str]],
    ) -> aiohttp.ClientResponse:
        target = upstream_path(route, params)
        if query := scope.get("query_string", b""):
            target += "?" + query.decode("latin-1")
        addresses = self._addresses(upstream)
        method = request.method
        retriable = method in IDEMPOTENT_METHODS or (
            method == "POST" and route.honours_idempotency_key and request.idempotency_key is not None
        )
        has_body = method in BODY_METHODS
        headers = [*request.headers, *request.forwarded(scope), *identity]
        if not has_body:
            # A body sent with a GET is not forwarded, so neither is its length: a Content-Length
            # with no bytes behind it would break the upstream request.
            headers = [(name, value) for name, value in headers if name != "content-length"]
        kept_body = await _read_body(receive) if has_body and retriable else None
        # A stream's socket may stay quiet between keep-alives for longer than an answer may take.
        read_timeout = upstream.stream_idle_timeout if route.stream else upstream.timeout
        timeout = _client_timeout(self.connect_timeout, read_timeout)
        session = self.pool.session(stream_budget(upstream.name) if route.stream else upstream.name)
        attempts = 1 + (upstream.retries if retriable else 0)
        streamed: _ClientBody | None = None
        url = URL(addresses.first + target, encoded=True)

        async def send(base: str) -> aiohttp.ClientResponse:
            nonlocal streamed, url
            # A refused connection read none of a streamed body, so the next address gets it whole.
            streamed = _ClientBody(receive) if has_body and kept_body is None else None
            url = URL(base + target, encoded=True)  # forwarded byte for byte: %2F stays %2F
            try:
                return await session.request(
                    method,
                    url,
                    headers=headers,
                    data=streamed if streamed is not None else kept_body,
                    allow_redirects=False,
                    timeout=timeout,
                    skip_auto_headers=SKIP_AUTO_HEADERS,
                )
            except aiohttp.ClientConnectorError as exc:
                if len(addresses) > 1:
                    log.warning(
                        "upstream_address_refused", upstream=upstream.name, address=base, error=repr(exc)
                    )
                raise

        for attempt in range(1, attempts + 1):
            last = attempt == attempts
            try:
                async with self.breakers.guard(upstream.name, route.group):
                    try:
                        # The whole wait for the answer's head, not each socket read, is bounded.
                        # A refused address is passed over at once for the next one, whatever the
                        # method (nothing reached it), within this attempt.
                        async with asyncio.timeout(upstream.timeout):
                            answer = await first_reachable(addresses, send)
                    except aiohttp.ClientError:
                        if streamed is not None and streamed.error is not None:
                            raise streamed.error from None  # the client's fault, not the upstream's
                        raise
                    if answer.status >= 500 and not is_shed(answer):
                        raise UpstreamFailure(answer.status, answer)
            except BreakerOpen as opened:
                UPSTREAM_ATTEMPT_ERRORS.labels(upstream=upstream.name, kind="breaker_open").inc()
                raise Problem(
                    503,
                    "upstream_unavailable",
                    f"The {upstream.name} service is unavailable; try again later.",
                    headers={"Retry-After": str(opened.retry_after)},
                ) from None
            except UpstreamFailure as failure:
                UPSTREAM_ATTEMPT_ERRORS.labels(upstream=upstream.name, kind="status_5xx").inc()
                if last or failure.status not in RETRIED_STATUSES:
                    return failure.response
                failure.response.release()
            except (TimeoutError, aiohttp.ClientError) as exc:
                if failure_kind(exc) == "timeout":
                    UPSTREAM_ATTEMPT_ERRORS.labels(upstream=upstream.name, kind="timeout").inc()
                    log.warning("upstream_timeout", upstream=upstream.name, url=str(url), attempt=attempt)
                    raise Problem(
                        504, "upstream_timeout", f"The {upstream.name} service did not answer in time."
                    ) from None
                UPSTREAM_ATTEMPT_ERRORS.labels(upstream=upstream.name, kind="connect").inc()
                log.warning("upstream_unreachable", upstream=upstream.name, error=repr(exc), attempt=attempt)
                if last:
                    raise Problem(
                        502, "upstream_unreachable", f"The {upstream.name} service cannot be reached."
                    ) from None
            else:
                if is_shed(answer):
                    UPSTREAM_ATTEMPT_ERRORS.labels(upstream=upstream.name, kind="shed").inc()
                return answer
            await asyncio.sleep(self.backoff * 2 ** (attempt - 1))
        raise AssertionError("unreachable: the last attempt returns or raises")

    async def _relay(
        self, answer: aiohttp.ClientResponse, send: Send, extra_headers: list[tuple[bytes, bytes]]
    ) -> None:
        head = {
            "type": "http.response.start",
            "status": answer.status,
            "headers": response_headers(answer.raw_headers) + extra_headers,
        }
        try:
            declared = answer.headers.get("Content-Length", "")
            if declared.isdigit() and int(declared) <= SMALL_BODY_BYTES:
                try:
                    body = await answer.read()
                except aiohttp.ClientError:
                    raise Problem(502, "upstream_unreachable", "The service broke off its answer.") from None
                await send(head)
                await send({"type": "http.response.body", "body": body})
                return
            await send(head)
            try:
                async for chunk in answer.content.iter_chunked(CHUNK_BYTES):
                    await send({"type": "http.response.body", "body": chunk, "more_body": True})
            except aiohttp.ClientError as exc:
                raise RelayInterrupted(str(exc)) from exc
            await send({"type": "http.response.body", "body": b""})
        finally:
            answer.release()

    async def _relay_stream(
        self,
        answer: aiohttp.ClientResponse,
        receive: Receive,
        send: Send,
        extra_headers: list[tuple[bytes, bytes]],
    ) -> None:
        """Each chunk as it comes, until the upstream ends or the client leaves.

        The client's leaving is read from `receive` (an ASGI server may keep accepting `send`s for a
        connection that is gone), and it closes the upstream connection rather than returning it
        to the pool: the service sees its client leave and stops its stream.
        """
        head = {
            "type": "http.response.start",
            "status": answer.status,
            "headers": response_headers(answer.raw_headers) + extra_headers,
        }

        async def relay() -> None:
            await send(head)
            try:
                async for chunk in answer.content.iter_any():
                    await send({"type": "http.response.body", "body": chunk, "more_body": True})
            except (aiohttp.ClientError, TimeoutError) as exc:  # broken off, or silent too long
                raise RelayInterrupted(str(exc) or type(exc).__name__) from exc
            await send({"type": "http.response.body", "body": b""})

        async def client_gone() -> None:
            while (await receive())["type"] != "http.disconnect":
                pass

        relaying = asyncio.ensure_future(relay())
        watching = asyncio.ensure_future(client_gone())
        try:
            await asyncio.wait((relaying, watching), return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in (relaying, watching):
                task.cancel()
            await asyncio.gather(relaying, watching, return_exceptions=True)
            if not relaying.cancelled() and relaying.exception() is None:
                answer.release()  # read to its end: the connection may serve another stream
            else:
                answer.close()
        if not relaying.cancelled():
            relaying.result()  # a broken-off upstream raises RelayInterrupted: the connection drops
