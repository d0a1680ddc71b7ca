"""`ordersaga up` as a newcomer runs it: a subprocess with its own data dir, on free ports."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from services.registry import SERVICES
from tests.support.processes import VENV_BIN, free_port

ARTIFACTS = Path(__file__).resolve().parents[2] / ".data" / "test-artifacts"


@dataclass
class UpProcess:
    data_dir: Path
    env: dict[str, str]
    ports: dict[str, int]
    log: Path
    proc: subprocess.Popen[bytes] | None = None
    children: set[int] = field(default_factory=set)

    @property
    def api(self) -> str:
        return f"http://127.0.0.1:{self.ports['gateway']}/api/v1"

    @property
    def web_ui(self) -> str:
        return f"http://127.0.0.1:{self.ports['ui']}"

    def url(self, service: str) -> str:
        return f"http://127.0.0.1:{self.ports[service]}"

    def credentials(self) -> dict[str, str]:
        return dict(json.loads((self.data_dir / "credentials.json").read_text()))

    def start(self, timeout: float = 180) -> UpProcess:
        with self.log.open("ab") as out:
            self.proc = subprocess.Popen(
                [str(VENV_BIN / "ordersaga"), "up", "--data-dir", str(self.data_dir)],
                stdout=out,
                stderr=subprocess.STDOUT,
                env=self.env,
                start_new_session=True,
            )
        deadline = time.monotonic() + timeout
        starts = self.log.read_text(errors="replace").count("ready in")
        while time.monotonic() < deadline:
            text = self.log.read_text(errors="replace")
            if text.count("ready in") > starts:
                self.children |= descendants(self.proc.pid)
                return self
            if self.proc.poll() is not None:
                raise AssertionError(f"ordersaga up exited with {self.proc.returncode}:\n{text[-4000:]}")
            time.sleep(0.5)
        raise AssertionError(f"ordersaga up not ready in {timeout}s:\n{self.log.read_text()[-4000:]}")

    def interrupt(self, timeout: float = 60) -> int:
        """Ctrl-C, as a person would press it."""
        assert self.proc is not None
        self.children |= descendants(self.proc.pid)
        self.proc.send_signal(signal.SIGINT)
        return self.proc.wait(timeout=timeout)

    def survivors(self) -> list[int]:
        return [pid for pid in self.children if Path(f"/proc/{pid}").exists() and not _zombie(pid)]


def descendants(pid: int) -> set[int]:
    found: set[int] = set()
    frontier = [pid]
    while frontier:
        current = frontier.pop()
        for task in Path(f"/proc/{current}/task").glob("*/children"):
            try:
                kids = [int(k) for k in task.read_text().split()]
            except OSError:
                continue
            for kid in kids:
                if kid not in found:
                    found.add(kid)
                    frontier.append(kid)
    return found


def _zombie(pid: int) -> bool:
    try:
        return " Z " in Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return True


def make_up(tmp: Path) -> UpProcess:
    ports = {name: free_port() for name in SERVICES}
    ports |= {"temporal": free_port(), "ui": free_port(), "nats": free_port(), "nats_monitor": free_port()}
    ports["smtp"] = free_port()
    ports |= {"worker_metrics": free_port(), "worker_sdk_metrics": free_port()}
    env = {k: v for k, v in os.environ.items() if not k.endswith(("_DATABASE_URL", "_PORT"))}
    env.pop("TEMPORAL_ADDRESS", None)
    env.pop("NATS_URL", None)
    env |= {f"{name.upper()}_PORT": str(ports[name]) for name in SERVICES}
    env |= {
        "ORDERSAGA_TEMPORAL_PORT": str(ports["temporal"]),
        "ORDERSAGA_TEMPORAL_UI_PORT": str(ports["ui"]),
        "ORDERSAGA_NATS_PORT": str(ports["nats"]),
        "ORDERSAGA_NATS_MONITOR_PORT": str(ports["nats_monitor"]),
        "ORDERSAGA_SMTP_PORT": str(ports["smtp"]),
        "ORDERSAGA_WORKER_METRICS_PORT": str(ports["worker_metrics"]),
        "ORDERSAGA_WORKER_SDK_METRICS_PORT": str(ports["worker_sdk_metrics"]),
        "COLUMNS": "200",
    }
    return UpProcess(data_dir=tmp / "data", env=env, ports=ports, log=tmp / "up.log")


def start_up(tmp: Path, extra_env: dict[str, str] | None = None, attempts: int = 3) -> UpProcess:
    """Start `up` on free ports; another process may grab one of them meanwhile, so try afresh then."""
    for attempt in range(attempts):
        stack = make_up(tmp / f"try-{attempt}")
        stack.log.parent.mkdir(parents=True, exist_ok=True)
        stack.env |= extra_env or {}
        try:
            return stack.start()
        except AssertionError:
            if "already in use" not in stack.log.read_text(errors="replace") or attempt == attempts - 1:
                raise
    raise AssertionError("unreachable")


@pytest.fixture(scope="module")
def up(tmp_path_factory: pytest.TempPathFactory) -> Iterator[UpProcess]:
    running = start_up(tmp_path_factory.mktemp("up"))
    yield running
    if running.proc is not None and running.proc.poll() is None:
        running.interrupt()
