"""RED metrics for every HTTP service, labelled by route template, method and status."""

from __future__ import annotations

from functools import cache
from typing import TypeVar

from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, Counter, Histogram, generate_latest
from starlette.requests import Request
from starlette.responses import Response

M = TypeVar("M", Counter, Histogram)

# Buckets sized for in-process CRUD calls on this class of machine (ms to a few hundred ms).
LATENCY_BUCKETS = (0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)

HTTP_REQUESTS = Counter(
    "http_requests_total", "HTTP requests handled.", ["service", "method", "route", "status"]
)
HTTP_DURATION = Histogram(
    "http_request_duration_seconds",
    "HTTP request latency.",
    ["service", "method", "route", "status"],
    buckets=LATENCY_BUCKETS,
)


def observe_request(service: str, method: str, route: str, status: int, seconds: float) -> None:
    labels = (service, method, route, str(status))
    labelled(HTTP_REQUESTS, *labels).inc()
    labelled(HTTP_DURATION, *labels).observe(seconds)


@cache
def labelled(metric: M, *values: str) -> M:
    """`metric.labels(*values)`, looked up once per label set instead of on every request.

    For hot paths whose labels are templates and statuses: a few dozen sets, so the cache stays small."""
    return metric.labels(*values)


async def metrics_endpoint(_: Request) -> Response:
    return Response(generate_latest(REGISTRY), media_type=CONTENT_TYPE_LATEST)
