"""The orders service on a private PostgreSQL that is stopped, then frozen, then brought back.

While the database is away every request that needs it is a 503 problem+json with Retry-After,
answered well inside the gateway's 5 s; readiness says 503 while liveness stays 200. Once the
database is back the same requests work without restarting the service, and every order accepted
before the outage is still there, with nothing recorded twice.
"""

from __future__ import annotations

import sqlite3
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import sqlalchemy.exc as sa_exc
from asgi_lifespan import LifespanManager

from services.kit.errors import unavailable_dependency
from services.orders.app import create_app
from services.orders.settings import Settings
from tests.outages.conftest import (
    assert_unavailable,
    service_process,
    timed,
    wait_until,
)
from tests.outages.postgres import PrivatePostgres
from tests.support.identity import INTERNAL_TOKEN, as_customer
from tests.support.processes import ManagedProcess

# A stopped server refuses connections at once; this is what "at once" may cost on a busy machine.
STOPPED_BOUND_SECONDS = 2.0
# A frozen one answers nothing: the checkout ping's 1 s, then the fresh connection's 1 s, and slack.
FROZEN_BOUND_SECONDS = 3.0


@pytest.fixture(scope="module")
def postgres() -> Iterator[PrivatePostgres]:
    server = PrivatePostgres().init().start()
    yield server
    server.destroy()


