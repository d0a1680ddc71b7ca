"""One stack for every observability test: the five services, the worker and the gateway as real
processes with tracing on (exporting to a receiver in this process), NATS for the outbox relay, and
the worker's SDK metrics endpoint."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass

import httpx
import pytest

from services.gateway.settings import UPSTREAMS
from tests.observability.otlp import OtlpReceiver
from tests.support.driver import Driver
from tests.support.nats import NatsServer
from tests.support.processes import VENV_BIN, ManagedProcess, free_port, http_ok
from tests.support.stack import Stack


@dataclass
class ObservedStack:
    stack: Stack
    receiver: OtlpReceiver
    gateway_url: str
    sdk_metrics_url: str

    def metrics_urls(self) -> dict[str, str]:
        """Every process's /metrics (the worker has two: its own and the SDK runtime's)."""
        urls = {name: self.stack.url(name) + "/metrics" for name in self.stack.ports}
        urls["worker"] = f"http://127.0.0.1:{self.stack.worker_metrics_port}/metrics"
        urls["worker-sdk"] = self.sdk_metrics_url
        urls["gateway"] = self.gateway_url + "/metrics"
        return urls


@pytest.fixture(scope="session")
def observed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ObservedStack]:
    directory = tmp_path_factory.mktemp("observed")
    receiver = OtlpReceiver().start()
    nats = NatsServer(directory / "nats").start()
    sdk_port = free_port()
    env = {
        "OTEL_EXPORTER_OTLP_ENDPOINT": receiver.endpoint,
        "OTEL_BSP_SCHEDULE_DELAY": "100",  # milliseconds: spans reach the receiver promptly
        "NATS_URL": nats.url,
        "WORKER_SDK_METRICS_PORT": str(sdk_port),
    }
    stack = Stack(directory, extra_env=env)
    gateway: ManagedProcess | None = None
    try:
        stack.start()
        port = free_port()
        gateway_url = f"http://127.0.0.1:{port}"
        gateway_env = dict(stack.common_env)
        gateway_env.update({f"GATEWAY_{name.upper()}_URL": stack.url(name) for name in UPSTREAMS})
        argv = [str(VENV_BIN / "ordersaga"), "serve", "gateway", "--port", str(port)]
        gateway = ManagedProcess(
            "gateway", argv, directory / "gateway.log", gateway_env, ready=http_ok(gateway_url + "/health")
        ).start(timeout=60)
        yield ObservedStack(stack, receiver, gateway_url, f"http://127.0.0.1:{sdk_port}/metrics")
    finally:
        if gateway is not None:
            gateway.stop()
        stack.stop()
        nats.stop()
        receiver.stop()


@pytest.fixture
async def driver(observed: ObservedStack) -> AsyncIterator[Driver]:
    running = Driver({name: observed.stack.url(name) for name in observed.stack.ports})
    yield running
    await running.close()


@pytest.fixture
async def api(observed: ObservedStack) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=observed.gateway_url + "/api/v1", timeout=30) as client:
        yield client
