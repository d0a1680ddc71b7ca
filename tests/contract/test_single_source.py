"""The saga's contract (workflows/contract.py) is the only place its facts are declared.

A second declaration fails here: a module- or class-level name bound to a step name, a cancel
reason, the workflow-id prefix or a search-attribute name; a tuple, list, set, enum or mapping onto
two or more of them and nothing else; and, outside the tests, the prefix or a search-attribute name
written out at all. Uses of the vocabulary in expressions (`StepFailed("review_timeout", ...)`, an
activity's name) are not declarations; tests may still spell out an observable value
(`f"order-{id}"`) as an expectation.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import pytest

from workflows.contract import CANCEL_REASONS, SEARCH_ATTRIBUTES, STEP_NAMES, WORKFLOW_ID_PREFIX

ROOT = Path(__file__).resolve().parents[2]
CONTRACT = ROOT / "workflows" / "contract.py"
SOURCES = ("workflows", "activities", "workers", "services", "ordersaga", "tests", "benchmarks", "tools")
SEARCH_ATTRIBUTE_NAMES = frozenset(key.name for key in SEARCH_ATTRIBUTES)
VOCABULARY = frozenset(STEP_NAMES) | frozenset(CANCEL_REASONS) | SEARCH_ATTRIBUTE_NAMES | {WORKFLOW_ID_PREFIX}
# Literal anywhere outside the tests: the prefix and the attribute names (alone or as `Name=Keyword`).
NEVER_SPELLED = frozenset({WORKFLOW_ID_PREFIX}) | SEARCH_ATTRIBUTE_NAMES


def python_files() -> list[Path]:
    files = [path for top in SOURCES for path in (ROOT / top).rglob("*.py") if (ROOT / top).exists()]
    return sorted(p for p in files if p != CONTRACT and "histories" not in p.parts and ".venv" not in p.parts)


def strings(node: ast.AST) -> Iterator[str]:
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        yield node.value


def declarations(tree: ast.Module) -> Iterator[tuple[int, str]]:
    """(line, what) for each declaration of the vocabulary at module or class level."""
    scopes: list[list[ast.stmt]] = [tree.body]
    scopes += [node.body for node in ast.walk(tree) if isinstance(node, ast.ClassDef)]
    for body in scopes:
        for statement in body:
            value = None
            if isinstance(statement, ast.Assign | ast.AnnAssign) and statement.value is not None:
                value = statement.value
            if value is None:
                continue
            single = [s for s in strings(value) if s in VOCABULARY]
            if single:
                yield statement.lineno, f"a name bound to {single[0]!r}"
            # A list of the vocabulary (not a list of test cases that happen to share a name or two).
            elements = value.elts if isinstance(value, ast.Tuple | ast.List | ast.Set) else []
            elements = list(value.values) if isinstance(value, ast.Dict) else elements
            texts = [s for element in elements for s in strings(element)]
            if len(texts) >= 2 and set(texts) <= VOCABULARY:
                yield statement.lineno, f"a collection of {texts[:3]}..."


def spelled(tree: ast.Module) -> Iterator[tuple[int, str]]:
    for node in ast.walk(tree):
        for text in strings(node):
            name = text.split("=", 1)[0]
            if text == WORKFLOW_ID_PREFIX or (
                name in SEARCH_ATTRIBUTE_NAMES and text in (name, f"{name}=Keyword")
            ):
                yield getattr(node, "lineno", 0), f"{text!r} written out"
        if isinstance(node, ast.JoinedStr):
            head = node.values[0] if node.values else None
            if isinstance(head, ast.Constant) and str(head.value) == WORKFLOW_ID_PREFIX:
                yield node.lineno, "an f-string building a workflow id"


def findings() -> list[str]:
    found: list[str] = []
    for path in python_files():
        tree = ast.parse(path.read_text(), str(path))
        relative = path.relative_to(ROOT)
        found += [f"{relative}:{line}: {what}" for line, what in declarations(tree)]
        if relative.parts[0] != "tests":
            found += [f"{relative}:{line}: {what}" for line, what in spelled(tree)]
    return found


def test_no_second_declaration_of_the_contract_anywhere_in_the_tree() -> None:
    assert findings() == []


@pytest.mark.parametrize(
    "source",
    [
        'CONFIRM_STEP = "confirm_order"',
        'REASONS = ("out_of_stock", "payment_declined")',
        'class Reason:\n    TIMEOUT = "review_timeout"',
        'REFUSALS = {"declined": "payment_declined", "expired": "payment_failed"}',
        'def f(i):\n    return "order-" + i',
        'def f(i):\n    return f"order-{i}"',
        'KEY = "CustomerId"',
        'ARG = "OrderStatus=Keyword"',
    ],
)
def test_the_guard_catches_a_second_declaration(source: str) -> None:
    tree = ast.parse(source)
    assert [*declarations(tree), *spelled(tree)], source