@pytest.fixture(scope="module")
def orders(postgres: PrivatePostgres, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    process: ManagedProcess
    process, url = service_process(
        "orders", tmp_path_factory.mktemp("orders-db-outage"), {"ORDERS_DATABASE_URL": postgres.url}
    )
    process.start(timeout=90)
    yield url
    process.stop()


def _order_body() -> dict[str, Any]:
    return {
        "items": [{"product_id": str(uuid.uuid4()), "quantity": 1}],
        "payment_method_id": str(uuid.uuid4()),
    }


def _place(orders: str, user: str, key: str, body: dict[str, Any]) -> httpx.Response:
    return timed(
        "POST", f"{orders}/orders", json=body, headers=as_customer(user) | {"Idempotency-Key": key}
    ).response


def _user_orders(orders: str, user: str) -> list[dict[str, Any]]:
    response = httpx.get(f"{orders}/users/{user}/orders?limit=100", headers=as_customer(user), timeout=10)
    assert response.status_code == 200, response.text
    return list(response.json()["items"])


def _check_outage(orders: str, user: str, order_id: str, bound: float) -> list[float]:
    """Every request that needs the database is a bounded 503; returns how long each took."""
    headers = as_customer(user)
    answers = [
        (
            timed(
                "POST", f"{orders}/orders", json=_order_body(), headers=headers | {"Idempotency-Key": "away"}
            ),
            "dependency_unavailable",
        ),
        (timed("GET", f"{orders}/orders/{order_id}", headers=headers), "dependency_unavailable"),
        (timed("GET", f"{orders}/users/{user}/orders", headers=headers), "dependency_unavailable"),
        (timed("GET", f"{orders}/ready"), "not_ready"),
    ]
    for answer, code in answers:
        assert_unavailable(answer, code, bound)
    # The process itself is fine: a liveness probe must not restart it for its database's outage.
    assert timed("GET", f"{orders}/health").response.status_code == 200
    return [answer.seconds for answer, _ in answers]


def _recovers(orders: str) -> float:
    return wait_until(lambda: httpx.get(f"{orders}/ready", timeout=5).status_code == 200, 20, "ready again")


def test_a_stopped_database_is_a_bounded_503_and_nothing_is_lost(
    postgres: PrivatePostgres, orders: str
) -> None:
    user = str(uuid.uuid4())
    bodies = {f"before-{n}": _order_body() for n in range(3)}
    before = {key: _place(orders, user, key, body) for key, body in bodies.items()}
    assert {r.status_code for r in before.values()} == {202}, [r.text for r in before.values()]
    accepted = {r.json()["id"] for r in before.values()}

    postgres.stop()
    seconds = _check_outage(orders, user, next(iter(accepted)), STOPPED_BOUND_SECONDS)
    print(f"database stopped: 503 in {', '.join(f'{s:.2f}' for s in seconds)}s")

    postgres.start()
    _recovers(orders)
    # The order refused during the outage, sent again with its key, is recorded now, and once.
    away_body = _order_body()
    first, again = _place(orders, user, "after", away_body), _place(orders, user, "after", away_body)
    assert (first.status_code, again.status_code) == (202, 202), (first.text, again.text)
    assert first.json()["id"] == again.json()["id"]
    listed = _user_orders(orders, user)
    assert {o["id"] for o in listed} == accepted | {first.json()["id"]}
    assert len(listed) == 4
    # A repeated pre-outage key still names the order accepted before the outage.
    key, body = next(iter(bodies.items()))
    assert _place(orders, user, key, body).json()["id"] == before[key].json()["id"]


def test_a_frozen_database_is_a_503_well_within_the_gateway_timeout(
    postgres: PrivatePostgres, orders: str
) -> None:
    """A server that keeps its connections open and answers nothing: only the timeouts end the wait."""
    user = str(uuid.uuid4())
    placed = _place(orders, user, "before", _order_body())
    assert placed.status_code == 202, placed.text

    postgres.pause()
    try:
        seconds = _check_outage(orders, user, placed.json()["id"], FROZEN_BOUND_SECONDS)
        print(f"database frozen: 503 in {', '.join(f'{s:.2f}' for s in seconds)}s")
    finally:
        postgres.resume()

    _recovers(orders)
    after = _place(orders, user, "after", _order_body())
    assert after.status_code == 202, after.text
    assert {o["id"] for o in _user_orders(orders, user)} == {placed.json()["id"], after.json()["id"]}


async def test_an_unopenable_sqlite_file_is_a_503_and_works_once_it_is_back(tmp_path: Path) -> None:
    """SQLite has no server to stop: its outage is the file or its disk going away."""
    directory = tmp_path / "db"
    settings = Settings(
        database_url=f"sqlite+aiosqlite:///{directory / 'orders.db'}",
        saga_engine="none",
        internal_token=INTERNAL_TOKEN,
        data_dir=tmp_path / "data",
    )
    app = create_app(settings)
    user = str(uuid.uuid4())
    headers = as_customer(user)
    async with (
        LifespanManager(app),
        httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://orders") as client,
    ):
        placed = await client.post("/orders", json=_order_body(), headers=headers)
        assert placed.status_code == 202, placed.text
        # An open SQLite connection keeps its file even when it is moved, so let the pool go first.
        await app.state.db.engine.dispose()
        directory.rename(tmp_path / "db-away")
        for response in (
            await client.post("/orders", json=_order_body(), headers=headers),
            await client.get(f"/orders/{placed.json()['id']}", headers=headers),
        ):
            assert response.status_code == 503, response.text
            assert response.json()["code"] == "dependency_unavailable"
            assert int(response.headers["Retry-After"]) > 0
        assert (await client.get("/ready")).status_code == 503

        (tmp_path / "db-away").rename(directory)
        assert (await client.get("/ready")).status_code == 200
        again = await client.get(f"/orders/{placed.json()['id']}", headers=headers)
        assert again.status_code == 200, again.text


def _operational(orig: Exception) -> Exception:
    return sa_exc.OperationalError("SELECT 1", {}, orig)


@pytest.mark.parametrize(
    ("error", "outage"),
    [
        (_operational(sqlite3.OperationalError("unable to open database file")), True),
        (_operational(sqlite3.OperationalError("disk I/O error")), True),
        (ConnectionRefusedError(111, "Connection refused"), True),
        (sa_exc.TimeoutError("QueuePool limit of size 10 overflow 20 reached"), True),
        (sa_exc.DisconnectionError("the pooled connection did not answer"), True),
        (_operational(sqlite3.OperationalError("no such table: orders")), False),
        (sa_exc.IntegrityError("INSERT", {}, sqlite3.IntegrityError("UNIQUE constraint failed")), False),
        (sa_exc.ProgrammingError("SELEC", {}, Exception("syntax error")), False),
        (ValueError("bad input"), False),
    ],
    ids=[
        "sqlite-unopenable",
        "sqlite-io",
        "refused",
        "pool-timeout",
        "ping-failed",
        "no-table",
        "integrity",
        "syntax",
        "bug",
    ],
)
def test_only_connection_level_failures_count_as_an_outage(error: Exception, outage: bool) -> None:
    """A broken statement or a constraint is a bug or a conflict (500, 409), never a reason to retry."""
    assert unavailable_dependency(error) is outage
