"""Connecting to Temporal the same way everywhere: our settings, then the standard TEMPORAL_* env."""

from __future__ import annotations

from typing import Any

from pydantic_settings import BaseSettings, SettingsConfigDict
from temporalio.client import Client
from temporalio.envconfig import ClientConfig

from services.kit.codec import data_converter as codec_data_converter
from services.kit.tracing import temporal_interceptors

DEFAULT_ADDRESS = "127.0.0.1:7233"

# The dev server has one history shard, and each shard's transfer queue is polled at most
# `history.transferProcessorMaxPollRPS` times a second (default 20). Once the first burst is spent,
# every workflow task then waits up to 50 ms (about 45 ms measured) to be dispatched: 400 ms for an
# 8-task workflow instead of 70 ms. A production cluster spreads this over its many shards; one
# shard needs the cap raised. The visibility queue gets the same so the Web UI's lists keep up.
DEV_SERVER_DYNAMIC_CONFIG: tuple[str, ...] = (
    "--dynamic-config-value", "history.transferProcessorMaxPollRPS=1000",
    "--dynamic-config-value", "history.visibilityProcessorMaxPollRPS=1000",
    "--dynamic-config-value", "history.timerProcessorMaxPollRPS=1000",
)  # fmt: skip


class TemporalSettings(BaseSettings):
    """`TEMPORAL_ADDRESS` and `TEMPORAL_NAMESPACE`; TLS and API keys come from the SDK's env config."""

    model_config = SettingsConfigDict(env_prefix="TEMPORAL_", extra="ignore")

    address: str = DEFAULT_ADDRESS
    namespace: str = "default"


def connect_config(settings: TemporalSettings | None = None) -> dict[str, Any]:
    settings = settings or TemporalSettings()
    # The SDK's loader reads a temporal.toml profile and TEMPORAL_* variables (TLS, API key, ...).
    config: dict[str, Any] = dict(ClientConfig.load_client_connect_config())
    config["target_host"] = settings.address
    config["namespace"] = settings.namespace
    return config


async def connect(settings: TemporalSettings | None = None, **overrides: Any) -> Client:
    config = connect_config(settings)
    # Payload encryption when ORDERSAGA_PAYLOAD_KEYS is set; the worker inherits the client's converter.
    config["data_converter"] = codec_data_converter()
    # Tracing (only when OTEL_* turns it on): StartWorkflow spans, and the worker inherits the interceptor.
    if interceptors := temporal_interceptors():
        config["interceptors"] = interceptors
    config.update(overrides)
    return await Client.connect(**config)
