"""The event consumer reads only the subjects it handles; anything else is acknowledged unread."""

from __future__ import annotations

from pathlib import Path

from services.kit.events import subject_for
from services.notifications.consumer import EventConsumer
from services.notifications.settings import Settings

# Events the other services publish for every order: none of them is this service's business.
PER_ORDER_EVENTS = (
    "order.created",
    "order.confirmed",
    "order.cancelled",
    "order.awaiting_review",
    "reservation.created",
    "reservation.committed",
    "reservation.released",
    "stock.changed",
    "payment.authorized",
    "payment.captured",
    "payment.declined",
    "payment.voided",
)


class FakeMessage:
    """What `process` may touch of a JetStream message; `metadata` is left out on purpose."""

    def __init__(self, subject: str, data: bytes) -> None:
        self.subject = subject
        self.data = data
        self.acks = 0

    async def ack(self) -> None:
        self.acks += 1


def consumer(tmp_path: Path) -> EventConsumer:
    settings = Settings(database_url=f"sqlite+aiosqlite:///{tmp_path}/n.db", nats_url="")
    return EventConsumer(db=None, settings=settings, sender=None)  # type: ignore[arg-type]


def test_the_filter_names_each_handled_event_and_no_per_order_event(tmp_path: Path) -> None:
    subjects = set(consumer(tmp_path).subjects)
    assert subjects == {subject_for(event_type) for event_type in consumer(tmp_path).handlers}
    assert not subjects & {subject_for(event_type) for event_type in PER_ORDER_EVENTS}


async def test_a_message_on_another_subject_is_acknowledged_unread(tmp_path: Path) -> None:
    # A server older than 2.10 ignores `filter_subjects` and delivers the whole stream.
    message = FakeMessage(subject_for("order.created"), b"not even JSON")
    outcome = await consumer(tmp_path).process(message)  # type: ignore[arg-type]
    assert (outcome, message.acks) == ("ignored", 1)
