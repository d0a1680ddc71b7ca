"""What the gateway's verified-token cache saves per authenticated request: an RS256 check of a
token against the key set (services.users.tokens.verify_token, as the gateway calls it) against a
lookup of the remembered claims (services/gateway/auth.py).

    .venv/bin/python benchmarks/token_verification.py [--tokens 2000]
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
import uuid
from pathlib import Path

import httpx
from cryptography.hazmat.primitives.asymmetric import rsa

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from services.gateway.auth import JwksCache
from services.kit.logging import configure_logging
from services.users.tokens import TokenIssuer


def per_call_us(seconds: float, calls: int) -> float:
    return seconds / calls * 1e6


async def measure(count: int) -> tuple[float, float]:
    issuer = TokenIssuer(rsa.generate_private_key(public_exponent=65537, key_size=2048), ttl_seconds=900)
    tokens = [issuer.issue(uuid.uuid4(), "customer").access_token for _ in range(count)]
    document = issuer.jwks()

    def serve_jwks(_: httpx.Request) -> httpx.Response:
        return httpx.Response(200, json=document)

    async with httpx.AsyncClient(transport=httpx.MockTransport(serve_jwks)) as client:
        # The key set is fetched once, as in the gateway; what differs is the per-token work.
        cold = JwksCache(client, "http://users", max_age=300, min_refresh=5, verified_tokens=0)
        warm = JwksCache(client, "http://users", max_age=300, min_refresh=5, verified_tokens=count)
        await cold.verify(tokens[0])
        for token in tokens:  # the warm cache has seen every token once, as after a client's first call
            await warm.verify(token)
        started = time.perf_counter()
        for token in tokens:
            await cold.verify(token)
        checked = time.perf_counter() - started
        started = time.perf_counter()
        for token in tokens:
            await warm.verify(token)
        remembered = time.perf_counter() - started
    return per_call_us(checked, count), per_call_us(remembered, count)


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--tokens", type=int, default=2000)
    args = parser.parse_args()
    configure_logging("WARNING")
    checked, remembered = asyncio.run(measure(args.tokens))
    print(f"signature checked: {checked:.1f} us per request; remembered: {remembered:.1f} us per request")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
