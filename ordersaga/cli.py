"""`ordersaga`: the operator's command line."""

from __future__ import annotations

import asyncio
import enum
import os
import sys
from collections.abc import Callable
from importlib.metadata import version
from pathlib import Path
from typing import Annotated, Any, cast

import typer
from rich.console import Console

from services.registry import DATA_SERVICES, SERVICES
from workflows.contract import REVIEW_THRESHOLD_CENTS

app = typer.Typer(
    no_args_is_help=True,
    add_completion=False,
    rich_markup_mode="rich",
    help="Run and operate ordersaga.",
    epilog="Examples:  [bold]ordersaga up[/]  ·  [bold]ordersaga load --orders 50[/]",
)
console = Console(stderr=True)

# Choices, so that a wrong name is a usage error (exit 2) listing the valid ones.
Service = enum.Enum("Service", {name: name for name in SERVICES}, type=str)  # type: ignore[misc]
DataService = enum.Enum("DataService", {name: name for name in DATA_SERVICES}, type=str)  # type: ignore[misc]


class LogFormat(enum.StrEnum):
    auto = "auto"
    console = "console"
    json = "json"


class LogLevel(enum.StrEnum):
    debug = "debug"
    info = "info"
    warning = "warning"
    error = "error"


def _examples(*lines: str) -> str:
    # Rich markup mode folds single newlines; each example stays on its own line with a blank one between.
    return "Examples:\n\n" + "\n\n".join(f"  [bold]{line}[/]" for line in lines)


def _version(value: bool) -> None:
    if value:
        print(f"ordersaga {version('ordersaga')}")
        raise typer.Exit()


@app.callback()
def _main(
    _: Annotated[
        bool,
        typer.Option("--version", callback=_version, is_eager=True, help="Print the version and exit."),
    ] = False,
) -> None:
    """Run and operate ordersaga."""


@app.command(epilog=_examples("ordersaga serve users", "ordersaga serve gateway --port 8080"))
def serve(
    service: Annotated[Service, typer.Argument(help="The service to run.")],
    host: Annotated[str | None, typer.Option(help="Bind address (default from settings).")] = None,
    port: Annotated[
        int | None, typer.Option(help="Port (default <SERVICE>_PORT or the service's own).")
    ] = None,
) -> None:
    """Run one service with uvicorn; its migrations are applied on start unless *_AUTO_MIGRATE=false."""
    from pydantic import ValidationError

    from services.kit.app import serve

    spec = SERVICES[service.value]
    try:
        settings = spec.settings()
    except ValidationError as err:
        # A refused setting (ORDERSAGA_ENV=production and a development secret, say) is the
        # operator's to fix: say which, without a traceback.
        for problem in err.errors():
            where = " ".join(["settings", *(str(part) for part in problem["loc"])])
            console.print(f"[red]{service.value} {where}[/]: {problem['msg']}", soft_wrap=True)
        raise typer.Exit(2) from None
    overrides = {k: v for k, v in (("host", host), ("port", port)) if v is not None}
    if overrides:
        settings = settings.model_copy(update=overrides)
    application = spec.create_app(settings)
    # uvicorn would take X-Forwarded-For from any local peer as the client's address; only the
    # gateway uses that address (rate limits), and it decides whom to believe (GATEWAY_TRUSTED_PROXIES).
    serve(  # uvicorn.run on a server that ticks once a second (services/kit/app.py)
        application,
        host=settings.host,
        port=settings.port,
        log_config=None,
        access_log=False,
        proxy_headers=False,
    )


@app.command(
    epilog=_examples(
        "ordersaga migrate orders", "ORDERS_DATABASE_URL=postgresql+asyncpg://... ordersaga migrate orders"
    )
)
def migrate(
    service: Annotated[
        DataService, typer.Argument(help="The service whose database to migrate (the gateway has none).")
    ],
) -> None:
    """Apply a service's migrations to its database (the explicit production step)."""
    from services.kit.migrations import upgrade

    spec = SERVICES[service.value]
    settings = spec.settings()
    url = settings.resolved_database_url()
    asyncio.run(upgrade(service.value, url))
    console.print(f"[green]{service.value}[/]: migrated to head")


