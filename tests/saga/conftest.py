"""Saga tests run on the real stack (fixtures `stack` and `driver` in tests/conftest.py)."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.support.processes import VENV_BIN
from tests.support.stack import Stack

HISTORIES = Path(__file__).parent.parent / "replay" / "histories" / "current"


def history_recorder(temporal_address: str) -> Callable[..., None]:
    """With ORDERSAGA_RECORD_HISTORIES=1, export a finished saga's history for the replay corpus."""

    def record(order_id: str, name: str, workflow_id: str | None = None) -> None:
        if not os.environ.get("ORDERSAGA_RECORD_HISTORIES"):
            return
        HISTORIES.mkdir(parents=True, exist_ok=True)
        output = subprocess.run(
            [
                str(VENV_BIN / "temporal"),
                "workflow",
                "show",
                "--address",
                temporal_address,
                "--workflow-id",
                workflow_id or f"order-{order_id}",
                "--output",
                "json",
            ],
            check=True,
            capture_output=True,
            text=True,
        ).stdout
        (HISTORIES / f"{name}.json").write_text(output)

    return record


@pytest.fixture
def record_history(stack: Stack) -> Callable[..., None]:
    return history_recorder(stack.temporal_address)
