"""Saga tests run on the real stack (fixtures `stack` and `driver` in tests/conftest.py)."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from tests.support.processes import VENV_BIN
from tests.support.stack import Stack

HISTORIES = Path(__file__).parent.parent / "replay" / "histories" / "current"


@pytest.fixture
def record_history(stack: Stack):  # type: ignore[no-untyped-def]
    """With ORDERSAGA_RECORD_HISTORIES=1, export a finished saga's history for the replay corpus."""

    def record(order_id: str, name: str) -> None:
        if not os.environ.get("ORDERSAGA_RECORD_HISTORIES"):
            return
        HISTORIES.mkdir(parents=True, exist_ok=True)
        output = subprocess.run(
            [
                str(VENV_BIN / "temporal"),
                "workflow",
                "show",
                "--address",
                stack.temporal_address,
                "--workflow-id",
                f"order-{order_id}",
                "--output",
                "json",
            ],
            check=True,
            capture_output=True,
            text=True,
        ).stdout
        (HISTORIES / f"{name}.json").write_text(output)

    return record
