"""How many CPUs this process may really use: the smallest of the machine's, its affinity and its
cgroup's quota. In a container `os.cpu_count()` is the node's, not the pod's CPU limit."""

from __future__ import annotations

import math
import os
from pathlib import Path

CGROUP_CPU_MAX = Path("/sys/fs/cgroup/cpu.max")  # cgroup v2: "<quota> <period>" or "max <period>"


def cgroup_quota(cpu_max: Path = CGROUP_CPU_MAX) -> int | None:
    """CPUs allowed by the cgroup's quota, rounded up; None when it sets none or cannot be read."""
    try:
        quota, period = cpu_max.read_text().split()[:2]
    except (OSError, ValueError):
        return None
    if quota == "max":
        return None
    try:
        return max(1, math.ceil(int(quota) / int(period)))
    except (ValueError, ZeroDivisionError):
        return None


def available_cpus(cpu_max: Path = CGROUP_CPU_MAX) -> int:
    counts = [os.cpu_count() or 1]
    if hasattr(os, "sched_getaffinity"):
        counts.append(len(os.sched_getaffinity(0)))
    quota = cgroup_quota(cpu_max)
    if quota is not None:
        counts.append(quota)
    return max(1, min(counts))
