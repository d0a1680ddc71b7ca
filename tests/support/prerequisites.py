"""What a test needs beyond Python and make: skipped with its reason on a laptop, a failure in CI.

`make test` on a fresh machine must pass with nothing installed by hand, while CI (`CI` set, as
`.ci/run` does) installs every prerequisite and must never skip one silently.
"""

from __future__ import annotations

import os
import shutil
from typing import NoReturn

import pytest

IN_CI = bool(os.environ.get("CI"))


def missing(reason: str) -> NoReturn:
    if IN_CI:
        pytest.fail(reason)
    pytest.skip(reason)


def chromium_path() -> str:
    """Debian's chromium (or `ORDERSAGA_TEST_CHROMIUM`), or skip/fail with how to get it."""
    candidate = os.environ.get("ORDERSAGA_TEST_CHROMIUM") or shutil.which("chromium") or "/usr/bin/chromium"
    if not os.access(candidate, os.X_OK):
        missing(
            "chromium is not installed: `apt-get install chromium` (or set ORDERSAGA_TEST_CHROMIUM) "
            "to run the Web UI browser test; .ci/run installs it"
        )
    return candidate
