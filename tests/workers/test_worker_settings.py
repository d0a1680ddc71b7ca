"""The worker refuses settings under which a reviewed order could not be captured."""

from __future__ import annotations

import os
import subprocess

import pytest
from pydantic import ValidationError

from tests.support.processes import VENV_BIN
from workers.settings import WorkerSettings

WEEK = 7 * 24 * 3600


def test_the_shipped_review_timeout_ends_well_inside_the_authorisation() -> None:
    settings = WorkerSettings()
    assert settings.review_timeout_seconds == 24 * 3600
    assert settings.authorization_validity_seconds == WEEK
    assert settings.compensation_budget_seconds == 600
    assert settings.reconcile_interval_seconds == 30


@pytest.mark.parametrize("timeout", [WEEK, WEEK + 1])
def test_a_review_timeout_not_shorter_than_the_hold_is_refused(timeout: float) -> None:
    with pytest.raises(ValidationError, match="must be shorter than"):
        WorkerSettings(review_timeout_seconds=timeout)


def test_the_payments_services_validity_setting_is_read_too(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PAYMENTS_AUTHORIZATION_VALIDITY_SECONDS", "3600")
    with pytest.raises(ValidationError, match="must be shorter than"):
        WorkerSettings()
    assert WorkerSettings(review_timeout_seconds=1800).authorization_validity_seconds == 3600


def test_the_worker_refuses_to_start_with_a_clear_message() -> None:
    env = os.environ | {
        "WORKER_REVIEW_TIMEOUT_SECONDS": str(8 * 24 * 3600),
        "TEMPORAL_ADDRESS": "127.0.0.1:9",
    }
    result = subprocess.run(
        [str(VENV_BIN / "ordersaga"), "worker"], capture_output=True, text=True, timeout=60, env=env
    )
    assert result.returncode == 2, result.stdout + result.stderr
    assert "must be shorter than the authorisation's validity" in " ".join(result.stderr.split())
    assert "Traceback" not in result.stderr
