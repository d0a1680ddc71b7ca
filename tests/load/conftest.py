"""Load fixtures: the users service and the gateway as real processes with the SHIPPED password cost.

Nothing here lowers argon2 or the hashing concurrency: these tests exist because the unit tests'
cheap hashes hid what a crowd of sign-ups does to the real settings. Only the gateway's per-IP
limit on the auth routes is raised, an operator setting, since every test client here is one IP.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from services.gateway.settings import Settings as GatewaySettings
from tests.gateway.conftest import gateway_env
from tests.support.processes import VENV_BIN, ManagedProcess, free_port, http_ok
from tests.support.stack import Stack

SHORT_QUEUE_SECONDS = 0.25


@dataclass
class UsersBehindGateway:
    users_url: str
    gateway_url: str
    users: ManagedProcess
    gateway: ManagedProcess

    @property
    def api(self) -> str:
        return self.gateway_url + "/api/v1"


def _gateway_env(stack: Stack) -> dict[str, str]:
    env = gateway_env(stack)
    # The shipped breaker, not the gateway tests' twitchy one: the point is that real settings hold.
    shipped = GatewaySettings()
    env["GATEWAY_BREAKER_THRESHOLD"] = str(shipped.breaker_threshold)
    env["GATEWAY_BREAKER_COOLDOWN_SECONDS"] = str(shipped.breaker_cooldown_seconds)
    env["GATEWAY_RATE_LIMIT_AUTH"] = "100000/minute"
    env["GATEWAY_LOG_LEVEL"] = "WARNING"
    return env


@contextmanager
def users_behind_gateway(
    directory: Path, users_env: dict[str, str] | None = None
) -> Iterator[UsersBehindGateway]:
    """A users process (SQLite, shipped settings but `users_env`) and a gateway in front of it."""
    stack = Stack(directory)
    (directory / "data").mkdir(parents=True, exist_ok=True)
    users = stack.service_process("users", {"USERS_LOG_LEVEL": "WARNING", **(users_env or {})})
    port = free_port()
    gateway_url = f"http://127.0.0.1:{port}"
    gateway = ManagedProcess(
        "gateway",
        [str(VENV_BIN / "ordersaga"), "serve", "gateway", "--port", str(port)],
        directory / "gateway.log",
        _gateway_env(stack),
        ready=http_ok(gateway_url + "/health"),
    )
    try:
        users.start(wait=False)
        gateway.start(timeout=60)
        users.wait_ready(60)
        yield UsersBehindGateway(stack.url("users"), gateway_url, users, gateway)
    finally:
        gateway.stop()
        users.stop()


@pytest.fixture(scope="module")
def shipped(tmp_path_factory: pytest.TempPathFactory) -> Iterator[UsersBehindGateway]:
    """Nothing lowered, nothing raised in the users service."""
    with users_behind_gateway(tmp_path_factory.mktemp("shipped")) as running:
        yield running


@pytest.fixture(scope="module")
def short_queue(tmp_path_factory: pytest.TempPathFactory) -> Iterator[UsersBehindGateway]:
    """The shipped cost and concurrency, with the queue timeout an operator lowers to shed sooner
    (README, "Password hashing cost"): so a burst the test client can send surely overflows it."""
    env = {"USERS_PASSWORD_HASH_QUEUE_TIMEOUT_SECONDS": str(SHORT_QUEUE_SECONDS)}
    with users_behind_gateway(tmp_path_factory.mktemp("short-queue"), env) as running:
        yield running


def client_of(running: UsersBehindGateway) -> httpx.AsyncClient:
    # Room for every request of a burst at once: the client must not be what queues them.
    limits = httpx.Limits(max_connections=400, max_keepalive_connections=400)
    return httpx.AsyncClient(base_url=running.api, timeout=30, limits=limits)
