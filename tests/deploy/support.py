"""Helpers of the deploy tests: the repository's files, compose interpolation, known env variables."""

from __future__ import annotations

import importlib
import re
from pathlib import Path
from typing import Any

from pydantic import AliasChoices
from pydantic_settings import BaseSettings

from services.registry import SERVICES

ROOT = Path(__file__).resolve().parents[2]
SCHEMAS = Path(__file__).resolve().parent / "schemas"

# Variables read by the SDKs themselves rather than by our settings classes.
SDK_PREFIXES = ("OTEL_", "TEMPORAL_")

# Owned by modules still being written (events/NATS, SMTP, worker metrics). Each entry is dropped
# from consideration as soon as a settings class reads it, so the list only ever shrinks.
PENDING_VARIABLES = {
    "NATS_URL",
    "NOTIFICATIONS_EMAIL_BACKEND",
    "NOTIFICATIONS_SMTP_HOST",
    "NOTIFICATIONS_SMTP_PORT",
    "NOTIFICATIONS_MAIL_FROM",
    "WORKER_METRICS_PORT",
}
# Used only while `services.gateway.settings` cannot be imported; then its real fields count.
PENDING_GATEWAY = re.compile(r"^(GATEWAY_[A-Z0-9_]+|REDIS_URL)$")


def settings_variables(cls: type[BaseSettings]) -> set[str]:
    """Every environment variable a pydantic-settings class reads (prefix + field, or its aliases)."""
    prefix = str(cls.model_config.get("env_prefix", "")).upper()
    names: set[str] = set()
    for field_name, field in cls.model_fields.items():
        alias = field.validation_alias
        if isinstance(alias, AliasChoices):
            names.update(str(choice).upper() for choice in alias.choices if str(choice).isupper())
        elif isinstance(alias, str):
            names.add(alias.upper())
        names.add(prefix + field_name.upper())
    return names


def settings_classes() -> tuple[list[type[BaseSettings]], bool]:
    """The settings classes that exist now, and whether the gateway's is among them."""
    from services.kit.temporal import TemporalSettings
    from workers.settings import WorkerSettings

    classes: list[type[BaseSettings]] = [WorkerSettings, TemporalSettings]
    gateway_found = False
    for name in SERVICES:
        try:
            module = importlib.import_module(f"services.{name}.settings")
        except ImportError:
            continue
        classes.append(module.Settings)
        gateway_found = gateway_found or name == "gateway"
    return classes, gateway_found


def unknown_variables(names: set[str]) -> set[str]:
    classes, gateway_found = settings_classes()
    known: set[str] = set().union(*(settings_variables(cls) for cls in classes))
    unknown = set()
    for name in names - known:
        if name.startswith(SDK_PREFIXES) or name in PENDING_VARIABLES:
            continue
        if not gateway_found and PENDING_GATEWAY.match(name):
            continue
        unknown.add(name)
    return unknown


_REFERENCE = re.compile(r"\$\{(?P<name>[A-Za-z_][A-Za-z0-9_]*)(?:(?P<op>:?[-?])(?P<arg>[^}]*))?\}")


def read_env_file(path: Path) -> dict[str, str]:
    values: dict[str, str] = {}
    for line in path.read_text().splitlines():
        line = line.strip()
        if line and not line.startswith("#") and "=" in line:
            key, _, value = line.partition("=")
            values[key.strip()] = value.strip()
    return values


def interpolate(value: Any, env: dict[str, str]) -> Any:
    """Compose's `${VAR}`, `${VAR:-default}` and `${VAR:?error}`, applied to every string."""
    if isinstance(value, dict):
        return {key: interpolate(item, env) for key, item in value.items()}
    if isinstance(value, list):
        return [interpolate(item, env) for item in value]
    if not isinstance(value, str):
        return value

    def substitute(match: re.Match[str]) -> str:
        name, op, arg = match["name"], match["op"], match["arg"]
        current = env.get(name)
        if op and op.endswith("?") and not current:
            raise KeyError(f"${{{name}}} is required ({arg or 'no message'}) and missing")
        if op and op.endswith("-") and not current:
            return arg
        return current or ""

    return _REFERENCE.sub(substitute, value.replace("$$", "\0")).replace("\0", "$")


def references(text: str) -> set[str]:
    return {match["name"] for match in _REFERENCE.finditer(text)}
