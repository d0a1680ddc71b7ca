"""Settings of the notifications service (env prefix `NOTIFICATIONS_`)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field
from pydantic_settings import SettingsConfigDict

from services.kit.settings import ServiceSettings


class Settings(ServiceSettings):
    model_config = SettingsConfigDict(env_prefix="NOTIFICATIONS_", extra="ignore")

    service_name: str = "notifications"
    port: int = 8005

    # Tests turn the background loop off and drive `Sender.send_due_once()` themselves.
    sender_enabled: bool = True
    poll_interval_seconds: float = Field(default=0.5, gt=0)
    batch_size: int = Field(default=50, ge=1, le=1000)
    # A claimed notification is invisible to other senders this long; it must outlast one send.
    claim_lease_seconds: float = Field(default=30.0, gt=0)

    max_attempts: int = Field(default=5, ge=1)
    retry_base_seconds: float = Field(default=1.0, ge=0)
    retry_factor: float = Field(default=2.0, ge=1)
    retry_max_seconds: float = Field(default=60.0, ge=0)

    # Only the development file sink exists for now; SMTP (aiosmtplib) comes later.
    email_backend: Literal["file"] = "file"
    # Failure injection for the simulated SMS gateway (the outside world, which we may fake).
    sms_failure_rate: float = Field(default=0.0, ge=0, le=1)
    sms_fail_first: int = Field(default=0, ge=0)
