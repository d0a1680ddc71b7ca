"""What one argon2id hash costs on this machine, for the candidate settings of the users service.

    .venv/bin/python benchmarks/argon2_cost.py [--hashes 20] [--json]

For each candidate (OWASP Password Storage Cheat Sheet's first two argon2id options, RFC 9106's
second recommended option, and the shipped default) it reports milliseconds per hash one at a time
(median and p90 of `--hashes`), and the throughput of a burst spread over `os.cpu_count()` threads
(the users service's default `USERS_PASSWORD_HASH_CONCURRENCY`), i.e. what one users process can
sustain. From that it derives how long 25 sign-ups and 25 logins arriving at once take to clear.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path

from argon2 import PasswordHasher

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from services.users.settings import Settings

PASSWORD = "correct horse battery staple"
BURST = 50  # 25 sign-ups + 25 logins: one argon2 run each


@dataclass
class Candidate:
    name: str
    memory_kib: int
    time_cost: int
    parallelism: int


def candidates() -> list[Candidate]:
    shipped = Settings()
    return [
        Candidate("OWASP option 1 (m=46 MiB, t=1, p=1)", 47104, 1, 1),
        Candidate("OWASP option 2 (m=19 MiB, t=2, p=1)", 19456, 2, 1),
        Candidate("RFC 9106 second option (m=64 MiB, t=3, p=4)", 65536, 3, 4),
        Candidate(
            "shipped default",
            shipped.argon2_memory_cost_kib,
            shipped.argon2_time_cost,
            shipped.argon2_parallelism,
        ),
    ]


def measure(candidate: Candidate, hashes: int, workers: int) -> dict[str, float | int | str]:
    hasher = PasswordHasher(
        time_cost=candidate.time_cost, memory_cost=candidate.memory_kib, parallelism=candidate.parallelism
    )
    hasher.hash(PASSWORD)  # warm the allocator
    single = []
    for _ in range(hashes):
        started = time.perf_counter()
        hasher.hash(PASSWORD)
        single.append((time.perf_counter() - started) * 1000)
    single.sort()
    with ThreadPoolExecutor(max_workers=workers) as pool:
        started = time.perf_counter()
        list(pool.map(hasher.hash, [PASSWORD] * BURST))
        burst_seconds = time.perf_counter() - started
    return {
        **asdict(candidate),
        "ms_per_hash_p50": round(statistics.median(single), 1),
        "ms_per_hash_p90": round(single[int(0.9 * (len(single) - 1))], 1),
        "hashes_per_second": round(BURST / burst_seconds, 1),
        "burst_of_50_seconds": round(burst_seconds, 2),
        "workers": workers,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--hashes", type=int, default=20, help="hashes one at a time per candidate")
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    args = parser.parse_args()
    workers = os.cpu_count() or 1
    load_before = os.getloadavg()[0]
    rows = [measure(candidate, args.hashes, workers) for candidate in candidates()]
    machine = {"cpus": workers, "load_average_before": round(load_before, 2)}
    machine["load_average_after"] = round(os.getloadavg()[0], 2)
    if args.json:
        print(json.dumps({"machine": machine, "results": rows}, indent=2))
        return
    print(f"{workers} CPUs, load average {machine['load_average_before']} -> {machine['load_average_after']}")
    print(f"| setting | ms/hash p50 | p90 | hashes/s on {workers} threads | 25 sign-ups + 25 logins |")
    print("|---|---|---|---|---|")
    for row in rows:
        print(
            f"| {row['name']} | {row['ms_per_hash_p50']} | {row['ms_per_hash_p90']} | "
            f"{row['hashes_per_second']} | {row['burst_of_50_seconds']} s |"
        )


if __name__ == "__main__":
    main()
