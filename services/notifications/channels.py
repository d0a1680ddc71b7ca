"""Channel adapters: how a rendered notice leaves the system.

An adapter returns once the provider took the message and raises on a failed delivery. Any exception
means "not delivered" and the sender retries, except `DeliveryOutcomeUnknown`: the provider may have
taken the message (the connection was lost while it answered), so the sender never retries it.
"""

from __future__ import annotations

import asyncio
import json
import random
from dataclasses import asdict, dataclass
from email.message import EmailMessage
from email.utils import formatdate
from pathlib import Path
from typing import Any, Protocol

import aiosmtplib

from services.notifications.settings import Settings


@dataclass(frozen=True)
class OutboundMessage:
    # The notification id: a duplicate delivery would show the same message id twice.
    message_id: str
    channel: str
    to: str
    subject: str
    body: str
    template: str
    user_id: str
    order_id: str | None


class DeliveryError(Exception):
    """The channel did not take the message; the sender retries later."""


class DeliveryOutcomeUnknown(Exception):
    """The message was handed over but the provider's answer never came: it may have been taken.

    Not a `DeliveryError`, so that no code retrying on those re-sends it; the sender records the
    notification as `unknown` instead.
    """


class Channel(Protocol):
    async def send(self, message: OutboundMessage) -> None: ...


class JsonlSink:
    """Appends one JSON line per message: the development stand-in for a real gateway."""

    def __init__(self, path: Path) -> None:
        self.path = path
        # One writer at a time, so lines of concurrent sends never interleave.
        self._lock = asyncio.Lock()

    async def send(self, message: OutboundMessage) -> None:
        line = json.dumps(asdict(message), ensure_ascii=False, separators=(",", ":")) + "\n"
        async with self._lock:
            await asyncio.to_thread(self._append, line)

    def _append(self, line: str) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self.path.open("a", encoding="utf-8") as sink:
            sink.write(line)
            sink.flush()


class FileEmailChannel(JsonlSink):
    def __init__(self, data_dir: Path) -> None:
        super().__init__(data_dir / "mail.jsonl")


class FileSmsChannel(JsonlSink):
    def __init__(self, data_dir: Path) -> None:
        super().__init__(data_dir / "sms.jsonl")


class FlakyChannel:
    """Simulates an unreliable provider: fails the first `fail_first` sends, then at `failure_rate`."""

    def __init__(
        self,
        inner: Channel,
        *,
        fail_first: int = 0,
        failure_rate: float = 0.0,
        rng: random.Random | None = None,
    ) -> None:
        self.inner = inner
        self.remaining_failures = fail_first
        self.failure_rate = failure_rate
        self.rng = rng or random.Random()

    async def send(self, message: OutboundMessage) -> None:
        if self.remaining_failures > 0:
            self.remaining_failures -= 1
            raise DeliveryError("simulated provider failure (fail-first)")
        if self.failure_rate and self.rng.random() < self.failure_rate:
            raise DeliveryError("simulated provider failure (failure rate)")
        await self.inner.send(message)


class SmtpEmailChannel:
    """Real email over SMTP (aiosmtplib): plain, STARTTLS or implicit TLS, optional credentials.

    A refusal by the server (any SMTP reply code) or a failure before the DATA command is a
    `DeliveryError`, safe to retry. A lost connection or a timeout once DATA has begun is
    `DeliveryOutcomeUnknown`: the server may have queued the mail before its reply was lost
    (RFC 1047), and a retry would deliver it twice. The Message-ID derives from the notification id,
    so that an audit can still prove no message reached the server twice.
    """

    def __init__(self, settings: Settings) -> None:
        self.settings = settings

    def build(self, message: OutboundMessage) -> EmailMessage:
        email = EmailMessage()
        email["From"] = self.settings.mail_from
        email["To"] = message.to
        email["Subject"] = message.subject
        email["Date"] = formatdate(localtime=False)
        email["Message-ID"] = f"<{message.message_id}@ordersaga>"
        email["X-Ordersaga-Template"] = message.template
        email["X-Ordersaga-Notification-Id"] = message.message_id
        email.set_content(message.body)
        return email

    async def send(self, message: OutboundMessage) -> None:
        settings = self.settings
        password = settings.smtp_password.get_secret_value() if settings.smtp_password else None
        client = _PhaseTrackingSmtp(
            hostname=settings.smtp_host,
            port=settings.smtp_port,
            username=settings.smtp_username,
            password=password,
            use_tls=settings.smtp_use_tls,
            start_tls=settings.smtp_starttls,
            timeout=settings.smtp_timeout_seconds,
        )
        where = f"SMTP {settings.smtp_host}:{settings.smtp_port}"
        try:
            async with client:
                await client.send_message(self.build(message))
        except aiosmtplib.SMTPResponseException as exc:
            raise DeliveryError(f"{where}: {exc}") from exc  # the server answered no
        except (aiosmtplib.SMTPException, OSError) as exc:
            if client.data_accepted:
                return  # only the QUIT after the accepted DATA failed: delivered
            if client.data_started:
                raise DeliveryOutcomeUnknown(
                    f"{where}: connection lost during DATA, the server may have taken the mail: {exc}"
                ) from exc
            raise DeliveryError(f"{where}: {exc}") from exc


class _PhaseTrackingSmtp(aiosmtplib.SMTP):
    """An SMTP client that remembers whether the DATA command began and whether it was accepted."""

    data_started = False
    data_accepted = False

    async def data(self, message: str | bytes, /, **kwargs: Any) -> aiosmtplib.SMTPResponse:
        self.data_started = True
        response = await super().data(message, **kwargs)
        self.data_accepted = True
        return response


def email_channel(settings: Settings) -> Channel:
    """The email adapter named by `NOTIFICATIONS_EMAIL_BACKEND`: `file` (development) or `smtp`."""
    if settings.email_backend == "file":
        return FileEmailChannel(settings.data_dir)
    if settings.email_backend == "smtp":
        return SmtpEmailChannel(settings)
    raise ValueError(f"unknown email backend {settings.email_backend!r}")


def sms_channel(settings: Settings) -> Channel:
    """The SMS adapter. Only the development sink ships; a real provider is another `Channel`
    (an async `send` that raises `DeliveryError` when the provider refuses), chosen here."""
    channel: Channel = FileSmsChannel(settings.data_dir)
    if settings.sms_fail_first or settings.sms_failure_rate:
        channel = FlakyChannel(
            channel, fail_first=settings.sms_fail_first, failure_rate=settings.sms_failure_rate
        )
    return channel


def build_channels(settings: Settings) -> dict[str, Channel]:
    return {"email": email_channel(settings), "sms": sms_channel(settings)}
