"""Settings of the orders service (env prefix `ORDERS_`)."""

from __future__ import annotations

from typing import Literal

from pydantic_settings import SettingsConfigDict

from services.kit.settings import ServiceSettings


class Settings(ServiceSettings):
    model_config = SettingsConfigDict(env_prefix="ORDERS_", extra="ignore")

    service_name: str = "orders"
    port: int = 8004
    # A command that races another writer without an expected version is re-decided on fresh state
    # this many times before the caller sees 409 version_conflict.
    command_attempts: int = 3
    # `temporal` drives each order's saga on Temporal; `none` only records orders (tests of this service).
    saga_engine: Literal["temporal", "none"] = "temporal"
    # How often the sweeper looks for accepted orders whose saga start was lost, and how old such
    # an order must be before the sweeper (rather than the accepting request) starts it.
    saga_sweep_interval_seconds: float = 5.0
    saga_start_grace_seconds: float = 5.0
