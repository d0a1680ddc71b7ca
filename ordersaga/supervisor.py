"""Child processes of `ordersaga up`: started in order, health-checked, logs prefixed, stopped in reverse.

Every line a child writes goes to `<data dir>/logs/<child>.log` as written. The console gets the lines
at or above a level (WARNING by default, so that the welcome table stays in view), either rendered for
a person (`console`: `orders       | 12:01:02 WARN  event key=value`) or as JSON objects with the
child's name in `process` (`json`, for a file or another program).
"""

from __future__ import annotations

import contextlib
import ctypes
import hmac
import json
import os
import random
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Literal

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


LogFormat = Literal["console", "json"]

LEVELS = {"debug": 10, "info": 20, "warning": 30, "error": 40, "critical": 50}
# Spellings of other programs: NATS's `[WRN]`, Go's `warn`, slog's `WARN`, structlog's `exception`.
_LEVEL_NAMES = {
    "trace": "debug", "trc": "debug", "dbg": "debug", "inf": "info", "warn": "warning", "wrn": "warning",
    "err": "error", "exception": "error", "ftl": "critical", "fatal": "critical", "panic": "critical",
    "dpanic": "critical",
}  # fmt: skip
# NATS: `[pid] 2026/12/02 14:00:47.921402 [INF] message`.
_NATS_LINE = re.compile(r"^\[\d+\] (\d{4}/\d\d/\d\d \d\d:\d\d:\d\d\.\d+) \[([A-Z]{3})\] ?(.*)$")
# Go's slog text (the Temporal dev server): `time=... level=WARN msg="..." key=value`.
_LOGFMT_PAIR = re.compile(r'([\w.-]+)=("(?:[^"\\]|\\.)*"|\S*)')
_LEVEL_STYLES = {
    "debug": "dim",
    "info": "green",
    "warning": "yellow",
    "error": "bold red",
    "critical": "bold white on red",
}
_LEVEL_LABELS = {"debug": "DEBUG", "info": "INFO", "warning": "WARN", "error": "ERROR", "critical": "CRIT"}
# Shown in their own place rather than as key=value (and `service` when it is the process's name).
_OWN_PLACE = {
    "event", "msg", "level", "timestamp", "ts", "time", "logger", "exception", "color_message",
}  # fmt: skip
NAME_WIDTH = 13


# How structlog's JSON spells an info line's level; inside a string value the quotes are escaped.
_INFO_JSON = '"level": "info"'


def level_name(value: object) -> str:
    name = str(value).lower()
    name = _LEVEL_NAMES.get(name, name)
    return name if name in LEVELS else "info"


@dataclass
class LogLine:
    """One line of a child's output: its JSON fields when it is JSON, and its level (info if unsaid)."""

    text: str
    level: str
    fields: dict[str, Any] | None = None

    @classmethod
    def parse(cls, text: str) -> LogLine:
        if text.startswith("{"):
            with contextlib.suppress(ValueError):
                fields = json.loads(text)
                if isinstance(fields, dict):
                    return cls(text, level_name(fields.get("level", "info")), fields)
        if nats := _NATS_LINE.match(text):
            stamp, level, message = nats.groups()
            fields = {"timestamp": stamp.replace("/", "-"), "level": level_name(level), "event": message}
            return cls(text, fields["level"], fields)
        if text.startswith("time=") and " level=" in text:
            fields = {key: _unquote(value) for key, value in _LOGFMT_PAIR.findall(text)}
            fields["event"] = fields.pop("msg", "")
            return cls(text, level_name(fields.get("level", "info")), fields)
        # A line that names no level (a banner, a traceback of a crash) counts as info: it is in the
        # log file, and a child that dies is reported with its last lines.
        return cls(text, "info")


def _unquote(value: str) -> str:
    if len(value) >= 2 and value[0] == value[-1] == '"':
        with contextlib.suppress(ValueError):
            return str(json.loads(value))
    return value


