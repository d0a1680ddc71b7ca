"""`ordersaga up` refuses clearly when it cannot start, before starting anything."""

from __future__ import annotations

import json
import socket
import subprocess
import time
from pathlib import Path

from tests.e2e.conftest import make_up
from tests.support.processes import VENV_BIN


def test_a_port_in_use_is_named_with_the_setting_that_moves_it(tmp_path: Path) -> None:
    up = make_up(tmp_path)
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", up.ports["users"]))
        squatter.listen()
        result = subprocess.run(
            [str(VENV_BIN / "ordersaga"), "up", "--data-dir", str(up.data_dir)],
            env=up.env,
            capture_output=True,
            text=True,
            timeout=60,
        )
    assert result.returncode == 1
    output = " ".join((result.stdout + result.stderr).split())
    assert f"port {up.ports['users']} (users) is already in use; set USERS_PORT to change it" in output
    assert not (up.data_dir / "temporal.db").exists(), "nothing may start when a port is taken"


def test_status_with_nothing_running_says_so_fast(tmp_path: Path) -> None:
    up = make_up(tmp_path)
    began = time.monotonic()
    result = subprocess.run(
        [str(VENV_BIN / "ordersaga"), "status", "--data-dir", str(up.data_dir), "--json"],
        env=up.env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 1, result.stdout + result.stderr
    assert time.monotonic() - began < 15
    parts = json.loads(result.stdout)["parts"]
    assert {"temporal", "nats", "gateway", "worker"} <= {p["name"] for p in parts}
    assert not any(p["up"] for p in parts), parts
    assert not up.data_dir.exists(), "status must not create the data dir"
