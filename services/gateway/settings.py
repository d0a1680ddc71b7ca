"""Gateway settings (`GATEWAY_*`): upstreams, rate-limit policies, breaker, JWKS cache."""

from __future__ import annotations

from typing import Self

from pydantic import AliasChoices, BaseModel, Field, model_validator
from pydantic_settings import SettingsConfigDict

from services.kit.secrets import Environment, SecretGuardedSettings
from services.kit.settings import DEV_INTERNAL_TOKEN, MAX_BODY_BYTES
from services.kit.transport import Addresses
from services.registry import DATA_SERVICES, SERVICES

UPSTREAMS: tuple[str, ...] = DATA_SERVICES


class Upstream(BaseModel):
    """One service behind the gateway."""

    name: str
    url: str  # the first address: the gateway's own calls (readiness, JWKS) go there
    # Every address, when several replicas serve it: proxied requests are spread over them.
    urls: tuple[str, ...] = ()
    timeout: float
    retries: int
    max_connections: int  # its bulkhead: connections (and so requests) in flight to it at once
    # Streams (routes.py `stream=True`) have connections of their own, as many as this, so that
    # long-lived ones never take the bulkhead's; each waits at most `stream_idle_timeout` seconds
    # for its next bytes (not `timeout`, which would cut a quiet stream between keep-alives).
    max_streams: int = 0
    stream_idle_timeout: float = 45.0


class Settings(SecretGuardedSettings):
    model_config = SettingsConfigDict(extra="ignore", env_prefix="GATEWAY_")

    service_name: str = "gateway"
    host: str = "127.0.0.1"
    port: int = 8000
    log_level: str = "INFO"
    max_body_bytes: int = MAX_BODY_BYTES

    # Upstream base URLs (several comma-separated for replicas: spread round-robin), per-attempt
    # timeouts (seconds) and retry counts (idempotent calls only).
    users_url: str = SERVICES["users"].url
    inventory_url: str = SERVICES["inventory"].url
    payments_url: str = SERVICES["payments"].url
    orders_url: str = SERVICES["orders"].url
    notifications_url: str = SERVICES["notifications"].url
    users_timeout: float = 5.0
    inventory_timeout: float = 5.0
    payments_timeout: float = 10.0  # the card provider simulator may be slow
    orders_timeout: float = 5.0
    notifications_timeout: float = 5.0
    users_retries: int = 2
    inventory_retries: int = 2
    payments_retries: int = 2
    orders_retries: int = 2
    notifications_retries: int = 2
    connect_timeout: float = 1.0
    retry_backoff_seconds: float = 0.05
    # Bulkheads: each upstream has its own connections, so a slow one cannot take another's. A
    # request that gets none within `connection_wait_seconds` is answered 503 with Retry-After.
    users_max_connections: int = 100
    inventory_max_connections: int = 100
    payments_max_connections: int = 100
    orders_max_connections: int = 100
    notifications_max_connections: int = 100
    connection_wait_seconds: float = 0.5
    # Server-Sent Events streams (GET /orders/{id}/saga/stream) relayed at once, per upstream; past
    # it 503 `overloaded` with Retry-After. A stream's head is bounded by the upstream's timeout as
    # any answer; its body by the idle timeout only: longer than the orders service's 15 s between
    # keep-alives, so that only a stream whose upstream went silent is dropped.
    stream_max_open: int = Field(default=500, ge=1)
    stream_idle_timeout_seconds: float = Field(default=45.0, gt=0)
    # The gateway's own calls (JWKS, readiness probes), apart from the proxied ones.
    max_connections: int = 20

    # Rate-limit policies in `limits` notation; several may be joined with ";" (e.g. "10/second;300/minute").
    rate_limit_auth: str = "120/minute"  # register and login, per IP
    rate_limit_anon: str = "300/minute"  # other calls without a token, per IP
    rate_limit_user: str = "1200/minute"  # calls with a valid token, per user
    rate_limit_strategy: str = "fixed-window"  # or moving-window, sliding-window-counter
    rate_limit_enabled: bool = True
    # Shared by every replica when set: limits are counted in Redis instead of in memory.
    redis_url: str = Field(
        default="", validation_alias=AliasChoices("REDIS_URL", "GATEWAY_REDIS_URL", "redis_url")
    )

    # Circuit breaker per upstream: opens after this many consecutive failures, half-open after cool-down.
    breaker_threshold: int = 5
    breaker_cooldown_seconds: float = 10.0

    # JWKS of the users service: kept this long, refetched at most this often for an unknown key id.
    jwks_max_age_seconds: float = 300.0
    jwks_min_refresh_seconds: float = 5.0
    # Verified tokens remembered until they expire (0: check every signature).
    verified_token_cache_size: int = 10_000
    # Users' current token versions (which revoke tokens), remembered only while subscribed to the
    # users service's revocation announcements on NATS; without NATS, asked for on every request.
    nats_url: str = Field(
        default="", validation_alias=AliasChoices("NATS_URL", "GATEWAY_NATS_URL", "nats_url")
    )
    token_version_cache_size: int = 10_000  # 0: ask on every request even when subscribed
    token_version_max_age_seconds: float = 60.0

    # Peers whose X-Forwarded-For / X-Forwarded-Proto are believed (IPs or CIDRs, comma-separated;
    # "*" for any). Empty: the gateway is the edge, the TCP peer is the client, and a client's own
    # X-Forwarded-For is ignored, so it cannot pick its rate-limit bucket.
    trusted_proxies: str = ""

    # The web pages (services/gateway/web/): where the Temporal Web UI is, for the order page's link
    # to its saga (empty: no link), and its namespace.
    temporal_ui_url: str = ""
    temporal_ui_namespace: str = "default"
    # Demo controls (kill and restart children of `ordersaga up`): the supervisor's localhost control
    # endpoint and its token. Only `ordersaga up` sets them; empty, the /demo routes do not exist,
    # and production refuses them (see the validator below).
    demo_control_url: str = ""
    demo_control_token: str = ""

    internal_token: str = Field(
        default=DEV_INTERNAL_TOKEN,
        validation_alias=AliasChoices("ORDERSAGA_INTERNAL_TOKEN", "internal_token"),
        description="Shared credential by which services trust the identity headers the gateway sets.",
    )

    @model_validator(mode="after")
    def _no_demo_controls_in_production(self) -> Self:
        if self.environment is Environment.PRODUCTION and self.demo_control_url:
            raise ValueError("ORDERSAGA_ENV=production refuses GATEWAY_DEMO_CONTROL_URL (demo controls)")
        return self

    def upstream(self, name: str) -> Upstream:
        urls = Addresses.parse(str(getattr(self, f"{name}_url"))).urls
        return Upstream(
            name=name,
            url=urls[0],
            urls=urls,
            timeout=float(getattr(self, f"{name}_timeout")),
            retries=int(getattr(self, f"{name}_retries")),
            max_connections=int(getattr(self, f"{name}_max_connections")),
            max_streams=self.stream_max_open,
            stream_idle_timeout=self.stream_idle_timeout_seconds,
        )

    def upstreams(self) -> dict[str, Upstream]:
        return {name: self.upstream(name) for name in UPSTREAMS}
