"""Settings of the users service (env prefix `USERS_`; the admin bootstrap reads `ORDERSAGA_ADMIN_*`)."""

from __future__ import annotations

from pydantic import AliasChoices, Field, SecretStr
from pydantic_settings import SettingsConfigDict

from services.kit.settings import ServiceSettings


class Settings(ServiceSettings):
    model_config = SettingsConfigDict(env_prefix="USERS_", extra="ignore")

    service_name: str = "users"
    port: int = 8001

    token_ttl_seconds: int = Field(default=900, ge=60, le=24 * 3600)
    # PEM of the RSA signing key; empty means: generate one and keep it in the data dir.
    jwt_private_key: SecretStr = SecretStr("")

    # argon2id cost; the defaults are argon2-cffi's (RFC 9106 low-memory profile). Tests lower them.
    argon2_time_cost: int = Field(default=3, ge=1, le=20)
    argon2_memory_cost_kib: int = Field(default=65536, ge=8, le=1024 * 1024)
    argon2_parallelism: int = Field(default=4, ge=1, le=64)

    # Shared with the seed command, hence unprefixed. An empty password means: no bootstrap.
    admin_email: str = Field(
        default="admin@example.com", validation_alias=AliasChoices("ORDERSAGA_ADMIN_EMAIL", "admin_email")
    )
    admin_password: SecretStr = Field(
        default=SecretStr(""), validation_alias=AliasChoices("ORDERSAGA_ADMIN_PASSWORD", "admin_password")
    )
