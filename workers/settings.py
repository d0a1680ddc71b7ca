"""Worker settings (`WORKER_*`): where the services are, and the saga policy operators may tune."""

from __future__ import annotations

import dataclasses
import hashlib
from pathlib import Path
from typing import Literal, Self

from pydantic import AliasChoices, Field, model_validator
from pydantic_settings import SettingsConfigDict

import workflows
from services.kit.secrets import SecretGuardedSettings
from services.kit.settings import DEV_INTERNAL_TOKEN
from services.registry import SERVICES
from workflows.contract import REVIEW_THRESHOLD_CENTS, SagaPolicy

# The package as imported, so a worker run from another copy of the code hashes that copy.
WORKFLOWS_PACKAGE = Path(workflows.__file__).resolve().parent


def workflow_code_build_id(package: Path = WORKFLOWS_PACKAGE) -> str:
    """A short hash of the workflow package's sources: changed workflow code is a new worker version."""
    digest = hashlib.sha256()
    for source in sorted(package.rglob("*.py")):
        digest.update(source.relative_to(package).as_posix().encode())
        digest.update(b"\0")
        digest.update(source.read_bytes())
        digest.update(b"\0")
    return digest.hexdigest()[:12]


class WorkerSettings(SecretGuardedSettings):
    model_config = SettingsConfigDict(env_prefix="WORKER_", extra="ignore")

    users_url: str = SERVICES["users"].url
    inventory_url: str = SERVICES["inventory"].url
    payments_url: str = SERVICES["payments"].url
    orders_url: str = SERVICES["orders"].url
    notifications_url: str = SERVICES["notifications"].url
    internal_token: str = Field(
        default=DEV_INTERNAL_TOKEN,
        validation_alias=AliasChoices("ORDERSAGA_INTERNAL_TOKEN", "internal_token"),
    )

    review_threshold_cents: int = Field(default=REVIEW_THRESHOLD_CENTS, ge=0)
    review_timeout_seconds: float = Field(default=24 * 3600, gt=0)
    payment_max_attempts: int = Field(default=6, ge=1)
    payment_initial_interval_seconds: float = Field(default=1.0, gt=0)
    payment_budget_seconds: float = Field(default=120.0, gt=0)
    # How long the payments service holds an authorisation (PAYMENTS_AUTHORIZATION_VALIDITY_SECONDS,
    # read here too): a review must end before the hold does, or the capture after it is refused.
    authorization_validity_seconds: float = Field(
        default=7 * 24 * 3600,
        gt=0,
        validation_alias=AliasChoices(
            "WORKER_AUTHORIZATION_VALIDITY_SECONDS",
            "PAYMENTS_AUTHORIZATION_VALIDITY_SECONDS",
            "authorization_validity_seconds",
        ),
    )
    # Each compensation is retried for this long; one still failing then is marked compensation_failed
    # (the others still run) until an admin retries it: POST /orders/{id}/compensations/retry.
    compensation_budget_seconds: float = Field(default=600.0, gt=0)
    # The reconciler's sweep (a Temporal Schedule): orders whose saga closed early are repaired
    # within two sweeps. 0 turns this worker's schedule management off.
    reconcile_interval_seconds: float = Field(default=30.0, ge=0)
    # Run the short service calls (order records, customer check, stock hold, notice) as local
    # activities: 32 history events instead of 57 (19 and 49 before authorisations) and a quarter less
    # CPU per order, measured in benchmarks/README.md. False gives every call its own activity task.
    local_activities: bool = True
    # Run workflow code in the SDK's sandbox, which refuses a non-deterministic call (the clock, I/O,
    # random) made from workflow code. Off saves the sandbox's share of the worker's CPU, measured in
    # benchmarks/README.md; the workflow tests and the history replays always run sandboxed.
    sandbox: bool = True

    # Worker Deployment Versioning: a saga runs to its end on the build it started on (PINNED), so a
    # new workflow version needs no `workflow.patched` unless running sagas must pick it up.
    # "off" polls unversioned, for a Temporal without the feature (or the time-skipping test server).
    versioning: Literal["on", "off"] = "on"
    deployment_name: str = "ordersaga-worker"
    # Empty: derived from the workflows/ sources (workflow_code_build_id). Images set it to their tag.
    build_id: str = ""
    # "first": a worker whose deployment has no current version yet makes its own version current (a
    # fresh install needs no operator step); later versions wait for `ordersaga deploy promote`.
    # "always" suits a single-developer loop; "never" leaves every promotion to the operator.
    promote: Literal["first", "always", "never"] = "first"

    http_timeout_seconds: float = 10.0
    max_concurrent_activities: int = 200
    max_concurrent_workflow_tasks: int = 100
    graceful_shutdown_seconds: float = 10.0
    log_level: str = "INFO"
    # /health, /ready and /metrics for probes and scraping; off unless a port is set (9464 in containers).
    metrics_port: int | None = None
    metrics_host: str = "0.0.0.0"
    # The Temporal SDK's own metrics (task latencies, slots, polls) and the workflow's business metrics,
    # served by the SDK runtime's Prometheus endpoint; off unless a port is set (9465 in containers).
    sdk_metrics_port: int | None = None

    @model_validator(mode="after")
    def _review_ends_before_the_hold(self) -> Self:
        if self.review_timeout_seconds >= self.authorization_validity_seconds:
            raise ValueError(
                f"WORKER_REVIEW_TIMEOUT_SECONDS ({self.review_timeout_seconds:g} s) must be shorter than "
                f"the authorisation's validity ({self.authorization_validity_seconds:g} s): an order "
                "approved after its hold expired could not be captured"
            )
        return self

    def url_of(self, service: str) -> str:
        """The link to a service of services/registry.py: `WORKER_<SERVICE>_URL`, one or several addresses."""
        url: str = getattr(self, f"{service}_url")
        return url

    def worker_build_id(self) -> str:
        return self.build_id or workflow_code_build_id()

    def saga_policy(self) -> SagaPolicy:
        """The contract's SagaPolicy from the settings of the same names (each validated above)."""
        names = [field.name for field in dataclasses.fields(SagaPolicy)]
        return SagaPolicy(**{name: getattr(self, name) for name in names})
