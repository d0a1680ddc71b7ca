"""Settings of the users service (env prefix `USERS_`; the admin bootstrap reads `ORDERSAGA_ADMIN_*`)."""

from __future__ import annotations

from pydantic import AliasChoices, Field, SecretStr
from pydantic_settings import SettingsConfigDict

from services.kit.cpus import available_cpus
from services.kit.settings import ServiceSettings

# 19 MiB, 2 passes, 1 lane: 20 to 30 ms a hash on one core of the 2-core development VM.
ARGON2_TIME_COST = 2
ARGON2_MEMORY_COST_KIB = 19456
ARGON2_PARALLELISM = 1


class Settings(ServiceSettings):
    model_config = SettingsConfigDict(env_prefix="USERS_", extra="ignore")

    service_name: str = "users"
    port: int = 8001

    token_ttl_seconds: int = Field(default=900, ge=60, le=24 * 3600)
    # PEM of the RSA signing key; empty means: generate one and keep it in the data dir.
    jwt_private_key: SecretStr = SecretStr("")

    # argon2id cost: OWASP's minimum (README, "Password hashing cost" has the measurements). Hashes
    # made with other parameters are redone on the next successful login. Unit tests lower them.
    argon2_time_cost: int = Field(default=ARGON2_TIME_COST, ge=1, le=20)
    argon2_memory_cost_kib: int = Field(default=ARGON2_MEMORY_COST_KIB, ge=8, le=1024 * 1024)
    argon2_parallelism: int = Field(default=ARGON2_PARALLELISM, ge=1, le=64)
    # Hashes running at once (each holds a core: by default the CPUs the process may use, a pod's CPU
    # limit included), and how long a request waits for one before it is answered 503 `overloaded`
    # with Retry-After; well under the gateway's 5 s users timeout.
    password_hash_concurrency: int = Field(default_factory=available_cpus, ge=1, le=256)
    password_hash_queue_timeout_seconds: float = Field(default=2.0, gt=0, le=60)

    # Password attempts per account (logins and the `current_password` of a change), in `limits`
    # notation over a moving window; a spent budget is 429 for every attempt on that account.
    login_failure_limit: str = "10/5minutes"
    # Shared with the gateway's rate limits when set (the counts then hold across replicas).
    redis_url: str = Field(
        default="", validation_alias=AliasChoices("REDIS_URL", "USERS_REDIS_URL", "redis_url")
    )

    # Shared with the seed command, hence unprefixed. An empty password means: no bootstrap.
    admin_email: str = Field(
        default="admin@example.com", validation_alias=AliasChoices("ORDERSAGA_ADMIN_EMAIL", "admin_email")
    )
    admin_password: SecretStr = Field(
        default=SecretStr(""), validation_alias=AliasChoices("ORDERSAGA_ADMIN_PASSWORD", "admin_password")
    )
