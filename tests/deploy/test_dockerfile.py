"""docker/Dockerfile, checked statically (no Docker engine here): pinned base, non-root, healthcheck."""

from __future__ import annotations

import re
import subprocess
import sys
import threading
import tomllib
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, HTTPServer

import pytest

from tests.deploy.support import ROOT

DOCKERFILE = ROOT / "docker" / "Dockerfile"
HEALTHCHECK = ROOT / "docker" / "healthcheck.py"


def instructions() -> list[tuple[str, str]]:
    text = re.sub(r"\\\n", " ", DOCKERFILE.read_text())
    lines = [line.strip() for line in text.splitlines() if line.strip() and not line.strip().startswith("#")]
    return [(line.split(None, 1)[0].upper(), line.split(None, 1)[1] if " " in line else "") for line in lines]


def final_stage() -> list[tuple[str, str]]:
    steps = instructions()
    start = max(i for i, (op, _) in enumerate(steps) if op == "FROM")
    return steps[start:]


def build_args() -> dict[str, str]:
    return dict(arg.split("=", 1) for op, arg in instructions() if op == "ARG" and "=" in arg)


def test_final_stage_is_a_pinned_base() -> None:
    image = final_stage()[0][1].split()[0]
    image = re.sub(r"\$\{(\w+)\}", lambda m: build_args()[m[1]], image)
    # A digest, or an exact patch version tag (python:3.11.11-slim-bookworm), never :latest or :3.
    assert "@sha256:" in image or re.search(r":\d+\.\d+\.\d+", image), image


def test_final_stage_runs_as_a_user_that_is_not_root() -> None:
    users = [arg for op, arg in final_stage() if op == "USER"]
    assert users, "no USER in the final stage"
    user = users[-1].split(":")[0]
    assert user not in ("root", "0")


def test_final_stage_has_no_build_tools() -> None:
    installs = " ".join(arg for op, arg in final_stage() if op == "RUN")
    for tool in ("build-essential", "gcc", "g++", "make", "pip install", "apt-get install"):
        assert tool not in installs


def test_healthcheck_and_entrypoint_exist() -> None:
    steps = dict(final_stage())
    assert "HEALTHCHECK" in steps and "CMD" in steps["HEALTHCHECK"]
    entrypoint = re.findall(r'"([^"]+)"', steps["ENTRYPOINT"])
    assert entrypoint == ["ordersaga"]
    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    assert "ordersaga" in scripts


def test_every_copied_source_exists() -> None:
    for op, arg in instructions():
        if op == "COPY" and "--from" not in arg:
            *sources, _destination = arg.split()
            for source in sources:
                assert (ROOT / source).exists(), source


@pytest.fixture
def http_port() -> Iterator[int]:
    class Ok(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(200 if self.path == "/ready" else 503)
            self.end_headers()

        def log_message(self, *args: object) -> None:
            pass

    server = HTTPServer(("127.0.0.1", 0), Ok)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server.server_address[1]
    server.shutdown()


def test_the_healthcheck_script_tells_healthy_from_not(http_port: int) -> None:
    def check(url: str) -> int:
        return subprocess.run(
            [sys.executable, str(HEALTHCHECK), url], capture_output=True, timeout=10
        ).returncode

    assert check(f"http://127.0.0.1:{http_port}/ready") == 0
    assert check(f"http://127.0.0.1:{http_port}/health") == 1
    assert check("http://127.0.0.1:1/health") == 1
