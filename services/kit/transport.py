"""The transport of the gateway's and the worker's service calls: httpx's API over aiohttp's pool.

Why not httpx's own transport: measured on `GET /products/{id}` (CPU time of the gateway process per
request, which contention on the machine does not distort), httpcore costs 1.45 ms per request one
at a time and 2.47 ms with 32 in flight, against 0.89 and 0.87 ms over aiohttp: httpcore checks
every pooled connection for readability on each request, so its cost grows with the pool. The rest
of the code keeps httpx's API (requests, streaming, timeouts, errors); only the socket layer
changes. The adapter is ours rather than `httpx-aiohttp` because a proxy needs two things that
package does not give: the URL forwarded byte for byte (it re-quotes `%2F` into `/`), and a refused
connection told apart from a timeout (it reports both as `ConnectTimeout`).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from http.cookiejar import CookieJar, DefaultCookiePolicy

import aiohttp
import httpx
from yarl import URL

from services.kit.tracing import tracing_enabled

# Below uvicorn's 5 s keep-alive, so the pool drops an idle connection before the upstream does
# and a request never lands on a socket that the upstream is closing.
KEEPALIVE_SECONDS = 4.0
CHUNK_BYTES = 64 * 1024


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


class _RequestBody:
    """The client's streamed body, remembering why it broke off (a body over the size limit, say).

    aiohttp reports a failing body as a connection error; the gateway must answer with the cause.
    """

    def __init__(self, stream: httpx.AsyncByteStream) -> None:
        self._stream = stream
        self.error: Exception | None = None

    async def __aiter__(self) -> AsyncIterator[bytes]:
        try:
            async for chunk in self._stream:
                yield chunk
        except Exception as exc:
            self.error = exc
            raise


class AiohttpTransport(httpx.AsyncBaseTransport):
    def __init__(self, max_connections: int) -> None:
        self._max_connections = max_connections
        self._session: aiohttp.ClientSession | None = None

    def _client(self) -> aiohttp.ClientSession:
        # Created on first use, inside the running loop, as aiohttp requires.
        if self._session is None:
            connector = aiohttp.TCPConnector(limit=self._max_connections, keepalive_timeout=KEEPALIVE_SECONDS)
            # A gateway must never keep one client's cookies and send them with another's request.
            self._session = aiohttp.ClientSession(
                connector=connector, cookie_jar=aiohttp.DummyCookieJar(), auto_decompress=False
            )
        return self._session

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        timeouts = request.extensions.get("timeout", {})
        timeout = aiohttp.ClientTimeout(sock_connect=timeouts.get("connect"), sock_read=timeouts.get("read"))
        streamed: _RequestBody | None = None
        try:
            body: bytes | _RequestBody | None = request.content or None
        except httpx.RequestNotRead:
            body = streamed = _RequestBody(request.stream)  # type: ignore[arg-type]
        headers = [
            (name.decode("latin-1"), value.decode("latin-1"))
            for name, value in request.headers.raw
            if name.lower() != b"transfer-encoding"  # aiohttp frames the body itself
        ]
        try:
            response = await self._client().request(
                request.method,
                URL(str(request.url), encoded=True),
                headers=headers,
                data=body,
                allow_redirects=False,
                timeout=timeout,
                skip_auto_headers=("User-Agent", "Accept", "Accept-Encoding", "Content-Type"),
            )
        except Exception as exc:
            if streamed is not None and streamed.error is not None:
                raise streamed.error from None
            mapped = self._mapped(exc, request)
            if mapped is exc:
                raise
            raise mapped from exc
        return httpx.Response(
            status_code=response.status,
            headers=response.raw_headers,
            stream=_ResponseStream(response),
            request=request,
            extensions={"http_version": b"HTTP/1.1"},
        )

    @staticmethod
    def _mapped(exc: Exception, request: httpx.Request) -> Exception:
        """The httpx error the proxy expects: a timeout (504) apart from a refused or lost connection."""
        message = str(exc) or type(exc).__name__
        if isinstance(exc, aiohttp.ConnectionTimeoutError):
            return httpx.ConnectTimeout(message, request=request)
        if isinstance(exc, TimeoutError):  # aiohttp's read timeouts included
            return httpx.ReadTimeout(message, request=request)
        if isinstance(exc, aiohttp.ClientConnectorError):
            return httpx.ConnectError(message, request=request)
        if isinstance(exc, aiohttp.ClientError):
            return httpx.ReadError(message, request=request)
        return exc

    async def aclose(self) -> None:
        if self._session is not None:
            await self._session.close()


def service_client(timeout: httpx.Timeout, *, max_connections: int = 200) -> httpx.AsyncClient:
    """The one pooled client of a process that calls our services (the gateway, the worker)."""
    return httpx.AsyncClient(
        transport=_transport(max_connections),
        timeout=timeout,
        follow_redirects=False,
        # httpx's client keeps cookies too: a jar whose policy accepts none of them.
        cookies=CookieJar(policy=DefaultCookiePolicy(allowed_domains=[])),
    )


def _transport(max_connections: int) -> httpx.AsyncBaseTransport:
    transport = AiohttpTransport(max_connections)
    if not tracing_enabled():
        return transport
    # The global httpx instrumentation patches httpx's own transport only; this one is wrapped.
    from opentelemetry.instrumentation.httpx import AsyncOpenTelemetryTransport

    return AsyncOpenTelemetryTransport(transport)
