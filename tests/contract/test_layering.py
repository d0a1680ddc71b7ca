"""No service imports another: each talks to the others over HTTP or NATS, and shares only the kit,
the registry and the saga's contract. The kit and the workflows import no service."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SERVICES = ROOT / "services"
SHARED = frozenset({"kit", "registry"})
PACKAGES = sorted(p.name for p in SERVICES.iterdir() if (p / "__init__.py").exists() and p.name not in SHARED)


def imported_modules(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(), str(path))
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
            found |= {f"{node.module}.{alias.name}" for alias in node.names}
    return found


def services_imported(directory: Path) -> dict[str, set[str]]:
    """module path -> the services (packages under services/) it imports."""
    found: dict[str, set[str]] = {}
    for path in sorted(directory.rglob("*.py")):
        names = {
            module.split(".")[1]
            for module in imported_modules(path)
            if module.startswith("services.") and len(module.split(".")) > 1
        }
        names = {name for name in names if name in PACKAGES}
        if names:
            found[str(path.relative_to(ROOT))] = names
    return found


@pytest.mark.parametrize("service", PACKAGES)
def test_a_service_imports_no_other_service(service: str) -> None:
    others = {module: names - {service} for module, names in services_imported(SERVICES / service).items()}
    assert {module: names for module, names in others.items() if names} == {}


@pytest.mark.parametrize("layer", ["services/kit", "workflows", "activities"])
def test_the_lower_layers_import_no_service(layer: str) -> None:
    assert services_imported(ROOT / layer) == {}


def test_the_check_sees_an_import_of_another_service(tmp_path: Path) -> None:
    module = tmp_path / "m.py"
    module.write_text("from services.users.tokens import verify_token\nimport services.orders.domain\n")
    assert {name.split(".")[1] for name in imported_modules(module) if name.startswith("services.")} >= {
        "users",
        "orders",
    }
