"""The worker process: probes and metrics over HTTP, and a clean stop on SIGTERM."""

from __future__ import annotations

import httpx
import pytest

from tests.support.stack import Stack

pytestmark = [pytest.mark.slow, pytest.mark.temporal]


def test_worker_answers_probes_and_metrics(stack: Stack) -> None:
    base = f"http://127.0.0.1:{stack.worker_metrics_port}"
    assert httpx.get(f"{base}/health").json()["status"] == "ok"
    ready = httpx.get(f"{base}/ready")
    assert ready.status_code == 200
    assert ready.json()["status"] == "ready"
    assert httpx.get(f"{base}/metrics").headers["content-type"].startswith("text/plain")


def test_sigterm_stops_the_worker_gracefully(stack: Stack) -> None:
    worker = stack.processes["worker"]
    try:
        assert worker.stop(timeout=30) == 0
        assert '"event": "worker_stopped"' in worker.log_path.read_text()
    finally:
        stack.restart("worker")
