"""Payments settings (env prefix `PAYMENTS_`)."""

from __future__ import annotations

from pydantic import Field
from pydantic_settings import SettingsConfigDict

from services.kit.settings import ServiceSettings


class Settings(ServiceSettings):
    model_config = SettingsConfigDict(env_prefix="PAYMENTS_", extra="ignore")

    service_name: str = "payments"
    port: int = 8003

    # The card-network simulator: extra latency per call and a random share of transient failures.
    provider_latency_ms: int = Field(default=0, ge=0, le=60_000)
    provider_failure_rate: float = Field(default=0.0, ge=0.0, le=1.0)
    # How long one request owns an in-flight charge before another request may take it over.
    charge_lease_seconds: float = Field(default=30.0, gt=0.0, le=3600.0)
    # How long an authorisation holds the amount: a capture after that is refused (at most a year).
    authorization_validity_seconds: float = Field(default=7 * 24 * 3600.0, gt=0.0, le=366 * 24 * 3600.0)
    # Key of the HMAC that fingerprints card numbers in the provider's vault; production refuses the
    # default and anything under 32 characters (services/kit/secrets.py).
    vault_secret: str = Field(default="ordersaga-dev-vault-secret", min_length=16)
