"""Idle CPU of the whole stack as `ordersaga up` starts it: each source tree's stack in turn, nothing
sent to it, CPU time (utime + stime from /proc) of every process of its tree over a window that
starts a while after start-up. CPU time, not wall time, because the machine may be shared.

    git worktree add /tmp/before <commit>
    .venv/bin/python benchmarks/idle_cpu.py /tmp/before . [--settle 10] [--window 60] [--json out.json]
    .venv/bin/python benchmarks/idle_cpu.py . --env WORKER_RECONCILE_INTERVAL_SECONDS=0   # a setting's share

Each tree runs with the same installed packages and its own code first on PYTHONPATH.
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.proc_cpu import cpu_by_process, tree_cpu
from benchmarks.runs import Results
from ordersaga.up import PORT_SETTINGS
from tests.support.processes import VENV_BIN, free_port

SERVICES = ("users", "inventory", "payments", "notifications", "orders", "gateway")


def _name(pid: int) -> str:
    try:
        argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return "?"
    words = [a.decode() for a in argv if a]
    if "up" in words[:3]:
        return "supervisor"
    if "serve" in words and words.index("serve") + 1 < len(words):
        return words[words.index("serve") + 1]
    if any(w.endswith("temporal") for w in words[:1]) or "start-dev" in words:
        return "temporal"
    if words and words[0].endswith("nats-server"):
        return "nats"
    if "worker" in words:
        return "worker"
    return Path(words[0]).name if words else "?"


def free_port_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.endswith(("_DATABASE_URL", "_PORT"))}
    env.pop("TEMPORAL_ADDRESS", None)
    env.pop("NATS_URL", None)
    for name in SERVICES:
        env[f"{name.upper()}_PORT"] = str(free_port())
    for setting in PORT_SETTINGS:
        env[f"ORDERSAGA_{setting}"] = str(free_port())
    return env


@contextmanager
def up_stack(tree: Path, data: Path, extra_env: dict[str, str] | None = None) -> Iterator[UpStack]:
    """`ordersaga up` of `tree` on free ports in `data`; yields once it printed `ready in`."""
    env = {**free_port_env(), "PYTHONPATH": str(tree.resolve()), "ORDERSAGA_DATA_DIR": str(data)}
    env.update(extra_env or {})
    log = data / "up.out"
    started = time.monotonic()
    with log.open("w") as out:
        up = subprocess.Popen(  # noqa: S603
            [str(VENV_BIN / "ordersaga"), "up", "--log-format", "json"],
            stdout=out,
            stderr=subprocess.STDOUT,
            env=env,
            cwd=tree,
            start_new_session=True,
        )
    try:
        while "ready in" not in log.read_text():
            if up.poll() is not None or time.monotonic() - started > 300:
                raise RuntimeError(f"the stack of {tree} did not start:\n{log.read_text()[-3000:]}")
            time.sleep(0.5)
        yield UpStack(up, env, time.monotonic() - started)
    finally:
        os.killpg(up.pid, signal.SIGINT)
        try:
            up.wait(60)
        except subprocess.TimeoutExpired:
            os.killpg(up.pid, signal.SIGKILL)
            up.wait()


@dataclass
class UpStack:
    process: subprocess.Popen[bytes]
    env: dict[str, str]
    ready_after: float

    def cpu(self) -> dict[int, tuple[str, float]]:
        return tree_cpu(self.process.pid, _name)


def measure(tree: Path, settle: float, window: float, env: dict[str, str] | None = None) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="idle-cpu-") as data, up_stack(tree, Path(data), env) as stack:
        ready_after = stack.ready_after
        time.sleep(settle)
        before = stack.cpu()
        t0 = time.monotonic()
        time.sleep(window)
        after = stack.cpu()
        elapsed = time.monotonic() - t0
    by_process = cpu_by_process(before, after)
    total = sum(by_process.values())
    return {
        "tree": str(tree),
        "env": env or {},
        "ready_after_s": round(ready_after, 1),
        "settle_s": settle,
        "window_s": round(elapsed, 1),
        "percent_of_one_core": round(100 * total / elapsed, 2),
        "by_process_percent": {
            name: round(100 * s / elapsed, 2) for name, s in sorted(by_process.items(), key=lambda kv: -kv[1])
        },
    }


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("trees", nargs="+", type=Path)
    parser.add_argument("--settle", type=float, default=10.0, help="seconds after `ready` before measuring")
    parser.add_argument("--window", type=float, default=60.0)
    parser.add_argument("--json", type=Path)
    parser.add_argument("--env", action="append", default=[], metavar="NAME=VALUE", help="a stack setting")
    args = parser.parse_args()
    env = dict(item.split("=", 1) for item in args.env)
    results = Results()
    for tree in args.trees:
        results.add(measure(tree, args.settle, args.window, env))
    results.write(args.json)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
