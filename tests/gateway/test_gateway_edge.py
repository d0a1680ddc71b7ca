"""The gateway's edge behaviour, in-process against a scripted upstream or the stack's services:
headers, timeouts, the breaker's notion of failure, key rotation, rate limits, body size."""

from __future__ import annotations

import asyncio
import re
import shutil
import time
import uuid
from collections.abc import Iterator

import httpx
import pytest
from cryptography.hazmat.primitives.asymmetric import rsa

from services.gateway.proxy import RelayInterrupted
from services.gateway.ratelimit import RateLimits
from services.users.tokens import TokenIssuer
from tests.gateway.conftest import Scripted, Tokens, gateway_env, in_process_gateway
from tests.support.identity import INTERNAL_TOKEN
from tests.support.processes import VENV_BIN, ManagedProcess, free_port, http_ok, tcp_open
from tests.support.stack import Stack


def issuer() -> TokenIssuer:
    return TokenIssuer(rsa.generate_private_key(public_exponent=65537, key_size=2048), 900)


async def test_headers_are_rewritten_for_the_upstream(scripted: Scripted) -> None:
    key = issuer()
    scripted.jwks = key.jwks()
    user = uuid.uuid4()
    token = key.issue(user, "customer").access_token
    async with in_process_gateway(users_url=scripted.url, payments_url=scripted.url) as gw:
        response = await gw.get(
            "/api/v1/payments/p-1?expand=all&x=%2F",
            headers={
                "Authorization": f"Bearer {token}",
                "X-Ordersaga-Role": "admin",  # a spoofed identity ...
                "X-Ordersaga-Internal-Token": "guess",
                "X-Forwarded-For": "10.9.9.9",
                "Connection": "x-private",
                "X-Private": "hop-by-hop by Connection",
                "Keep-Alive": "timeout=5",
                "X-Request-ID": "trace-edge-1",
                "Accept": "application/json",
            },
        )
    assert response.status_code == 200, response.text
    seen = response.json()
    headers: dict[str, list[str]] = {}
    for name, value in seen["headers"]:
        headers.setdefault(name.lower(), []).append(value)
    assert seen["path"] == "/payments/p-1" and seen["query"] == "expand=all&x=%2F"
    # ... is replaced by the verified one, with the internal credential.
    assert headers["x-ordersaga-role"] == ["customer"]
    assert headers["x-ordersaga-user-id"] == [str(user)]
    assert headers["x-ordersaga-internal-token"] == [INTERNAL_TOKEN]
    assert headers["x-forwarded-for"] == ["203.0.113.7"]
    assert headers["x-forwarded-proto"] == ["http"]
    assert headers["x-forwarded-host"] == ["gateway.test"]
    assert headers["x-request-id"] == ["trace-edge-1"]
    assert headers["accept"] == ["application/json"]
    for gone in ("authorization", "x-private", "keep-alive"):
        assert gone not in headers, gone
    # The upstream's hop-by-hop headers stop here too.
    assert "x-upstream-secret" not in response.headers
    assert response.headers["x-request-id"] == "trace-edge-1"
    assert response.headers["ratelimit-policy"] == '"user";q=1200;w=60'
    assert re.fullmatch(r'"user";r=1199;t=\d+', response.headers["ratelimit"])


async def test_a_slow_upstream_is_a_504_within_its_timeout(scripted: Scripted) -> None:
    async with in_process_gateway(inventory_url=scripted.url, inventory_timeout=0.5) as gw:
        started = time.monotonic()
        response = await gw.get("/api/v1/products/sleep-3")
        elapsed = time.monotonic() - started
    assert response.status_code == 504
    assert response.json()["code"] == "upstream_timeout"
    assert 0.5 <= elapsed < 0.9, elapsed  # not retried: one timeout, not three


async def test_only_5xx_opens_the_breaker_and_it_half_opens(scripted: Scripted) -> None:
    async with in_process_gateway(
        inventory_url=scripted.url, breaker_threshold=3, breaker_cooldown_seconds=1, inventory_retries=0
    ) as gw:
        for _ in range(5):
            assert (await gw.get("/api/v1/products/status-404")).status_code == 404
        assert (await gw.get("/api/v1/products/ok")).status_code == 200  # still closed
        for _ in range(3):
            failed = await gw.get("/api/v1/products/status-500")
            assert failed.status_code == 500  # the upstream's own answer is relayed
        scripted.seen.clear()
        refused = await gw.get("/api/v1/products/ok")
        assert refused.status_code == 503 and refused.json()["code"] == "upstream_unavailable"
        assert refused.headers["retry-after"] == "1"
        assert scripted.seen == []  # refused without calling
        await asyncio.sleep(1.1)
        assert (await gw.get("/api/v1/products/ok")).status_code == 200  # half-open, then closed
        assert (await gw.get("/api/v1/products/ok")).status_code == 200


