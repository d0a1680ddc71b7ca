"""Slots sized to the CPUs a process may use: a pod's CPU limit, not the node's core count."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from services.kit.cpus import available_cpus, cgroup_quota


@pytest.mark.parametrize(
    ("cpu_max", "expected"),
    [
        ("100000 100000\n", 1),
        ("150000 100000\n", 2),
        ("50000 100000\n", 1),
        ("max 100000\n", None),
        ("", None),
    ],
)
def test_the_cgroup_quota_is_read_and_rounded_up(tmp_path: Path, cpu_max: str, expected: int | None) -> None:
    path = tmp_path / "cpu.max"
    path.write_text(cpu_max)
    assert cgroup_quota(path) == expected


def test_a_quota_below_the_machines_cores_wins(tmp_path: Path) -> None:
    path = tmp_path / "cpu.max"
    path.write_text("100000 100000\n")
    assert available_cpus(path) == 1
    assert available_cpus(tmp_path / "absent") == min(os.cpu_count() or 1, len(os.sched_getaffinity(0)))
