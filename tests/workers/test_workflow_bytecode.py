"""The worker keeps compiled workflow code even where PYTHONDONTWRITEBYTECODE is set.

The sandbox imports workflows/order.py afresh for every saga it runs; without a bytecode cache each
of those imports compiles the module from source (benchmarks/README.md measures the cost).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

# What the sandbox does for each workflow: a fresh module from the same spec, executed again.
CHECK = """
import importlib.util, os, sys
from workers.main import keep_workflow_bytecode
keep_workflow_bytecode()
spec = importlib.util.find_spec("workflows.order")
spec.loader.exec_module(importlib.util.module_from_spec(spec))
cached = importlib.util.cache_from_source(spec.origin)
print(cached.startswith(sys.argv[1]))
print(os.path.exists(cached))
"""


def _run(tmp_path: Path, *, keep: bool) -> list[str]:
    code = CHECK if keep else CHECK.replace("keep_workflow_bytecode()\n", "")
    env = {**os.environ, "PYTHONDONTWRITEBYTECODE": "1", "TMPDIR": str(tmp_path)}
    env.pop("PYTHONPYCACHEPREFIX", None)
    done = subprocess.run(
        [sys.executable, "-c", code, str(tmp_path)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )
    return done.stdout.split("\n")


def test_the_worker_writes_the_workflow_modules_bytecode_outside_the_tree(tmp_path: Path) -> None:
    lines = _run(tmp_path, keep=True)
    assert lines[0] == "True", lines  # under the temp dir, not beside the source
    assert lines[1] == "True", lines


def test_without_it_the_variable_leaves_nothing_to_reuse(tmp_path: Path) -> None:
    assert _run(tmp_path, keep=False)[1] == "False"
