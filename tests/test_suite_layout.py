"""How `make test` runs the suite: a file's tests keep to one xdist worker (so its stack starts once),
and the long variants (marker `full`) skip, with their reason, unless ORDERSAGA_TEST_FULL=1."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).parent.parent
GROUPED = "tests/topology/test_addresses.py"
LONG_VARIANT = "tests/replicas/test_replicas.py::test_three_sweepers_start_each_lost_saga_exactly_once"


@pytest.mark.slow  # three pytest processes: it starts among the long groups, not at the tail
def test_a_files_tests_keep_to_one_worker_and_long_variants_skip_by_default() -> None:
    env = {key: value for key, value in os.environ.items() if not key.startswith("PYTEST_")}
    env.pop("ORDERSAGA_TEST_FULL", None)
    argv = [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-v", "-rs"]
    # The Makefile's scheduling options; -k keeps it to in-process tests of the grouped file.
    argv += ["-n", "2", "--dist", "loadgroup", "--no-loadscope-reorder", GROUPED, LONG_VARIANT]
    argv += ["-k", "single_url or take_turns or spreads_requests or refusing or sweepers"]
    result = subprocess.run(argv, cwd=ROOT, env=env, capture_output=True, text=True, timeout=240)
    output = result.stdout + result.stderr
    assert result.returncode == 0, output

    workers = set(re.findall(rf"\[(gw\d+)\] \[ *\d+%\] PASSED {re.escape(GROUPED)}::", output))
    passed = len(re.findall(rf"PASSED {re.escape(GROUPED)}::", output))
    assert passed >= 4, output
    assert len(workers) == 1, f"one file's tests ran on {sorted(workers)}:\n{output}"

    skipped = r"SKIPPED \[1\] tests/replicas/test_replicas.py:\d+: .*ORDERSAGA_TEST_FULL=1"
    assert re.search(skipped, output), output
