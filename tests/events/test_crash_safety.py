"""Crash safety of the event path: NATS down, a relay killed after publishing, a consumer killed
mid-batch, a sender killed mid-send, and a poison message. No email ever goes out twice."""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from pathlib import Path

import httpx
import nats
import pytest

from ordersaga.smtp_sink import SmtpSink
from services.kit.events import STREAM
from tests.events.conftest import mails_to, stream_count, wait_for_mails
from tests.events.smtp_server import scripted_smtp
from tests.support.driver import Driver
from tests.support.identity import as_service
from tests.support.nats import NatsServer
from tests.support.stack import Stack

pytestmark = pytest.mark.slow


async def register(driver: Driver, count: int) -> list[str]:
    emails = [f"e{uuid.uuid4().hex[:12]}@example.com" for _ in range(count)]
    for email in emails:
        response = await driver.http.post(
            driver.urls["users"] + "/users",
            json={"email": email, "username": email.split("@")[0], "password": "correct-horse-battery"},
        )
        assert response.status_code == 201, response.text
    return emails


async def wait_exit(stack: Stack, name: str, timeout: float = 30.0) -> int:
    process = stack.processes[name]
    deadline = time.monotonic() + timeout
    while process.running:
        assert time.monotonic() < deadline, f"{name} did not exit:\n{process.tail()}"
        await asyncio.sleep(0.1)
    assert process.proc is not None
    return int(process.proc.returncode)


def assert_once_each(mails: dict[str, list[object]]) -> None:
    counts = {address: len(found) for address, found in mails.items()}
    assert all(n == 1 for n in counts.values()), {a: n for a, n in counts.items() if n != 1}


async def test_nats_outage_loses_nothing(
    events_stack: Stack, events_driver: Driver, smtp_sink: SmtpSink, nats_server: NatsServer
) -> None:
    nats_server.stop()
    try:
        emails = await register(events_driver, 20)  # the users service keeps answering without NATS
    finally:
        nats_server.start()
    mails = await wait_for_mails(smtp_sink, emails, timeout=60)
    assert len(mails) == 20
    assert_once_each(mails)  # type: ignore[arg-type]


async def test_relay_killed_between_publish_and_mark_is_deduplicated(
    events_stack: Stack, events_driver: Driver, smtp_sink: SmtpSink, nats_server: NatsServer
) -> None:
    before = await stream_count(nats_server.url, "ordersaga.users.created")
    events_stack.restart("users", extra_env={"USERS_OUTBOX_CRASH_AFTER_PUBLISH": "true"})
    [email] = await register(events_driver, 1)
    assert await wait_exit(events_stack, "users") == 70  # died after JetStream's ack, before the mark
    assert await stream_count(nats_server.url, "ordersaga.users.created") == before + 1

    events_stack.restart("users")  # the row is still pending: published again, same message id
    mails = await wait_for_mails(smtp_sink, [email], settle=2.0)
    assert_once_each(mails)  # type: ignore[arg-type]
    assert await stream_count(nats_server.url, "ordersaga.users.created") == before + 1
    assert '"duplicate": true' in events_stack.processes["users"].log_path.read_text()


async def test_notifications_killed_mid_batch_sends_every_email_once(
    events_stack: Stack, events_driver: Driver, smtp_sink: SmtpSink, nats_server: NatsServer
) -> None:
    before = await stream_count(nats_server.url, "ordersaga.users.created")
    events_stack.processes["notifications"].stop()
    emails = await register(events_driver, 20)
    deadline = time.monotonic() + 30
    while await stream_count(nats_server.url, "ordersaga.users.created") < before + 20:
        assert time.monotonic() < deadline, "the relay did not publish the registrations"
        await asyncio.sleep(0.2)

    # One batch of 20 is fetched; the process dies after committing the 7th, before acking it. The
    # sender is off in this run, so the crash cannot land inside an SMTP conversation.
    crash = {"NOTIFICATIONS_EVENTS_CRASH_AFTER": "7", "NOTIFICATIONS_SENDER_ENABLED": "false"}
    events_stack.restart("notifications", extra_env=crash, wait=False)
    assert await wait_exit(events_stack, "notifications") == 70
    assert not [m for m in smtp_sink.messages() if m["To"] in emails]  # nothing was sent yet

    events_stack.restart("notifications")
    mails = await wait_for_mails(smtp_sink, emails, timeout=60, settle=2.0)
    assert_once_each(mails)  # type: ignore[arg-type]


