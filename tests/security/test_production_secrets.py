"""ORDERSAGA_ENV=production: no process starts with a development default, a placeholder or a short secret."""

from __future__ import annotations

import os
import secrets
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest
from pydantic import ValidationError
from pydantic_settings import BaseSettings

from ordersaga.codec_server import CodecServerSettings
from services.registry import SERVICES
from tests.deploy.support import ROOT, read_env_file
from tests.support.processes import VENV_BIN, ManagedProcess, free_port, http_ok
from workers.settings import WorkerSettings

ORDERSAGA = VENV_BIN / "ordersaga"
STRONG = {
    "ORDERSAGA_INTERNAL_TOKEN": secrets.token_hex(16),
    "PAYMENTS_VAULT_SECRET": secrets.token_hex(16),
    "ORDERSAGA_CODEC_AUTH_TOKEN": secrets.token_hex(16),
}
# Every variable a test here may set, cleared first so that the developer's shell cannot leak in.
TOUCHED = {
    "ORDERSAGA_ENV",
    *STRONG,
    *read_env_file(ROOT / ".env.example"),
}


def _settings_factory(name: str) -> Callable[[], BaseSettings]:
    if name == "worker":
        return WorkerSettings
    if name == "codec-server":
        return CodecServerSettings
    return SERVICES[name].settings


PROCESSES = [*SERVICES, "worker", "codec-server"]
# The secret each process cannot do without, by the variable an operator sets.
REQUIRED = {name: "ORDERSAGA_INTERNAL_TOKEN" for name in [*SERVICES, "worker"]}
REQUIRED["codec-server"] = "ORDERSAGA_CODEC_AUTH_TOKEN"


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in TOUCHED:
        monkeypatch.delenv(name, raising=False)


def refusal(factory: Callable[[], BaseSettings]) -> str:
    with pytest.raises(ValidationError) as caught:
        factory()
    return str(caught.value)


@pytest.mark.parametrize("process", PROCESSES)
def test_production_refuses_the_development_defaults_and_names_the_setting(
    process: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    factory = _settings_factory(process)
    factory()  # development (the default): `ordersaga up` and the tests keep their defaults

    monkeypatch.setenv("ORDERSAGA_ENV", "production")
    message = refusal(factory)
    assert REQUIRED[process] in message
    if process == "payments":
        assert "PAYMENTS_VAULT_SECRET is the development default" in message

    for name, value in STRONG.items():
        monkeypatch.setenv(name, value)
    assert factory().environment == "production"  # type: ignore[attr-defined]


@pytest.mark.parametrize("process", ["users", "payments", "gateway", "worker"])
def test_production_refuses_the_env_example_placeholders(
    process: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name, value in read_env_file(ROOT / ".env.example").items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("ORDERSAGA_ENV", "production")
    message = refusal(_settings_factory(process))
    assert "ORDERSAGA_INTERNAL_TOKEN is still the .env.example placeholder" in message
    if process == "users":
        assert "ORDERSAGA_ADMIN_PASSWORD is still the .env.example placeholder" in message
    if process == "payments":
        assert "PAYMENTS_VAULT_SECRET is still the .env.example placeholder" in message


def test_production_refuses_a_short_secret_without_echoing_it(monkeypatch: pytest.MonkeyPatch) -> None:
    short = "x7Kq" * 7 + "abc"  # 31 characters
    monkeypatch.setenv("ORDERSAGA_ENV", "production")
    monkeypatch.setenv("ORDERSAGA_INTERNAL_TOKEN", STRONG["ORDERSAGA_INTERNAL_TOKEN"])
    monkeypatch.setenv("PAYMENTS_VAULT_SECRET", short)
    message = refusal(SERVICES["payments"].settings)
    assert "PAYMENTS_VAULT_SECRET is shorter than 32 characters" in message
    assert short not in message
    assert STRONG["ORDERSAGA_INTERNAL_TOKEN"] not in message

    monkeypatch.setenv("PAYMENTS_VAULT_SECRET", short + "d")
    SERVICES["payments"].settings()

    # An admin password is optional (empty: no bootstrap admin), but never a short one.
    monkeypatch.setenv("ORDERSAGA_ADMIN_PASSWORD", "hunter2hunter2")
    assert "ORDERSAGA_ADMIN_PASSWORD is shorter than 16 characters" in refusal(SERVICES["users"].settings)
    monkeypatch.delenv("ORDERSAGA_ADMIN_PASSWORD")
    SERVICES["users"].settings()


def test_an_unknown_environment_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    # A typo must not quietly fall back to development.
    monkeypatch.setenv("ORDERSAGA_ENV", "prod")
    assert "ORDERSAGA_ENV" in refusal(WorkerSettings)


def _production_env(tmp_path: Path, **secrets_set: str) -> dict[str, str]:
    # On top of os.environ, which the autouse fixture has cleared of every variable set here.
    return {
        **os.environ,
        "ORDERSAGA_ENV": "production",
        "ORDERSAGA_DATA_DIR": str(tmp_path / "data"),
        **secrets_set,
    }


@pytest.mark.slow
def test_the_payments_process_refuses_to_start_then_starts_with_real_secrets(tmp_path: Path) -> None:
    port = free_port()
    argv = [str(ORDERSAGA), "serve", "payments", "--port", str(port)]
    refused = subprocess.run(argv, env=_production_env(tmp_path), capture_output=True, text=True, timeout=60)
    assert refused.returncode == 2
    said = " ".join(refused.stderr.split())
    assert "PAYMENTS_VAULT_SECRET is the development default" in said
    assert "ORDERSAGA_INTERNAL_TOKEN is the development default" in said
    assert "Traceback" not in said
    assert "ordersaga-dev-vault-secret" not in said  # named, never echoed
    assert not (tmp_path / "data").exists(), "nothing may be written before the refusal"

    env = _production_env(
        tmp_path,
        ORDERSAGA_INTERNAL_TOKEN=STRONG["ORDERSAGA_INTERNAL_TOKEN"],
        PAYMENTS_VAULT_SECRET=STRONG["PAYMENTS_VAULT_SECRET"],
    )
    (tmp_path / "data").mkdir()
    health = http_ok(f"http://127.0.0.1:{port}/health")
    process = ManagedProcess("payments", argv, tmp_path / "payments.log", env=env, ready=health)
    try:
        process.start(timeout=60)
        assert process.running
    finally:
        process.stop()


@pytest.mark.slow
def test_the_worker_process_refuses_to_start_with_the_default_token(tmp_path: Path) -> None:
    refused = subprocess.run(
        [str(ORDERSAGA), "worker"], env=_production_env(tmp_path), capture_output=True, text=True, timeout=60
    )
    assert refused.returncode == 2
    assert "ORDERSAGA_INTERNAL_TOKEN is the development default" in " ".join(refused.stderr.split())