class LogEcho:
    """Decides which child lines reach the console, and how they look there."""

    def __init__(self, console: Console, log_format: LogFormat, level: str = "warning") -> None:
        self.console = console
        self.log_format = log_format
        self.threshold = LEVELS[level_name(level)]
        self._lock = threading.Lock()

    def quieten(self, level: str) -> None:
        """Raise the threshold, e.g. while stopping, when children's shutdown warnings are expected."""
        self.threshold = max(self.threshold, LEVELS[level_name(level)])

    def wants(self, line: LogLine) -> bool:
        return LEVELS[line.level] >= self.threshold

    def __call__(self, name: str, colour: str, text: str) -> None:
        if self.threshold > LEVELS["info"] and _INFO_JSON in text:
            return  # the common case, told without parsing: our processes' JSON at info
        line = LogLine.parse(text)
        if not self.wants(line):
            return
        with self._lock:
            if self.log_format == "json":
                fields = line.fields or {"event": line.text}
                # One spelling of the level for whoever reads these lines (slog says WARN, NATS WRN).
                self.console.print(
                    json.dumps({"process": name, **fields, "level": line.level}, default=str),
                    soft_wrap=True,
                    highlight=False,
                    markup=False,
                    emoji=False,
                )
            else:
                # One line each, cut to the terminal's width: a wrapped traceback would push the
                # welcome table out of view; the whole line is in the log file.
                self.console.print(render(name, colour, line), no_wrap=True, overflow="ellipsis", crop=True)


def render(name: str, colour: str, line: LogLine) -> Text:
    """`orders       | 12:01:02 INFO  order_placed order_id=…` (the time is local)."""
    out = Text(f"{name:<{NAME_WIDTH}}| ", style=colour)
    fields = line.fields
    if fields is None:
        out.append(line.text.replace("\n", " "))
        return out
    out.append(_clock(fields.get("timestamp") or fields.get("ts") or fields.get("time")) + " ", style="dim")
    out.append(f"{_LEVEL_LABELS[line.level]:<5} ", style=_LEVEL_STYLES[line.level])
    event = str(fields.get("event", fields.get("msg", "")))
    out.append(event.replace("\n", " "), style="bold" if line.level != "debug" else "")
    for key, value in fields.items():
        if key in _OWN_PLACE or (key == "service" and name.startswith(str(value))):
            continue
        out.append(f" {key}=", style="dim")
        out.append(str(value).replace("\n", " "))
    if exception := fields.get("exception"):
        # A traceback's last line says what went wrong.
        out.append(" ! " + str(exception).strip().splitlines()[-1], style=_LEVEL_STYLES[line.level])
    return out


def _clock(stamp: object) -> str:
    now = datetime.now().astimezone()
    if isinstance(stamp, int | float):
        return datetime.fromtimestamp(stamp).astimezone().strftime("%H:%M:%S")
    if isinstance(stamp, str):
        with contextlib.suppress(ValueError):
            return datetime.fromisoformat(stamp.replace("Z", "+00:00")).astimezone().strftime("%H:%M:%S")
    return now.strftime("%H:%M:%S")


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


# Ports for the stack's processes come from just below the kernel's ephemeral range: a port the
# kernel hands out for `bind(0)` lies inside that range, where any outgoing connection (the Temporal
# dev server makes many to itself) may take it as its source port before our server binds it.
_PORT_SPAN = 2000


def _ephemeral_low() -> int:
    try:
        return int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768


# Ports already handed out by this process: a stack picks all its ports before any child binds
# one, so "nothing listens on it now" alone could give two replicas the same port.
_handed_out: set[int] = set()


