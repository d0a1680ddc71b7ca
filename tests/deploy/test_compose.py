"""compose.yaml: valid per the compose specification, healthy, consistent with the CLI and settings."""

from __future__ import annotations

import json
import os
import re
import secrets
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml
from pydantic import ValidationError
from pydantic_settings import BaseSettings

from services.registry import SERVICES
from tests.deploy.support import ROOT, SCHEMAS, interpolate, read_env_file, references, unknown_variables
from workers.settings import WorkerSettings

COMPOSE_FILE = ROOT / "compose.yaml"
ORDERSAGA = Path(sys.executable).with_name("ordersaga")
SECRET_NAME = re.compile(r"PASSWORD|SECRET|TOKEN|PRIVATE_KEY|PWD")


@pytest.fixture(scope="module")
def raw() -> dict[str, Any]:
    return yaml.safe_load(COMPOSE_FILE.read_text())


@pytest.fixture(scope="module")
def compose(raw: dict[str, Any]) -> dict[str, Any]:
    """The file as `docker compose` sees it with the values of .env.example."""
    resolved: dict[str, Any] = interpolate(raw, read_env_file(ROOT / ".env.example"))
    return resolved


def services(compose: dict[str, Any]) -> dict[str, dict[str, Any]]:
    result: dict[str, dict[str, Any]] = compose["services"]
    return result


