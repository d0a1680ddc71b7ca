"""Inventory settings, read from `INVENTORY_*` environment variables."""

from __future__ import annotations

from pydantic import Field
from pydantic_settings import SettingsConfigDict

from services.kit.settings import ServiceSettings


class Settings(ServiceSettings):
    model_config = SettingsConfigDict(env_prefix="INVENTORY_", extra="ignore")

    service_name: str = "inventory"
    port: int = 8002
    # `stock.low` is emitted when a product's available units drop below this many.
    low_stock_threshold: int = Field(default=5, ge=0)
