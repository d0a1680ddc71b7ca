"""Production refuses development secrets: one rule, inherited by every process's settings class.

`ORDERSAGA_ENV=production` (compose.yaml and deploy/k8s set it) makes a process refuse to start while
a secret setting still holds its development default, a `.env.example` placeholder ("change-me…")
or a value too short to resist guessing. The error names each offending variable and never its
value. `ordersaga up` and the tests run in development, where the defaults keep working.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Self

from pydantic import AliasChoices, Field, SecretStr, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

ENV_VARIABLE = "ORDERSAGA_ENV"
PLACEHOLDER_PREFIX = "change-me"
# 32 characters of `openssl rand -hex 16` carry 128 bits: out of reach of an online guess.
MIN_SECRET_LENGTH = 32
# Typed by a person at the first login; long enough for a passphrase.
MIN_PASSWORD_LENGTH = 16


class Environment(enum.StrEnum):
    DEVELOPMENT = "development"
    PRODUCTION = "production"


@dataclass(frozen=True)
class SecretRule:
    min_length: int = MIN_SECRET_LENGTH
    # Optional secrets may stay empty (the feature is then off or self-provisioned), never weak.
    optional: bool = False


# A setting with one of these field names is a secret in whichever settings class declares it, so
# a new process inherits the rule by naming its fields like the others do.
SECRET_SETTINGS: Mapping[str, SecretRule] = {
    "internal_token": SecretRule(),
    "vault_secret": SecretRule(),
    "auth_token": SecretRule(),  # the codec server's bearer token
    # Empty: no admin is bootstrapped (services/users/bootstrap.py).
    "admin_password": SecretRule(min_length=MIN_PASSWORD_LENGTH, optional=True),
    # Empty: the users service generates its RSA key; a PEM is far longer than any minimum.
    "jwt_private_key": SecretRule(min_length=0, optional=True),
}


class SecretGuardedSettings(BaseSettings):
    """Base of every process's settings: `environment` and the refusal of weak secrets in production."""

    # Validation errors otherwise echo every input, secrets included, into the logs.
    model_config = SettingsConfigDict(hide_input_in_errors=True)

    environment: Environment = Field(
        default=Environment.DEVELOPMENT,
        validation_alias=AliasChoices(ENV_VARIABLE, "environment"),
        description="production refuses development defaults, placeholders and short secrets.",
    )

    @model_validator(mode="after")
    def _refuse_development_secrets_in_production(self) -> Self:
        if self.environment is Environment.PRODUCTION:
            problems = weak_secrets(self)
            if problems:
                raise ValueError(
                    f"{ENV_VARIABLE}=production refuses to start: "
                    + "; ".join(problems)
                    + ". Set each to a random value, e.g. `openssl rand -hex 32`."
                )
        return self


def weak_secrets(settings: BaseSettings) -> list[str]:
    """One sentence per secret setting that production would refuse, naming its variable."""
    problems: list[str] = []
    fields = type(settings).model_fields
    for name, rule in SECRET_SETTINGS.items():
        if name not in fields:
            continue
        value = _plain(getattr(settings, name))
        default = _plain(fields[name].get_default(call_default_factory=True))
        variable = env_variable(type(settings), name)
        if not value:
            if not rule.optional:
                problems.append(f"{variable} is not set")
        elif value.lower().startswith(PLACEHOLDER_PREFIX):
            problems.append(f"{variable} is still the .env.example placeholder")
        elif value == default:
            problems.append(f"{variable} is the development default")
        elif len(value) < rule.min_length:
            problems.append(f"{variable} is shorter than {rule.min_length} characters")
    return problems


def env_variable(cls: type[BaseSettings], field_name: str) -> str:
    """The environment variable an operator sets for a field: its upper-case alias, else prefix + name."""
    alias = cls.model_fields[field_name].validation_alias
    choices = alias.choices if isinstance(alias, AliasChoices) else [alias] if alias else []
    for choice in choices:
        if isinstance(choice, str) and choice.isupper():
            return choice
    return str(cls.model_config.get("env_prefix", "")).upper() + field_name.upper()


def _plain(value: object) -> str:
    if isinstance(value, SecretStr):
        return value.get_secret_value()
    return value if isinstance(value, str) else ""
