"""The SMTP channel keeps its connection between messages, and never re-sends what may have been taken."""

from __future__ import annotations

import email.policy
import uuid
from collections.abc import Iterator
from email import message_from_bytes
from pathlib import Path
from typing import Any

import aiosmtplib
import pytest

from services.notifications.channels import (
    DeliveryError,
    DeliveryOutcomeUnknown,
    OutboundMessage,
    SmtpEmailChannel,
)
from services.notifications.settings import Settings
from tests.events.smtp_server import ScriptedSmtp, scripted_smtp


def message(subject: str = "Your order is confirmed", body: str = "Hello Ada") -> OutboundMessage:
    return OutboundMessage(
        message_id=str(uuid.uuid4()),
        channel="email",
        to="ada@example.com",
        subject=subject,
        body=body,
        template="order_confirmed",
        user_id=str(uuid.uuid4()),
        order_id=None,
    )


class CountingChannel(SmtpEmailChannel):
    """Counts the connections it opens."""

    connections = 0

    async def _connect(self) -> Any:
        self.connections += 1
        return await super()._connect()


def channel(port: int) -> CountingChannel:
    return CountingChannel(Settings(email_backend="smtp", smtp_port=port, smtp_timeout_seconds=5.0))


@pytest.fixture
def server(tmp_path: Path) -> Iterator[ScriptedSmtp]:
    with scripted_smtp(tmp_path / "mail") as running:
        yield running


def copies(server: ScriptedSmtp, sent: OutboundMessage) -> int:
    return len(server.copies(f"<{sent.message_id}@ordersaga>"))


async def test_messages_share_one_connection_and_each_arrives_once(server: ScriptedSmtp) -> None:
    smtp = channel(server.port)
    sent = [message() for _ in range(3)]
    for each in sent:
        await smtp.send(each)
    await smtp.aclose()
    assert smtp.connections == 1
    assert [copies(server, each) for each in sent] == [1, 1, 1]


async def test_a_kept_connection_found_closed_sends_again_on_a_new_one(
    server: ScriptedSmtp, monkeypatch: pytest.MonkeyPatch
) -> None:
    smtp = channel(server.port)
    await smtp.send(message())
    kept = smtp._client
    assert kept is not None

    async def closed(*_: Any, **__: Any) -> Any:
        raise aiosmtplib.SMTPServerDisconnected("the server closed the idle connection")

    monkeypatch.setattr(kept, "mail", closed)  # fails before DATA: nothing was handed over
    second = message()
    await smtp.send(second)
    await smtp.aclose()
    assert smtp.connections == 2
    assert copies(server, second) == 1


async def test_a_refusal_is_retryable_and_the_next_mail_goes_out(server: ScriptedSmtp) -> None:
    smtp = channel(server.port)
    server.handler.reply = "refuse"
    refused = message()
    with pytest.raises(DeliveryError, match="554"):
        await smtp.send(refused)
    server.handler.reply = "accept"
    accepted = message()
    await smtp.send(accepted)
    await smtp.aclose()
    assert (copies(server, refused), copies(server, accepted)) == (0, 1)


async def test_a_connection_lost_during_data_on_a_kept_connection_is_unknown_and_not_resent(
    server: ScriptedSmtp,
) -> None:
    smtp = channel(server.port)
    await smtp.send(message())
    server.handler.reply = "drop"
    dropped = message()
    with pytest.raises(DeliveryOutcomeUnknown, match="during DATA"):
        await smtp.send(dropped)
    assert copies(server, dropped) == 1  # taken once, and not sent again on a new connection
    assert smtp.connections == 1


async def test_non_ascii_subject_and_body_arrive_intact(server: ScriptedSmtp) -> None:
    smtp = channel(server.port)
    sent = message(subject="Votre commande « été » est confirmée", body="Bonjour Zoë,\n\nMerci.")
    await smtp.send(sent)
    await smtp.aclose()
    [stored] = server.copies(f"<{sent.message_id}@ordersaga>")
    parsed = message_from_bytes(stored.as_bytes(), policy=email.policy.default)
    assert parsed["Subject"] == sent.subject
    assert parsed.get_content().rstrip("\n") == sent.body  # type: ignore[attr-defined]
    assert parsed["X-Ordersaga-Notification-Id"] == sent.message_id