async def test_notifications_killed_while_smtp_holds_the_data_reply_never_resends(
    events_stack: Stack,
    events_driver: Driver,
    smtp_sink: SmtpSink,
    nats_server: NatsServer,
    tmp_path: Path,
) -> None:
    before = await stream_count(nats_server.url, "ordersaga.notifications.unknown")
    with scripted_smtp(tmp_path / "mail") as server:
        env = {"NOTIFICATIONS_SMTP_PORT": str(server.port), "NOTIFICATIONS_CLAIM_LEASE_SECONDS": "3"}
        try:
            events_stack.restart("notifications", extra_env=env)
            server.handler.reply = "hold"
            [email] = await register(events_driver, 1)
            deadline = time.monotonic() + 30
            while not server.handler.held.is_set():
                assert time.monotonic() < deadline, "the welcome email never reached the SMTP server"
                await asyncio.sleep(0.05)
            # The server has stored the mail and holds its 250: the sender dies waiting for it.
            events_stack.processes["notifications"].kill()
            server.handler.reply = "accept"
            server.handler.release.set()
            [mail] = server.messages()
            notification_id = mail["X-Ordersaga-Notification-Id"]

            events_stack.restart("notifications", extra_env=env)
            url = f"{events_stack.url('notifications')}/notifications/{notification_id}"
            deadline = time.monotonic() + 30
            while (stored := httpx.get(url, headers=as_service()).json())["status"] == "queued":
                assert time.monotonic() < deadline, f"still queued after the lease: {stored}"
                await asyncio.sleep(0.2)
            assert (stored["status"], stored["attempts"], stored["sent_at"]) == ("unknown", 1, None)
            assert "not re-sent" in stored["last_error"]

            await asyncio.sleep(2.0)  # time for a wrong re-send to show up
            assert len(server.copies(mail["Message-ID"])) == 1
            assert mails_to(smtp_sink, email) == []
            metrics = httpx.get(events_stack.url("notifications") + "/metrics").text
            assert 'ordersaga_notification_deliveries_total{channel="email",status="unknown"} 1.0' in metrics
        finally:
            events_stack.restart("notifications")

    deadline = time.monotonic() + 30
    while await stream_count(nats_server.url, "ordersaga.notifications.unknown") < before + 1:
        assert time.monotonic() < deadline, "notification.unknown was not published"
        await asyncio.sleep(0.2)
    nc = await nats.connect(nats_server.url)
    try:
        raw = await nc.jetstream().get_last_msg(STREAM, "ordersaga.notifications.unknown")
    finally:
        await nc.close()
    event = json.loads(raw.data)
    assert event["type"] == "notification.unknown"
    assert event["data"]["notification_id"] == notification_id
    assert event["data"]["template"] == "welcome"


async def test_poison_message_is_parked_and_the_consumer_keeps_going(
    events_stack: Stack, events_driver: Driver, smtp_sink: SmtpSink, nats_server: NatsServer
) -> None:
    nc = await nats.connect(nats_server.url)
    try:
        js = nc.jetstream()
        await js.publish("ordersaga.users.created", b'{"specversion": "1.0", "type": "user.created"')
        poison_seq = (await js.stream_info("ORDERSAGA")).state.last_seq
    finally:
        await nc.close()
    [email] = await register(events_driver, 1)
    mails = await wait_for_mails(smtp_sink, [email])
    assert_once_each(mails)  # type: ignore[arg-type]

    log = events_stack.processes["notifications"].log_path
    deadline = time.monotonic() + 20
    while '"event_parked"' not in log.read_text():
        assert time.monotonic() < deadline, "the poison message was not parked"
        await asyncio.sleep(0.2)
    parked = [line for line in log.read_text().splitlines() if '"event_parked"' in line]
    assert any(f'"seq": {poison_seq}' in line and "MalformedEvent" in line for line in parked), parked
    assert any('"deliveries": 3' in line for line in parked)
    metrics = httpx.get(events_stack.url("notifications") + "/metrics").text
    assert 'notifications_events_total{outcome="parked",type="unknown"}' in metrics
