"""Helpers for rollouts between worker versions: the operator's commands, run as the operator runs them."""

from __future__ import annotations

import subprocess
from collections.abc import Mapping

from tests.support.processes import VENV_BIN
from tests.support.stack import Stack


def ordersaga(
    stack: Stack,
    *args: str,
    timeout: float = 120.0,
    env: Mapping[str, str] | None = None,
    argv0: list[str] | None = None,
) -> subprocess.CompletedProcess[str]:
    """`ordersaga ARGS` against the stack's Temporal; `argv0` runs another copy of the CLI."""
    return subprocess.run(
        [*(argv0 or [str(VENV_BIN / "ordersaga")]), *args],
        env={**stack.worker_process().env, **(env or {})},
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def deploy(stack: Stack, *args: str, timeout: float = 120.0) -> subprocess.CompletedProcess[str]:
    result = ordersaga(stack, "deploy", *args, timeout=timeout)
    assert result.returncode in (0, 1, 2), result.stdout + result.stderr
    return result


def make_current(stack: Stack, build_id: str) -> None:
    """Route new sagas to `build_id`, or to unversioned workers when it is empty."""
    result = deploy(stack, "promote", build_id)
    assert result.returncode == 0, result.stdout + result.stderr


def current_build_id(stack: Stack) -> str | None:
    result = deploy(stack, "status")
    assert result.returncode == 0, result.stdout + result.stderr
    for line in result.stdout.splitlines():
        fields = line.split()
        if len(fields) > 1 and fields[1] == "current":
            return fields[0]
    return None
