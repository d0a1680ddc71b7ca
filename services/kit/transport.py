"""The connection pool of the gateway's and the worker's service calls: aiohttp's, with httpx's API on top.

One `ServicePool` per process holds the keep-alive connections to our services. The gateway's proxy
speaks to it directly (services/gateway/proxy.py); everything else (the saga's activities, the
gateway's JWKS fetch and readiness probes) uses `service_client`, an `httpx.AsyncClient` whose
transport sends over the same pool.

Why not httpx's own transport: measured on `GET /products/{id}` (CPU time of the gateway process per
request, which contention on the machine does not distort), httpcore costs 1.45 ms per request one
at a time and 2.47 ms with 32 in flight, against 0.89 and 0.87 ms over aiohttp: httpcore checks
every pooled connection for readability on each request, so its cost grows with the pool. The
adapter is ours rather than `httpx-aiohttp` because a proxy needs two things that package does not
give: the URL forwarded byte for byte (it re-quotes `%2F` into `/`), and a refused connection told
apart from a timeout (it reports both as `ConnectTimeout`).
"""

from __future__ import annotations

import itertools
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from http.cookiejar import CookieJar, DefaultCookiePolicy
from typing import Literal, TypeVar

import aiohttp
import httpx
from yarl import URL

from services.kit.tracing import tracing_enabled

# Below uvicorn's 5 s keep-alive, so the pool drops an idle connection before the upstream does
# and a request never lands on a socket that the upstream is closing.
KEEPALIVE_SECONDS = 4.0
CHUNK_BYTES = 64 * 1024
# aiohttp adds these unless told not to; a proxy forwards the client's own, or none.
SKIP_AUTO_HEADERS = ("User-Agent", "Accept", "Accept-Encoding", "Content-Type")

DEFAULT_BUDGET = "default"

FailureKind = Literal["timeout", "connect", "broken"]
# How long an address that refused a connection is tried only after the others (a replica that
# died, or restarts): long enough to spare each call a refused connect, short enough to take it back soon.
REFUSED_SKIP_SECONDS = 2.0

T = TypeVar("T")


