"""Settings of the orders service (env prefix `ORDERS_`)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field
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
    # Lost starts one sweep claims at most; replicas on one database each claim their own batch.
    saga_sweep_batch_size: int = Field(default=100, ge=1, le=1000)
    # Every call to Temporal gives up after this long (start, query, connect), so that a Temporal
    # that is down or frozen costs a request at most this, under the gateway's 5 s upstream timeout:
    # POST /orders still answers 202 (the sweeper starts the saga later), a saga read answers 503.
    temporal_rpc_timeout_seconds: float = Field(default=2.0, gt=0)
    # An update (cancel, review, retry) also waits for the worker to run the workflow's handler.
    temporal_update_timeout_seconds: float = Field(default=3.0, gt=0)
