"""After real orders through the gateway, no card number and no password is anywhere it could leak.

Searched: every file the stack wrote (each service's database with its WAL, which holds the outbox
rows that are the published events byte for byte; the log of every process, the gateway's included;
the Temporal dev server's own database) and each workflow history read through the Temporal client.
Traces are not searched: no exporter writes them anywhere in the test stack.
"""

from __future__ import annotations

import sqlite3
import uuid
from pathlib import Path

import httpx
import pytest
from temporalio.client import Client

from tests.gateway.conftest import Tokens
from tests.gateway.test_gateway_stack import PASSWORD, new_product, register_and_login, wait_order
from tests.support.stack import Stack
from workflows.payloads import workflow_id_for

pytestmark = [pytest.mark.slow, pytest.mark.temporal]

OK_CARD = "4242424242424242"
DECLINED_CARD = "4000000000000002"
TRANSIENT_CARD = "4000000000000119"  # fails twice: the retries' errors land in logs and history
BAD_LUHN = "4242424242424241"


def variants(pan: str) -> list[bytes]:
    """The number as typed, grouped, or JSON-escaped digit by digit would still be found."""
    grouped = " ".join(pan[i : i + 4] for i in range(0, len(pan), 4))
    return [pan.encode(), grouped.encode(), grouped.replace(" ", "-").encode()]


def files_holding(root: Path, needles: list[bytes]) -> list[str]:
    hits: list[str] = []
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        data = path.read_bytes()
        hits += [f"{path.relative_to(root)} holds {needle!r}" for needle in needles if needle in data]
    return hits


async def test_card_numbers_and_passwords_are_nowhere_at_rest(
    api: httpx.AsyncClient, tokens: Tokens, stack: Stack
) -> None:
    product = await new_product(api, tokens, stock=50)
    orders: list[tuple[str, str, dict[str, str]]] = []
    for card in (OK_CARD, DECLINED_CARD, TRANSIENT_CARD):
        _, auth = await register_and_login(api)
        refused = await api.post(
            "/payment-methods",
            json={"card_number": BAD_LUHN, "exp_month": 12, "exp_year": 2035, "cvc": "123"},
            headers=auth,
        )
        assert refused.status_code == 422 and BAD_LUHN not in refused.text
        method = await api.post(
            "/payment-methods",
            json={"card_number": card, "exp_month": 12, "exp_year": 2035, "cvc": "123"},
            headers=auth,
        )
        assert method.status_code == 201, method.text
        placed = await api.post(
            "/orders",
            json={
                "items": [{"product_id": product, "quantity": 1}],
                "payment_method_id": method.json()["id"],
            },
            headers=auth | {"Idempotency-Key": uuid.uuid4().hex},
        )
        assert placed.status_code == 202, placed.text
        orders.append((placed.json()["id"], card, auth))
    for order_id, card, auth in orders:
        order = await wait_order(api, order_id, auth)
        assert order.get("status") != "PENDING", (card, order)

    # Each history, as the SDK reads it (payloads decoded), holds no number.
    temporal = await Client.connect(stack.temporal_address)
    for order_id, card, _ in orders:
        history = await temporal.get_workflow_handle(workflow_id_for(order_id)).fetch_history()
        text = history.to_json().encode()
        raw = b"".join(event.SerializeToString() for event in history.events)
        for needle in variants(card):
            assert needle not in text and needle not in raw, (order_id, needle)

    needles = [v for pan in (OK_CARD, DECLINED_CARD, TRANSIENT_CARD, BAD_LUHN) for v in variants(pan)]
    needles.append(PASSWORD.encode())
    assert not files_holding(stack.directory, needles)

    # Passwords are there only as argon2id hashes (PHC strings carry their parameters).
    with sqlite3.connect(stack.directory / "data" / "users.db") as db:
        hashes = [row[0] for row in db.execute("SELECT password_hash FROM users")]
    assert hashes
    assert all(h.startswith("$argon2id$v=19$") for h in hashes), hashes[:3]
