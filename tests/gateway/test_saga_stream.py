"""The saga stream and the admin listing through a real gateway, in front of the real services,
worker and Temporal: who may open a stream, its end with the saga, reconnecting, keep-alives, the
gateway's timeouts not cutting it, and the stream released when its client leaves."""

from __future__ import annotations

import asyncio
import itertools
import json
import re
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
from cryptography.hazmat.primitives.asymmetric import rsa

from services.users.tokens import TokenIssuer
from tests.gateway.conftest import RunningGateway, Scripted, Tokens, gateway_env, in_process_gateway
from tests.gateway.test_gateway_stack import new_product, register_and_login
from tests.support.processes import VENV_BIN, ManagedProcess, free_port, http_ok
from tests.support.stack import Stack

# The stack's worker sends orders of this much or more to review (TEST_WORKER_ENV), where a saga
# waits, quiet, for as long as a test needs.
REVIEW_QUANTITY = 100  # x 12.50 = 1250.00 >= 1000.00
SHORT_ORDERS_TIMEOUT = 1.0


@dataclass
class Event:
    at: float  # monotonic seconds when it arrived
    kind: str  # saga, end, or comment
    id: str | None = None
    data: dict[str, Any] | None = None
    comment: str | None = None


class SagaStream:
    """A client of the stream, as the order page reads it: events parsed as they arrive."""

    def __init__(self, response: httpx.Response) -> None:
        self.response = response
        self._lines = response.aiter_lines()

    async def next(self, timeout: float = 30) -> Event | None:
        """The next event or comment; None when the stream has closed."""
        fields: dict[str, str] = {}
        async with asyncio.timeout(timeout):
            async for line in self._lines:
                if line == "":
                    if fields:
                        break
                    continue
                if line.startswith(":"):
                    return Event(time.monotonic(), "comment", comment=line[1:].strip())
                name, _, value = line.partition(": ")
                fields[name] = value
            else:
                return None
        return Event(time.monotonic(), fields["event"], id=fields.get("id"), data=json.loads(fields["data"]))

    async def until_end(self, timeout: float = 60) -> list[Event]:
        seen: list[Event] = []
        deadline = time.monotonic() + timeout
        while (event := await self.next(deadline - time.monotonic())) is not None:
            seen.append(event)
            if event.kind == "end":
                # ... and the stream closes after it.
                assert await self.next(10) is None
                return seen
        raise AssertionError(f"the stream closed without an end event: {seen}")


@asynccontextmanager
async def saga_stream(
    api: httpx.AsyncClient, order_id: str, auth: dict[str, str], last_event_id: str | None = None
) -> AsyncIterator[SagaStream]:
    headers = {**auth, **({"Last-Event-ID": last_event_id} if last_event_id else {})}
    # No read timeout of the client's own: what may cut a stream is the gateway, under test here.
    timeout = httpx.Timeout(10, read=None)
    async with api.stream("GET", f"/orders/{order_id}/saga/stream", headers=headers, timeout=timeout) as r:
        assert r.status_code == 200, (await r.aread()).decode()
        assert r.headers["content-type"].startswith("text/event-stream")
        yield SagaStream(r)


async def customer_with_card(api: httpx.AsyncClient) -> tuple[str, dict[str, str], str]:
    user_id, auth = await register_and_login(api)
    card = await api.post(
        "/payment-methods",
        json={"card_number": "4242424242424242", "exp_month": 12, "exp_year": 2035, "cvc": "123"},
        headers=auth,
    )
    assert card.status_code == 201, card.text
    return user_id, auth, str(card.json()["id"])


async def place(
    api: httpx.AsyncClient, tokens: Tokens, auth: dict[str, str], card: str, quantity: int = 2
) -> str:
    product = await new_product(api, tokens, stock=quantity + 10)
    body = {"items": [{"product_id": product, "quantity": quantity}], "payment_method_id": card}
    placed = await api.post("/orders", json=body, headers={**auth, "Idempotency-Key": uuid.uuid4().hex})
    assert placed.status_code == 202, placed.text
    return str(placed.json()["id"])


