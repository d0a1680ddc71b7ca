"""Three real processes of one service on ONE PostgreSQL database, with a real NATS (and Temporal).

Each replica is `ordersaga serve <service>` on its own port, as a deployment with several pods
runs it; the database is a fresh clone of the migrated template, shared by the three.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path

import asyncpg
import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.support.databases import PostgresDatabases, run_in_thread
from tests.support.identity import INTERNAL_TOKEN
from tests.support.nats import NatsServer
from tests.support.processes import VENV_BIN, ManagedProcess, free_port, http_ok, stop_together

REPLICAS = 3


@pytest.fixture(scope="module")
def nats_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NatsServer]:
    server = NatsServer(tmp_path_factory.mktemp("nats")).start()
    yield server
    server.stop()


class Replicas:
    """`count` processes of `service` sharing `database_url`; stopped together."""

    def __init__(self, service: str, database_url: str, directory: Path) -> None:
        self.service = service
        self.database_url = database_url
        self.directory = directory
        self.processes: list[ManagedProcess] = []
        self.urls: list[str] = []

    def start(self, env: Mapping[str, str], count: int = REPLICAS, *, name: str = "") -> list[str]:
        """Start `count` more replicas with `env`, wait until all answer /ready; their URLs."""
        prefix = self.service.upper()
        started: list[tuple[ManagedProcess, str]] = []
        for _ in range(count):
            port = free_port()
            url = f"http://127.0.0.1:{port}"
            index = len(self.processes)
            process = ManagedProcess(
                f"{self.service}-{name or index}",
                [str(VENV_BIN / "ordersaga"), "serve", self.service, "--port", str(port)],
                self.directory / f"{self.service}-{name or index}.log",
                {
                    "ORDERSAGA_INTERNAL_TOKEN": INTERNAL_TOKEN,
                    "ORDERSAGA_DATA_DIR": str(self.directory / f"data-{index}"),
                    f"{prefix}_DATABASE_URL": self.database_url,
                    # Migrated once (the template); replicas only check the revision.
                    f"{prefix}_AUTO_MIGRATE": "false",
                    **env,
                },
                ready=http_ok(url + "/ready"),
            )
            self.processes.append(process.start(wait=False))
            started.append((process, url))
        for process, url in started:
            process.wait_ready(90)
            self.urls.append(url)
        return [url for _, url in started]

    def stop(self) -> None:
        stop_together(self.processes)

    def logs(self) -> str:
        return "\n".join(f"--- {p.name} ---\n{p.tail(20)}" for p in self.processes)


ReplicasFactory = Callable[[str], Replicas]


@pytest.fixture
def replicas(postgres_databases: PostgresDatabases, tmp_path: Path) -> Iterator[ReplicasFactory]:
    made: list[Replicas] = []

    def make(service: str) -> Replicas:
        url = run_in_thread(postgres_databases.fresh(service))
        group = Replicas(service, url, tmp_path)
        made.append(group)
        return group

    yield make
    for group in made:
        group.stop()


async def metric(url: str, sample: str, **labels: str) -> float:
    """The sum of `sample` at `url`/metrics over the series matching `labels` (0 when absent)."""
    async with httpx.AsyncClient(timeout=5) as client:
        text = (await client.get(url + "/metrics")).text
    return sum(
        s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
        if s.name == sample and all(s.labels.get(k) == v for k, v in labels.items())
    )


async def per_replica(urls: list[str], sample: str, **labels: str) -> list[float]:
    return list(await asyncio.gather(*(metric(url, sample, **labels) for url in urls)))


async def scalar(database_url: str, sql: str) -> int:
    """One number from the shared database, read as an operator would with psql."""
    conn = await asyncpg.connect(database_url.replace("+asyncpg", ""), timeout=10)
    try:
        return int(await conn.fetchval(sql))
    finally:
        await conn.close()
