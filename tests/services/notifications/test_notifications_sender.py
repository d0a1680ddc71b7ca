"""Delivery: the sender claims, sends once, retries with backoff, gives up, and never double-sends."""

from __future__ import annotations

import asyncio
import random
import uuid
from datetime import timedelta
from pathlib import Path

import pytest
from prometheus_client import REGISTRY
from sqlalchemy import update
from sqlmodel import col

from services.kit.db import Database
from services.kit.models import utcnow
from services.notifications.channels import (
    Channel,
    DeliveryOutcomeUnknown,
    OutboundMessage,
    build_channels,
)
from services.notifications.models import Notification
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
        assert (first.status, first.attempts, first.send_started_at) == ("queued", 1, None)
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


def deliveries(status: str, channel: str = "email") -> float:
    value = REGISTRY.get_sample_value(
        "ordersaga_notification_deliveries_total", {"channel": channel, "status": status}
    )
    return value or 0.0


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


async def test_a_send_outliving_its_lease_is_never_sent_again(service_client, tmp_path: Path) -> None:
    async with service_client("notifications", **MANUAL) as client:
        created = await queue(client)
        settings: Settings = client.app.state.settings
        blocking = _BlockingChannel()
        holder = Sender(client.app.state.db, settings, {"email": blocking})
        task = asyncio.create_task(holder.send_due_once())
        await asyncio.wait_for(blocking.entered.wait(), timeout=10)

        # The holder is still inside its send when the lease runs out: another sender takes the row
        # over but cannot know whether the message left, so it sends nothing.
        after_lease = utcnow() + timedelta(seconds=settings.claim_lease_seconds + 1)
        assert await sender_of(client).send_due_once(now=after_lease) == 1
        assert sink_lines(tmp_path / "data", "email") == []
        assert (await row(client, created["id"])).status == "unknown"

        blocking.release.set()
        await task
        assert [message.message_id for message in blocking.sent] == [created["id"]]  # one copy only
        stored = await row(client, created["id"])
        assert (stored.status, stored.attempts, stored.sent_at) == (
            "unknown",
            1,
            None,
        )  # late outcome dropped
        assert not [e for e in await events(client) if e.type == "notification.sent"]
        assert await sender_of(client).send_due_once(now=after_lease + timedelta(days=1)) == 0


class _DeliversThenHangs:
    """A provider that takes the message, then never answers: the sender dies waiting for the reply."""

    def __init__(self) -> None:
        self.delivered: list[OutboundMessage] = []
        self.answering = asyncio.Event()

    async def send(self, message: OutboundMessage) -> None:
        self.delivered.append(message)
        self.answering.set()
        await asyncio.Event().wait()


async def test_a_sender_killed_between_send_and_record_leaves_the_notification_unknown(
    service_client, tmp_path: Path
) -> None:
    async with service_client("notifications", **MANUAL) as client:
        created = await queue(client, order_id=str(uuid.uuid4()))
        settings: Settings = client.app.state.settings
        provider = _DeliversThenHangs()
        doomed = Sender(client.app.state.db, settings, {"email": provider})
        task = asyncio.create_task(doomed.send_due_once())
        await asyncio.wait_for(provider.answering.wait(), timeout=10)
        task.cancel()  # the process dies: nothing after the send runs
        with pytest.raises(asyncio.CancelledError):
            await task
        assert (await row(client, created["id"])).status == "queued"

        survivor = sender_of(client)
        assert await survivor.send_due_once() == 0  # the dead sender's lease still runs
        before = deliveries("unknown")
        after_lease = utcnow() + timedelta(seconds=settings.claim_lease_seconds + 1)
        assert await survivor.send_due_once(now=after_lease) == 1

        assert [m.message_id for m in provider.delivered] == [created["id"]]
        assert sink_lines(tmp_path / "data", "email") == []  # the survivor sent nothing
        stored = (await client.get(f"/notifications/{created['id']}", headers=as_admin())).json()
        assert (stored["status"], stored["attempts"], stored["sent_at"]) == ("unknown", 1, None)
        assert "not re-sent" in stored["last_error"]
        listed = await client.get(
            f"/users/{created['user_id']}/notifications", headers=as_customer(created["user_id"])
        )
        assert listed.json()["items"][0]["status"] == "unknown"
        [event] = [e for e in await events(client) if e.type.startswith("notification.")]
        assert event.type == "notification.unknown"
        assert event.data["notification_id"] == created["id"]
        assert event.data["order_id"] == created["order_id"]
        assert "not re-sent" in event.data["last_error"]
        assert deliveries("unknown") == before + 1

        # Final: no later pass sends it either.
        assert await survivor.send_due_once(now=after_lease + timedelta(days=1)) == 0
        assert sink_lines(tmp_path / "data", "email") == []


