"""The gateway process fixtures, shared with the gateway tests."""

from tests.gateway.conftest import api, gateway, tokens

__all__ = ["api", "gateway", "tokens"]
