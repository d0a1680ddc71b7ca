"""The SMTP adapter against a real SMTP server: which failures are safe to retry and which are not."""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest

from services.notifications.channels import (
    DeliveryError,
    DeliveryOutcomeUnknown,
    OutboundMessage,
    SmtpEmailChannel,
)
from services.notifications.settings import Settings
from tests.events.smtp_server import ScriptedSmtp, scripted_smtp
from tests.support.processes import free_port


def message() -> OutboundMessage:
    return OutboundMessage(
        message_id=str(uuid.uuid4()),
        channel="email",
        to="ada@example.com",
        subject="Welcome to ordersaga",
        body="Hello Ada",
        template="welcome",
        user_id=str(uuid.uuid4()),
        order_id=None,
    )


def channel(port: int, timeout: float = 5.0) -> SmtpEmailChannel:
    return SmtpEmailChannel(Settings(email_backend="smtp", smtp_port=port, smtp_timeout_seconds=timeout))


@pytest.fixture
def server(tmp_path: Path):  # type: ignore[no-untyped-def]
    with scripted_smtp(tmp_path / "mail") as running:
        yield running


async def test_an_accepted_mail_returns_and_arrives_once(server: ScriptedSmtp) -> None:
    sent = message()
    await channel(server.port).send(sent)
    [mail] = server.copies(f"<{sent.message_id}@ordersaga>")
    assert mail["X-Ordersaga-Notification-Id"] == sent.message_id


async def test_a_refusal_by_the_server_is_a_retryable_failure(server: ScriptedSmtp) -> None:
    server.handler.reply = "refuse"
    with pytest.raises(DeliveryError, match="554"):
        await channel(server.port).send(message())
    assert server.messages() == []


async def test_no_server_is_a_retryable_failure() -> None:
    with pytest.raises(DeliveryError):
        await channel(free_port()).send(message())


async def test_a_connection_lost_after_data_is_an_unknown_outcome(server: ScriptedSmtp) -> None:
    server.handler.reply = "drop"
    sent = message()
    with pytest.raises(DeliveryOutcomeUnknown, match="during DATA"):
        await channel(server.port).send(sent)
    # The server did take it: a retry would have delivered it twice.
    assert len(server.copies(f"<{sent.message_id}@ordersaga>")) == 1


async def test_no_answer_to_data_in_time_is_an_unknown_outcome(server: ScriptedSmtp) -> None:
    server.handler.reply = "hold"
    sent = message()
    with pytest.raises(DeliveryOutcomeUnknown):
        await channel(server.port, timeout=0.5).send(sent)
    assert len(server.copies(f"<{sent.message_id}@ordersaga>")) == 1
