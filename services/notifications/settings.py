"""Settings of the notifications service (env prefix `NOTIFICATIONS_`)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, SecretStr
from pydantic_settings import SettingsConfigDict

from services.kit.settings import ServiceSettings


class Settings(ServiceSettings):
    model_config = SettingsConfigDict(env_prefix="NOTIFICATIONS_", extra="ignore")

    service_name: str = "notifications"
    port: int = 8005

    # Tests turn the background loop off and drive `Sender.send_due_once()` themselves.
    sender_enabled: bool = True
    # The sender wakes when a notice is accepted and when a retry it scheduled falls due; this slow
    # safety poll finds what no signal covers (another replica's retries, a dead sender's lease).
    poll_interval_seconds: float = Field(default=5.0, gt=0)
    batch_size: int = Field(default=50, ge=1, le=1000)
    # A claimed notification is invisible to other senders this long; it must outlast one send.
    claim_lease_seconds: float = Field(default=30.0, gt=0)
    # On shutdown, how long the delivery in hand may take to finish and be recorded before it is cut
    # short (a send cut short is never retried: it ends `unknown`).
    shutdown_grace_seconds: float = Field(default=10.0, ge=0)

    max_attempts: int = Field(default=5, ge=1)
    retry_base_seconds: float = Field(default=1.0, ge=0)
    retry_factor: float = Field(default=2.0, ge=1)
    retry_max_seconds: float = Field(default=60.0, ge=0)

    # `file` appends JSON lines to <data dir>/mail.jsonl (development); `smtp` sends through a real server.
    email_backend: Literal["file", "smtp"] = "file"
    smtp_host: str = "127.0.0.1"
    smtp_port: int = Field(default=1025, ge=1, le=65535)
    smtp_username: str | None = None
    smtp_password: SecretStr | None = None
    # STARTTLS upgrade on a plain connection (port 587), or implicit TLS from the start (port 465).
    smtp_starttls: bool = False
    smtp_use_tls: bool = False
    smtp_timeout_seconds: float = Field(default=10.0, gt=0)
    mail_from: str = "ordersaga <no-reply@ordersaga.local>"
    # Where operational alerts (stock.low) go.
    admin_email: str = "admin@example.com"

    # The JetStream consumer (on when NATS_URL is set): durable name, batch, redelivery bounds.
    events_enabled: bool = True
    events_durable: str = "notifications"
    events_batch_size: int = Field(default=20, ge=1, le=500)
    # An idle consumer's pull waits this long for the next event (it returns as soon as one comes);
    # one pull request per this period is all the consumer costs at idle.
    events_fetch_timeout_seconds: float = Field(default=10.0, gt=0)
    # A message not acknowledged within this time is redelivered (a consumer that died mid-batch).
    events_ack_wait_seconds: float = Field(default=30.0, gt=0)
    # Deliveries before a message is parked; a contact not known yet is retried this often.
    events_max_deliver: int = Field(default=5, ge=1)
    events_retry_delay_seconds: float = Field(default=2.0, ge=0)
    # Fault injection for crash tests: exit after handling this many events, before acking the last.
    events_crash_after: int = Field(default=0, ge=0)
    # Failure injection for the simulated SMS gateway (the outside world, which we may fake).
    sms_failure_rate: float = Field(default=0.0, ge=0, le=1)
    sms_fail_first: int = Field(default=0, ge=0)
