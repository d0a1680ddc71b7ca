"""Fixtures shared by the whole suite: databases on both backends, and in-process service clients."""

from __future__ import annotations

import os
import sys
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
from _pytest.nodeid import NodeId
from asgi_lifespan import LifespanManager

from services.registry import SERVICES
from tests.support.databases import (
    PostgresDatabases,
    SqliteDatabases,
    postgres_admin_url,
    postgres_reachable,
    run_in_thread,
)
from tests.support.driver import Driver
from tests.support.identity import INTERNAL_TOKEN
from tests.support.prerequisites import missing
from tests.support.stack import Stack, driving, running_stack

_EXIT_STATUS = pytest.StashKey[int]()


@pytest.fixture(scope="session")
def postgres_databases() -> Iterator[PostgresDatabases]:
    url = postgres_admin_url()
    reason = postgres_reachable(url)
    if reason is not None:
        missing(f"PostgreSQL not reachable at {url}: {reason}")
    databases = PostgresDatabases(url)
    yield databases
    databases.drop_all()


@pytest.fixture(scope="session")
def sqlite_databases(tmp_path_factory: pytest.TempPathFactory) -> SqliteDatabases:
    return SqliteDatabases(tmp_path_factory.mktemp("sqlite-templates"))


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)


DatabaseFactory = Callable[[str], Any]


@pytest.fixture
def fresh_database(
    backend: str, request: pytest.FixtureRequest, tmp_path: Path, sqlite_databases: SqliteDatabases
) -> Iterator[DatabaseFactory]:
    """`await fresh_database("users")` → the URL of an empty, migrated database on this test's
    backend (on PostgreSQL one the pool has emptied, see tests/support/databases.py)."""
    # Resolved here, in sync setup, so that an unreachable PostgreSQL skips (or fails under CI) early.
    postgres: PostgresDatabases | None = (
        request.getfixturevalue("postgres_databases") if backend == "postgres" else None
    )

    lent: list[tuple[str, str]] = []

    async def make(service: str) -> str:
        if postgres is None:
            return await sqlite_databases.fresh(service, tmp_path)
        url = await postgres.lend(service)
        lent.append((service, url))
        return url

    yield make
    if postgres is not None:
        for service, url in lent:
            run_in_thread(postgres.give_back(service, url))


ServiceClientFactory = Callable[..., AbstractAsyncContextManager[httpx.AsyncClient]]


@pytest.fixture
def service_client(fresh_database: DatabaseFactory, tmp_path: Path) -> ServiceClientFactory:
    """`async with service_client("users", **settings) as client:` → the service app in-process."""

    @asynccontextmanager
    async def open_client(service: str, **overrides: Any) -> AsyncIterator[httpx.AsyncClient]:
        spec = SERVICES[service]
        if service == "orders":
            overrides.setdefault("saga_engine", "none")  # in-process tests bring their own SagaPort
        url = overrides.pop("database_url", None) or await fresh_database(service)
        settings = spec.settings(
            database_url=url,
            auto_migrate=False,
            internal_token=INTERNAL_TOKEN,
            data_dir=tmp_path / "data",
            **overrides,
        )
        app = spec.create_app(settings)
        async with LifespanManager(app, startup_timeout=60, shutdown_timeout=60) as manager:
            transport = httpx.ASGITransport(app=manager.app)
            async with httpx.AsyncClient(transport=transport, base_url=f"http://{service}") as client:
                client.app = app  # type: ignore[attr-defined]
                yield client

    return open_client


# ---- the whole stack as real processes (Temporal dev server, services, worker), once per session


@pytest.fixture(scope="session")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    with running_stack(tmp_path_factory.mktemp("stack")) as running:
        yield running


@pytest.fixture
async def driver(stack: Stack) -> AsyncIterator[Driver]:
    async with driving(stack) as client:
        yield client


# ---- how `make test` spreads the suite over three pytest-xdist workers (`--dist loadgroup`)

TESTS = Path(__file__).parent
# Tests that measure what the machine can take (a crowd of logins, the chaos run's throughput) run
# alone after the parallel part, so a neighbour's load does not decide their result. The rest of
# tests/chaos (the audit's breaks, the fault proxy) measures nothing and spreads; the loose ends
# stay alone, since they hold a saga at one step while `temporal workflow terminate` runs, and
# on a busy machine the held activity's timeout can fire first.
SERIAL_PATHS = ("load/", "chaos/test_chaos.py", "chaos/test_loose_ends.py")


# Directories whose conftest starts a stack once per session for all their files.
SESSION_STACK_DIRECTORIES = frozenset({"events", "observability", "web"})

