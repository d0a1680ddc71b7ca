"""The `orders` table is a projection of the event log: `ordersaga orders rebuild` drops it and writes
it again from the events, byte for byte, and `--check` names every order whose row differs."""

from __future__ import annotations

import asyncio
import json
import os
import sys
import uuid
from collections.abc import AsyncIterator
from datetime import timedelta
from typing import Any

import httpx
import pytest
import sqlalchemy as sa
from sqlalchemy import Uuid, bindparam, insert, text

from services.kit.db import Database
from services.kit.migrations import downgrade, upgrade
from services.kit.models import UTCDateTime, utcnow
from services.kit.settings import normalise_database_url
from services.orders.domain import CancelReason
from tests.services.orders.conftest import (
    RecordingSaga,
    command,
    confirm_fields,
    create_by_legacy_command,
    get_order,
    order_body,
    order_in_status,
    place,
    place_ok,
)
from tests.support.identity import as_admin

# The tables as revision 0003 left them, for rows written by the code of then.
_LEGACY_ORDERS = sa.table(
    "orders",
    *(sa.column(name, sa.Uuid()) for name in ("id", "user_id", "payment_method_id", "payment_id")),
    *(
        sa.column(name, sa.String())
        for name in ("status", "cancel_reason", "idempotency_key", "request_hash")
    ),
    sa.column("items", sa.JSON()),
    sa.column("version", sa.Integer()),
    *(sa.column(name, UTCDateTime()) for name in ("created_at", "updated_at", "saga_started_at")),
)
_LEGACY_EVENTS = sa.table(
    "order_events",
    sa.column("id", sa.Uuid()),
    sa.column("order_id", sa.Uuid()),
    sa.column("version", sa.Integer()),
    sa.column("type", sa.String()),
    sa.column("data", sa.JSON()),
    sa.column("occurred_at", UTCDateTime()),
)


@pytest.fixture
async def orders(service_client: Any) -> AsyncIterator[httpx.AsyncClient]:
    # No sweep during the test: the order placed while the saga engine was away stays unstarted.
    async with service_client(
        "orders", saga_start_grace_seconds=3600, saga_sweep_interval_seconds=3600
    ) as client:
        yield client


async def _ordersaga(*args: str) -> tuple[int, str]:
    """The command as an operator runs it: its own process, against the service's database."""
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "ordersaga.cli",
        *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
        env={key: value for key, value in os.environ.items() if key != "ORDERS_DATABASE_URL"},
    )
    output, _ = await asyncio.wait_for(process.communicate(), timeout=120)
    assert process.returncode is not None
    return process.returncode, output.decode()


async def _orders_in_every_state(orders: httpx.AsyncClient) -> list[str]:
    """Orders in every status the service knows, by every path that writes one."""
    made = [await order_in_status(orders, status) for status in ("PENDING", "CONFIRMED", "DELIVERED")]
    for reason in CancelReason:  # from PENDING, each reason
        order_id = await place_ok(orders, uuid.uuid4())
        assert (await command(orders, order_id, "cancel", reason=reason.value)).status_code == 200
        made.append(order_id)
    # In review with its authorisation named, then cancelled from there (the payment stays named).
    payment = str(uuid.uuid4())
    reviewed = await order_in_status(orders, "PENDING")
    assert (await command(orders, reviewed, "await_review", payment_id=payment)).status_code == 200
    cancelled_in_review = await order_in_status(orders, "AWAITING_REVIEW")
    response = await command(
        orders, cancelled_in_review, "cancel", reason="review_rejected", payment_id=payment
    )
    assert response.status_code == 200, response.text
    # Confirmed after review, then shipped by an admin through the public status route.
    approved = await order_in_status(orders, "AWAITING_REVIEW")
    fields = confirm_fields(await get_order(orders, approved), unit_price_cents=777)
    assert (await command(orders, approved, "confirm", **fields)).status_code == 200
    shipped = await orders.put(f"/orders/{approved}/status", json={"status": "SHIPPED"}, headers=as_admin())
    assert shipped.status_code == 200, shipped.text
    made += [reviewed, cancelled_in_review, approved]
    # Placed with an Idempotency-Key (and repeated), and placed while the saga engine was away
    # (its start never recorded), then started by the saga's own `start` command.
    keyed = await place(orders, uuid.uuid4(), order_body(2, 5), key="rebuild-key")
    assert keyed.status_code == 202, keyed.text
    orders.app.state.saga = RecordingSaga(fail=True)  # type: ignore[attr-defined]
    unstarted = await place_ok(orders, uuid.uuid4())
    started_late = await place_ok(orders, uuid.uuid4())
    orders.app.state.saga = RecordingSaga()  # type: ignore[attr-defined]
    assert (await command(orders, started_late, "start")).status_code == 200
    # Written by the create command of sagas older than the typed order activities.
    legacy = str(uuid.uuid4())
    await create_by_legacy_command(orders, legacy, 3)
    return [*made, keyed.json()["id"], unstarted, started_late, legacy]


async def _rows(orders: httpx.AsyncClient) -> list[tuple[Any, ...]]:
    async with orders.app.state.db.session() as session:  # type: ignore[attr-defined]
        result = await session.exec(text("SELECT * FROM orders ORDER BY id"))
        return [tuple(row) for row in result.all()]


async def _execute(orders: httpx.AsyncClient, statement: str, order_id: str, **params: Any) -> None:
    typed = text(statement).bindparams(bindparam("id", type_=Uuid()))
    session = orders.app.state.db.session()  # type: ignore[attr-defined]
    async with session, session.begin():
        await session.exec(typed, params={"id": uuid.UUID(order_id), **params})


