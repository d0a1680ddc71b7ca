"""Settings of the orders service (env prefix `ORDERS_`)."""

from __future__ import annotations

from pydantic_settings import SettingsConfigDict

from services.kit.settings import ServiceSettings


class Settings(ServiceSettings):
    model_config = SettingsConfigDict(env_prefix="ORDERS_", extra="ignore")

    service_name: str = "orders"
    port: int = 8004
    # A command that races another writer without an expected version is re-decided on fresh state
    # this many times before the caller sees 409 version_conflict.
    command_attempts: int = 3
