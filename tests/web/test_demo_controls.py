"""The demo controls' plumbing without a browser: the supervisor's control endpoint, and the
gateway's routes that exist only when `ordersaga up` points it there (never in production)."""

from __future__ import annotations

import os
import threading
import time
import uuid
from pathlib import Path

import httpx
import pytest
from cryptography.hazmat.primitives.asymmetric import rsa
from rich.console import Console

from ordersaga.supervisor import Child, ControlServer, Supervisor
from services.gateway.app import create_app
from services.gateway.settings import Settings
from services.users.tokens import TokenIssuer
from tests.gateway.conftest import Scripted, in_process_gateway, scripted  # noqa: F401 - a fixture


def _sleeper(tmp_path: Path, name: str) -> Child:
    return Child(
        name=name, argv=["sleep", "300"], env={}, ready=lambda: True, log_file=tmp_path / f"{name}.log"
    )


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().split(") ")[1][0]
    except (OSError, IndexError):
        return False
    return state != "Z"


def test_kill_and_restart_through_the_control_endpoint(tmp_path: Path) -> None:
    supervisor = Supervisor(Console(file=open(os.devnull, "w")))  # noqa: SIM115 - closed with the process
    worker, nats = _sleeper(tmp_path, "worker"), _sleeper(tmp_path, "nats")
    supervisor.start(worker)
    supervisor.start(nats)
    control = ControlServer(supervisor, "t0ken", lambda: ["worker"])
    control.start()
    auth = {"Authorization": "Bearer t0ken"}
    try:
        assert httpx.get(control.url + "/processes").status_code == 401
        assert (
            httpx.get(control.url + "/processes", headers={"Authorization": "Bearer nope"}).status_code == 401
        )
        listed = httpx.get(control.url + "/processes", headers=auth).json()["items"]
        assert listed == [{"name": "worker", "state": "running", "pid": worker.proc.pid}]  # type: ignore[union-attr]
        refused = httpx.post(control.url + "/processes/nats/kill", headers=auth)
        assert (refused.status_code, refused.json()["code"]) == (404, "unknown_process")

        old_pid = worker.proc.pid  # type: ignore[union-attr]
        assert httpx.post(control.url + "/processes/worker/kill", headers=auth).json()["state"] == "stopped"
        assert not _alive(old_pid)
        assert httpx.post(control.url + "/processes/worker/kill", headers=auth).status_code == 409
        # Killed on purpose, the worker's death does not end the run (watch returns only on a death).
        stop = threading.Event()
        threading.Timer(1.5, stop.set).start()
        assert supervisor.watch(stop) is None

        restarted = httpx.post(control.url + "/processes/worker/restart", headers=auth).json()
        assert restarted["state"] == "running" and restarted["pid"] != old_pid
        # The request's thread has ended; the restarted child must outlive it (parent-death signal).
        time.sleep(1.0)
        assert _alive(restarted["pid"])
        assert httpx.get(control.url + "/processes", headers=auth).json()["items"][0]["state"] == "running"
        # Back to normal: its death stops the run again.
        os.killpg(restarted["pid"], 9)
        assert supervisor.watch(threading.Event()) == "worker"
    finally:
        control.close()
        supervisor.stop_all()


async def test_the_gateway_has_no_demo_routes_unless_up_sets_them() -> None:
    app = create_app(Settings())
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://gw") as client:
        answer = await client.get("/demo/processes")
        assert answer.status_code == 404
        config = (await client.get("/web/config.json")).json()
        assert config["demo_controls"] is False


def test_production_refuses_demo_controls() -> None:
    strong = {"internal_token": "x" * 40}
    with pytest.raises(ValueError, match="GATEWAY_DEMO_CONTROL_URL"):
        Settings(environment="production", demo_control_url="http://127.0.0.1:9999", **strong)
    assert Settings(environment="production", **strong).demo_control_url == ""


async def test_the_gateways_demo_routes_answer_a_malformed_name_with_a_problem(
    tmp_path: Path,
    scripted: Scripted,  # noqa: F811 - the fixture imported above
) -> None:
    """Found by hand beside the schemathesis run (the demo routes are in no OpenAPI document): a
    NUL or newline in the name made the relay's URL invalid, a 500; `..` walked to another path."""
    key = TokenIssuer(rsa.generate_private_key(public_exponent=65537, key_size=2048), 900)
    scripted.jwks = key.jwks()
    admin = {"Authorization": f"Bearer {key.issue(uuid.uuid4(), 'admin').access_token}"}
    supervisor = Supervisor(Console(file=open(os.devnull, "w")))  # noqa: SIM115 - closed with the process
    supervisor.start(_sleeper(tmp_path, "worker"))
    control = ControlServer(supervisor, "t0ken", lambda: ["worker"])
    control.start()
    try:
        async with in_process_gateway(
            users_url=scripted.url, demo_control_url=control.url, demo_control_token="t0ken"
        ) as gateway:
            for name in ("%00", "a%0Ab", "%2E%2E", "x" * 300, "Worker"):
                answer = await gateway.post(f"/demo/processes/{name}/kill", headers=admin)
                assert answer.status_code == 404, (name, answer.text)
                assert answer.headers["content-type"] == "application/problem+json"
                assert answer.json()["code"] in ("unknown_process", "not_found"), name
            listed = await gateway.get("/demo/processes", headers=admin)
            assert [p["state"] for p in listed.json()["items"]] == ["running"]
            wrong = await gateway.post("/demo/processes/worker/explode", headers=admin)
            assert (wrong.status_code, wrong.json()["code"]) == (422, "validation_error")
    finally:
        control.close()
        supervisor.stop_all()