async def test_idempotent_calls_are_retried_and_posts_elsewhere_than_orders_are_not(
    scripted: Scripted,
) -> None:
    key = issuer()
    scripted.jwks = key.jwks()
    auth = {"Authorization": f"Bearer {key.issue(uuid.uuid4(), 'customer').access_token}"}
    upstreams = {f"{name}_url": scripted.url for name in ("users", "inventory", "orders")}
    async with in_process_gateway(**upstreams, breaker_threshold=50, retry_backoff_seconds=0) as gw:
        scripted.seen.clear()
        assert (await gw.get("/api/v1/products/status-503")).status_code == 503
        assert len(scripted.seen) == 3  # 1 + 2 retries
        scripted.seen.clear()
        plain = await gw.post("/api/v1/orders/status-503/cancel", headers=auth, content=b'{"a":1}')
        assert plain.status_code == 503
        assert len(scripted.seen) == 1
        scripted.seen.clear()
        # The orders service honours Idempotency-Key on POST /orders only: a key elsewhere changes nothing.
        keyed = await gw.post(
            "/api/v1/orders/status-503/cancel", headers=auth | {"Idempotency-Key": "k1"}, content=b'{"a":1}'
        )
        assert keyed.status_code == 503
        assert len(scripted.seen) == 1


async def test_a_rotated_key_is_fetched_once_and_unknown_kids_do_not_flood(scripted: Scripted) -> None:
    old, new, unknown = issuer(), issuer(), issuer()
    scripted.jwks = old.jwks()
    async with in_process_gateway(users_url=scripted.url, jwks_min_refresh_seconds=60) as gw:
        user = uuid.uuid4()
        path = f"/api/v1/users/{user}"

        async def call(key: TokenIssuer) -> int:
            token = key.issue(user, "customer").access_token
            return (await gw.get(path, headers={"Authorization": f"Bearer {token}"})).status_code

        scripted.jwks_fetches = 0
        assert await call(old) == 200
        assert await call(old) == 200
        assert scripted.jwks_fetches == 1  # cached
        scripted.jwks = new.jwks()  # the users service rotated its key
        assert await call(new) == 200
        assert scripted.jwks_fetches == 2
        # The old key is gone from the key set: its tokens are refused, remembered as verified or not.
        assert await call(old) == 401
        for _ in range(5):
            assert await call(unknown) == 401
        assert scripted.jwks_fetches == 2  # refetches are rate-limited


async def test_a_remembered_token_is_exactly_the_verified_one(scripted: Scripted) -> None:
    key = issuer()
    scripted.jwks = key.jwks()
    user = uuid.uuid4()
    async with in_process_gateway(users_url=scripted.url) as gw:
        token = key.issue(user, "customer").access_token
        path = f"/api/v1/users/{user}"
        assert (await gw.get(path, headers={"Authorization": f"Bearer {token}"})).status_code == 200
        head, payload, signature = token.split(".")
        forged = ".".join([head, payload, signature[:-4] + ("AAAA" if signature[-4:] != "AAAA" else "BBBB")])
        admin = key.issue(user, "admin").access_token.split(".")[1]
        for altered in (forged, ".".join([head, admin, signature])):
            answer = await gw.get(path, headers={"Authorization": f"Bearer {altered}"})
            assert answer.status_code == 401, altered
        assert (await gw.get(path, headers={"Authorization": f"Bearer {token}"})).status_code == 200


async def test_a_burst_over_the_limit_gets_429_and_recovers(stack: Stack, tokens: Tokens) -> None:
    async with in_process_gateway(
        inventory_url=stack.url("inventory"),
        users_url=stack.url("users"),
        rate_limit_anon="5/2second",
        rate_limit_user="3/2second",
    ) as gw:
        answers = [await gw.get("/api/v1/products") for _ in range(7)]
        assert [a.status_code for a in answers] == [200] * 5 + [429] * 2
        assert [a.headers["ratelimit"].split(";")[:2] for a in answers[:5]] == [
            ['"anon"', f"r={n}"] for n in (4, 3, 2, 1, 0)
        ]
        refused = answers[5]
        assert refused.json()["code"] == "rate_limited"
        assert refused.headers["ratelimit-policy"] == '"anon";q=5;w=2'
        retry_after = int(refused.headers["retry-after"])
        assert 1 <= retry_after <= 2
        assert refused.headers["ratelimit"] == f'"anon";r=0;t={retry_after}'
        # A user has their own bucket, not the exhausted one of their IP.
        auth = tokens.bearer("customer")
        assert (await gw.get("/api/v1/products", headers=auth)).status_code == 200
        await asyncio.sleep(retry_after + 0.1)
        assert (await gw.get("/api/v1/products")).status_code == 200