async def awaiting_review(api: httpx.AsyncClient, tokens: Tokens, auth: dict[str, str], card: str) -> str:
    order_id = await place(api, tokens, auth, card, REVIEW_QUANTITY)
    deadline = time.monotonic() + 60
    while (await api.get(f"/orders/{order_id}", headers=auth)).json()["status"] != "AWAITING_REVIEW":
        assert time.monotonic() < deadline, "the order never reached review"
        await asyncio.sleep(0.2)
    return order_id


async def approve(api: httpx.AsyncClient, tokens: Tokens, order_id: str) -> None:
    reviewed = await api.post(
        f"/orders/{order_id}/review", json={"approve": True}, headers=tokens.bearer("admin")
    )
    assert reviewed.status_code == 202, reviewed.text


def gauge(metrics: str, name: str, upstream: str | None = None) -> float:
    labels = rf'\{{upstream="{upstream}"\}}' if upstream else ""
    found = re.search(rf"^{name}{labels} (\S+)$", metrics, re.MULTILINE)
    assert found, f"{name} not in the metrics"
    return float(found.group(1))


async def wait_for_gauge(url: str, name: str, value: float, upstream: str | None = None) -> None:
    deadline = time.monotonic() + 20
    async with httpx.AsyncClient(timeout=10) as client:
        while (seen := gauge((await client.get(url + "/metrics")).text, name, upstream)) != value:
            assert time.monotonic() < deadline, f"{name} stayed {seen}, not {value}"
            await asyncio.sleep(0.2)


async def test_the_owner_watches_the_saga_to_its_end_and_another_customer_gets_404(
    api: httpx.AsyncClient, tokens: Tokens
) -> None:
    _, auth, card = await customer_with_card(api)
    order_id = await place(api, tokens, auth, card)
    _, stranger = await register_and_login(api)
    refused = await api.get(f"/orders/{order_id}/saga/stream", headers=stranger)
    assert refused.status_code == 404
    assert refused.headers["content-type"] == "application/problem+json"
    assert refused.json()["code"] == "order_not_found"
    assert (await api.get(f"/orders/{order_id}/saga/stream")).status_code == 401

    async with saga_stream(api, order_id, auth) as stream:
        events = await stream.until_end()
    views = [e for e in events if e.kind != "comment"]
    assert [e.id for e in views] == [str(n) for n in range(1, len(views) + 1)]
    assert all(e.kind == "saga" for e in views[:-1])
    final = views[-1].data
    assert final is not None and final["status"] == "completed" and final["order_status"] == "CONFIRMED"
    assert final == (await api.get(f"/orders/{order_id}/saga", headers=auth)).json()
    # Each event is a change: no view is sent twice in a row.
    datas = [json.dumps(e.data, sort_keys=True) for e in views]
    assert all(a != b for a, b in itertools.pairwise(datas))

    async with saga_stream(api, order_id, tokens.bearer("admin")) as stream:  # an admin may watch too
        assert [e.kind for e in await stream.until_end()] == ["end"]


async def test_keep_alives_arrive_and_the_default_timeouts_do_not_cut_a_quiet_stream(
    api: httpx.AsyncClient, tokens: Tokens, gateway: RunningGateway
) -> None:
    """Shipped defaults: a saga waiting for review sends nothing for 15 s, three times the
    gateway's orders timeout, and the stream gets a keep-alive, not a cut."""
    _, auth, card = await customer_with_card(api)
    order_id = await awaiting_review(api, tokens, auth, card)
    async with saga_stream(api, order_id, auth) as stream:
        first = await stream.next()
        assert first is not None and first.kind == "saga"
        assert first.data is not None and first.data["order_status"] == "AWAITING_REVIEW"
        await wait_for_gauge(gateway.url, "gateway_open_streams", 1, "orders")
        keep_alive = await stream.next(timeout=40)
        assert keep_alive is not None and keep_alive.kind == "comment", keep_alive
        assert keep_alive.comment == "keep-alive"
        assert 10 < keep_alive.at - first.at < 30  # every 15 s of quiet
        await approve(api, tokens, order_id)
        rest = await stream.until_end()
    final = rest[-1].data
    assert final is not None and final["order_status"] == "CONFIRMED"
    await wait_for_gauge(gateway.url, "gateway_open_streams", 0, "orders")


