"""Channel adapters: how a rendered notice leaves the system. Each raises on a failed delivery."""

from __future__ import annotations

import asyncio
import json
import random
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Protocol

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


def email_channel(settings: Settings) -> Channel:
    """The email adapter named by `NOTIFICATIONS_EMAIL_BACKEND` (only `file` so far)."""
    if settings.email_backend == "file":
        return FileEmailChannel(settings.data_dir)
    raise ValueError(f"unknown email backend {settings.email_backend!r}")


def sms_channel(settings: Settings) -> Channel:
    channel: Channel = FileSmsChannel(settings.data_dir)
    if settings.sms_fail_first or settings.sms_failure_rate:
        channel = FlakyChannel(
            channel, fail_first=settings.sms_fail_first, failure_rate=settings.sms_failure_rate
        )
    return channel


def build_channels(settings: Settings) -> dict[str, Channel]:
    return {"email": email_channel(settings), "sms": sms_channel(settings)}
