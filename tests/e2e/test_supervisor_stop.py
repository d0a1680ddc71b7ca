"""`ordersaga up` stops its parts in reverse start order, the replicas of one part together."""

from __future__ import annotations

import io
import sys
import time
from pathlib import Path

from rich.console import Console

from ordersaga.supervisor import Child, Supervisor

# Each child notes when SIGTERM reached it and when it left, taking 0.5 s to shut down.
SLOW_TO_STOP = """
import signal, sys, time
def stop(*_):
    with open(sys.argv[2], "a") as out:
        out.write(f"{sys.argv[1]} term {time.monotonic()}\\n")
    time.sleep(0.5)
    with open(sys.argv[2], "a") as out:
        out.write(f"{sys.argv[1]} exit {time.monotonic()}\\n")
    sys.exit(0)
signal.signal(signal.SIGTERM, stop)
print("ready", flush=True)
while True:
    time.sleep(0.1)
"""


def test_replicas_stop_together_and_parts_in_reverse_start_order(tmp_path: Path) -> None:
    events = tmp_path / "events"
    supervisor = Supervisor(Console(file=io.StringIO()))
    children = []
    for name in ["orders-1", "orders-2", "worker"]:  # the worker started last: it stops first
        child = Child(
            name,
            [sys.executable, "-c", SLOW_TO_STOP, name, str(events)],
            {},
            lambda: True,
            tmp_path / f"{name}.log",
        )
        supervisor.start(child)
        children.append(child)
    for child in children:
        supervisor.wait_ready(child, 30)
    deadline = time.monotonic() + 60
    while not all("ready" in child.recent for child in children):  # their SIGTERM handlers are set
        assert time.monotonic() < deadline, [list(child.recent) for child in children]
        time.sleep(0.05)
    supervisor.stop_all()

    seen = {}
    for line in events.read_text().splitlines():
        name, what, when = line.split()
        seen[name, what] = float(when)
    assert set(seen) == {(n, w) for n in ["orders-1", "orders-2", "worker"] for w in ["term", "exit"]}
    assert seen["worker", "exit"] < min(seen["orders-1", "term"], seen["orders-2", "term"])
    # Both replicas had their SIGTERM before either was done: neither waited for the other.
    assert max(seen["orders-1", "term"], seen["orders-2", "term"]) < min(
        seen["orders-1", "exit"], seen["orders-2", "exit"]
    )
