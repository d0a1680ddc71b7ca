"""What one argon2id hash costs on this machine, for the candidate settings of the users service.

    .venv/bin/python benchmarks/argon2_cost.py [--hashes 40] [--rounds 4] [--json]

For each candidate (the five argon2id configurations of OWASP's Password Storage Cheat Sheet,
RFC 9106's second recommended option, which was the default before, and the shipped one) it reports
milliseconds per hash one at a time (median and p90 of `--hashes`), and the throughput of a burst of
50 hashes over `os.cpu_count()` threads (the default `USERS_PASSWORD_HASH_CONCURRENCY`): what one
users process sustains, and so how long 25 sign-ups and 25 logins arriving at once take to clear
(the median of `--rounds` bursts). The candidates take turns, so drift on the machine hits them alike.
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
    listed = [
        # The cheat sheet's five argon2id configurations, which it rates as equally strong.
        Candidate("OWASP m=46 MiB, t=1, p=1", 47104, 1, 1),
        Candidate("OWASP m=19 MiB, t=2, p=1 (its headline minimum)", 19456, 2, 1),
        Candidate("OWASP m=12 MiB, t=3, p=1", 12288, 3, 1),
        Candidate("OWASP m=9 MiB, t=4, p=1", 9216, 4, 1),
        Candidate("OWASP m=7 MiB, t=5, p=1", 7168, 5, 1),
        Candidate("RFC 9106 second option (m=64 MiB, t=3, p=4), the previous default", 65536, 3, 4),
    ]
    shipped = Settings()
    params = (shipped.argon2_memory_cost_kib, shipped.argon2_time_cost, shipped.argon2_parallelism)
    for candidate in listed:
        if (candidate.memory_kib, candidate.time_cost, candidate.parallelism) == params:
            candidate.name += " **shipped**"
            return listed
    return [*listed, Candidate("shipped", *params)]


def hasher_of(candidate: Candidate) -> PasswordHasher:
    return PasswordHasher(
        time_cost=candidate.time_cost, memory_cost=candidate.memory_kib, parallelism=candidate.parallelism
    )


def one_at_a_time(hasher: PasswordHasher, count: int) -> list[float]:
    samples = []
    for _ in range(count):
        started = time.perf_counter()
        hasher.hash(PASSWORD)
        samples.append((time.perf_counter() - started) * 1000)
    return samples


def burst_seconds(hasher: PasswordHasher, pool: ThreadPoolExecutor) -> float:
    started = time.perf_counter()
    list(pool.map(hasher.hash, [PASSWORD] * BURST))
    return time.perf_counter() - started


def measure(hashes: int, rounds: int, workers: int) -> list[dict[str, float | int | str]]:
    """Every candidate in turn, `rounds` times over, so that whatever else the machine does meanwhile
    hits them all alike; the medians are reported."""
    listed = candidates()
    hashers = [hasher_of(candidate) for candidate in listed]
    for hasher in hashers:
        hasher.hash(PASSWORD)  # warm the allocator
    single: list[list[float]] = [[] for _ in listed]
    bursts: list[list[float]] = [[] for _ in listed]
    with ThreadPoolExecutor(max_workers=workers) as pool:
        for _ in range(rounds):
            for n, hasher in enumerate(hashers):
                single[n] += one_at_a_time(hasher, max(1, hashes // rounds))
                bursts[n].append(burst_seconds(hasher, pool))
    rows: list[dict[str, float | int | str]] = []
    for candidate, samples, seconds in zip(listed, single, bursts, strict=True):
        samples.sort()
        burst = statistics.median(seconds)
        rows.append(
            {
                **asdict(candidate),
                "ms_per_hash_p50": round(statistics.median(samples), 1),
                "ms_per_hash_p90": round(samples[int(0.9 * (len(samples) - 1))], 1),
                "hashes_per_second": round(BURST / burst, 1),
                "burst_of_50_seconds": round(burst, 2),
                "workers": workers,
            }
        )
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--hashes", type=int, default=40, help="hashes one at a time per candidate")
    parser.add_argument("--rounds", type=int, default=4, help="turns through the candidates")
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    args = parser.parse_args()
    workers = os.cpu_count() or 1
    load_before = os.getloadavg()[0]
    rows = measure(args.hashes, args.rounds, workers)
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
