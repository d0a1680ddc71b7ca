"""Gateway fixtures: the gateway as a real process in front of the session's stack, a tiny scripted
upstream for what the real services cannot be made to do on demand (hang, echo headers), and tokens
minted with the users service's own signing key (the stack has no bootstrapped admin)."""

from __future__ import annotations

import asyncio
import threading
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import httpx
import pytest
import uvicorn
from cryptography.hazmat.primitives.asymmetric import rsa
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from services.gateway.app import create_app
from services.gateway.settings import UPSTREAMS, Settings
from services.users.tokens import KEY_FILE_NAME, TokenIssuer, TokenRole, load_private_key
from tests.support.identity import INTERNAL_TOKEN
from tests.support.processes import VENV_BIN, ManagedProcess, free_port, http_ok
from tests.support.stack import Stack

# Short enough that the kill/restart test sees the breaker half-open within seconds.
GATEWAY_TEST_ENV = {
    "GATEWAY_BREAKER_THRESHOLD": "3",
    "GATEWAY_BREAKER_COOLDOWN_SECONDS": "2",
    "GATEWAY_INVENTORY_TIMEOUT": "2",
}


def gateway_env(stack: Stack, **extra: str) -> dict[str, str]:
    env = dict(stack.common_env)
    env.update({f"GATEWAY_{name.upper()}_URL": stack.url(name) for name in UPSTREAMS})
    env.update(GATEWAY_TEST_ENV)
    env.update(extra)
    return env


@dataclass
class RunningGateway:
    url: str
    process: ManagedProcess


@pytest.fixture(scope="session")
def gateway(stack: Stack) -> Iterator[RunningGateway]:
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    argv = [str(VENV_BIN / "ordersaga"), "serve", "gateway", "--port", str(port)]
    process = ManagedProcess(
        "gateway", argv, stack.directory / "gateway.log", gateway_env(stack), ready=http_ok(url + "/health")
    )
    process.start(timeout=60)
    yield RunningGateway(url, process)
    process.stop()


@pytest.fixture
async def api(gateway: RunningGateway) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=gateway.url + "/api/v1", timeout=30) as client:
        yield client


class Tokens:
    """Access tokens signed with the stack's users key, as the users service would issue them."""

    def __init__(self, key: rsa.RSAPrivateKey) -> None:
        self.issuer = TokenIssuer(key, ttl_seconds=900)

    def bearer(
        self, role: TokenRole, user_id: uuid.UUID | str | None = None, *, now: int | None = None
    ) -> dict[str, str]:
        subject = uuid.UUID(str(user_id)) if user_id else uuid.uuid4()
        token = self.issuer.issue(subject, role, now=now).access_token
        return {"Authorization": f"Bearer {token}"}


@pytest.fixture(scope="session")
def tokens(stack: Stack) -> Tokens:
    key_file = stack.directory / "data" / KEY_FILE_NAME
    return Tokens(load_private_key(key_file.read_bytes()))


def bearer(response: httpx.Response) -> dict[str, str]:
    assert response.status_code == 200, response.text
    return {"Authorization": f"Bearer {response.json()['access_token']}"}


# ---- a scripted upstream, served by uvicorn in a thread


@dataclass
class Scripted:
    """What the scripted upstream answers; tests change it between calls."""

    url: str = ""
    jwks: dict[str, Any] = field(default_factory=lambda: {"keys": []})
    jwks_fetches: int = 0
    seen: list[dict[str, Any]] = field(default_factory=list)


def _body_answer(kind: str, size: int) -> Response:
    body = bytes(n % 251 for n in range(size))  # no repeating 64 KiB block: a reordered relay would show
    if kind == "bytes":
        return Response(body, media_type="application/octet-stream")

    async def chunks() -> AsyncIterator[bytes]:
        sent = body if kind == "chunks" else body[: size // 2]
        for start in range(0, len(sent), 16 * 1024):
            yield sent[start : start + 16 * 1024]
        if kind == "cut":
            raise ConnectionError("the scripted upstream breaks off its answer")

    headers = {"Content-Length": str(size)} if kind == "cut" else None
    return StreamingResponse(chunks(), media_type="application/octet-stream", headers=headers)


def _scripted_app(state: Scripted) -> Starlette:
    async def jwks(_: Request) -> Response:
        state.jwks_fetches += 1
        return JSONResponse(state.jwks)

    async def anything(request: Request) -> Response:
        body = await request.body()
        seen = {
            "method": request.method,
            "path": request.url.path,
            "query": request.url.query,
            "headers": [(k.decode(), v.decode()) for k, v in request.headers.raw],
            "body": body.decode(errors="replace"),
        }
        state.seen.append(seen)
        # A path segment scripts the answer: /products/sleep-3, /orders/status-503/cancel,
        # /products/bytes-N (N bytes, sized), chunks-N (N bytes, chunked), cut-N (N declared, half sent).
        status = 200
        for segment in request.url.path.split("/"):
            kind, _, number = segment.partition("-")
            if kind == "sleep":
                await asyncio.sleep(float(number))
            if kind == "status":
                status = int(number)
            if kind in ("bytes", "chunks", "cut"):
                return _body_answer(kind, int(number))
        return JSONResponse(
            seen, status_code=status, headers={"Connection": "x-upstream-secret", "X-Upstream-Secret": "1"}
        )

    return Starlette(
        routes=[
            Route("/.well-known/jwks.json", jwks),
            Route("/{path:path}", anything, methods=["GET", "POST", "PUT", "DELETE"]),
        ]
    )


@pytest.fixture(scope="session")
def scripted() -> Iterator[Scripted]:
    state = Scripted()
    port = free_port()
    state.url = f"http://127.0.0.1:{port}"
    server = uvicorn.Server(
        uvicorn.Config(_scripted_app(state), port=port, log_level="warning", lifespan="off")
    )
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started:
        assert time.monotonic() < deadline, "scripted upstream did not start"
        time.sleep(0.02)
    yield state
    server.should_exit = True
    thread.join(timeout=5)


@asynccontextmanager
async def in_process_gateway(**overrides: Any) -> AsyncIterator[httpx.AsyncClient]:
    """The gateway app in this process (no lifespan needed), its client seen as 203.0.113.7."""
    settings = Settings(internal_token=INTERNAL_TOKEN, log_level="WARNING", **overrides)
    app = create_app(settings)
    transport = httpx.ASGITransport(app=app, client=("203.0.113.7", 50000))
    async with httpx.AsyncClient(transport=transport, base_url="http://gateway.test") as client:
        try:
            yield client
        finally:
            await app.gateway.aclose()