@app.command(epilog=_examples("ordersaga worker", "TEMPORAL_ADDRESS=temporal:7233 ordersaga worker"))
def worker() -> None:
    """Run the Temporal worker (task queue `orders`) until SIGTERM or Ctrl-C."""
    from pydantic import ValidationError

    from workers.main import serve as serve_worker
    from workers.settings import WorkerSettings

    try:
        settings = WorkerSettings()
    except ValidationError as err:
        for problem in err.errors():
            where = ".".join(str(part) for part in problem["loc"]) or "settings"
            console.print(f"[red]worker settings[/] {where}: {problem['msg']}")
        raise typer.Exit(2) from None
    # On uvloop, as uvicorn runs the services: the worker's loop is woken from the SDK's threads for
    # every activation and activity result, which costs asyncio's own loop noticeably more.
    with asyncio.Runner(loop_factory=_uvloop_factory()) as runner:
        runner.run(serve_worker(settings))
    _exit(0)


def _uvloop_factory() -> Callable[[], asyncio.AbstractEventLoop] | None:
    try:
        import uvloop
    except ImportError:  # not built for this platform: asyncio's loop
        return None
    return uvloop.new_event_loop


@app.command(
    epilog=_examples(
        "ordersaga up",
        "ordersaga up --data-dir /tmp/demo --workers 2",
        "ordersaga up --postgres postgresql://postgres@127.0.0.1:5432/postgres --replicas 2 --gateways 2",
    )
)
def up(
    data_dir: Annotated[
        Path | None,
        typer.Option(envvar="ORDERSAGA_DATA_DIR", show_envvar=True, help="State and logs (default .data)."),
    ] = None,
    otel: Annotated[
        str | None,
        typer.Option(
            envvar="ORDERSAGA_OTEL_ENDPOINT",
            show_envvar=True,
            help="An OTLP/HTTP collector address (e.g. http://127.0.0.1:4318): turns tracing on.",
        ),
    ] = None,
    workers: Annotated[
        int | None,
        typer.Option(
            min=1, envvar="ORDERSAGA_WORKERS", show_envvar=True, help="Worker processes (default 1)."
        ),
    ] = None,
    postgres: Annotated[
        str | None,
        typer.Option(
            envvar="ORDERSAGA_POSTGRES_URL",
            show_envvar=True,
            help="A PostgreSQL server: each service gets its own database there "
            "(ORDERSAGA_DATABASE_PREFIX<service>, default ordersaga_<service>), created and migrated. "
            "Default: SQLite files in the data dir.",
        ),
    ] = None,
    replicas: Annotated[
        int | None,
        typer.Option(
            min=1,
            envvar="ORDERSAGA_REPLICAS",
            show_envvar=True,
            help="Processes of each service (default 1; more needs --postgres). The first listens on "
            "the service's port, the others on free ports; the gateways and workers spread over them.",
        ),
    ] = None,
    gateways: Annotated[
        int | None,
        typer.Option(
            min=1,
            envvar="ORDERSAGA_GATEWAYS",
            show_envvar=True,
            help="Gateway processes (default 1): the first on GATEWAY_PORT, the others on free ports.",
        ),
    ] = None,
    log_format: Annotated[
        LogFormat | None,
        typer.Option(
            envvar="ORDERSAGA_LOG_FORMAT",
            show_envvar=True,
            help="The children's lines on the console: auto is console in a terminal, json otherwise.",
        ),
    ] = None,
    log_level: Annotated[
        LogLevel | None,
        typer.Option(
            envvar="ORDERSAGA_LOG_LEVEL",
            show_envvar=True,
            help="The lowest level of the children's lines shown (default warning); "
            "every line is in <data dir>/logs/<process>.log.",
        ),
    ] = None,
    verbose: Annotated[
        bool, typer.Option("--verbose", "-v", help="Show the children's info lines too (--log-level info).")
    ] = False,
) -> None:
    """Run the whole system: Temporal + Web UI, NATS, the services, the worker and the gateway."""
    from ordersaga.up import UpSettings, run_up

    overrides: dict[str, Any] = {}
    if log_format is not None:
        overrides["log_format"] = log_format.value
    if log_level is not None:
        overrides["log_level"] = log_level.value
    elif verbose:
        overrides["log_level"] = "info"
    if data_dir is not None:
        overrides["data_dir"] = data_dir
    if workers is not None:
        overrides["workers"] = workers
    if otel is not None:
        overrides["otel_endpoint"] = otel if "://" in otel else f"http://{otel}"
    for key, value in (("postgres_url", postgres), ("replicas", replicas), ("gateways", gateways)):
        if value is not None:
            overrides[key] = value
    settings = UpSettings(**overrides)
    if problem := settings.problem():
        raise typer.BadParameter(problem, param_hint="--replicas" if "--replicas" in problem else None)
    _exit(run_up(settings))


