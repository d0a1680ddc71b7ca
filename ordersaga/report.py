"""The tables the operator commands print at the end of a run."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from rich.table import Table


def measures_table(
    title: str,
    report: Mapping[str, Any],
    keys: Iterable[str],
    counts: Mapping[str, Mapping[str, Any]] = {},
) -> Table:
    """`keys` of `report` one per row, then each counter as `<prefix> <name>` rows, sorted by name."""
    table = Table(title=title)
    table.add_column("measure")
    table.add_column("value", justify="right")
    for key in keys:
        table.add_row(key.replace("_", " "), str(report[key]))
    for prefix, counter in counts.items():
        for name, count in sorted(counter.items()):
            table.add_row(f"{prefix} {name}", str(count))
    return table