def ours(compose: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """The services that run the ordersaga image (built from docker/Dockerfile)."""
    return {
        name: svc
        for name, svc in services(compose).items()
        if svc.get("build", {}).get("dockerfile") == "docker/Dockerfile"
    }


def environment(svc: dict[str, Any]) -> dict[str, str]:
    env = svc.get("environment", {})
    if isinstance(env, list):
        env = dict(item.split("=", 1) if "=" in item else (item, "") for item in env)
    return {str(key): str(value) for key, value in env.items()}


def is_job(svc: dict[str, Any]) -> bool:
    return svc.get("restart") == "no"


def test_validates_against_the_compose_specification(compose: dict[str, Any]) -> None:
    schema = json.loads((SCHEMAS / "compose-spec.json").read_text())
    validator = jsonschema.Draft7Validator(schema)
    errors = [f"{'/'.join(map(str, e.absolute_path))}: {e.message}" for e in validator.iter_errors(compose)]
    assert errors == []


def test_env_example_provides_every_variable_the_file_requires(raw: dict[str, Any]) -> None:
    required = set(re.findall(r"\$\{([A-Z0-9_]+):\?", COMPOSE_FILE.read_text()))
    assert required - set(read_env_file(ROOT / ".env.example")) == set()


def test_the_whole_system_is_there(compose: dict[str, Any]) -> None:
    names = set(services(compose))
    assert set(SERVICES) <= names  # the five services and the gateway
    expected = {"worker", "postgres", "nats", "redis", "temporal", "temporal-ui", "temporal-admin-tools"}
    expected |= {"mailpit", "otel-collector", "jaeger", "prometheus", "grafana"}
    assert expected <= names
    assert services(compose)["worker"]["deploy"]["replicas"] == 2
    # Migrations are one-shot jobs the services wait for, and the services never migrate themselves.
    for name in ("users", "inventory", "payments", "orders", "notifications"):
        svc = services(compose)[name]
        assert svc["depends_on"][f"migrate-{name}"]["condition"] == "service_completed_successfully"
        assert environment(svc)[f"{name.upper()}_AUTO_MIGRATE"] == "false"
        assert services(compose)[f"migrate-{name}"]["command"] == ["migrate", name]


def test_every_service_has_a_healthcheck(compose: dict[str, Any]) -> None:
    # One-shot jobs exit: compose never evaluates their healthcheck, dependents wait for their exit.
    missing = [
        name
        for name, svc in services(compose).items()
        if not is_job(svc) and not svc.get("healthcheck", {}).get("test")
    ]
    assert missing == []


def test_dependencies_wait_on_something_that_can_be_observed(compose: dict[str, Any]) -> None:
    for name, svc in services(compose).items():
        for target, rule in svc.get("depends_on", {}).items():
            target_svc = services(compose)[target]
            if rule["condition"] == "service_healthy":
                assert target_svc.get("healthcheck"), f"{name} waits for {target}'s health, which has none"
            if is_job(target_svc):
                assert rule["condition"] == "service_completed_successfully", f"{name} -> {target}"


def test_every_command_exists_in_the_cli(compose: dict[str, Any]) -> None:
    helps: dict[str, str] = {}
    for name, svc in ours(compose).items():
        command = svc["command"]
        subcommand = command[0]
        if subcommand not in helps:
            run = subprocess.run(
                [str(ORDERSAGA), subcommand, "--help"], capture_output=True, text=True, timeout=60
            )
            assert run.returncode == 0, f"{name}: `ordersaga {subcommand} --help` failed: {run.stderr}"
            helps[subcommand] = run.stdout
        options = [arg for arg in command[1:] if arg.startswith("--")]
        for option in options:
            assert option in helps[subcommand], f"{name}: `ordersaga {subcommand}` has no {option}"
        if subcommand in ("serve", "migrate"):
            assert command[1] in SERVICES, f"{name}: unknown service {command[1]!r}"


def test_every_variable_set_is_read_by_the_settings(compose: dict[str, Any]) -> None:
    for name, svc in ours(compose).items():
        assert unknown_variables(set(environment(svc))) == set(), name


def test_no_port_is_published_twice(compose: dict[str, Any]) -> None:
    seen: dict[int, str] = {}
    for name, svc in services(compose).items():
        published = svc.get("ports", [])
        if published:
            assert svc.get("deploy", {}).get("replicas", 1) == 1, f"{name}: replicas would clash"
        for port in published:
            host_port = int(str(port).rsplit(":", 2)[-2])
            assert host_port not in seen, f"{name} and {seen.get(host_port)} both publish {host_port}"
            seen[host_port] = name


def test_no_secret_is_written_in_the_file(raw: dict[str, Any]) -> None:
    for name, svc in raw["services"].items():
        for key, value in environment(svc).items():
            if SECRET_NAME.search(key):
                assert references(value), f"{name}: {key} is a literal, not a reference to .env"
    env_example = read_env_file(ROOT / ".env.example")
    for key, value in env_example.items():
        if SECRET_NAME.search(key) and value:
            assert value.startswith("change-me"), f".env.example carries a real-looking {key}"


def _settings_of(svc: dict[str, Any]) -> Callable[[], BaseSettings]:
    command = svc["command"]
    if command[0] == "worker":
        return WorkerSettings
    return SERVICES[command[1]].settings


def test_every_process_runs_in_production_and_refuses_the_env_example_placeholders(
    compose: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    long_running = {name: svc for name, svc in ours(compose).items() if not is_job(svc)}
    assert {"worker", "gateway", "payments", "users"} <= set(long_running)
    for name, svc in long_running.items():
        env = environment(svc)
        assert env["ORDERSAGA_ENV"] == "production", name
        # `cp .env.example .env && docker compose up` without editing: each process refuses and says what.
        for key in list(os.environ):
            if key.startswith(("ORDERSAGA_", "PAYMENTS_", "USERS_", "GATEWAY_", "WORKER_")):
                monkeypatch.delenv(key)
        for key, value in env.items():
            monkeypatch.setenv(key, value)
        with pytest.raises(ValidationError) as refused:
            _settings_of(svc)()
        assert "ORDERSAGA_INTERNAL_TOKEN is still the .env.example placeholder" in str(refused.value), name
        # With generated values in .env it starts.
        for key, value in env.items():
            if SECRET_NAME.search(key) and value.startswith("change-me"):
                monkeypatch.setenv(key, secrets.token_hex(16))
        _settings_of(svc)()