DataDir = Annotated[
    Path, typer.Option(envvar="ORDERSAGA_DATA_DIR", show_envvar=True, help="The data dir of `ordersaga up`.")
]


@app.command(epilog=_examples("ordersaga seed", "ordersaga seed --data-dir /tmp/demo"))
def seed(
    data_dir: DataDir = Path(".data"),
) -> None:
    """Create the admin, the demo customer with test cards, and the demo catalog (idempotent)."""
    import httpx

    from ordersaga.seed import Seeder
    from ordersaga.up import UpSettings

    settings = UpSettings(data_dir=data_dir)
    creds = settings.credentials(data_dir)
    urls = {name: f"http://127.0.0.1:{SERVICES[name].settings().port}" for name in DATA_SERVICES}
    with httpx.Client(timeout=30) as client:
        result = Seeder(urls, creds, client).run()
    console.print(f"seeded: {len(result.products)} products, demo customer {creds.demo_email}")


@app.command(
    epilog=_examples(
        "ordersaga load --orders 200 --rate 10",
        "ordersaga load --duration 60 --concurrency 8 --cards success=80,declined=15,transient=5",
    )
)
def load(
    api: Annotated[
        str, typer.Option(help="The gateway's public API; several comma-separated are spread over.")
    ] = "http://127.0.0.1:8000/api/v1",
    orders: Annotated[int | None, typer.Option(help="How many orders (omit with --duration).")] = 100,
    duration: Annotated[float | None, typer.Option(help="Seconds to keep sending.")] = None,
    rate: Annotated[float | None, typer.Option(help="Open loop: orders per second.")] = None,
    concurrency: Annotated[int | None, typer.Option(help="Closed loop: customers at once.")] = None,
    cards: Annotated[str, typer.Option(help="Card mix, e.g. success=80,declined=15,transient=5.")] = (
        "success=90,declined=10"
    ),
    hot_share: Annotated[float, typer.Option(help="Share of orders on one hot product.")] = 0.2,
    lines: Annotated[int, typer.Option(help="Lines per order.")] = 1,
    customers: Annotated[int, typer.Option(help="Customers to register for the run.")] = 10,
    phone_every: Annotated[
        int,
        typer.Option(min=0, help="Every n-th customer signs up with a phone, told by SMS too (0: none)."),
    ] = 0,
    deadline: Annotated[float, typer.Option(help="Seconds an order may take to become final.")] = 120.0,
    seed: Annotated[int | None, typer.Option(help="Random seed, for a reproducible mix.")] = None,
    json_path: Annotated[Path | None, typer.Option("--json", help="Write the report as JSON.")] = None,
    data_dir: Annotated[
        Path,
        typer.Option(
            envvar="ORDERSAGA_DATA_DIR",
            show_envvar=True,
            help="Admin credentials (stock top-up) and the internal token.",
        ),
    ] = Path(".data"),
    completion: Annotated[
        str | None,
        typer.Option(
            help="How an order's end is seen: temporal (await the saga's result) or poll (GET the order). "
            "Default: temporal when its address answers, else poll."
        ),
    ] = None,
    temporal_address: Annotated[
        str | None,
        typer.Option(
            envvar="TEMPORAL_ADDRESS",
            show_envvar=True,
            help="Temporal of the stack (default 127.0.0.1:7233).",
        ),
    ] = None,
    direct_orders: Annotated[
        str | None,
        typer.Option(
            help="The orders service's URL: POST orders there with the gateway's identity headers "
            "(bypassing the gateway); everything else still goes through --api."
        ),
    ] = None,
    review_threshold_cents: Annotated[
        int, typer.Option(help="Pick products so that orders stay below the worker's review threshold.")
    ] = REVIEW_THRESHOLD_CENTS,
) -> None:
    """Drive orders through the gateway; report throughput, latency percentiles and outcomes."""
    import json

    from ordersaga.load import Completion, LoadPlan, parse_mix, run_load
    from services.kit.temporal import TemporalSettings

    if orders is not None and duration is not None:
        orders = None
    if completion not in (None, "temporal", "poll"):
        console.print(f"[red]--completion is temporal or poll, not {completion!r}[/]")
        raise typer.Exit(2)
    creds_file = data_dir / "credentials.json"
    creds = json.loads(creds_file.read_text()) if creds_file.exists() else {}
    # As `up` decides it: the environment's token first, else the one the data dir generated.
    internal_token = os.environ.get("ORDERSAGA_INTERNAL_TOKEN") or creds.get("internal_token")
    if direct_orders and not internal_token:
        console.print(f"[red]--direct-orders needs ORDERSAGA_INTERNAL_TOKEN or {creds_file}[/]")
        raise typer.Exit(2)
    try:
        mix = parse_mix(cards)
    except ValueError as err:
        console.print(f"[red]{err}[/]")
        raise typer.Exit(2) from None
    plan = LoadPlan(
        api=api.rstrip("/"),
        orders=orders,
        duration=duration,
        rate=rate if concurrency is None else None,
        concurrency=concurrency,
        card_mix=mix,
        hot_share=hot_share,
        lines=lines,
        customers=customers,
        phone_every=phone_every,
        deadline=deadline,
        seed=seed,
        admin_email=creds.get("admin_email"),
        admin_password=creds.get("admin_password"),
        completion=cast(Completion, completion or "auto"),  # checked above
        temporal_address=temporal_address or TemporalSettings().address,
        direct_orders=direct_orders.rstrip("/") if direct_orders else None,
        internal_token=internal_token,
        review_threshold_cents=review_threshold_cents,
    )
    try:
        code = run_load(plan, json_path=json_path)
    except (RuntimeError, ValueError) as err:  # Temporal unreachable when asked for, too few products
        console.print(f"[red]ordersaga load: {err}[/]")
        raise typer.Exit(1) from None
    _exit(code)


