"""How the side-by-side benchmarks take their trees in turn and keep their figures."""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any


def alternating(trees: Sequence[Path], rounds: int) -> Iterator[tuple[int, Path]]:
    """Every tree once per round, each round in the reverse order of the one before, so that no tree
    always runs first on a machine that is warming up or cooling down."""
    for round_ in range(rounds):
        for tree in trees if round_ % 2 == 0 else list(reversed(trees)):
            yield round_, tree


class Results:
    """Each figure printed as a JSON line as it comes (a long run shows progress and survives a
    crash in its log), and all of them written to `--json` at the end."""

    def __init__(self) -> None:
        self.entries: list[dict[str, Any]] = []

    def add(self, entry: dict[str, Any]) -> None:
        print(json.dumps(entry), flush=True)
        self.entries.append(entry)

    def write(self, path: Path | None) -> None:
        if path is not None:
            path.write_text(json.dumps(self.entries, indent=2) + "\n")
