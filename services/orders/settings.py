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
    # The sweeper looks for accepted orders whose saga start was lost at start-up and after a start
    # of this process failed (once the grace below has passed); this is its slow safety poll, for
    # starts lost where no signal reaches (a replica that crashed between its commit and its start).
    # The grace is how old such an order must be before the sweeper (not the request) starts it.
    saga_sweep_interval_seconds: float = 30.0
    saga_start_grace_seconds: float = 5.0
    # Lost starts one sweep claims at most; replicas on one database each claim their own batch.
    saga_sweep_batch_size: int = Field(default=100, ge=1, le=1000)
    # Every call to Temporal gives up after this long (start, query, connect), so that a Temporal
    # that is down or frozen costs a request at most this, under the gateway's 5 s upstream timeout:
    # POST /orders still answers 202 (the sweeper starts the saga later), a saga read answers 503.
    temporal_rpc_timeout_seconds: float = Field(default=2.0, gt=0)
    # An update (cancel, review, retry) also waits for the worker to run the workflow's handler.
    temporal_update_timeout_seconds: float = Field(default=3.0, gt=0)
    # GET /orders/{id}/saga/stream (saga_routes.py, docs/saga-stream.md): how often each open
    # stream asks the workflow for its view while it changes (a query; a new event only when the
    # view changed), how long a quiet stream waits before a keep-alive comment, how many streams
    # this process holds open at once (past it: 503 overloaded with Retry-After), and how long one
    # stream lives at most (the client reconnects with Last-Event-ID and gets the current view).
    saga_stream_poll_seconds: float = Field(default=1.0, gt=0, le=60)
    # While the view stays the same the interval doubles, up to this (a saga waiting for review).
    saga_stream_quiet_poll_seconds: float = Field(default=4.0, gt=0, le=60)
    saga_stream_keepalive_seconds: float = Field(default=15.0, gt=0, le=300)
    saga_stream_max_open: int = Field(default=200, ge=1)
    saga_stream_max_seconds: float = Field(default=3600.0, gt=0)
