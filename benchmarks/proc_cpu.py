"""CPU time of processes from /proc (utime + stime), for the benchmarks that count CPU per operation.

CPU time rather than wall time, because the machine may be shared: another job's load stretches a
request's latency far more than the CPU it costs. One reading of /proc per process and sample.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable
from pathlib import Path

TICK = os.sysconf("SC_CLK_TCK")


def stat_fields(pid: int) -> list[str] | None:
    """The fields of /proc/<pid>/stat after the command name (state first), None when it is gone."""
    try:
        # The name is in parentheses and may itself hold spaces or parentheses: split after the last.
        return Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    except OSError:
        return None


def _seconds(fields: list[str]) -> float:
    return (int(fields[11]) + int(fields[12])) / TICK  # utime + stime


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a live process; 0 when it is gone."""
    fields = stat_fields(pid)
    return 0.0 if fields is None else _seconds(fields)


def _all_processes() -> dict[int, tuple[int, float]]:
    """Every live process: pid → (parent pid, CPU seconds)."""
    found: dict[int, tuple[int, float]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and (fields := stat_fields(int(entry.name))) is not None:
            found[int(entry.name)] = (int(fields[1]), _seconds(fields))
    return found


def _descendants(roots: Iterable[int], parents: dict[int, int]) -> set[int]:
    members = set(roots)
    frontier = list(members)
    while frontier:
        parent = frontier.pop()
        for pid, ppid in parents.items():
            if ppid == parent and pid not in members:
                members.add(pid)
                frontier.append(pid)
    return members


def descendants(roots: Iterable[int]) -> set[int]:
    """The roots and every live descendant (a wrapper's child does the work, say)."""
    return _descendants(roots, {pid: ppid for pid, (ppid, _) in _all_processes().items()})


def tree_cpu(root: int, name: Callable[[int], str]) -> dict[int, tuple[str, float]]:
    """`root` and every descendant: pid → (its `name`, CPU seconds), from one pass over /proc."""
    processes = _all_processes()
    members = _descendants([root], {pid: ppid for pid, (ppid, _) in processes.items()})
    return {pid: (name(pid), processes[pid][1]) for pid in members if pid in processes}


def cpu_by_process(
    before: dict[int, tuple[str, float]], after: dict[int, tuple[str, float]]
) -> dict[str, float]:
    """CPU seconds spent between two `tree_cpu` samples, by process name (processes in both)."""
    spent: dict[str, float] = {}
    for pid, (process_name, seconds) in after.items():
        if pid in before:
            spent[process_name] = spent.get(process_name, 0.0) + seconds - before[pid][1]
    return spent
