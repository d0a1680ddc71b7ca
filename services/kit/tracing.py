"""OpenTelemetry tracing, off unless the standard `OTEL_*` variables turn it on.

`OTEL_EXPORTER_OTLP_ENDPOINT` (or `..._TRACES_ENDPOINT`) or an `OTEL_TRACES_EXPORTER` other than
`none` enables it; `OTEL_SDK_DISABLED=true` wins over both. Spans go over OTLP/HTTP to a collector,
and the W3C `traceparent` header carries the trace across every HTTP hop and through Temporal.
"""

from __future__ import annotations

import os
from collections.abc import Callable, MutableMapping
from typing import Any

from fastapi import FastAPI
from opentelemetry import trace
from sqlalchemy.ext.asyncio import AsyncEngine

# Probes and scrapes would drown the traces that matter.
EXCLUDED_URLS = "/health,/ready,/metrics"

_provider_installed = False


def tracing_enabled() -> bool:
    if os.environ.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return False
    exporter = os.environ.get("OTEL_TRACES_EXPORTER", "").strip().lower()
    if exporter:
        return exporter != "none"
    return bool(
        os.environ.get("OTEL_EXPORTER_OTLP_ENDPOINT") or os.environ.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
    )


def setup_tracing(service: str) -> bool:
    """Installs the tracer provider once per process; False when off."""
    global _provider_installed
    if not tracing_enabled():
        return False
    if _provider_installed:
        return True
    protocol = os.environ.get("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL") or os.environ.get(
        "OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf"
    )
    if protocol.strip().lower() != "http/protobuf":
        # Only the HTTP exporter is installed: failing loudly beats sending spans nowhere.
        raise RuntimeError(f"OTEL_EXPORTER_OTLP_PROTOCOL={protocol!r}: ordersaga exports http/protobuf only")
    # Imported here so that a process without tracing does not pay for the SDK and exporter imports.
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
    from opentelemetry.sdk.resources import SERVICE_NAME, Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor

    # OTEL_SERVICE_NAME / OTEL_RESOURCE_ATTRIBUTES still apply; the process's role is the default name.
    resource = Resource.create({SERVICE_NAME: os.environ.get("OTEL_SERVICE_NAME") or service})
    provider = TracerProvider(resource=resource)
    provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
    trace.set_tracer_provider(provider)
    _provider_installed = True
    return True


def instrument_app(app: FastAPI, engine: AsyncEngine | None = None) -> None:
    """Server spans for every request (continuing an incoming `traceparent`) and one per DB statement."""
    if not tracing_enabled():
        return
    from opentelemetry.instrumentation.fastapi import FastAPIInstrumentor

    FastAPIInstrumentor.instrument_app(app, excluded_urls=EXCLUDED_URLS)
    if engine is not None:
        from opentelemetry.instrumentation.sqlalchemy import SQLAlchemyInstrumentor

        # The package pins SQLAlchemy < 2.1; its engine hooks are unchanged in 2.1, so the pin is skipped.
        SQLAlchemyInstrumentor().instrument(engine=engine.sync_engine, skip_dep_check=True)


def traced_asgi(app: Any, span_details: Callable[[dict[str, Any]], tuple[str, dict[str, str]]]) -> Any:
    """A plain ASGI app with server spans (continuing an incoming `traceparent`), named by `span_details`."""
    if not tracing_enabled():
        return app
    from opentelemetry.instrumentation.asgi import OpenTelemetryMiddleware

    return OpenTelemetryMiddleware(
        app, excluded_urls=EXCLUDED_URLS, default_span_details=span_details, exclude_spans=["receive", "send"]
    )


def shutdown_tracing() -> None:
    """Flushes the spans still in the batch queue (a process ending loses them otherwise)."""
    provider = trace.get_tracer_provider()
    shutdown = getattr(provider, "shutdown", None)
    if callable(shutdown):
        shutdown()


def temporal_interceptors() -> list[Any]:
    """Temporal's tracing interceptor when tracing is on: StartWorkflow, RunWorkflow, each activity."""
    if not tracing_enabled():
        return []
    from temporalio.contrib.opentelemetry import TracingInterceptor

    return [TracingInterceptor()]


def current_trace_id() -> str | None:
    context = trace.get_current_span().get_span_context()
    return format(context.trace_id, "032x") if context.is_valid else None


def add_trace_context(_: Any, __: str, event_dict: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    """structlog processor: the current span's trace and span ids on every log line."""
    context = trace.get_current_span().get_span_context()
    if context.is_valid:
        event_dict.setdefault("trace_id", format(context.trace_id, "032x"))
        event_dict.setdefault("span_id", format(context.span_id, "016x"))
    return event_dict
