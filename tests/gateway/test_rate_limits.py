"""The gateway's rate limits: the in-memory storage (limits' own, with its sweep of expired counters
throttled, so that a hit costs the same with ten thousand clients as with one), the IETF draft's
header fields, and what happens while Redis is away."""

from __future__ import annotations

import asyncio
import shutil
from pathlib import Path

import pytest
from limits import parse
from limits.aio.strategies import FixedWindowRateLimiter
from prometheus_client import REGISTRY
from structlog.testing import capture_logs

from services.gateway.ratelimit import RateLimits, SweptMemoryStorage
from tests.gateway.conftest import Scripted, in_process_gateway
from tests.support.processes import ManagedProcess, free_port, tcp_open


async def test_counts_are_limits_own_and_a_sweep_runs_at_most_once_an_interval() -> None:
    storage = SweptMemoryStorage()
    storage.SWEEP_INTERVAL_SECONDS = 0.5
    limiter = FixedWindowRateLimiter(storage)
    per_second = parse("3/second")
    for n in range(40):
        assert await limiter.hit(per_second, "anon", f"198.51.100.{n}")
        await asyncio.sleep(0)
    assert [await limiter.hit(per_second, "anon", "192.0.2.1") for _ in range(4)] == [True] * 3 + [False]
    assert storage.sweeps == 1  # the first hit's; upstream would have swept after every one

    await asyncio.sleep(1.1)  # every window above has ended
    assert await limiter.hit(per_second, "anon", "192.0.2.1")  # a fresh window, and a sweep is due
    await asyncio.sleep(0.05)
    assert storage.sweeps == 2
    # The sweep is upstream's own, run through the override: the expired counters are gone.
    assert [key for key in storage.storage if "198.51.100." in key] == []


async def test_the_gateway_counts_in_the_swept_storage_by_default() -> None:
    limits = RateLimits({"anon": "2/minute"})
    assert isinstance(limits.storage, SweptMemoryStorage)
    decisions = [await limits.hit("anon", "203.0.113.9") for _ in range(3)]
    assert [d.allowed for d in decisions if d] == [True, True, False]
    assert decisions[0] is not None and decisions[0].remaining == 1


async def test_answers_name_their_policy_in_the_ietf_draft_syntax() -> None:
    limits = RateLimits({"user": "2/second;5/minute", "anon": "300/minute"})
    first = await limits.hit("user", "user:1")
    assert first is not None
    assert first.headers()["RateLimit-Policy"] == '"user-1";q=2;w=1, "user-2";q=5;w=60'
    assert first.headers()["RateLimit"] == '"user-1";r=1;t=1'  # the limit closest to refusing
    second, third = [await limits.hit("user", "user:1") for _ in range(2)]
    assert second is not None and second.allowed
    assert third is not None and not third.allowed
    assert third.headers()["RateLimit"] == '"user-1";r=0;t=1'
    assert third.headers()["Retry-After"] == "1"
    anon = await limits.hit("anon", "203.0.113.9")
    assert anon is not None
    assert anon.headers() == {"RateLimit-Policy": '"anon";q=300;w=60', "RateLimit": '"anon";r=299;t=60'}


def storage_available() -> float | None:
    return REGISTRY.get_sample_value("gateway_rate_limit_storage_available")


async def test_with_redis_away_limits_hold_per_process_and_the_outage_is_told_once() -> None:
    closed = free_port()  # nothing listens there
    limits = RateLimits({"anon": "3/minute"}, redis_url=f"redis://127.0.0.1:{closed}/0", recheck_seconds=60)
    with capture_logs() as logs:
        decisions = [await limits.hit("anon", "203.0.113.9") for _ in range(5)]
    assert [d is not None and d.allowed for d in decisions] == [True] * 3 + [False] * 2  # never fails open
    assert decisions[-1] is not None and decisions[-1].headers()["RateLimit"].startswith('"anon";r=0;')
    warnings = [entry for entry in logs if entry["event"] == "rate_limit_storage_down"]
    assert len(warnings) == 1 and warnings[0]["log_level"] == "warning"
    assert storage_available() == 0


async def test_through_the_gateway_redis_away_still_refuses_a_burst(scripted: Scripted) -> None:
    closed = free_port()
    async with in_process_gateway(
        inventory_url=scripted.url, redis_url=f"redis://127.0.0.1:{closed}/0", rate_limit_anon="2/minute"
    ) as gw:
        codes = [(await gw.get("/api/v1/products/p-1")).status_code for _ in range(3)]
        metrics = (await gw.get("/metrics")).text
    assert codes == [200, 200, 429]
    assert "gateway_rate_limit_storage_available 0.0" in metrics


async def test_once_redis_is_back_the_counts_are_shared_again(tmp_path: Path) -> None:
    binary = shutil.which("redis-server")
    if binary is None:
        pytest.skip("redis-server is not installed")
    port = free_port()
    url = f"redis://127.0.0.1:{port}/0"
    replica = RateLimits({"anon": "2/minute"}, redis_url=url, recheck_seconds=0.2)
    assert (await replica.hit("anon", "198.51.100.1")) is not None
    assert storage_available() == 0
    argv = [binary, "--port", str(port), "--save", "", "--appendonly", "no", "--dir", str(tmp_path)]
    redis = ManagedProcess("redis", argv, tmp_path / "redis.log", ready=lambda: tcp_open(port))
    redis.start(timeout=20)
    try:
        await asyncio.sleep(0.3)
        with capture_logs() as logs:
            back = await replica.hit("anon", "198.51.100.1")
        assert back is not None and back.allowed and back.remaining == 1  # counted in Redis, afresh
        assert [entry["event"] for entry in logs] == ["rate_limit_storage_restored"]
        assert storage_available() == 1
        other = RateLimits({"anon": "2/minute"}, redis_url=url)
        shared = await other.hit("anon", "198.51.100.1")
        assert shared is not None and shared.remaining == 0  # the other replica counts on from there
        refused = await replica.hit("anon", "198.51.100.1")
        assert refused is not None and not refused.allowed
    finally:
        redis.stop()
