"""Print the project's run-time requirements with every `>=` floor turned into `==`.

`make check-floors` installs that set (pip resolves the indirect ones) and runs the suites that
exercise each library, so a floor in pyproject.toml is a version the code has been run on.
"""

from __future__ import annotations

import re
import sys
import tomllib
from pathlib import Path

FLOOR = re.compile(r"^(?P<name>[A-Za-z0-9_.\-]+(?:\[[^\]]+\])?)\s*>=\s*(?P<version>[^,;\s]+)")


def floors(pyproject: Path) -> list[str]:
    requirements = tomllib.loads(pyproject.read_text())["project"]["dependencies"]
    pinned = []
    for requirement in requirements:
        match = FLOOR.match(requirement)
        if match is None:
            raise SystemExit(f"direct_floors: {requirement!r} has no >= floor")
        pinned.append(f"{match['name']}=={match['version']}")
    return pinned


if __name__ == "__main__":
    print("\n".join(floors(Path(sys.argv[1] if len(sys.argv) > 1 else "pyproject.toml"))))
