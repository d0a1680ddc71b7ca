"""Every relative link and every repository path the documents name exists in the repository."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
DOCUMENTS = sorted([ROOT / "README.md", ROOT / "RELIABILITY.md", *(ROOT / "docs").glob("*.md")])

# Top-level folders that `git clone` brings; generated ones (.data, .venv, build) are not repo paths.
_GENERATED = {"build", ".venv", ".data", ".git"}
ROOT_DIRS = {
    p.name
    for p in ROOT.iterdir()
    if p.is_dir()
    and p.name not in _GENERATED
    and not p.name.endswith(".egg-info")
    and (not p.name.startswith(".") or p.name == ".ci")
}

_LINK = re.compile(r"(?<!!)\[[^\]]*\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)")
_CODE_SPAN = re.compile(r"`([^`\n]+)`")
_FENCE = re.compile(r"^```.*?^```", re.M | re.S)
# A placeholder or pattern is prose, not a path: `services/<name>/`, `/orders/{id}`, `tests/*.py`.
_NOT_A_PATH = re.compile(r"[<>{}*$]|\.\.\.")


def _link_targets(text: str) -> list[str]:
    targets = []
    for target in _LINK.findall(text):
        if re.match(r"^[a-z][a-z0-9+.-]*:", target) or target.startswith("#"):
            continue  # a URL or an anchor in the same document
        targets.append(target.split("#", 1)[0])
    return targets


def _named_paths(text: str) -> list[str]:
    """Tokens of code spans that start with a top-level folder of the repository."""
    paths = []
    for span in _CODE_SPAN.findall(_FENCE.sub("", text)):
        for token in span.split():
            token = token.split("::", 1)[0].rstrip(".,;:)")  # a pytest node id names its file
            head = token.split("/", 1)[0]
            if "/" in token and head in ROOT_DIRS and not _NOT_A_PATH.search(token):
                paths.append(token)
    return paths


def missing_references(document: Path) -> list[str]:
    text = document.read_text(encoding="utf-8")
    missing = [t for t in _link_targets(text) if not (document.parent / t).exists()]
    missing += [p for p in _named_paths(text) if not (ROOT / p).exists()]
    return missing


@pytest.mark.parametrize("document", DOCUMENTS, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_link_and_named_file_exists(document: Path) -> None:
    assert missing_references(document) == []


def test_a_broken_link_and_a_missing_file_are_caught(tmp_path: Path) -> None:
    page = tmp_path / "page.md"
    page.write_text(
        "See [the design](no/such/design.md), `services/kit/no_such_module.py`, "
        "`tests/conftest.py::stack`, `<data dir>/logs/`, `ORDERSAGA_DATA_DIR`, "
        "[the site](https://example.org), [here](#anchor) and `services/<name>/`.\n",
        encoding="utf-8",
    )
    assert missing_references(page) == ["no/such/design.md", "services/kit/no_such_module.py"]