def free_port(host: str = "127.0.0.1") -> int:
    """A port nothing listens on now, outside the ephemeral range (another process may still take
    it before it is bound, but no outgoing connection will), and never handed out twice here."""
    high = _ephemeral_low()
    low = max(1024, high - _PORT_SPAN)
    start = random.randrange(low, high)
    for offset in range(high - low):
        port = low + (start - low + offset) % (high - low)
        if port in _handed_out:
            continue
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            try:
                sock.bind((host, port))
            except OSError:
                continue
            _handed_out.add(port)
            return port
    raise StartupError(f"no free port between {low} and {high - 1} on {host}")


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
    def __init__(self, console: Console, *, echo: LogEcho | None = None) -> None:
        self.console = console
        self.echo = echo
        self.children: list[Child] = []
        # Children killed on purpose (demo controls): their death does not stop the run.
        self.held: set[str] = set()

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
        pipe = child.proc.stdout.fileno()
        partial = b""
        # Appended: a child restarted within a run (chaos) keeps the lines of its predecessor;
        # `rotate_logs` starts each run afresh. Whatever the pipe holds is read and written at once:
        # under load a read carries many lines, and a write per line cost `up` more CPU than the
        # children spent writing them.
        with child.log_file.open("ab") as log:
            while chunk := os.read(pipe, 1 << 16):
                log.write(chunk)
                log.flush()
                *lines, partial = (partial + chunk).split(b"\n")
                for raw in lines:
                    self._take(child, colour, raw)
            if partial:
                self._take(child, colour, partial)

    def _take(self, child: Child, colour: str, raw: bytes) -> None:
        line = raw.decode(errors="replace").rstrip()
        child.recent.append(line)
        if self.echo is not None:
            with contextlib.suppress(Exception):  # a line that cannot be shown must not stop the pump
                self.echo(child.name, colour, line)

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
        return f"{child.name} {what}. {self.last_lines(child)}"

    def last_lines(self, child: Child) -> str:
        time.sleep(0.3)  # let the log pump catch the last lines
        lines = "\n".join(f"    {line}" for line in list(child.recent)[-15:]) or "    (no output)"
        return f"Its last log lines ({child.log_file}):\n{lines}"

    def stop_all(self) -> None:
        """Stop in reverse start order: SIGTERM, then SIGKILL after the child's grace period. The
        replicas of one part (`orders-1`, `orders-2`) stop together: none waits for another."""
        batch: list[Child] = []
        for child in reversed(self.children):
            if batch and _part(batch[0].name) != _part(child.name):
                self._terminate_together(batch)
                batch = []
            batch.append(child)
        self._terminate_together(batch)
        self.children.clear()

    def stop(self, child: Child) -> None:
        """Stop one child (as `stop_all` would) and forget it."""
        self._terminate(child)
        self.children.remove(child)

    def restart(self, child: Child, timeout: float = 120) -> None:
        """Start a child that exited again, with the same argv, env and health check."""
        if child.proc is not None and child.proc.poll() is None:
            self._terminate(child)
        # The old process's lines must not count as the new one's readiness (a worker's log event).
        child.recent.clear()
        if child in self.children:
            self.children.remove(child)
        self.start(child)
        self.wait_ready(child, timeout)

    def _terminate_together(self, children: Sequence[Child]) -> None:
        running = [c for c in children if c.proc is not None and c.proc.poll() is None]
        for child in running:
            assert child.proc is not None
            with contextlib.suppress(ProcessLookupError):
                os.killpg(child.proc.pid, signal.SIGTERM)
        started = time.monotonic()
        for child in running:
            assert child.proc is not None
            try:
                child.proc.wait(timeout=max(0.0, started + child.stop_timeout - time.monotonic()))
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(child.proc.pid, signal.SIGKILL)
                child.proc.wait(timeout=5)

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
            # A copy: the control server's thread may restart a child meanwhile.
            for child in list(self.children):
                if child.name in self.held:
                    continue
                if child.proc is not None and child.proc.poll() is not None:
                    return child.name
        return None