@app.command(
    epilog=_examples(
        "ordersaga chaos --data-dir /tmp/chaos --free-ports",
        "ordersaga chaos --data-dir /tmp/chaos --orders 400 --faults 20 --seed 7 --json chaos.json",
        "ordersaga chaos --data-dir /tmp/chaos --free-ports --kinds latency,partition,cut --faults 6",
    )
)
def chaos(
    data_dir: Annotated[
        Path,
        typer.Option(
            help="A data dir of its own: the run starts a whole stack there (a fresh one audits cleanly)."
        ),
    ],
    orders: Annotated[int, typer.Option(min=1, help="Orders to send.")] = 200,
    rate: Annotated[
        float, typer.Option(min=0.1, help="Orders per second (the faults spread over orders/rate s).")
    ] = 4.0,
    faults: Annotated[
        int, typer.Option(min=0, help="Faults to inject (each kind of --kinds once before any repeats).")
    ] = 9,
    kinds: Annotated[
        str | None,
        typer.Option(
            help="Comma-separated fault kinds (default: all this run can inject): a service, gateway, "
            "worker, nats (SIGKILL + restart), temporal-pause, temporal-kill, latency, partition, cut "
            "(a link through the fault proxy), cancel, terminate (operator actions on a running saga), "
            "postgres-kill-connections, postgres-restart (on PostgreSQL only)."
        ),
    ] = None,
    seed: Annotated[
        int, typer.Option(help="Seed of the fault schedule and the load: the same seed replays a run.")
    ] = 1,
    hot_stock: Annotated[
        int, typer.Option(min=0, help="Stock of the hot product, so that orders race for it.")
    ] = 15,
    quiesce_timeout: Annotated[
        float, typer.Option(help="Seconds to wait for every order to become final before the audit.")
    ] = 180.0,
    free_ports: Annotated[
        bool, typer.Option("--free-ports", help="Run the stack on free ports (beside another stack).")
    ] = False,
    json_path: Annotated[Path | None, typer.Option("--json", help="Write the summary as JSON.")] = None,
    postgres: Annotated[
        str | None,
        typer.Option(
            help="A PostgreSQL server for every service (as `up --postgres`), in databases of this run's "
            "own prefix; the audit reads them there."
        ),
    ] = None,
    database_prefix: Annotated[
        str | None,
        typer.Option(help="With --postgres: the databases' prefix (default chaos_<seed>_<random>_)."),
    ] = None,
    replicas: Annotated[
        int, typer.Option(min=1, help="Processes of each data service (needs --postgres).")
    ] = 1,
    workers: Annotated[int, typer.Option(min=1, help="Worker processes.")] = 1,
    gateways: Annotated[int, typer.Option(min=1, help="Gateway processes.")] = 1,
    own_postgres: Annotated[
        bool,
        typer.Option(
            "--own-postgres",
            help="Run a private PostgreSQL server for the run (initdb in a temporary directory), so "
            "that postgres-restart applies; in place of --postgres.",
        ),
    ] = False,
    keep_postgres: Annotated[
        bool,
        typer.Option(
            "--keep-postgres", help="With --own-postgres: keep its directory (stopped) after the run."
        ),
    ] = False,
) -> None:
    """Load plus seeded faults (kills, network, operator actions), then an audit (exit 1 on a violation)."""
    from ordersaga.chaos import run_chaos

    _exit(
        run_chaos(
            data_dir,
            orders,
            rate,
            faults,
            seed,
            hot_stock=hot_stock,
            quiesce_timeout=quiesce_timeout,
            free_ports=free_ports,
            json_path=json_path,
            kinds=[k.strip() for k in kinds.split(",") if k.strip()] if kinds else None,
            postgres_url=postgres,
            database_prefix=database_prefix,
            replicas=replicas,
            workers=workers,
            gateways=gateways,
            own_postgres=own_postgres,
            keep_postgres=keep_postgres,
        )
    )


