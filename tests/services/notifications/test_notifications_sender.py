"""Delivery: the sender claims, sends once, retries with backoff, gives up, and never double-sends."""

from __future__ import annotations

import asyncio
import random
import uuid
from datetime import timedelta
from pathlib import Path

from services.kit.db import Database
from services.kit.models import utcnow
from services.notifications.channels import OutboundMessage, build_channels
from services.notifications.sender import Sender, retry_delay
from services.notifications.settings import Settings
from tests.services.notifications.helpers import MANUAL, events, queue, row, sender_of, sink_lines
from tests.support.identity import as_admin, as_customer, as_service


async def test_send_due_once_delivers_each_notification_exactly_once(service_client, tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    order_id = str(uuid.uuid4())
    async with service_client("notifications", **MANUAL) as client:
        email = await queue(
            client,
            order_id=order_id,
            data={"total_cents": 123456, "currency": "EUR", "first_name": "Ada"},
        )
        sms = await queue(
            client,
            channel="sms",
            to="+14155550100",
            template="order_cancelled",
            data={"reason": "out_of_stock"},
        )
        sender = sender_of(client)
        assert await sender.send_due_once() == 2
        assert await sender.send_due_once() == 0  # nothing left: nothing sent twice

        [mail] = sink_lines(data_dir, "email")
        assert mail["message_id"] == email["id"]
        assert mail["to"] == "ada@example.com"
        assert order_id in mail["subject"]
        assert "1,234.56 EUR" in mail["body"]
        assert "Hello Ada" in mail["body"]
        [text] = sink_lines(data_dir, "sms")
        assert text["message_id"] == sms["id"]
        assert text["to"] == "+14155550100"
        assert "out of stock" in text["body"]

        stored = (await client.get(f"/notifications/{email['id']}", headers=as_admin())).json()
        assert stored["status"] == "sent"
        assert stored["attempts"] == 1
        assert stored["sent_at"] is not None
        listed = await client.get(
            f"/users/{email['user_id']}/notifications", headers=as_customer(email["user_id"])
        )
        assert listed.json()["items"][0]["status"] == "sent"
        assert listed.json()["items"][0]["sent_at"] == stored["sent_at"]

        sent_events = [event for event in await events(client) if event.type == "notification.sent"]
        assert sorted(event.data["notification_id"] for event in sent_events) == sorted(
            [email["id"], sms["id"]]
        )
        assert all(event.source == "notifications" for event in sent_events)


async def test_repeated_key_is_delivered_once(service_client, tmp_path: Path) -> None:
    async with service_client("notifications", **MANUAL) as client:
        created = await queue(client, idempotency_key="saga-order-1-notify")
        again = await client.post(
            "/notifications",
            json={
                "idempotency_key": "saga-order-1-notify",
                "user_id": created["user_id"],
                "channel": "email",
                "to": "ada@example.com",
                "template": "order_confirmed",
                "data": {"order_id": "o-1", "total_cents": 12345, "currency": "USD"},
            },
            headers=as_service(),
        )
        assert again.status_code == 200
        await sender_of(client).send_due_once()
        await sender_of(client).send_due_once()
        assert [line["message_id"] for line in sink_lines(tmp_path / "data", "email")] == [created["id"]]


async def test_failures_back_off_exponentially_then_send(service_client, tmp_path: Path) -> None:
    async with service_client("notifications", sms_fail_first=2, **MANUAL) as client:
        created = await queue(client, channel="sms", to="+14155550100", template="welcome", data={})
        sender = sender_of(client)

        before = utcnow()
        assert await sender.send_due_once() == 1
        first = await row(client, created["id"])
        assert (first.status, first.attempts) == ("queued", 1)
        assert "simulated provider failure" in (first.last_error or "")
        # base 1 s with jitter in [0.5, 1] s
        assert before + timedelta(seconds=0.5) <= first.next_attempt_at <= utcnow() + timedelta(seconds=1)
        assert await sender.send_due_once() == 0  # not due yet

        before = utcnow()
        assert await sender.send_due_once(now=first.next_attempt_at) == 1
        second = await row(client, created["id"])
        assert second.attempts == 2
        # second failure: 2 s with jitter in [1, 2] s
        assert before + timedelta(seconds=1) <= second.next_attempt_at <= utcnow() + timedelta(seconds=2)
        assert sink_lines(tmp_path / "data", "sms") == []

        assert await sender.send_due_once(now=second.next_attempt_at) == 1
        done = (await client.get(f"/notifications/{created['id']}", headers=as_service())).json()
        assert (done["status"], done["attempts"], done["last_error"]) == ("sent", 3, None)
        assert [line["message_id"] for line in sink_lines(tmp_path / "data", "sms")] == [created["id"]]


async def test_gives_up_after_max_attempts(service_client, tmp_path: Path) -> None:
    async with service_client("notifications", sms_failure_rate=1.0, max_attempts=3, **MANUAL) as client:
        created = await queue(client, channel="sms", to="+14155550100", template="welcome", data={})
        sender = sender_of(client)
        later = utcnow() + timedelta(hours=1)
        for _ in range(3):
            assert await sender.send_due_once(now=later) == 1
        assert await sender.send_due_once(now=later + timedelta(days=1)) == 0

        failed = (await client.get(f"/notifications/{created['id']}", headers=as_admin())).json()
        assert (failed["status"], failed["attempts"], failed["sent_at"]) == ("failed", 3, None)
        assert "simulated provider failure" in failed["last_error"]
        assert sink_lines(tmp_path / "data", "sms") == []
        [event] = [event for event in await events(client) if event.type.startswith("notification.")]
        assert event.type == "notification.failed"
        assert event.data["notification_id"] == created["id"]
        assert event.data["attempts"] == 3


async def test_two_concurrent_senders_never_send_one_notification_twice(
    service_client, tmp_path: Path
) -> None:
    data_dir = tmp_path / "data"
    async with service_client("notifications", **MANUAL) as client:
        ids = {(await queue(client))["id"] for _ in range(8)}
        settings: Settings = client.app.state.settings
        replica_db = Database(client.app.state.db.url)
        try:
            replica = Sender(replica_db, settings, build_channels(settings))
            claimed = await asyncio.gather(sender_of(client).send_due_once(), replica.send_due_once())
        finally:
            await replica_db.dispose()
        assert sum(claimed) == 8
        delivered = [line["message_id"] for line in sink_lines(data_dir, "email")]
        assert sorted(delivered) == sorted(ids)
        sent_events = [event for event in await events(client) if event.type == "notification.sent"]
        assert len(sent_events) == 8


class _BlockingChannel:
    """A provider that holds the first send until released, to observe the claim while it is held."""

    def __init__(self) -> None:
        self.entered = asyncio.Event()
        self.release = asyncio.Event()
        self.sent: list[OutboundMessage] = []

    async def send(self, message: OutboundMessage) -> None:
        self.entered.set()
        await self.release.wait()
        self.sent.append(message)


async def test_a_claimed_notification_is_left_alone_by_other_senders(service_client) -> None:
    async with service_client("notifications", **MANUAL) as client:
        created = await queue(client)
        settings: Settings = client.app.state.settings
        blocking = _BlockingChannel()
        holder = Sender(client.app.state.db, settings, {"email": blocking})
        task = asyncio.create_task(holder.send_due_once())
        await asyncio.wait_for(blocking.entered.wait(), timeout=10)

        assert await sender_of(client).send_due_once() == 0  # leased to the holder
        blocking.release.set()
        assert await task == 1
        assert [message.message_id for message in blocking.sent] == [created["id"]]
        assert (await row(client, created["id"])).status == "sent"


async def test_an_expired_lease_is_taken_over_and_the_late_holder_cannot_finish(
    service_client, tmp_path: Path
) -> None:
    async with service_client("notifications", **MANUAL) as client:
        created = await queue(client)
        settings: Settings = client.app.state.settings
        blocking = _BlockingChannel()
        holder = Sender(client.app.state.db, settings, {"email": blocking})
        task = asyncio.create_task(holder.send_due_once())
        await asyncio.wait_for(blocking.entered.wait(), timeout=10)

        after_lease = utcnow() + timedelta(seconds=settings.claim_lease_seconds + 1)
        assert await sender_of(client).send_due_once(now=after_lease) == 1
        blocking.release.set()
        await task
        stored = await row(client, created["id"])
        assert (stored.status, stored.attempts) == ("sent", 1)  # the late holder's outcome was dropped
        assert len([e for e in await events(client) if e.type == "notification.sent"]) == 1


async def test_background_sender_wakes_on_a_new_notification(service_client, tmp_path: Path) -> None:
    # A poll interval far longer than the test: only the wake-up can deliver in time.
    async with service_client("notifications", poll_interval_seconds=60) as client:
        await asyncio.sleep(0.2)  # let the loop's first (empty) poll pass
        created = await queue(client)
        for _ in range(100):
            status = (await client.get(f"/notifications/{created['id']}", headers=as_admin())).json()[
                "status"
            ]
            if status == "sent":
                break
            await asyncio.sleep(0.05)
        assert status == "sent"
        assert [line["message_id"] for line in sink_lines(tmp_path / "data", "email")] == [created["id"]]


def test_retry_delay_doubles_with_jitter_and_is_capped() -> None:
    settings = Settings(retry_base_seconds=1, retry_factor=2, retry_max_seconds=60)
    rng = random.Random(7)
    for attempts, ceiling in [(1, 1), (2, 2), (3, 4), (4, 8), (6, 32), (7, 60), (20, 60)]:
        delays = [retry_delay(attempts, settings, rng) for _ in range(50)]
        assert all(ceiling / 2 <= delay <= ceiling for delay in delays), (attempts, delays)
        assert len(set(delays)) > 1  # jittered, so replicas do not retry in lockstep
