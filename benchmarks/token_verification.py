"""What token checks cost the gateway per authenticated request.

1. The verified-token cache: an RS256 check of a token against the key set
   (services.users.tokens.verify_token, as the gateway calls it) against a lookup of the
   remembered claims (services/gateway/auth.py).
2. The revocation check (`TokenVersions`): asking a real users service process for the user's token
   version (what a gateway without NATS, or with its subscription down, does on every request)
   against a version remembered while subscribed to a real nats-server. Both go through the
   gateway's own pooled client, one request at a time.

    .venv/bin/python benchmarks/token_verification.py [--tokens 2000] [--lookups 1000]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path

import httpx
from cryptography.hazmat.primitives.asymmetric import rsa

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from services.gateway.auth import TokenVersions
from services.kit.logging import configure_logging
from services.kit.tokens import Claims, JwksCache
from services.kit.transport import service_client
from services.users.tokens import TokenIssuer
from tests.support.nats import NatsServer
from tests.support.processes import VENV_BIN, ManagedProcess, free_port, http_ok

INTERNAL_TOKEN = "benchmark-internal-token"


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


def _users_process(directory: Path, nats_url: str) -> tuple[ManagedProcess, str]:
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    env = {
        "ORDERSAGA_INTERNAL_TOKEN": INTERNAL_TOKEN,
        "ORDERSAGA_DATA_DIR": str(directory),
        "NATS_URL": nats_url,
        "USERS_LOG_LEVEL": "WARNING",
        "USERS_DATABASE_URL": f"sqlite+aiosqlite:///{directory / 'users.db'}",
        "USERS_ARGON2_TIME_COST": "1",
        "USERS_ARGON2_MEMORY_COST_KIB": "64",
        "USERS_ARGON2_PARALLELISM": "1",
    }
    argv = [str(VENV_BIN / "ordersaga"), "serve", "users", "--port", str(port)]
    return ManagedProcess("users", argv, directory / "users.log", env, ready=http_ok(url + "/ready")), url


async def _per_check_us(versions: TokenVersions, claims: Claims, count: int) -> tuple[float, float]:
    """(median, mean) microseconds per check, one at a time."""
    await versions.check(claims)  # warm: connection open, or version remembered
    durations = []
    for _ in range(count):
        started = time.perf_counter()
        await versions.check(claims)
        durations.append(time.perf_counter() - started)
    return statistics.median(durations) * 1e6, statistics.fmean(durations) * 1e6


async def measure_revocation_check(count: int) -> tuple[tuple[float, float], tuple[float, float]]:
    with tempfile.TemporaryDirectory(prefix="token-versions-") as tmp:
        directory = Path(tmp)
        nats = NatsServer(directory / "nats").start()
        users, users_url = _users_process(directory, nats.url)
        users.start(timeout=60)
        try:
            async with service_client(httpx.Timeout(5.0)) as client:
                name = f"bench{uuid.uuid4().hex[:8]}"
                body = {"email": f"{name}@example.com", "username": name, "password": "benchmark password"}
                created = await client.post(users_url + "/users", json=body)
                created.raise_for_status()
                claims = Claims(uuid.UUID(created.json()["id"]), "customer", 0, 0, token_version=0)
                asked = TokenVersions(client, users_url, INTERNAL_TOKEN)
                subscribed = TokenVersions(client, users_url, INTERNAL_TOKEN, nats_url=nats.url)
                await subscribed.start()
                deadline = time.monotonic() + 10
                while not subscribed.trusted:
                    if time.monotonic() > deadline:
                        raise RuntimeError("the benchmark's subscription to nats-server never came up")
                    await asyncio.sleep(0.05)
                try:
                    fetched = await _per_check_us(asked, claims, count)
                    remembered = await _per_check_us(subscribed, claims, count)
                    if subscribed.fetches != 1:
                        raise RuntimeError(f"the subscribed cache asked {subscribed.fetches} times, not once")
                finally:
                    await subscribed.aclose()
        finally:
            users.stop()
            nats.stop()
    return fetched, remembered


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--tokens", type=int, default=2000)
    parser.add_argument("--lookups", type=int, default=1000)
    args = parser.parse_args()
    configure_logging("WARNING")
    checked, remembered = asyncio.run(measure(args.tokens))
    print(f"signature checked: {checked:.1f} us per request; remembered: {remembered:.1f} us per request")
    (asked_p50, asked_mean), (kept_p50, kept_mean) = asyncio.run(measure_revocation_check(args.lookups))
    print(
        f"token version asked of the users service: p50 {asked_p50:.0f} us, mean {asked_mean:.0f} us "
        f"per request; remembered while subscribed: p50 {kept_p50:.1f} us, mean {kept_mean:.1f} us"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
