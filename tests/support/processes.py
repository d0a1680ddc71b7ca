"""Real processes for tests: start with a log file, wait for health, stop, kill, pause."""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path

import httpx

VENV_BIN = Path(sys.executable).parent


def _die_with_parent() -> None:
    """In the child: get SIGKILL when the test process dies, so no crash leaves orphans behind."""
    with contextlib.suppress(OSError):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG


# Ports a test hands to the processes it starts. Below the kernel's ephemeral range (32768 and up
# here), so that no outgoing connection can take one between the pick and the bind; and a slice per
# pytest-xdist worker, so that two workers never pick the same one.
_PORTS_LOW, _PORTS_HIGH = 10_000, 30_000  # ordersaga's own picker takes the 2000 below 32768
_WORKER_SLICES = 4


def _port_slice() -> range:
    worker = os.environ.get("PYTEST_XDIST_WORKER", "")
    if not worker.startswith("gw"):
        return range(_PORTS_LOW, _PORTS_HIGH)
    width = (_PORTS_HIGH - _PORTS_LOW) // _WORKER_SLICES
    start = _PORTS_LOW + (int(worker[2:]) % _WORKER_SLICES) * width
    return range(start, start + width)


_next_port: list[int] = []


def free_port() -> int:
    """A port nothing listens on now, never handed out twice in this run by this worker."""
    ports = _port_slice()
    if not _next_port:
        _next_port.append(ports.start + (os.getpid() * 7919) % len(ports))
    for _ in range(len(ports)):
        port = _next_port[0]
        _next_port[0] = ports.start + (port + 1 - ports.start) % len(ports)
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise RuntimeError(f"no free port in {ports.start}-{ports.stop - 1}")


def tcp_open(port: int, host: str = "127.0.0.1") -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.settimeout(0.5)
        return sock.connect_ex((host, port)) == 0


class ManagedProcess:
    def __init__(
        self,
        name: str,
        argv: Sequence[str],
        log_path: Path,
        env: Mapping[str, str] | None = None,
        ready: Callable[[], bool] | None = None,
    ) -> None:
        self.name = name
        self.argv = list(argv)
        self.log_path = log_path
        self.env = {**os.environ, **(env or {})}
        self.ready = ready
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 60.0, *, wait: bool = True) -> ManagedProcess:
        log = self.log_path.open("ab")
        self.proc = subprocess.Popen(
            self.argv, stdout=log, stderr=subprocess.STDOUT, env=self.env, start_new_session=True
        )
        log.close()
        if wait and self.ready is not None:
            self.wait_ready(timeout)
        return self

    def wait_ready(self, timeout: float) -> None:
        assert self.ready is not None
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc is not None and self.proc.poll() is not None:
                raise RuntimeError(f"{self.name} exited with {self.proc.returncode}:\n{self.tail()}")
            try:
                if self.ready():
                    return
            except Exception:  # not up yet
                pass
            time.sleep(0.1)
        raise RuntimeError(f"{self.name} not ready after {timeout}s:\n{self.tail()}")

    def tail(self, lines: int = 40) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def signal(self, sig: int) -> None:
        if self.running:
            assert self.proc is not None
            os.killpg(self.proc.pid, sig)

    def kill(self) -> None:
        """SIGKILL, as a crash would: no cleanup runs."""
        if self.proc is None:
            return
        self.signal(signal.SIGKILL)
        self.proc.wait(timeout=10)

    def stop(self, timeout: float = 15.0) -> int | None:
        if self.proc is None:
            return None
        if self.running:
            self.signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.kill()
        return self.proc.returncode

    def pause(self) -> None:
        self.signal(signal.SIGSTOP)

    def resume(self) -> None:
        self.signal(signal.SIGCONT)


def stop_together(processes: Iterable[ManagedProcess], timeout: float = 15.0) -> None:
    """SIGTERM every process at once, then wait for them against one deadline and SIGKILL the rest:
    a group stops in the time of its slowest member, not in the sum of their shutdowns."""
    signalled = [process for process in processes if process.running]
    for process in signalled:
        process.signal(signal.SIGTERM)
    deadline = time.monotonic() + timeout
    for process in signalled:
        assert process.proc is not None
        try:
            process.proc.wait(timeout=max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            process.kill()


def http_ok(url: str) -> Callable[[], bool]:
    def check() -> bool:
        return httpx.get(url, timeout=1.0).status_code == 200

    return check
