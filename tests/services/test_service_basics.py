"""What every service gets from the kit: health, readiness, metrics, request ids, problem+json, OpenAPI."""

from __future__ import annotations

import json
import re
from typing import Any

import pytest

from services.registry import DATA_SERVICES

pytestmark = pytest.mark.parametrize("service", DATA_SERVICES)


async def test_health_ready_and_openapi(service: str, service_client: Any) -> None:
    async with service_client(service) as client:
        assert (await client.get("/health")).json()["status"] == "ok"
        ready = await client.get("/ready")
        assert ready.status_code == 200
        assert ready.json()["status"] == "ready"
        spec = (await client.get("/openapi.json")).json()
        assert spec["openapi"].startswith("3.")
        assert "Problem" in spec["components"]["schemas"]
        docs = await client.get("/docs")
        assert docs.status_code == 200
        assert "swagger" in docs.text.lower()


async def test_request_id_is_echoed_or_generated(service: str, service_client: Any) -> None:
    async with service_client(service) as client:
        echoed = await client.get("/health", headers={"X-Request-ID": "trace-me-42"})
        assert echoed.headers["x-request-id"] == "trace-me-42"
        generated = await client.get("/health")
        assert re.fullmatch(r"[0-9a-f]{32}", generated.headers["x-request-id"])
        smuggled = await client.get("/health", headers={"X-Request-ID": "bad id\twith spaces"})
        assert smuggled.headers["x-request-id"] != "bad id\twith spaces"


async def test_errors_are_problem_json(service: str, service_client: Any) -> None:
    async with service_client(service) as client:
        missing = await client.get("/no-such-route")
        assert missing.status_code == 404
        assert missing.headers["content-type"] == "application/problem+json"
        body = missing.json()
        assert {"type", "title", "status", "detail", "code"} <= body.keys()
        assert body["code"] == "not_found"
        wrong_method = await client.delete("/health")
        assert wrong_method.status_code == 405
        assert wrong_method.json()["code"] == "method_not_allowed"


async def test_oversized_body_is_refused_with_413(service: str, service_client: Any) -> None:
    async with service_client(service) as client:
        path = _first_post_path((await client.get("/openapi.json")).json())
        huge = json.dumps({"padding": "x" * (1024 * 1024 + 10)})
        response = await client.post(path, content=huge, headers={"content-type": "application/json"})
        assert response.status_code == 413
        assert response.json()["code"] == "payload_too_large"


async def test_metrics_count_requests_by_route_template(service: str, service_client: Any) -> None:
    async with service_client(service) as client:
        await client.get("/ready")
        await client.get("/no-such-route")
        text = (await client.get("/metrics")).text
        assert re.search(
            rf'http_requests_total\{{method="GET",route="/ready",service="{service}",status="200"\}}', text
        )
        assert (
            f'http_request_duration_seconds_bucket{{le="0.005",method="GET",route="/ready",service="{service}"'
            in text
        )


def _first_post_path(spec: dict[str, Any]) -> str:
    for path, operations in spec["paths"].items():
        if "post" in operations and "{" not in path:
            return str(path)
    raise AssertionError("no POST route")
