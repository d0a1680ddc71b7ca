"""What a rate-limit hit costs in the gateway's in-memory storage as the number of clients grows,
against limits' own async memory storage, in the gateway's fixed-window policy.

    .venv/bin/python benchmarks/rate_limits.py [--hits 2000] [--clients 1,1000,10000]

Each run first gives every client a counter (as that many callers in the last minute would), then
times hits from one client with a turn of the event loop between them, as between requests.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from limits import parse
from limits.aio.storage import MemoryStorage, Storage
from limits.aio.strategies import FixedWindowRateLimiter

from services.gateway.ratelimit import SweptMemoryStorage


async def microseconds_per_hit(storage: Storage, clients: int, hits: int) -> float:
    limiter = FixedWindowRateLimiter(storage)
    limit = parse("1000000/minute")
    for n in range(clients):
        await limiter.hit(limit, "anon", f"10.{n >> 16 & 255}.{n >> 8 & 255}.{n & 255}")
    started = time.perf_counter()
    for _ in range(hits):
        await limiter.hit(limit, "anon", "192.0.2.1")
        await limiter.get_window_stats(limit, "anon", "192.0.2.1")
        await asyncio.sleep(0)  # a pending sweep runs here, as it would between two requests
    return (time.perf_counter() - started) / hits * 1e6


async def measure(clients: list[int], hits: int) -> None:
    print(f"{'clients':>8} {'limits MemoryStorage':>22} {'SweptMemoryStorage':>20}")
    for count in clients:
        upstream = await microseconds_per_hit(MemoryStorage(), count, hits)
        swept = await microseconds_per_hit(SweptMemoryStorage(), count, hits)
        print(f"{count:>8} {upstream:>19.1f} us {swept:>17.1f} us")


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--hits", type=int, default=2000)
    parser.add_argument("--clients", default="1,1000,10000")
    args = parser.parse_args()
    asyncio.run(measure([int(n) for n in args.clients.split(",")], args.hits))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
