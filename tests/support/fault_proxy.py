"""A fault-injecting HTTP reverse proxy between the worker and the services, for saga fault tests.

One listener per service, all served by one asyncio loop in a background thread of the test process,
so that a test's blocking calls (restarting the worker, say) never stall the traffic it is watching.
Every request is forwarded unchanged unless an armed rule matches it; a rule then either answers in
place of the service (`fail_with`), or holds the request until the test releases it (`hold`), so
that the test can kill the worker at exactly that point. A held request is forwarded on release even
if its caller has died meanwhile: the service acts, and nobody hears its answer.
"""

from __future__ import annotations

import asyncio
import json
import re
import threading
import time
from collections.abc import Awaitable, Callable, Mapping, MutableMapping
from dataclasses import dataclass, field
from typing import Any

import httpx
import uvicorn

from tests.support.processes import free_port

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]

# Hop-by-hop headers, and those httpx recomputes for the body it actually sends or returns.
_NOT_FORWARDED = frozenset(
    {b"host", b"content-length", b"transfer-encoding", b"connection", b"keep-alive", b"content-encoding"}
)


@dataclass(frozen=True)
class Match:
    """Requests to `service` with this method, a path that fully matches `path`, and a JSON body that
    carries every field of `body` with the same value."""

    service: str
    method: str
    path: str
    body: Mapping[str, Any] = field(default_factory=dict)

    def matches(self, service: str, method: str, path: str, body: Any) -> bool:
        if (service, method) != (self.service, self.method) or not re.fullmatch(self.path, path):
            return False
        if not self.body:
            return True
        return isinstance(body, dict) and all(body.get(key) == value for key, value in self.body.items())


@dataclass
class Seen:
    """One request the proxy saw, and what its caller was answered (None: nothing, or not yet)."""

    service: str
    method: str
    path: str
    body: Any
    status: int | None = None
    injected: bool = False


class Rule:
    """What to do with the requests that match: fail the next few, or hold the next one."""

    def __init__(self, match: Match, lock: threading.Lock, loop: asyncio.AbstractEventLoop) -> None:
        self.match = match
        self._lock = lock
        self._loop = loop
        self._failures_left = 0
        self._status = 500
        self._problem: dict[str, Any] = {}
        self._hold_next = False
        self._released = asyncio.Event()  # bound to the proxy's loop on first wait
        self.hits = 0  # matching requests seen, the failed, held and forwarded ones alike
        self.injected = 0  # answered by the proxy in place of the service
        self.held = 0  # held so far (at most one per hold())
        self.forwarded_after_hold: int | None = None  # the service's answer to the held request

    def fail_with(self, status: int, code: str, *, times: int = 1, detail: str = "") -> Rule:
        """Answer the next `times` matching requests with `status` and a problem whose code is `code`."""
        with self._lock:
            self._failures_left = times
            self._status = status
            self._problem = {
                "type": f"urn:ordersaga:test-fault:{code}",
                "title": "Injected fault",
                "status": status,
                "detail": detail or f"fault injected by the test proxy ({status} {code})",
                "code": code,
            }
        return self

    def hold(self) -> Rule:
        """Keep the next matching request waiting until `release()`; it is forwarded then."""
        with self._lock:
            self._hold_next = True
        return self

    def release(self) -> None:
        if not self._loop.is_closed():
            self._loop.call_soon_threadsafe(self._released.set)

    async def wait_hits(self, count: int = 1, timeout: float = 30.0) -> None:
        await _poll(lambda: self.hits >= count, timeout, f"{count} request(s) matching {self.match}")

    async def wait_held(self, timeout: float = 30.0) -> None:
        await _poll(lambda: self.held >= 1, timeout, f"a held request matching {self.match}")

    async def wait_forwarded_after_hold(self, timeout: float = 30.0) -> int:
        await _poll(
            lambda: self.forwarded_after_hold is not None, timeout, f"the held request {self.match} forwarded"
        )
        assert self.forwarded_after_hold is not None
        return self.forwarded_after_hold

    # ---- in the proxy's loop ----------------------------------------------------------------

    def _decide(self) -> tuple[str, int, dict[str, Any]]:
        """Called under the lock for a matching request: 'fail', 'hold' or 'forward'."""
        self.hits += 1
        if self._failures_left > 0:
            self._failures_left -= 1
            self.injected += 1
            return "fail", self._status, self._problem
        if self._hold_next:
            self._hold_next = False
            self.held += 1
            return "hold", 0, {}
        return "forward", 0, {}


