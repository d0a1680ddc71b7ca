"""Outage tests: real processes on stacks of their own, whose dependencies the tests take away.

No fixture here is shared with another test directory: each stack is started, broken and brought
back inside one test module, so nothing that expects a healthy stack ever sees it.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from tests.support.identity import INTERNAL_TOKEN
from tests.support.processes import VENV_BIN, ManagedProcess, free_port, http_ok

# The gateway gives an upstream 5 s; a service must have answered (503 or not) well before that.
GATEWAY_TIMEOUT_SECONDS = 5.0


@dataclass
class Timed:
    response: httpx.Response
    seconds: float


def timed(method: str, url: str, **kwargs: Any) -> Timed:
    """One request with a client patience far beyond the gateway's, so the service's own bound shows."""
    started = time.monotonic()
    response = httpx.request(method, url, timeout=30.0, **kwargs)
    return Timed(response, time.monotonic() - started)


def assert_unavailable(answer: Timed, code: str, bound: float) -> None:
    """A 503 problem+json that says when to retry, answered within `bound` seconds."""
    response = answer.response
    assert response.status_code == 503, f"{response.status_code} {response.text}"
    assert response.headers["content-type"].startswith("application/problem+json"), response.headers
    assert response.json()["code"] == code, response.text
    assert int(response.headers["Retry-After"]) > 0, response.headers
    assert answer.seconds < bound, f"answered after {answer.seconds:.2f}s, over {bound}s"


def service_process(
    name: str, directory: Path, env: Mapping[str, str], port: int | None = None
) -> tuple[ManagedProcess, str]:
    """One service as `ordersaga serve` runs it, alone: no saga engine, no NATS unless `env` says so."""
    port = port or free_port()
    url = f"http://127.0.0.1:{port}"
    full_env = {
        "ORDERSAGA_INTERNAL_TOKEN": INTERNAL_TOKEN,
        "ORDERSAGA_DATA_DIR": str(directory / "data"),
        "NATS_URL": "",
        "ORDERS_SAGA_ENGINE": "none",
        **env,
    }
    argv = [str(VENV_BIN / "ordersaga"), "serve", name, "--port", str(port)]
    process = ManagedProcess(name, argv, directory / f"{name}.log", full_env, ready=http_ok(url + "/ready"))
    return process, url


def wait_until(check: Callable[[], bool], timeout: float, what: str) -> float:
    """Poll `check()` until true; returns how long it took."""
    started = time.monotonic()
    while time.monotonic() - started < timeout:
        try:
            if check():
                return time.monotonic() - started
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    raise AssertionError(f"{what}: not within {timeout}s")