class ControlServer:
    """Demo controls of `ordersaga up`: kill and restart children over HTTP, on 127.0.0.1 only.

    `GET /processes`, `POST /processes/<name>/kill` (SIGKILL to its process group: a crash, not a
    shutdown) and `POST /processes/<name>/restart` (started again with the same argv and env, answered
    once healthy). Every request needs `Authorization: Bearer <token>`. Only the names `controllable`
    returns can be acted on. A child killed here does not stop the run; the gateway's admin-only
    `/demo` routes are its only client (services/gateway/web/demo.py).
    """

    def __init__(
        self,
        supervisor: Supervisor,
        token: str,
        controllable: Callable[[], list[str]],
        on_change: Callable[[], None] | None = None,
    ) -> None:
        self.supervisor = supervisor
        self.token = token
        self.controllable = controllable
        self.on_change = on_change
        self._busy: set[str] = set()
        self._lock = threading.Lock()
        self._server: ThreadingHTTPServer | None = None
        # Children are started from this one long-lived thread, never from a request's: the kernel
        # sends a child its parent-death signal (PR_SET_PDEATHSIG) when the *thread* that forked it
        # ends, so a worker restarted from a request's thread died with the request.
        self._spawner = ThreadPoolExecutor(max_workers=1, thread_name_prefix="control-spawn")

    @property
    def url(self) -> str:
        assert self._server is not None
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    def start(self, port: int = 0) -> str:
        control = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                control._handle(self, "GET")

            def do_POST(self) -> None:
                control._handle(self, "POST")

            def log_message(self, format: str, *args: Any) -> None:
                pass  # the gateway logs the admin's requests

        self._server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
        self._server.daemon_threads = True
        threading.Thread(target=self._server.serve_forever, daemon=True, name="control").start()
        return self.url

    def stop(self) -> None:
        """No more requests; the children it restarted keep running until `close`."""
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def close(self) -> None:
        """After the children were stopped: the spawning thread may end now."""
        self.stop()
        self._spawner.shutdown(wait=False)

    def processes(self) -> list[dict[str, Any]]:
        names = self.controllable()
        children = {c.name: c for c in self.supervisor.children}
        listed = []
        for name in names:
            child = children.get(name)
            running = child is not None and child.proc is not None and child.proc.poll() is None
            state = "restarting" if name in self._busy else "running" if running else "stopped"
            pid = child.proc.pid if child is not None and child.proc is not None and running else None
            listed.append({"name": name, "state": state, "pid": pid})
        return listed

    def _handle(self, request: BaseHTTPRequestHandler, method: str) -> None:
        if not hmac.compare_digest(request.headers.get("Authorization", ""), f"Bearer {self.token}"):
            return _answer(request, 401, _problem(401, "unauthenticated", "A bearer token is required."))
        parts = [p for p in request.path.split("?")[0].split("/") if p]
        if method == "GET" and parts == ["processes"]:
            return _answer(request, 200, {"items": self.processes()})
        if (
            method == "POST"
            and len(parts) == 3
            and parts[0] == "processes"
            and parts[2] in ("kill", "restart")
        ):
            name, action = parts[1], parts[2]
            if name not in self.controllable():
                return _answer(
                    request, 404, _problem(404, "unknown_process", f"No controllable process {name!r}.")
                )
            status, body = self.kill(name) if action == "kill" else self.restart(name)
            return _answer(request, status, body)
        return _answer(request, 404, _problem(404, "not_found", "No such route."))

    def _child(self, name: str) -> Child | None:
        return next((c for c in self.supervisor.children if c.name == name), None)

    def kill(self, name: str) -> tuple[int, dict[str, Any]]:
        with self._lock:
            child = self._child(name)
            if name in self._busy or child is None or child.proc is None or child.proc.poll() is not None:
                return 409, _problem(409, "not_running", f"{name} is not running.")
            self.supervisor.held.add(name)
            with contextlib.suppress(ProcessLookupError):
                os.killpg(child.proc.pid, signal.SIGKILL)
            child.proc.wait(timeout=10)
        return 200, {"name": name, "state": "stopped"}

    def restart(self, name: str) -> tuple[int, dict[str, Any]]:
        with self._lock:
            child = self._child(name)
            if child is None or name in self._busy:
                return 409, _problem(409, "restart_in_progress", f"{name} is already restarting.")
            self._busy.add(name)
            self.supervisor.held.add(name)  # a graceful stop of a running one is no death either
        try:
            self._spawner.submit(self.supervisor.restart, child).result()
        except StartupError as err:
            return 503, _problem(503, "restart_failed", str(err))
        finally:
            with self._lock:
                self._busy.discard(name)
        # Back and healthy: from now on its death stops the run again, as any child's does.
        self.supervisor.held.discard(name)
        if self.on_change is not None:
            self.on_change()
        return 200, {"name": name, "state": "running", "pid": child.proc.pid if child.proc else None}


def _problem(status: int, code: str, detail: str) -> dict[str, Any]:
    return {
        "type": f"https://ordersaga.dev/problems/{code}",
        "title": code,
        "status": status,
        "code": code,
        "detail": detail,
    }


def _answer(request: BaseHTTPRequestHandler, status: int, body: dict[str, Any]) -> None:
    data = json.dumps(body).encode()
    request.send_response(status)
    kind = "application/json" if status < 400 else "application/problem+json"
    request.send_header("Content-Type", kind)
    request.send_header("Content-Length", str(len(data)))
    request.end_headers()
    request.wfile.write(data)


def _part(name: str) -> str:
    """`orders-2` → `orders`: the part a replica's process belongs to (ordersaga.up.process_names)."""
    return re.sub(r"-\d+$", "", name)


def rotate_logs(logs: Path) -> None:
    """Each run's logs start empty; the previous run's stay beside them as `<process>.log.1`."""
    logs.mkdir(parents=True, exist_ok=True)
    for log in logs.glob("*.log"):
        log.replace(log.with_name(log.name + ".1"))


def python_entry() -> str:
    """The `ordersaga` console script of this interpreter's environment."""
    return str(Path(sys.executable).parent / "ordersaga")