async def _poll(done: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not done():
        if time.monotonic() > deadline:
            raise AssertionError(f"the fault proxy did not see {what} within {timeout}s")
        await asyncio.sleep(0.05)


class FaultProxies:
    """One proxy per service, `upstreams` mapping a service name to its real base URL."""

    def __init__(self, upstreams: Mapping[str, str]) -> None:
        self.upstreams = dict(upstreams)
        self.ports = {name: free_port() for name in self.upstreams}
        self._lock = threading.Lock()
        self._rules: list[Rule] = []
        self._seen: list[Seen] = []
        self._loop = asyncio.new_event_loop()
        self._servers: list[uvicorn.Server] = []
        self._http: httpx.AsyncClient | None = None
        self._thread = threading.Thread(target=self._serve, name="fault-proxies", daemon=True)

    def url(self, service: str) -> str:
        return f"http://127.0.0.1:{self.ports[service]}"

    def worker_env(self) -> dict[str, str]:
        """The worker's service URLs, pointed at the proxies."""
        return {f"WORKER_{name.upper()}_URL": self.url(name) for name in self.upstreams}

    # ---- for tests ------------------------------------------------------------------------------

    def arm(self, match: Match) -> Rule:
        """A new rule; it forwards until told to `fail_with` or `hold`. Older rules match first."""
        rule = Rule(match, self._lock, self._loop)
        with self._lock:
            self._rules.append(rule)
        return rule

    def reset(self) -> None:
        """Disarm every rule (a held request is let through) and forget what was seen."""
        with self._lock:
            rules, self._rules = self._rules, []
            self._seen = []
        for rule in rules:
            rule.release()

    def seen(self, match: Match | None = None) -> list[Seen]:
        with self._lock:
            return [
                s for s in self._seen if match is None or match.matches(s.service, s.method, s.path, s.body)
            ]

    # ---- lifecycle ------------------------------------------------------------------------------

    def start(self, timeout: float = 15.0) -> FaultProxies:
        for name in self.upstreams:
            config = uvicorn.Config(
                self._app(name),
                host="127.0.0.1",
                port=self.ports[name],
                log_level="warning",
                access_log=False,
                lifespan="off",
                timeout_graceful_shutdown=1,
            )
            self._servers.append(uvicorn.Server(config))
        self._thread.start()
        deadline = time.monotonic() + timeout
        while not all(server.started for server in self._servers):
            if time.monotonic() > deadline or not self._thread.is_alive():
                raise RuntimeError("the fault proxies did not start")
            time.sleep(0.05)
        return self

    def stop(self) -> None:
        self.reset()
        for server in self._servers:
            server.should_exit = True
            server.force_exit = True
        self._thread.join(timeout=10)

    def _serve(self) -> None:
        asyncio.set_event_loop(self._loop)

        async def main() -> None:
            self._http = httpx.AsyncClient(timeout=30)
            try:
                await asyncio.gather(*(server.serve() for server in self._servers))
            finally:
                await self._http.aclose()
            self._http = None

        self._loop.run_until_complete(main())
        self._loop.close()

    def _app(self, service: str) -> Callable[[Scope, Receive, Send], Awaitable[None]]:
        async def app(scope: Scope, receive: Receive, send: Send) -> None:
            if scope["type"] != "http":
                return
            body = b""
            while True:
                message = await receive()
                if message["type"] == "http.disconnect":
                    return
                body += message.get("body", b"")
                if not message.get("more_body"):
                    break
            await self._handle(service, scope, body, send)

        return app

    async def _handle(self, service: str, scope: Scope, body: bytes, send: Send) -> None:
        method, path = scope["method"], scope["path"]
        try:
            parsed: Any = json.loads(body) if body else None
        except ValueError:
            parsed = None
        seen = Seen(service, method, path, parsed)
        with self._lock:
            self._seen.append(seen)
            rule = next((r for r in self._rules if r.match.matches(service, method, path, parsed)), None)
            action, status, problem = rule._decide() if rule else ("forward", 0, {})

        if action == "fail":
            seen.status, seen.injected = status, True
            payload = json.dumps(problem).encode()
            await _answer(send, status, [(b"content-type", b"application/problem+json")], payload)
            return
        if action == "hold":
            assert rule is not None
            await rule._released.wait()

        status, headers, content = await self._forward(service, scope, body)
        seen.status = status
        if action == "hold":
            assert rule is not None
            rule.forwarded_after_hold = status
        await _answer(send, status, headers, content)  # dropped by uvicorn if the caller is gone

    async def _forward(self, service: str, scope: Scope, body: bytes) -> tuple[int, list[Any], bytes]:
        url = self.upstreams[service] + scope["path"]
        if scope.get("query_string"):
            url += "?" + scope["query_string"].decode()
        headers = [(k, v) for k, v in scope["headers"] if k.lower() not in _NOT_FORWARDED]
        assert self._http is not None
        try:
            response = await self._http.request(scope["method"], url, headers=headers, content=body)
        except httpx.HTTPError as err:
            # The service is down: the caller sees a 502, which it retries like a lost connection.
            problem = {
                "title": "Bad gateway",
                "status": 502,
                "code": "proxy_upstream_error",
                "detail": str(err),
            }
            return 502, [(b"content-type", b"application/problem+json")], json.dumps(problem).encode()
        kept = [
            (k.encode(), v.encode())
            for k, v in response.headers.multi_items()
            if k.lower().encode() not in _NOT_FORWARDED
        ]
        return response.status_code, kept, response.content


async def _answer(send: Send, status: int, headers: list[Any], content: bytes) -> None:
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [*headers, (b"content-length", str(len(content)).encode())],
        }
    )
    await send({"type": "http.response.body", "body": content})
