"""Where each service lives: its app factory, settings class, default port and default URL.

The worker's and the gateway's links (`WORKER_<SERVICE>_URL`, `GATEWAY_<SERVICE>_URL`) default to
`SERVICES[name].url`; each may hold several comma-separated addresses (replicas), spread by
services/kit/transport.Addresses. tests/contract/test_wiring.py checks both sides against this table.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from fastapi import FastAPI

    from services.kit.settings import ServiceSettings


@dataclass(frozen=True)
class ServiceSpec:
    name: str
    port: int

    @property
    def url(self) -> str:
        """Its address on one machine (`ordersaga up`'s default ports): the default of every link to it."""
        return f"http://127.0.0.1:{self.port}"

    @property
    def module(self) -> str:
        return f"services.{self.name}"

    def settings(self, **overrides: Any) -> ServiceSettings:
        module = importlib.import_module(f"{self.module}.settings")
        settings_cls: type[ServiceSettings] = module.Settings
        return settings_cls(**overrides)

    def create_app(self, settings: ServiceSettings | None = None) -> FastAPI:
        module = importlib.import_module(f"{self.module}.app")
        app: FastAPI = module.create_app(settings)
        return app


# The services behind the gateway, which the worker's activities call too.
DATA_SERVICES: tuple[str, ...] = ("users", "inventory", "payments", "orders", "notifications")

SERVICES: dict[str, ServiceSpec] = {
    spec.name: spec
    for spec in (
        ServiceSpec("users", 8001),
        ServiceSpec("inventory", 8002),
        ServiceSpec("payments", 8003),
        ServiceSpec("orders", 8004),
        ServiceSpec("notifications", 8005),
        ServiceSpec("gateway", 8000),
    )
}