def _register_audit() -> None:
    from ordersaga.audit import cli as audit_cli

    app.add_typer(audit_cli, name="audit", help="Audit every invariant of a stack's state; exit 1 on any.")


_register_audit()


def _register_orders() -> None:
    from ordersaga.orders_cli import cli as orders_cli

    app.add_typer(orders_cli, name="orders", help="The orders' event log and its projection: rebuild, check.")


_register_orders()


@app.command("codec-server", epilog=_examples("ORDERSAGA_PAYLOAD_KEYS=... ordersaga codec-server"))
def codec_server() -> None:
    """Serve the payload codec for the Temporal Web UI (needs ORDERSAGA_PAYLOAD_KEYS)."""
    from ordersaga.codec_server import serve

    serve()


@app.command(epilog=_examples("ordersaga status", "ordersaga status --data-dir /tmp/demo --json"))
def status(
    data_dir: DataDir = Path(".data"),
    as_json: Annotated[bool, typer.Option("--json", help="Print the parts as JSON.")] = False,
) -> None:
    """Which parts of the stack `ordersaga up` runs answer now; exit 0 when all are up, 1 otherwise."""
    from ordersaga.status import status_command

    _exit(status_command(data_dir, as_json=as_json, console=Console()))


@app.command(epilog=_examples("ordersaga mail", "ordersaga mail --limit 5"))
def mail(
    data_dir: DataDir = Path(".data"),
    limit: Annotated[int, typer.Option(help="How many of the newest messages.")] = 20,
) -> None:
    """List the emails and SMS that the local sinks received."""
    from ordersaga.mail import mail_command

    mail_command(data_dir, limit)