async def test_the_projection_rebuilds_from_the_events_byte_for_byte(orders: httpx.AsyncClient) -> None:
    order_ids = await _orders_in_every_state(orders)
    statuses = {(await get_order(orders, order_id))["status"] for order_id in order_ids}
    assert statuses == {"PENDING", "AWAITING_REVIEW", "CONFIRMED", "SHIPPED", "DELIVERED", "CANCELLED"}
    database = ["--database-url", orders.app.state.db.url]  # type: ignore[attr-defined]
    served = [await get_order(orders, order_id) for order_id in order_ids]
    rows = await _rows(orders)
    assert len(rows) == len(order_ids)

    code, output = await _ordersaga("orders", "rebuild", "--check", *database)
    assert (code, output.strip()) == (0, f"checked {len(order_ids)} orders from their events; 0 differed")
    code, output = await _ordersaga("orders", "rebuild", *database)
    assert (code, output.strip()) == (0, f"rebuilt {len(order_ids)} orders from their events; 0 differed")
    assert await _rows(orders) == rows
    assert [await get_order(orders, order_id) for order_id in order_ids] == served

    # A projection that drifted: a wrong status, a lost row, and the same JSON spelled otherwise
    # (equal as a value, not byte for byte). --check names each and leaves them as they are.
    wrong, lost, respelled = order_ids[3], order_ids[4], order_ids[1]
    await _execute(
        orders, "UPDATE orders SET status = 'CONFIRMED', cancel_reason = NULL WHERE id = :id", wrong
    )
    await _execute(orders, "DELETE FROM orders WHERE id = :id", lost)
    items = (await get_order(orders, respelled))["items"]
    reordered = json.dumps([dict(reversed(list(line.items()))) for line in items])
    await _execute(orders, "UPDATE orders SET items = :items WHERE id = :id", respelled, items=reordered)
    drifted = await _rows(orders)

    code, output = await _ordersaga("orders", "rebuild", "--check", *database)
    assert code == 1, output
    lines = output.strip().splitlines()
    assert lines[-1] == f"checked {len(order_ids)} orders from their events; 3 differed", output
    named = {line.split()[0].replace("-", "") for line in lines[:-1]}
    assert named == {uuid.UUID(o).hex for o in (wrong, lost, respelled)}, output
    assert any(" status: projection 'CONFIRMED', events 'CANCELLED'" in line for line in lines), output
    assert any(" items: projection " in line for line in lines), output
    assert await _rows(orders) == drifted  # --check wrote nothing

    code, output = await _ordersaga("orders", "rebuild", *database)
    assert (code, output.strip().splitlines()[-1]) == (
        0,
        f"rebuilt {len(order_ids)} orders from their events; 3 differed",
    )
    assert await _rows(orders) == rows
    assert [await get_order(orders, order_id) for order_id in order_ids] == served
    code, output = await _ordersaga("orders", "rebuild", "--check", *database)
    assert code == 0, output


async def test_orders_written_before_the_event_log_was_the_truth_rebuild_alike(fresh_database: Any) -> None:
    """Revision 0004 gives older events what only their row held (the request keys, one clock read)."""
    url = await fresh_database("orders")
    await downgrade("orders", url, "0003")
    database = Database(normalise_database_url(url))
    created, changed = utcnow() - timedelta(minutes=5), utcnow() - timedelta(minutes=1)
    placed, by_saga = uuid.uuid4(), uuid.uuid4()
    items = [{"product_id": str(uuid.uuid4()), "quantity": 2, "unit_price_cents": None}]
    user, card, payment = uuid.uuid4(), uuid.uuid4(), uuid.uuid4()
    rows = [
        # placed with a key, cancelled from review; the events' clock read microseconds after the row's
        (placed, "CANCELLED", 3, "key-1", "a" * 64, None, "payment_declined", payment),
        (by_saga, "PENDING", 1, None, None, created, None, None),  # created by the old saga create
    ]
    session = database.session()
    async with session, session.begin():
        for order_id, status, version, key, request_hash, started, reason, payment_id in rows:
            await session.exec(
                insert(_LEGACY_ORDERS).values(
                    id=order_id,
                    user_id=user,
                    status=status,
                    items=items,
                    payment_method_id=card,
                    payment_id=payment_id,
                    cancel_reason=reason,
                    version=version,
                    created_at=created,
                    updated_at=changed if version > 1 else created,
                    saga_started_at=started,
                    idempotency_key=key,
                    request_hash=request_hash,
                )
            )
        later = timedelta(microseconds=37)
        legacy_events = [
            (
                placed,
                1,
                "order.created",
                {"user_id": str(user), "items": items, "payment_method_id": str(card)},
            ),
            (placed, 2, "order.awaiting_review", {"payment_id": str(payment)}),
            (placed, 3, "order.cancelled", {"reason": "payment_declined"}),
            (
                by_saga,
                1,
                "order.created",
                {"user_id": str(user), "items": items, "payment_method_id": str(card)},
            ),
        ]
        for order_id, version, type_, data in legacy_events:
            occurred = (created if version == 1 else changed - timedelta(seconds=30 * (3 - version))) + later
            await session.exec(
                insert(_LEGACY_EVENTS).values(
                    id=uuid.uuid4(),
                    order_id=order_id,
                    version=version,
                    type=type_,
                    data=data,
                    occurred_at=occurred,
                )
            )
    await database.dispose()
    await upgrade("orders", url)

    code, output = await _ordersaga("orders", "rebuild", "--check", "--database-url", url)
    assert (code, output.strip()) == (0, "checked 2 orders from their events; 0 differed"), output
    await downgrade("orders", url, "0003")  # and back: the foreign keys return
    await upgrade("orders", url)
