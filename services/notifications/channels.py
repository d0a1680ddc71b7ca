"""Channel adapters: how a rendered notice leaves the system.

An adapter returns once the provider took the message and raises on a failed delivery. Any exception
means "not delivered" and the sender retries, except `DeliveryOutcomeUnknown`: the provider may have
taken the message (the connection was lost while it answered), so the sender never retries it.
"""

from __future__ import annotations

import asyncio
import json
import random
import time
from contextlib import suppress
from dataclasses import asdict, dataclass
from email.charset import Charset
from email.message import EmailMessage, Message
from email.mime.nonmultipart import MIMENonMultipart
from email.utils import formatdate, parseaddr
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

    The connection stays open between messages (connect, TLS, login and EHLO once, not per notice)
    while it is used at least every `_REUSE_IDLE_SECONDS`; a kept connection the server has closed
    meanwhile fails before DATA, so that message goes again at once on a new connection. Any failure
    drops the connection.
    """

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._sender = parseaddr(settings.mail_from)[1]
        self._lock = asyncio.Lock()  # one SMTP transaction at a time on the kept connection
        self._client: _PhaseTrackingSmtp | None = None
        self._client_loop: asyncio.AbstractEventLoop | None = None
        self._last_used = 0.0

    def build(self, message: OutboundMessage) -> Message:
        if not message.to.isascii():  # an internationalised address: the policy-aware message (SMTPUTF8)
            return self._build_international(message)
        # The compat32 classes keep headers as given (the modern policy parses each one, ~1.5 ms a
        # message); a non-ASCII subject is still RFC 2047-encoded, the body sent as is (7 or 8 bit).
        email = MIMENonMultipart("text", "plain")
        email.set_payload(message.body, _UTF8_AS_IS)
        self._address(email, message)
        return email

    def _build_international(self, message: OutboundMessage) -> EmailMessage:
        email = EmailMessage()
        self._address(email, message)
        email.set_content(message.body)
        return email

    def _address(self, email: Message, message: OutboundMessage) -> None:
        """The headers every mail carries, whichever class builds it."""
        email["From"] = self.settings.mail_from
        email["To"] = message.to
        email["Subject"] = message.subject
        email["Date"] = formatdate(localtime=False)
        email["Message-ID"] = f"<{message.message_id}@ordersaga>"
        email["X-Ordersaga-Template"] = message.template
        email["X-Ordersaga-Notification-Id"] = message.message_id

    async def send(self, message: OutboundMessage) -> None:
        email = self.build(message)
        async with self._lock:
            kept = self._kept_client()
            if kept is not None and await self._transmit(kept, email, message.to, kept_open=True):
                return
            await self._transmit(await self._connect(), email, message.to, kept_open=False)

    async def aclose(self) -> None:
        """Say goodbye to the server on the kept connection, if any (shutdown)."""
        async with self._lock:
            client, self._client = self._client, None
            if client is not None and client.is_connected:
                with suppress(aiosmtplib.SMTPException, OSError):
                    await client.quit()

    def _kept_client(self) -> _PhaseTrackingSmtp | None:
        client = self._client
        fresh = time.monotonic() - self._last_used < _REUSE_IDLE_SECONDS
        if client is None or not client.is_connected or not fresh:
            self._drop()
            return None
        if self._client_loop is not asyncio.get_running_loop():
            self._client = None  # opened on another event loop (tests): not ours to close from here
            return None
        return client

    async def _connect(self) -> _PhaseTrackingSmtp:
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
        try:
            await client.connect()  # and TLS, login, as the configuration asks
        except (aiosmtplib.SMTPException, OSError) as exc:  # a refusal too: nothing was sent yet
            client.close()
            raise DeliveryError(f"{self._where}: {exc}") from exc
        self._client, self._client_loop = client, asyncio.get_running_loop()
        return client

    async def _transmit(
        self, client: _PhaseTrackingSmtp, email: Message, to: str, *, kept_open: bool
    ) -> bool:
        """Send one message; False only when a kept connection turned out closed before DATA began
        (nothing was handed over: the caller sends it again on a new connection)."""
        client.data_started = client.data_accepted = False
        try:
            await client.send_message(email, sender=self._sender, recipients=[to])
        except aiosmtplib.SMTPResponseException as exc:
            self._drop()
            raise DeliveryError(f"{self._where}: {exc}") from exc  # the server answered no
        except (aiosmtplib.SMTPException, OSError) as exc:
            self._drop()
            if client.data_accepted:
                return True  # only what came after the accepted DATA failed: delivered
            if client.data_started:
                raise DeliveryOutcomeUnknown(
                    f"{self._where}: connection lost during DATA, the server may have taken the mail: {exc}"
                ) from exc
            if kept_open:
                return False
            raise DeliveryError(f"{self._where}: {exc}") from exc
        self._last_used = time.monotonic()
        return True

    def _drop(self) -> None:
        client, self._client = self._client, None
        if client is not None and self._client_loop is asyncio.get_running_loop():
            client.close()

    @property
    def _where(self) -> str:
        return f"SMTP {self.settings.smtp_host}:{self.settings.smtp_port}"


# How long a kept SMTP connection may sit idle and still be used: under the idle timeouts of common
# servers (Postfix 300 s, aiosmtpd 300 s), so a reused connection is seldom found closed.
_REUSE_IDLE_SECONDS = 60.0
# UTF-8 declared, the body sent as it is (7bit when ASCII, else 8bit), as EmailMessage.set_content does.
_UTF8_AS_IS = Charset("utf-8")
_UTF8_AS_IS.body_encoding = None  # type: ignore[assignment]  # None: no transfer encoding (typeshed says int)


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