class _LosesTheAnswer:
    async def send(self, message: OutboundMessage) -> None:
        raise DeliveryOutcomeUnknown("connection lost during DATA")


async def test_a_channel_that_lost_the_answer_is_not_retried(service_client, tmp_path: Path) -> None:
    async with service_client("notifications", **MANUAL) as client:
        created = await queue(client)
        sender = Sender(client.app.state.db, client.app.state.settings, {"email": _LosesTheAnswer()})
        assert await sender.send_due_once() == 1
        stored = await row(client, created["id"])
        assert (stored.status, stored.attempts) == ("unknown", 1)
        assert "not re-sent" in (stored.last_error or "")
        assert "connection lost during DATA" in (stored.last_error or "")
        assert await sender_of(client).send_due_once(now=utcnow() + timedelta(days=1)) == 0
        assert sink_lines(tmp_path / "data", "email") == []
        assert [e.type for e in await events(client)] == ["notification.unknown"]


async def test_a_claim_that_expired_before_the_send_sends_nothing(service_client, tmp_path: Path) -> None:
    async with service_client("notifications", **MANUAL) as client:
        created = await queue(client)
        settings: Settings = client.app.state.settings
        sender = sender_of(client)
        # A sender stalled between its claim and its send for longer than the lease: it claimed at
        # `stale` (the notice was due then), so its lease has run out by the time it would send.
        stale = utcnow() - timedelta(seconds=settings.claim_lease_seconds + 1)
        async with client.app.state.db.session() as session, session.begin():
            await session.exec(
                update(Notification)
                .where(col(Notification.id) == uuid.UUID(created["id"]))
                .values(next_attempt_at=stale)
            )
        assert await sender.send_due_once(now=stale) == 1
        assert sink_lines(tmp_path / "data", "email") == []
        stored = await row(client, created["id"])
        assert (stored.status, stored.attempts, stored.send_started_at) == ("queued", 0, None)

        assert await sender.send_due_once() == 1  # not unknown: nothing was ever handed over
        assert [line["message_id"] for line in sink_lines(tmp_path / "data", "email")] == [created["id"]]
        assert (await row(client, created["id"])).status == "sent"


class _SlowProvider:
    def __init__(self, inner: Channel) -> None:
        self.inner = inner
        self.entered = asyncio.Event()

    async def send(self, message: OutboundMessage) -> None:
        self.entered.set()
        await asyncio.sleep(0.5)
        await self.inner.send(message)


async def test_shutdown_lets_the_send_in_hand_finish(service_client, tmp_path: Path) -> None:
    async with service_client("notifications") as client:
        sender = sender_of(client)
        slow = _SlowProvider(sender.channels["email"])
        sender.channels["email"] = slow
        url = client.app.state.db.url
        created = await queue(client)
        await asyncio.wait_for(slow.entered.wait(), timeout=10)
    # The app has shut down while the provider was working: the send completed and was recorded.
    reader = Database(url)
    try:
        async with reader.session() as session:
            stored = await session.get(Notification, uuid.UUID(created["id"]))
    finally:
        await reader.dispose()
    assert stored is not None
    assert (stored.status, stored.send_started_at) == ("sent", None)
    assert [line["message_id"] for line in sink_lines(tmp_path / "data", "email")] == [created["id"]]


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


async def test_background_sender_runs_its_due_retry_while_new_notices_keep_coming(
    service_client, tmp_path: Path
) -> None:
    # New notices are handed to the loop as written and claimed without the due query; a retry of
    # this sender falling due while one is in hand must still get its pass, not wait for the (long)
    # safety poll. Notices are queued back to back, so the loop nearly always has one in hand.
    settings = {
        "poll_interval_seconds": 60,
        "sms_fail_first": 1,
        "retry_base_seconds": 0.1,
        "retry_max_seconds": 0.1,
    }
    async with service_client("notifications", **settings) as client:
        await asyncio.sleep(0.2)  # let the loop's first (empty) poll pass
        retried = await queue(client, channel="sms", to="+14155550100")
        deadline = asyncio.get_running_loop().time() + 3
        while asyncio.get_running_loop().time() < deadline:
            for _ in range(20):
                await queue(client)
            if sink_lines(tmp_path / "data", "sms"):
                break
        assert [line["message_id"] for line in sink_lines(tmp_path / "data", "sms")] == [retried["id"]]
