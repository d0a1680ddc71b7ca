"""The whole ordersaga stack as real processes: Temporal dev server, five services, the worker."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator, Mapping
from contextlib import asynccontextmanager, contextmanager
from pathlib import Path

from services.registry import DATA_SERVICES
from tests.support.driver import Driver
from tests.support.identity import INTERNAL_TOKEN
from tests.support.processes import VENV_BIN, ManagedProcess, free_port, http_ok, stop_together
from tests.support.temporal import dev_server
from workflows.contract import REVIEW_THRESHOLD_CENTS

# Short retry budgets so failure paths finish in seconds; production defaults are in WorkerSettings.
TEST_WORKER_ENV = {
    "WORKER_PAYMENT_MAX_ATTEMPTS": "4",
    "WORKER_PAYMENT_INITIAL_INTERVAL_SECONDS": "0.2",
    "WORKER_PAYMENT_BUDGET_SECONDS": "20",
    "WORKER_REVIEW_THRESHOLD_CENTS": str(REVIEW_THRESHOLD_CENTS),
    "WORKER_GRACEFUL_SHUTDOWN_SECONDS": "2",
}


class Stack:
    def __init__(
        self,
        directory: Path,
        *,
        temporal_address: str | None = None,
        extra_env: Mapping[str, str] | None = None,
        worker_env: Mapping[str, str] | None = None,
    ) -> None:
        self.directory = directory
        # Added to every process's environment (for example NATS_URL and SMTP settings).
        self.extra_env = dict(extra_env or {})
        # Added to the worker's environment on every (re)start, after its defaults: for example its
        # service URLs pointed at fault-injecting proxies.
        self.worker_env = dict(worker_env or {})
        self.temporal: ManagedProcess | None = None
        self.temporal_address = temporal_address or ""
        self.ports = {name: free_port() for name in DATA_SERVICES}
        self.worker_metrics_port = free_port()
        self.processes: dict[str, ManagedProcess] = {}

    def url(self, service: str) -> str:
        return f"http://127.0.0.1:{self.ports[service]}"

    @property
    def common_env(self) -> dict[str, str]:
        return {
            "ORDERSAGA_INTERNAL_TOKEN": INTERNAL_TOKEN,
            "ORDERSAGA_DATA_DIR": str(self.directory / "data"),
            "TEMPORAL_ADDRESS": self.temporal_address,
            "TEMPORAL_NAMESPACE": "default",
            **self.extra_env,
        }

    def service_process(self, name: str, extra_env: Mapping[str, str] | None = None) -> ManagedProcess:
        env = dict(self.common_env)
        env[f"{name.upper()}_DATABASE_URL"] = (
            f"sqlite+aiosqlite:///{self.directory / 'data' / (name + '.db')}"
        )
        env.update(
            ORDERS_SAGA_SWEEP_INTERVAL_SECONDS="0.5",
            NOTIFICATIONS_POLL_INTERVAL_SECONDS="0.2",
        )
        env.update(extra_env or {})
        argv = [str(VENV_BIN / "ordersaga"), "serve", name, "--port", str(self.ports[name])]
        return ManagedProcess(
            name, argv, self.directory / f"{name}.log", env, ready=http_ok(self.url(name) + "/ready")
        )

    def worker_process(self, extra_env: Mapping[str, str] | None = None) -> ManagedProcess:
        env = dict(self.common_env)
        env.update(TEST_WORKER_ENV)
        env.update({f"WORKER_{name.upper()}_URL": self.url(name) for name in DATA_SERVICES})
        env.update(WORKER_METRICS_PORT=str(self.worker_metrics_port), WORKER_METRICS_HOST="127.0.0.1")
        env.update(self.worker_env)
        env.update(extra_env or {})
        argv = [str(VENV_BIN / "ordersaga"), "worker"]
        ready = http_ok(f"http://127.0.0.1:{self.worker_metrics_port}/ready")
        return ManagedProcess("worker", argv, self.directory / "worker.log", env, ready=ready)

    def start(self) -> Stack:
        (self.directory / "data").mkdir(parents=True, exist_ok=True)
        if not self.temporal_address:
            self.temporal, self.temporal_address = dev_server(self.directory)
            self.temporal.start(timeout=60)
        for name in DATA_SERVICES:
            self.processes[name] = self.service_process(name)
            self.processes[name].start(wait=False)
        for name in DATA_SERVICES:
            self.processes[name].wait_ready(90)
        self.processes["worker"] = self.worker_process().start()
        return self

    def restart(
        self,
        name: str,
        *,
        kill: bool = False,
        extra_env: Mapping[str, str] | None = None,
        wait: bool = True,
    ) -> None:
        process = self.processes[name]
        if kill:
            process.kill()
        else:
            process.stop()
        fresh = self.worker_process(extra_env) if name == "worker" else self.service_process(name, extra_env)
        fresh.start(timeout=90, wait=wait)
        self.processes[name] = fresh

    def stop(self) -> None:
        # The worker first, so its last activities still reach the services; then the five services
        # together (none needs another to shut down); Temporal last, once nothing talks to it.
        if "worker" in self.processes:
            self.processes["worker"].stop()
        stop_together(process for name, process in self.processes.items() if name != "worker")
        if self.temporal is not None:
            self.temporal.stop()

    def logs(self) -> str:
        return "\n".join(f"--- {name} ---\n{proc.tail(30)}" for name, proc in self.processes.items())


@contextmanager
def running_stack(directory: Path, extra_env: Mapping[str, str] | None = None) -> Iterator[Stack]:
    """A started stack, stopped afterwards, and stopped too if it fails to start."""
    stack = Stack(directory, extra_env=extra_env)
    try:
        stack.start()
        yield stack
    finally:
        stack.stop()


@asynccontextmanager
async def driving(stack: Stack) -> AsyncIterator[Driver]:
    driver = Driver({name: stack.url(name) for name in stack.ports})
    try:
        yield driver
    finally:
        await driver.close()