@pytest.fixture(scope="module")
def short_timeout_gateway(stack: Stack) -> Iterator[RunningGateway]:
    """A gateway whose orders timeout (GATEWAY_ORDERS_TIMEOUT) is 1 s."""
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    env = gateway_env(stack, GATEWAY_ORDERS_TIMEOUT=str(SHORT_ORDERS_TIMEOUT))
    argv = [str(VENV_BIN / "ordersaga"), "serve", "gateway", "--port", str(port)]
    process = ManagedProcess(
        "gateway-short", argv, stack.directory / "gateway-short.log", env, ready=http_ok(url + "/health")
    )
    process.start(timeout=60)
    yield RunningGateway(url, process)
    process.stop()


async def test_a_stream_outlives_the_gateways_upstream_timeout(
    short_timeout_gateway: RunningGateway, tokens: Tokens
) -> None:
    async with httpx.AsyncClient(base_url=short_timeout_gateway.url + "/api/v1", timeout=30) as api:
        _, auth, card = await customer_with_card(api)
        order_id = await awaiting_review(api, tokens, auth, card)
        async with saga_stream(api, order_id, auth) as stream:
            first = await stream.next()
            assert first is not None and first.kind == "saga"
            # Silent for four times the timeout that bounds any other answer from the orders service.
            await asyncio.sleep(4 * SHORT_ORDERS_TIMEOUT)
            await approve(api, tokens, order_id)
            rest = await stream.until_end()
        assert time.monotonic() - first.at > 4 * SHORT_ORDERS_TIMEOUT
        assert rest[-1].data is not None and rest[-1].data["order_status"] == "CONFIRMED"


async def test_a_client_that_reconnects_gets_the_current_view_at_once(
    api: httpx.AsyncClient, tokens: Tokens
) -> None:
    _, auth, card = await customer_with_card(api)
    order_id = await awaiting_review(api, tokens, auth, card)
    async with saga_stream(api, order_id, auth) as stream:
        first = await stream.next()
    assert first is not None and first.id == "1"
    started = time.monotonic()
    async with saga_stream(api, order_id, auth, last_event_id="1") as stream:
        again = await stream.next()
        assert again is not None and again.kind == "saga" and again.id == "2"
        assert again.at - started < 5  # at once, not at the next change
        assert again.data == first.data
        await approve(api, tokens, order_id)
        ended = await stream.until_end()
    last = ended[-1]
    assert last.id is not None and int(last.id) > 2
    # After the end, a reconnect gets the end event at once, and the stream closes.
    async with saga_stream(api, order_id, auth, last_event_id=last.id) as stream:
        after = await stream.until_end(timeout=10)
    assert [(e.kind, e.id) for e in after] == [("end", str(int(last.id) + 1))]
    assert after[0].data == last.data


async def test_a_saga_terminated_in_temporal_ends_its_stream_promptly(
    api: httpx.AsyncClient, tokens: Tokens, stack: Stack
) -> None:
    """An operator's `temporal workflow terminate` (the Web UI's Terminate): the workflow's query
    answers its last view for ever, and the stream ends anyway, not at its one-hour limit."""
    _, auth, card = await customer_with_card(api)
    order_id = await awaiting_review(api, tokens, auth, card)
    async with saga_stream(api, order_id, auth) as stream:
        first = await stream.next()
        assert first is not None and first.kind == "saga"
        argv = [str(VENV_BIN / "temporal"), "workflow", "terminate", "--address", stack.temporal_address]
        argv += ["--workflow-id", f"order-{order_id}", "--reason", "test: an operator's terminate"]
        terminated = await asyncio.create_subprocess_exec(
            *argv, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT
        )
        output, _ = await terminated.communicate()
        assert terminated.returncode == 0, output.decode()
        at = time.monotonic()
        rest = await stream.until_end(timeout=30)
    end = rest[-1]
    # Within the quiet poll interval (4 s by default), with room for a loaded machine.
    assert end.at - at < 15, f"the end came {end.at - at:.1f} s after the terminate"
    assert end.data is not None and end.data["workflow_status"] == "TERMINATED"
    assert end.data["order_id"] == order_id
    assert end.data["order_status"] == "AWAITING_REVIEW"  # the last view the workflow answered
    # A reconnect after it gets the end at once too.
    async with saga_stream(api, order_id, auth, last_event_id=end.id) as stream:
        after = await stream.until_end(timeout=20)
    assert after[-1].kind == "end" and after[-1].data is not None
    assert after[-1].data["workflow_status"] == "TERMINATED"