# `make test` is the gating run a contributor waits for before a push: the long variants of the
# real-process scenario families (marker `full`) skip, each family keeping a gating test that runs.
# ORDERSAGA_TEST_FULL=1 (which .ci/run sets) runs every variant too.
FULL_RUN = os.environ.get("ORDERSAGA_TEST_FULL") == "1"
SKIP_UNLESS_FULL = pytest.mark.skip(
    reason="long variant of a scenario family whose gating test runs; ORDERSAGA_TEST_FULL=1 runs it"
)

# Seconds each long xdist group took (setup, call and teardown, long variants left out; one process
# per directory, 2026-12-02, on a loaded machine, so only their ranks matter), so that the longest
# start first and the short ones fill in behind them: the last group to finish decides the wall time.
# A figure gone stale costs balance, never coverage; a group not listed counts as
# UNLISTED_GROUP_SECONDS, and tests in no group (in-process, any worker) go last as filler.
GROUP_SECONDS: dict[str, float] = {
    "web": 302,  # both browser files on one stack, 2026-12-04, load ~20
    "security/test_token_revocation.py": 191,
    "saga/test_step_faults.py": 167,
    "e2e/test_up.py": 155,
    "topology/test_replicas.py": 130,
    "hostile/test_schemathesis.py": 130,
    "saga/test_operator_actions.py": 123,
    "saga/test_saga_faults.py": 121,
    "outages/test_database_down.py": 120,
    "observability": 115,
    "saga/test_replay_live.py": 108,
    "events": 105,
    "outages/test_temporal_down.py": 90,
    "replay/test_replay.py": 90,
    "gateway/test_gateway_edge.py": 75,
    "rollout/test_rollout.py": 75,
    "security/test_production_secrets.py": 63,
    "security/test_internal_credential.py": 57,
    "saga/test_saga_paths.py": 45,
    "saga/test_compensation_budget.py": 45,
    "saga/test_saga_review_cancel.py": 40,
    "gateway/test_gateway_stack.py": 40,
    "security/test_codec_auth.py": 38,
    "replicas/test_replicas.py": 35,
    "outages/test_nats_down.py": 35,
    "security/test_ownership.py": 30,
}
UNLISTED_GROUP_SECONDS = 20.0


def _xdist_group(item: pytest.Item) -> str | None:
    """Tests that share an expensive fixture stay on one worker, so it starts once per run: a
    directory's session stack, or else a file's module-scoped one. The suite's session stack
    (`stack`) starts at most once per worker, so its files are groups of their own too and spread
    over the workers."""
    parts = item.path.relative_to(TESTS).parts
    if len(parts) == 1 or parts[0] == "services":
        return None  # each test builds its own in-process app: any worker will do
    if parts[0] in SESSION_STACK_DIRECTORIES:
        return parts[0]
    return "/".join(parts)  # any other directory, a new one too: each file its own group


def _group_seconds(item: pytest.Item, group: str | None) -> float:
    if group is not None:
        return GROUP_SECONDS.get(group, UNLISTED_GROUP_SECONDS)
    # A slow test in no group must not be the last one left at the tail.
    return UNLISTED_GROUP_SECONDS if item.get_closest_marker("slow") is not None else 0.0


def _pin_to_group(item: pytest.Item, group: str) -> None:
    """Append `@group` to the test's id, as `--dist loadgroup` expects. xdist 3.8 does it by setting
    `item._nodeid`, which pytest 9.2 no longer reads (an item's id is its `_id` now): without this,
    every test was its own unit, and each worker set up every module's stack for the tests it got."""
    if "@" in item.nodeid:
        return  # already done (an xdist that knows the new ids)
    item._id = NodeId.parse(f"{item.nodeid}@{group}")  # type: ignore[attr-defined]


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    loadgroup = bool(getattr(config.option, "loadgroup", False))  # set on xdist's workers
    groups: dict[int, str | None] = {}
    for item in items:
        if item.path.relative_to(TESTS).as_posix().startswith(SERIAL_PATHS):
            item.add_marker(pytest.mark.serial)
        if not FULL_RUN and item.get_closest_marker("full") is not None:
            item.add_marker(SKIP_UNLESS_FULL)
        group = groups[id(item)] = _xdist_group(item)
        if group is not None:
            item.add_marker(pytest.mark.xdist_group(group))
            if loadgroup:
                _pin_to_group(item, group)
    if loadgroup:
        # The controller queues the groups in the order of their first test here (the Makefile
        # passes --no-loadscope-reorder, which would otherwise order them by their number of tests).
        items.sort(key=lambda item: -_group_seconds(item, groups[id(item)]))


@pytest.hookimpl(tryfirst=True)
def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    session.config.stash[_EXIT_STATUS] = int(exitstatus)


@pytest.hookimpl(trylast=True)
def pytest_unconfigure(config: pytest.Config) -> None:
    """Leave with pytest's own status: the Temporal SDK's native runtime can crash during
    interpreter teardown (temporalio/sdk-python#300) and turn a green run into a red exit code."""
    status = config.stash.get(_EXIT_STATUS, None)
    if status is not None:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(status)
