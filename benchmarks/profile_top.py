"""Summarise py-spy's collapsed stacks: the share of samples in each function (inclusive) and in each
frame at the top of the stack (self), for a profile excerpt.

    py-spy record --format raw --rate 200 --duration 30 --pid <service pid> -o inventory.txt
    .venv/bin/python benchmarks/profile_top.py inventory.txt [--top 25] [--idle]

Samples whose top frame is the event loop waiting (select/epoll) are idle and left out unless --idle.
"""

from __future__ import annotations

import argparse
import re
from collections import Counter
from pathlib import Path

# Top frames that mean waiting (py-spy --nonblocking reports a thread blocked in C under its last
# Python frame): the event loop in epoll, aiosqlite's worker thread on its queue, a condition.
_IDLE = (
    "select (selectors.py",
    "_run_once (asyncio/base_events.py",
    "Runner.run (asyncio/runners.py",
    "_connection_worker_thread (aiosqlite/core.py",
    "Condition.wait (threading.py",
    "wait (threading.py",
    "_worker (concurrent/futures/thread.py",
)
_FRAME = re.compile(r"^(?P<name>.+?) \((?P<file>[^:)]+)(?::\d+)?\)$")


def _short(frame: str) -> str:
    match = _FRAME.match(frame.strip())
    if match is None:
        return frame.strip()
    parts = Path(match["file"]).parts
    where = "/".join(parts[parts.index("site-packages") + 1 :] if "site-packages" in parts else parts[-3:])
    return f"{match['name']} ({where})"


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("profile", type=Path)
    parser.add_argument("--top", type=int, default=25)
    parser.add_argument("--idle", action="store_true")
    args = parser.parse_args()
    inclusive: Counter[str] = Counter()
    top: Counter[str] = Counter()
    total = 0
    for line in args.profile.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        frames = [_short(f) for f in stack.split(";") if f.strip()]
        if not frames or (not args.idle and frames[-1].startswith(_IDLE)):
            continue
        n = int(count)
        total += n
        top[frames[-1]] += n
        for frame in set(frames):
            inclusive[frame] += n
    print(f"{total} busy samples")
    print("\ninclusive (a function and what it calls):")
    for frame, n in inclusive.most_common(args.top):
        print(f"  {100 * n / total:5.1f} %  {frame}")
    print("\nself (the frame on top):")
    for frame, n in top.most_common(args.top):
        print(f"  {100 * n / total:5.1f} %  {frame}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
