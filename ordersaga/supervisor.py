"""Child processes of `ordersaga up`: started in order, health-checked, logs prefixed, stopped in reverse."""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from rich.console import Console
from rich.text import Text

COLOURS = (
    "cyan",
    "magenta",
    "green",
    "yellow",
    "blue",
    "bright_red",
    "bright_cyan",
    "bright_magenta",
    "white",
)


class StartupError(Exception):
    """A process did not come up; the message names it and shows its last log lines."""


def port_in_use(port: int, host: str = "127.0.0.1") -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return True
    return False


def free_port(host: str = "127.0.0.1") -> int:
    """A port free right now (another process may still take it before it is bound)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def _die_with_parent() -> None:
    # If `up` itself is killed (SIGKILL), its children must not outlive it as orphans.
    with contextlib.suppress(OSError):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG


@dataclass
class Child:
    name: str
    argv: Sequence[str]
    env: Mapping[str, str]
    ready: Callable[[], bool]
    log_file: Path
    stop_timeout: float = 15.0
    proc: subprocess.Popen[bytes] | None = None
    recent: deque[str] = field(default_factory=lambda: deque(maxlen=30))


class Supervisor:
    def __init__(self, console: Console, *, echo_logs: bool = True) -> None:
        self.console = console
        self.echo_logs = echo_logs
        self.children: list[Child] = []
        self._lock = threading.Lock()

    def start(self, child: Child) -> None:
        child.log_file.parent.mkdir(parents=True, exist_ok=True)
        child.proc = subprocess.Popen(  # noqa: S603 - argv is built by `up`, never from input
            list(child.argv),
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            env={**os.environ, **child.env},
            # Own process group: Ctrl-C reaches `up` alone, which then stops children in order.
            start_new_session=True,
            preexec_fn=_die_with_parent,
        )
        self.children.append(child)
        colour = COLOURS[(len(self.children) - 1) % len(COLOURS)]
        threading.Thread(
            target=self._pump, args=(child, colour), daemon=True, name=f"log-{child.name}"
        ).start()

    def _pump(self, child: Child, colour: str) -> None:
        assert child.proc is not None and child.proc.stdout is not None
        width = 13
        with child.log_file.open("ab") as log:
            for raw in iter(child.proc.stdout.readline, b""):
                log.write(raw)
                log.flush()
                line = raw.decode(errors="replace").rstrip()
                child.recent.append(line)
                if self.echo_logs:
                    prefix = Text(f"{child.name:<{width}}| ", style=colour)
                    with self._lock:
                        self.console.print(prefix + Text(line), soft_wrap=True, highlight=False)

    def wait_ready(self, child: Child, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if child.proc is not None and child.proc.poll() is not None:
                raise StartupError(self._failure(child, f"exited with code {child.proc.returncode}"))
            with contextlib.suppress(Exception):
                if child.ready():
                    return
            time.sleep(0.2)
        raise StartupError(self._failure(child, f"was not healthy after {timeout:.0f}s"))

    def _failure(self, child: Child, what: str) -> str:
        time.sleep(0.3)  # let the log pump catch the last lines
        lines = "\n".join(f"    {line}" for line in list(child.recent)[-15:]) or "    (no output)"
        return f"{child.name} {what}. Its last log lines ({child.log_file}):\n{lines}"

    def stop_all(self) -> None:
        """Stop in reverse start order: SIGTERM, then SIGKILL after the child's grace period."""
        for child in reversed(self.children):
            self._terminate(child)
        self.children.clear()

    def stop(self, child: Child) -> None:
        """Stop one child (as `stop_all` would) and forget it."""
        self._terminate(child)
        self.children.remove(child)

    def _terminate(self, child: Child) -> None:
        proc = child.proc
        if proc is None or proc.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=child.stop_timeout)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=5)

    def watch(self, stop: threading.Event) -> str | None:
        """Block until asked to stop or a child dies; returns the name of a child that died."""
        while not stop.wait(0.5):
            for child in self.children:
                if child.proc is not None and child.proc.poll() is not None:
                    return child.name
        return None


def python_entry() -> str:
    """The `ordersaga` console script of this interpreter's environment."""
    return str(Path(sys.executable).parent / "ordersaga")