class Addresses:
    """The addresses of one service (`GATEWAY_<SERVICE>_URL`, `WORKER_<SERVICE>_URL`), comma-separated.

    What a Kubernetes Service gives a client, on one machine (`ordersaga up --replicas N`): each call
    starts at the next address in turn; one that refused a connection goes to the back of the line
    for `REFUSED_SKIP_SECONDS`. A single URL is used exactly as before.
    """

    def __init__(
        self,
        urls: Sequence[str],
        *,
        skip_seconds: float = REFUSED_SKIP_SECONDS,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.urls = tuple(url.strip().rstrip("/") for url in urls if url.strip())
        if not self.urls:
            raise ValueError("a service needs at least one address")
        self._skip_seconds = skip_seconds
        self._clock = clock
        self._turn = itertools.count()
        self._refused_until: dict[str, float] = {}

    @classmethod
    def parse(cls, value: str, *, skip_seconds: float = REFUSED_SKIP_SECONDS) -> Addresses:
        return cls(value.split(","), skip_seconds=skip_seconds)

    def __len__(self) -> int:
        return len(self.urls)

    @property
    def first(self) -> str:
        return self.urls[0]

    def order(self) -> list[str]:
        """Every address once, in the order this call tries them."""
        if len(self.urls) == 1:
            return list(self.urls)
        start = next(self._turn) % len(self.urls)
        turn = [*self.urls[start:], *self.urls[:start]]
        now = self._clock()
        ready = [url for url in turn if self._refused_until.get(url, 0.0) <= now]
        # When every address refused lately, the one that refused longest ago goes first.
        skipped = sorted((url for url in turn if url not in ready), key=lambda u: self._refused_until[u])
        return ready + skipped

    def refused(self, url: str) -> None:
        self._refused_until[url] = self._clock() + self._skip_seconds

    def answered(self, url: str) -> None:
        self._refused_until.pop(url, None)


def refused_before_sent(exc: BaseException) -> bool:
    """No byte of the request reached the service (refused, reset or unreachable while connecting),
    so sending it to another address is safe whatever the method."""
    return isinstance(exc, aiohttp.ClientConnectorError | httpx.ConnectError)


async def first_reachable(addresses: Addresses, send: Callable[[str], Awaitable[T]]) -> T:
    """`send(address)` at the addresses in turn until one takes the connection; its result or error.

    Only a connection refused before the request was sent moves on to the next address, at once;
    any other failure is the caller's to handle (it may have reached the service)."""
    candidates = addresses.order()
    for index, url in enumerate(candidates):
        try:
            result = await send(url)
        except Exception as exc:
            if not refused_before_sent(exc):
                raise
            addresses.refused(url)
            if index == len(candidates) - 1:
                raise
            continue
        addresses.answered(url)
        return result
    raise AssertionError("unreachable: Addresses is never empty")


class ServicePool:
    """The process's keep-alive connections to our services, traced when tracing is on.

    One aiohttp session per name, each with its own connector and connection limit: the gateway
    keeps one per upstream (its bulkhead), so that requests piling up at a slow service wait for
    that service's connections only. Calls that name no budget share the default one.
    """

    def __init__(self, max_connections: int = 200, budgets: Mapping[str, int] | None = None) -> None:
        self._max_connections = max_connections
        self._budgets = dict(budgets or {})
        self._sessions: dict[str, aiohttp.ClientSession] = {}

    def limit(self, name: str = DEFAULT_BUDGET) -> int:
        return self._budgets.get(name, self._max_connections)

    def session(self, name: str = DEFAULT_BUDGET) -> aiohttp.ClientSession:
        session = self._sessions.get(name)
        # Created on first use, inside the running loop, as aiohttp requires.
        if session is None:
            connector = aiohttp.TCPConnector(limit=self.limit(name), keepalive_timeout=KEEPALIVE_SECONDS)
            # A gateway must never keep one client's cookies and send them with another's request.
            session = self._sessions[name] = aiohttp.ClientSession(
                connector=connector,
                cookie_jar=aiohttp.DummyCookieJar(),
                auto_decompress=False,
                trace_configs=_trace_configs(),
            )
        return session

    async def aclose(self) -> None:
        sessions, self._sessions = list(self._sessions.values()), {}
        for session in sessions:
            await session.close()


def failure_kind(exc: BaseException) -> FailureKind | None:
    """What went wrong with a call to a service: a timeout (504), a refused connection, a broken one."""
    if isinstance(exc, TimeoutError):  # aiohttp's connect and read timeouts included
        return "timeout"
    if isinstance(exc, aiohttp.ClientConnectorError):
        return "connect"
    if isinstance(exc, aiohttp.ClientError):
        return "broken"
    return None


class _ResponseStream(httpx.AsyncByteStream):
    def __init__(self, response: aiohttp.ClientResponse) -> None:
        self._response = response

    async def __aiter__(self) -> AsyncIterator[bytes]:
        try:
            async for chunk in self._response.content.iter_chunked(CHUNK_BYTES):
                yield chunk
        except aiohttp.ClientError as exc:
            raise httpx.ReadError(str(exc)) from exc

    async def aclose(self) -> None:
        self._response.release()


class AiohttpTransport(httpx.AsyncBaseTransport):
    def __init__(self, pool: ServicePool) -> None:
        self._pool = pool

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        timeouts = request.extensions.get("timeout", {})
        timeout = aiohttp.ClientTimeout(sock_connect=timeouts.get("connect"), sock_read=timeouts.get("read"))
        headers = [
            (name.decode("latin-1"), value.decode("latin-1"))
            for name, value in request.headers.raw
            if name.lower() != b"transfer-encoding"  # aiohttp frames the body itself
        ]
        try:
            response = await self._pool.session().request(
                request.method,
                URL(str(request.url), encoded=True),
                headers=headers,
                data=await request.aread() or None,
                allow_redirects=False,
                timeout=timeout,
                skip_auto_headers=SKIP_AUTO_HEADERS,
            )
        except Exception as exc:
            kind = failure_kind(exc)
            if kind is None:
                raise
            raise _httpx_error(kind, exc, request) from exc
        return httpx.Response(
            status_code=response.status,
            headers=response.raw_headers,
            stream=_ResponseStream(response),
            request=request,
            extensions={"http_version": b"HTTP/1.1"},
        )

    async def aclose(self) -> None:
        await self._pool.aclose()


def _httpx_error(kind: FailureKind, exc: Exception, request: httpx.Request) -> httpx.TransportError:
    message = str(exc) or type(exc).__name__
    if kind == "timeout":
        if isinstance(exc, aiohttp.ConnectionTimeoutError):
            return httpx.ConnectTimeout(message, request=request)
        return httpx.ReadTimeout(message, request=request)
    if kind == "connect":
        return httpx.ConnectError(message, request=request)
    return httpx.ReadError(message, request=request)


class SpreadTransport(httpx.AsyncBaseTransport):
    """An httpx transport for a client of several equal servers (e.g. gateways): each request goes
    to the origin of the next of `addresses` in turn, past one that refuses the connection."""

    def __init__(self, addresses: Addresses, inner: httpx.AsyncBaseTransport) -> None:
        self._addresses = addresses
        self._inner = inner

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        async def send(base: str) -> httpx.Response:
            origin = httpx.URL(base)
            request.url = request.url.copy_with(scheme=origin.scheme, host=origin.host, port=origin.port)
            request.headers["Host"] = request.url.netloc.decode("ascii")
            return await self._inner.handle_async_request(request)

        return await first_reachable(self._addresses, send)

    async def aclose(self) -> None:
        await self._inner.aclose()


def service_client(
    timeout: httpx.Timeout, *, pool: ServicePool | None = None, max_connections: int = 200
) -> httpx.AsyncClient:
    """A pooled client for calls to our services; closing it closes its pool."""
    return httpx.AsyncClient(
        transport=AiohttpTransport(pool or ServicePool(max_connections)),
        timeout=timeout,
        follow_redirects=False,
        # httpx's client keeps cookies too: a jar whose policy accepts none of them.
        cookies=CookieJar(policy=DefaultCookiePolicy(allowed_domains=[])),
    )


def _trace_configs() -> list[aiohttp.TraceConfig]:
    if not tracing_enabled():
        return []
    # A client span per call, with `traceparent` injected, for the proxy and the httpx clients alike.
    from opentelemetry.instrumentation.aiohttp_client import create_trace_config

    return [create_trace_config()]
