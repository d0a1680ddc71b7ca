"""Domain events drive notifications: real NATS JetStream, real SMTP, the services as processes."""

from __future__ import annotations

import json

import nats
import pytest

from ordersaga.smtp_sink import SmtpSink
from services.kit.events import STREAM
from tests.events.conftest import wait_for_mails
from tests.support.driver import Driver
from tests.support.identity import as_service
from tests.support.nats import NatsServer
from tests.support.stack import Stack

pytestmark = pytest.mark.slow

DECLINED_CARD = "4000000000000002"


async def test_registration_sends_exactly_one_welcome_email(
    events_stack: Stack, events_driver: Driver, smtp_sink: SmtpSink, nats_server: NatsServer
) -> None:
    customer = await events_driver.customer()
    mails = await wait_for_mails(smtp_sink, [customer.email])
    [welcome] = mails[customer.email]
    assert welcome["Subject"] == "Welcome to ordersaga"
    assert welcome["X-Ordersaga-Template"] == "welcome"
    username = "c" + customer.email[1:].split("@")[0]
    assert f"You can sign in as {username}." in welcome.get_payload(decode=True).decode()

    # On the wire: a CloudEvent whose id is also the JetStream message id, without the password hash.
    nc = await nats.connect(nats_server.url)
    try:
        raw = await nc.jetstream().get_last_msg(STREAM, "ordersaga.users.created")
    finally:
        await nc.close()
    event = json.loads(raw.data)
    assert event["specversion"] == "1.0"
    assert event["type"] == "user.created"
    assert event["source"] == "/ordersaga/users"
    assert event["datacontenttype"] == "application/json"
    assert event["subject"] == customer.user_id
    assert event["time"]
    assert raw.headers is not None and raw.headers["Nats-Msg-Id"] == event["id"]
    assert event["data"]["email"] == customer.email
    assert not any("password" in key for key in event["data"])


async def test_declined_order_sends_one_cancellation_and_no_receipt(
    events_stack: Stack, events_driver: Driver, smtp_sink: SmtpSink
) -> None:
    customer = await events_driver.customer(card=DECLINED_CARD)
    product = await events_driver.product()
    response = await events_driver.place_order(customer, [(product, 1)])
    assert response.status_code == 202, response.text
    order, _ = await events_driver.wait_final(response.json()["id"])
    assert order["cancel_reason"] == "payment_declined"

    mails = await wait_for_mails(smtp_sink, [customer.email], per_address=2, settle=2.0)
    templates = sorted(m["X-Ordersaga-Template"] for m in mails[customer.email])
    assert templates == ["order_cancelled", "welcome"]
    [cancelled] = [m for m in mails[customer.email] if m["X-Ordersaga-Template"] == "order_cancelled"]
    assert "the payment was declined" in cancelled.get_payload(decode=True).decode()


async def test_refund_sends_one_receipt(
    events_stack: Stack, events_driver: Driver, smtp_sink: SmtpSink
) -> None:
    customer = await events_driver.customer()
    product = await events_driver.product(price_cents=2_500)
    response = await events_driver.place_order(customer, [(product, 2)])
    order_id = response.json()["id"]
    order, _ = await events_driver.wait_final(order_id)
    assert order["status"] == "CONFIRMED"

    # Refund the capture as the saga's compensation would, twice with one key: one refund, one receipt.
    for _ in range(2):
        refund = await events_driver.http.post(
            f"{events_stack.url('payments')}/charges/order-{order_id}:authorize_payment/refund",
            json={},
            headers=as_service() | {"Idempotency-Key": f"order-{order_id}:refund_capture"},
        )
        assert refund.status_code == 200, refund.text

    mails = await wait_for_mails(smtp_sink, [customer.email], per_address=3, settle=2.0)
    templates = sorted(m["X-Ordersaga-Template"] for m in mails[customer.email])
    assert templates == ["order_confirmed", "refund_receipt", "welcome"]
    [receipt] = [m for m in mails[customer.email] if m["X-Ordersaga-Template"] == "refund_receipt"]
    body = receipt.get_payload(decode=True).decode()
    assert "We refunded 50.00 USD" in body
    assert order_id in body
