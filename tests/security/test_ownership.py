"""A customer can neither see nor act on another customer's resources, through any public route.

Every route of the gateway's table that takes an id is called by a second customer with the first
one's ids (no route is picked by hand, so a new route is covered at once); each answers 403 or 404,
and the first customer's data is unchanged afterwards. Also: `alg: none` tokens are refused
(the gateway tests cover the other forged, foreign-key and expired tokens).
"""

from __future__ import annotations

import asyncio
import base64
import json
import re
import time
import uuid
from typing import Any

import httpx
import jwt
import pytest

from services.gateway.routes import ROUTES
from tests.gateway.conftest import Tokens
from tests.gateway.test_gateway_stack import new_product, register_and_login, wait_order

pytestmark = [pytest.mark.slow, pytest.mark.temporal]

OK_CARD = {"card_number": "4242424242424242", "exp_month": 12, "exp_year": 2035, "cvc": "123"}
BODIES: dict[str, Any] = {
    "/users/{user_id}": {"profile": {"bio": "taken over"}, "version": 1},
    "/orders/{order_id}/review": {"approve": True},
    "/orders/{order_id}/status": {"status": "SHIPPED"},
}


async def _place(api: httpx.AsyncClient, auth: dict[str, str], product: str, method: str) -> str:
    placed = await api.post(
        "/orders",
        json={"items": [{"product_id": product, "quantity": 1}], "payment_method_id": method},
        headers=auth,
    )
    assert placed.status_code == 202, placed.text
    return str(placed.json()["id"])


async def _wait_status(api: httpx.AsyncClient, order_id: str, auth: dict[str, str], status: str) -> None:
    deadline = time.monotonic() + 60
    while (await api.get(f"/orders/{order_id}", headers=auth)).json()["status"] != status:
        assert time.monotonic() < deadline, f"order {order_id} never reached {status}"
        await asyncio.sleep(0.2)


async def test_a_customer_cannot_reach_another_customers_resources(
    api: httpx.AsyncClient, tokens: Tokens
) -> None:
    owner_id, owner = await register_and_login(api)
    method = (await api.post("/payment-methods", json=OK_CARD, headers=owner)).json()["id"]
    cheap = await new_product(api, tokens)
    confirmed_id = await _place(api, owner, cheap, method)
    confirmed = await wait_order(api, confirmed_id, owner)
    assert confirmed["status"] == "CONFIRMED", confirmed
    # A second order waits for review, so that a cancel would still be possible.
    pricey = await api.post(
        "/products",
        json={
            "sku": f"OWN-{uuid.uuid4().hex[:8]}",
            "name": "pricey",
            "description": "",
            "price_cents": 150_000,
            "currency": "USD",
            "stock": 1,
        },
        headers=tokens.bearer("admin"),
    )
    waiting_id = await _place(api, owner, pricey.json()["id"], method)
    await _wait_status(api, waiting_id, owner, "AWAITING_REVIEW")
    before = (await api.get(f"/users/{owner_id}", headers=owner)).json()

    ids = {"user_id": owner_id, "order_id": waiting_id, "payment_id": confirmed["payment_id"]}
    _, intruder = await register_and_login(api)
    checked = 0
    for route in ROUTES:
        names = re.findall(r"\{(\w+)\}", route.path)
        if not names or names[0] not in ids:
            continue  # public catalogue routes (product ids) are nobody's
        path = re.sub(r"\{(\w+)\}", lambda m: ids[m.group(1)], route.path)
        response = await api.request(route.method, path, json=BODIES.get(route.path), headers=intruder)
        assert response.status_code in (403, 404), (route.method, path, response.status_code, response.text)
        # The problem names the requested path, nothing of what is behind it.
        assert before["email"] not in response.text and "4242" not in response.text, (route.method, path)
        checked += 1
    assert checked >= 12

    # Nothing changed: the owner is still there as before, the waiting order still waits.
    assert (await api.get(f"/users/{owner_id}", headers=owner)).json() == before
    assert (await api.get(f"/orders/{waiting_id}", headers=owner)).json()["status"] == "AWAITING_REVIEW"

    # Paying with someone else's card: accepted for the saga, which refuses it without a charge.
    stolen = await _place(api, intruder, cheap, method)
    final = await wait_order(api, stolen, intruder)
    assert (final["status"], final["cancel_reason"]) == ("CANCELLED", "invalid_payment_method")
    assert final["payment_id"] is None

    assert (await api.post(f"/orders/{waiting_id}/cancel", headers=owner)).status_code == 202


def _b64(data: dict[str, Any]) -> str:
    return base64.urlsafe_b64encode(json.dumps(data).encode()).rstrip(b"=").decode()


async def test_unsigned_alg_none_tokens_are_refused(api: httpx.AsyncClient, tokens: Tokens) -> None:
    valid = tokens.bearer("customer")["Authorization"].removeprefix("Bearer ")
    claims = jwt.decode(valid, options={"verify_signature": False}) | {"role": "admin"}
    kid = jwt.get_unverified_header(valid)["kid"]
    for alg in ("none", "None", "NONE"):
        unsigned = f"{_b64({'alg': alg, 'typ': 'JWT', 'kid': kid})}.{_b64(claims)}."
        for token in (unsigned, unsigned + valid.rsplit(".", 1)[1]):  # empty, or a borrowed signature
            response = await api.get(f"/users/{claims['sub']}", headers={"Authorization": f"Bearer {token}"})
            assert response.status_code == 401, (alg, response.text)
            assert response.json()["code"] == "invalid_token"