async def test_a_client_that_leaves_releases_its_stream_at_the_gateway_and_upstream(
    api: httpx.AsyncClient, tokens: Tokens, gateway: RunningGateway, stack: Stack
) -> None:
    _, auth, card = await customer_with_card(api)
    order_id = await awaiting_review(api, tokens, auth, card)
    async with saga_stream(api, order_id, auth) as stream:
        assert (await stream.next()) is not None
        await wait_for_gauge(gateway.url, "gateway_open_streams", 1, "orders")
        await wait_for_gauge(stack.url("orders"), "orders_saga_streams_open", 1)
    await wait_for_gauge(gateway.url, "gateway_open_streams", 0, "orders")
    await wait_for_gauge(stack.url("orders"), "orders_saga_streams_open", 0)


async def test_the_admin_listing_through_the_gateway(api: httpx.AsyncClient, tokens: Tokens) -> None:
    user_id, auth, card = await customer_with_card(api)
    first = await place(api, tokens, auth, card)
    second = await place(api, tokens, auth, card)
    admin = tokens.bearer("admin")
    page = await api.get("/orders", params={"customer_id": user_id, "limit": 1}, headers=admin)
    assert page.status_code == 200, page.text
    assert [o["id"] for o in page.json()["items"]] == [second]
    cursor = page.json()["next_cursor"]
    rest = await api.get("/orders", params={"customer_id": user_id, "cursor": cursor}, headers=admin)
    assert [o["id"] for o in rest.json()["items"]] == [first]
    assert rest.json()["next_cursor"] is None
    refused = await api.get("/orders", headers=auth)
    assert refused.status_code == 403
    assert refused.json()["code"] == "forbidden"
    bad = await api.get("/orders", params={"status": "LOST"}, headers=admin)
    assert bad.status_code == 422
    assert bad.json()["code"] == "validation_error"


async def test_the_gateway_bounds_its_open_streams_apart_from_other_calls(scripted: Scripted) -> None:
    """GATEWAY_STREAM_MAX_OPEN=1: a second stream is refused at once with 503 while the first is
    open (here: its head is 2 s away, the scripted upstream's sleep-2), and the orders service's
    other routes still go through; once the first is over, a stream gets in again."""
    key = TokenIssuer(rsa.generate_private_key(public_exponent=65537, key_size=2048), 900)
    scripted.jwks = key.jwks()
    auth = {"Authorization": f"Bearer {key.issue(uuid.uuid4(), 'customer').access_token}"}
    async with in_process_gateway(users_url=scripted.url, orders_url=scripted.url, stream_max_open=1) as gw:
        first = asyncio.create_task(gw.get("/api/v1/orders/sleep-2/saga/stream", headers=auth))
        await asyncio.sleep(0.5)
        scripted.seen.clear()
        refused = await gw.get(f"/api/v1/orders/{uuid.uuid4()}/saga/stream", headers=auth)
        assert refused.status_code == 503
        assert refused.json()["code"] == "overloaded"
        assert int(refused.headers["retry-after"]) > 0
        assert not [seen for seen in scripted.seen if seen["path"].endswith("/stream")]
        other = await gw.get(f"/api/v1/orders/{uuid.uuid4()}", headers=auth)
        assert other.status_code == 200, other.text
        assert (await first).status_code == 200
        assert (await gw.get(f"/api/v1/orders/{uuid.uuid4()}/saga/stream", headers=auth)).status_code == 200
