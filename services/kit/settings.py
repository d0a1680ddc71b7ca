"""Settings shared by every service; each service subclasses with its own env prefix."""

from __future__ import annotations

from pathlib import Path

from pydantic import AliasChoices, Field
from pydantic_settings import SettingsConfigDict

from services.kit.secrets import SecretGuardedSettings

MAX_BODY_BYTES = 1024 * 1024
# What every process trusts when ORDERSAGA_INTERNAL_TOKEN is unset; production refuses it.
DEV_INTERNAL_TOKEN = "ordersaga-dev-internal-token"


def data_dir_default() -> Path:
    return Path(".data")


class ServiceSettings(SecretGuardedSettings):
    """Per-service settings. Subclasses set `env_prefix` (for example `USERS_`) and `service_name`."""

    model_config = SettingsConfigDict(extra="ignore", env_prefix="SERVICE_")

    service_name: str = "service"
    host: str = "127.0.0.1"
    port: int = 8000
    # Empty means: SQLite in the data dir, the embedded default.
    database_url: str = ""
    # Development applies migrations on start; production runs `ordersaga migrate <service>`.
    auto_migrate: bool = True
    max_body_bytes: int = MAX_BODY_BYTES
    log_level: str = "INFO"

    # Shared across services, hence unprefixed.
    data_dir: Path = Field(
        default_factory=data_dir_default, validation_alias=AliasChoices("ORDERSAGA_DATA_DIR", "data_dir")
    )
    internal_token: str = Field(
        default=DEV_INTERNAL_TOKEN,
        validation_alias=AliasChoices("ORDERSAGA_INTERNAL_TOKEN", "internal_token"),
        description="Shared credential by which services trust identity headers set by the gateway or saga.",
    )
    nats_url: str = Field(
        default="",
        validation_alias=AliasChoices("NATS_URL", "nats_url"),
        description="NATS with JetStream for domain events; empty turns the outbox relay off (rows wait).",
    )

    # The outbox relay (services/kit/relay.py), per service: `<SERVICE>_OUTBOX_*`.
    # A commit that staged an event wakes the relay of its process at once; this slow safety poll
    # publishes what no signal announced (rows of a replica that died before its relay ran).
    outbox_poll_interval_seconds: float = Field(default=5.0, gt=0)
    # Passes at least this far apart: under load one pass publishes several commits' events.
    outbox_min_interval_seconds: float = Field(default=0.05, ge=0)
    outbox_batch_size: int = Field(default=100, ge=1, le=1000)
    outbox_publish_timeout_seconds: float = Field(default=5.0, gt=0)
    outbox_backoff_max_seconds: float = Field(default=10.0, gt=0)
    # Fault injection for crash tests: exit right after JetStream acked a row, before it is marked sent.
    outbox_crash_after_publish: bool = False

    def resolved_database_url(self) -> str:
        if self.database_url:
            return normalise_database_url(self.database_url)
        return f"sqlite+aiosqlite:///{self.data_dir / (self.service_name + '.db')}"


def normalise_database_url(url: str) -> str:
    """Accept the URLs people paste (postgresql://, sqlite:///) and pick the async driver."""
    for plain, async_scheme in (
        ("postgresql://", "postgresql+asyncpg://"),
        ("postgres://", "postgresql+asyncpg://"),
        ("sqlite://", "sqlite+aiosqlite://"),
    ):
        if url.startswith(plain):
            return async_scheme + url[len(plain) :]
    return url
