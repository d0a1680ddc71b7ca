"""RED metrics for every HTTP service, labelled by route template, method and status."""

from __future__ import annotations

from functools import cache

from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, Counter, Histogram, generate_latest
from starlette.requests import Request
from starlette.responses import Response

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
    requests, duration = _children(service, method, route, status)
    requests.inc()
    duration.observe(seconds)


@cache
def _children(service: str, method: str, route: str, status: int) -> tuple[Counter, Histogram]:
    """The labelled series, looked up once per label set instead of on every request.

    Routes are templates and statuses a few dozen values, so the cache stays small."""
    labels = {"service": service, "method": method, "route": route, "status": str(status)}
    return HTTP_REQUESTS.labels(**labels), HTTP_DURATION.labels(**labels)


async def metrics_endpoint(_: Request) -> Response:
    return Response(generate_latest(REGISTRY), media_type=CONTENT_TYPE_LATEST)