@app.command(
    epilog=_examples(
        "ordersaga replay histories/",
        "ordersaga replay -q \"OrderStatus='CANCELLED'\"",
    )
)
def replay(
    files: Annotated[list[Path] | None, typer.Argument(help="History JSON files or folders of them.")] = None,
    workflow_id: Annotated[
        list[str] | None, typer.Option("--workflow-id", "-w", help="Fetch from the server.")
    ] = None,
    query: Annotated[
        str | None, typer.Option("--query", "-q", help="Visibility query, e.g. OrderStatus='CANCELLED'.")
    ] = None,
    against_running: Annotated[
        bool,
        typer.Option(help="Deploy gate: replay every running saga's history on this code."),
    ] = False,
) -> None:
    """Replay histories against the current workflow code; exit 1 on any nondeterminism."""
    from ordersaga.replay import RUNNING_SAGAS_QUERY, fetch_histories, load_history_file, replay_histories
    from services.kit.temporal import connect

    if against_running:
        query = f"({query}) AND {RUNNING_SAGAS_QUERY}" if query else RUNNING_SAGAS_QUERY

    async def run() -> int:
        sources = []
        for path in _history_paths(files or []):
            try:
                sources.append((str(path), load_history_file(path)))
            except (OSError, ValueError) as err:
                print(f"error  {path}: {err}")
                return 2
        if workflow_id or query:
            from temporalio.service import RPCError

            try:
                client = await connect()
                ids = workflow_id or []
                sources.extend(
                    [item async for item in fetch_histories(client, workflow_ids=ids, query=query)]
                )
            except RPCError as err:
                print(f"error  {err.message or err}")
                return 2
        if not sources:
            if against_running and not files and not workflow_id:
                print("no running saga to replay: 0 replayed ok, 0 failed")
                return 0
            print("nothing to replay: give files, --workflow-id or --query")
            return 2
        outcomes = await replay_histories(sources)
        for outcome in outcomes:
            verdict = "ok" if outcome.ok else f"nondeterministic: {outcome.reason}"
            print(
                f"{verdict if outcome.ok else 'FAIL'}  {outcome.source}  ({outcome.workflow_id})"
                + ("" if outcome.ok else f"  {verdict}")
            )
        failed = sum(not o.ok for o in outcomes)
        print(f"{len(outcomes) - failed} replayed ok, {failed} failed")
        return 1 if failed else 0

    _exit(asyncio.run(run()))


def _history_paths(paths: list[Path]) -> list[Path]:
    found: list[Path] = []
    for path in paths:
        found.extend(sorted(path.rglob("*.json")) if path.is_dir() else [path])
    return found


def _exit(code: int) -> None:
    # The SDK's native runtime can crash during interpreter teardown (temporalio/sdk-python#300);
    # leave without teardown so that the exit code is the command's own.
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


from ordersaga.deploy import app as deploy_app  # noqa: E402  (kept apart from the commands above)

app.add_typer(deploy_app, name="deploy")


def main() -> None:
    app()


if __name__ == "__main__":
    main()
