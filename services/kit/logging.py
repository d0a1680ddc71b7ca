"""structlog JSON logs with context bound per request (request id, trace id, and what a handler adds).

Standard-library records (uvicorn, the Temporal SDK's `workflow.logger` / `activity.logger`) go through
the same processors, so the worker's workflow and activity lines are JSON too, with `workflow_id`,
`order_id` and `activity` lifted from the SDK's `extra`.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import MutableMapping
from typing import Any

import structlog

from services.kit.tracing import add_trace_context
from workflows.contract import order_id_of

_configured = False


def add_temporal_context(_: Any, __: str, event_dict: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    """Lifts the SDK adapters' `temporal_workflow` / `temporal_activity` extras into flat fields."""
    details: dict[str, Any] = {}
    details.update(event_dict.pop("temporal_workflow", None) or {})
    details.update(event_dict.pop("temporal_activity", None) or {})
    workflow_id = details.get("workflow_id")
    if workflow_id:
        event_dict.setdefault("workflow_id", workflow_id)
        order_id = order_id_of(str(workflow_id))
        if order_id is not None:
            event_dict.setdefault("order_id", order_id)
    if "activity_type" in details:
        event_dict.setdefault("activity", details["activity_type"])
    if "attempt" in details:
        event_dict.setdefault("attempt", details["attempt"])
    return event_dict


def configure_logging(level: str = "INFO", *, service: str | None = None) -> None:
    global _configured
    if service:
        structlog.contextvars.bind_contextvars(service=service)
    if _configured:
        return
    shared: list[Any] = [
        structlog.contextvars.merge_contextvars,
        add_trace_context,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
    ]
    handler = logging.StreamHandler(sys.stdout)
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            foreign_pre_chain=[
                *shared,
                structlog.stdlib.add_logger_name,
                structlog.stdlib.ExtraAdder(),
                add_temporal_context,
            ],
            processors=[
                structlog.stdlib.ProcessorFormatter.remove_processors_meta,
                structlog.processors.format_exc_info,
                structlog.processors.JSONRenderer(),
            ],
        )
    )
    root = logging.getLogger()
    # Replaces a plain stdout handler (basicConfig's); capture handlers such as pytest's stay.
    root.handlers = [h for h in root.handlers if type(h) is not logging.StreamHandler]
    root.addHandler(handler)
    root.setLevel(level.upper())
    # httpx logs every request it sends at INFO; each of our callers logs its own line per call (the
    # worker's `service_call`, the gateway's `request`), so httpx's copy would only double the lines,
    # and the CPU of formatting them and of `ordersaga up` reading them.
    logging.getLogger("httpx").setLevel(logging.WARNING)
    structlog.configure(
        processors=[
            *shared,
            structlog.processors.StackInfoRenderer(),
            structlog.processors.format_exc_info,
            structlog.processors.JSONRenderer(),
        ],
        wrapper_class=structlog.make_filtering_bound_logger(logging.getLevelName(level.upper())),
        logger_factory=structlog.PrintLoggerFactory(),
        cache_logger_on_first_use=True,
    )
    _configured = True