@pytest.mark.parametrize("kind", ["bytes", "chunks"])
@pytest.mark.parametrize("size", [10, 64 * 1024, 64 * 1024 + 1, 3 * 1024 * 1024 + 7])
async def test_answers_of_any_size_arrive_whole(scripted: Scripted, kind: str, size: int) -> None:
    async with in_process_gateway(inventory_url=scripted.url) as gw:
        response = await gw.get(f"/api/v1/products/{kind}-{size}")
        head = await gw.head(f"/api/v1/products/{kind}-{size}")
    assert response.status_code == 200
    assert response.content == bytes(n % 251 for n in range(size))
    assert response.headers["content-type"] == "application/octet-stream"
    assert head.status_code == 200 and head.content == b""


async def test_an_answer_cut_off_upstream_is_never_passed_off_as_whole(scripted: Scripted) -> None:
    async with in_process_gateway(inventory_url=scripted.url, breaker_threshold=50) as gw:
        # A small answer is read whole before its head goes out, so the gateway can still say so.
        small = await gw.get("/api/v1/products/cut-1000")
        assert small.status_code == 502
        assert small.json()["code"] == "upstream_unreachable"
        # A large one is on its way already: the app raises, and its server drops the connection
        # (in process, the ASGI transport hands the error to the client instead).
        with pytest.raises(RelayInterrupted):
            await gw.get(f"/api/v1/products/cut-{1024 * 1024}")


@pytest.mark.parametrize("trusted_proxies", ["", "127.0.0.1"])
async def test_a_client_picks_its_rate_limit_bucket_only_through_a_trusted_proxy(
    stack: Stack, trusted_proxies: str
) -> None:
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    env = gateway_env(stack, GATEWAY_RATE_LIMIT_ANON="3/minute", GATEWAY_TRUSTED_PROXIES=trusted_proxies)
    process = ManagedProcess(
        "gateway-forwarded",
        [str(VENV_BIN / "ordersaga"), "serve", "gateway", "--port", str(port)],
        stack.directory / f"gateway-forwarded-{port}.log",
        env,
        ready=http_ok(url + "/health"),
    )
    process.start(timeout=60)
    try:
        async with httpx.AsyncClient(base_url=url + "/api/v1", timeout=30) as api:
            claims = [{"X-Forwarded-For": f"198.51.100.{n}"} for n in range(4)]
            codes = [(await api.get("/products", headers=claim)).status_code for claim in claims]
    finally:
        process.stop()
    if trusted_proxies:
        assert codes == [200] * 4  # the proxy vouches for four clients: four buckets
    else:
        assert codes == [200] * 3 + [429]  # one peer, one bucket, whoever it claims to be


async def test_an_oversized_body_is_413(scripted: Scripted) -> None:
    async with in_process_gateway(users_url=scripted.url) as gw:
        response = await gw.post("/api/v1/users", content=b"x" * (1024 * 1024 + 1))
    assert response.status_code == 413
    assert response.json()["code"] == "payload_too_large"


@pytest.fixture(scope="module")
def redis_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    binary = shutil.which("redis-server")
    if binary is None:
        pytest.skip("redis-server is not installed")
    port = free_port()
    directory = tmp_path_factory.mktemp("redis")
    argv = [binary, "--port", str(port), "--save", "", "--appendonly", "no", "--dir", str(directory)]
    process = ManagedProcess("redis", argv, directory / "redis.log", ready=lambda: tcp_open(port))
    process.start(timeout=20)
    yield f"redis://127.0.0.1:{port}/0"
    process.stop()


async def test_replicas_share_limits_through_redis(redis_url: str) -> None:
    policies = {"anon": "4/minute"}
    replica_a = RateLimits(policies, redis_url=redis_url)
    replica_b = RateLimits(policies, redis_url=redis_url)
    client = f"198.51.100.{uuid.uuid4().int % 250}"
    decisions = [await (replica_a if n % 2 else replica_b).hit("anon", client) for n in range(5)]
    assert [d.allowed for d in decisions if d] == [True, True, True, True, False]
    assert await replica_a.check()
