"""The README is in the user's order, and every pointer to a section of it (or of CONTRIBUTING.md),
in the docs themselves and in code, error messages and comments, names a section that exists."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from tests.harness import ROOT

DOCS = {name: (ROOT / name).read_text() for name in ("README.md", "CONTRIBUTING.md")}

USER_ORDER = [
    "Quick start",
    "Your own game",
    "The Pis",
    "Operating and troubleshooting",
    "Configuration reference",
]
"""The README's top-level sections, in this order (issue 13)."""

CODE_DIRS = ("bin", "cli", "components", "tools", "tests", "policy", "bench", ".ci", ".github")
CODE_SUFFIXES = {"", ".py", ".sh", ".yml", ".yaml", ".md", ".go"}


def _headings(text: str) -> list[str]:
    """The headings outside code blocks, without their `#`s."""
    headings: list[str] = []
    fenced = False
    for line in text.splitlines():
        if line.startswith("```"):
            fenced = not fenced
        elif not fenced and line.startswith("#"):
            headings.append(line.lstrip("#").strip())
    return headings


HEADINGS = {name: _headings(text) for name, text in DOCS.items()}


def _names(name: str, doc: str) -> bool:
    """Whether `name` is a heading of `doc`, or the start of one ("What the node steps refuse")."""
    name = " ".join(name.split())
    return any(heading == name or heading.startswith(name) for heading in HEADINGS[doc])


def test_the_readme_is_in_the_users_order() -> None:
    top = [line[3:] for line in DOCS["README.md"].splitlines() if line.startswith("## ")]
    assert top == USER_ORDER


def test_contributor_material_is_in_contributing() -> None:
    for section in ("Architecture", "Run the tests", "What a change does", "Pull request previews",
                    "The policy pack", "Benchmark", "Design choices"):  # fmt: skip
        assert section in HEADINGS["CONTRIBUTING.md"]
        assert section not in HEADINGS["README.md"]
    assert "How each part is tested" in HEADINGS["CONTRIBUTING.md"]


_DOC_REFERENCE = re.compile(r"\b[Ss]ee \"([^\"]+)\"( in CONTRIBUTING\.md)?")


@pytest.mark.parametrize("doc", sorted(DOCS))
def test_every_see_in_the_docs_names_a_section(doc: str) -> None:
    missing: list[str] = []
    for match in _DOC_REFERENCE.finditer(DOCS[doc]):
        name, elsewhere = match.groups()
        # CONTRIBUTING.md's quoted names are its own, or the README's (its first paragraph says so).
        targets = ["CONTRIBUTING.md"] if elsewhere else [doc, "README.md"]
        if not any(_names(name, target) for target in targets):
            missing.append(" ".join(name.split()))
    assert not missing, f"{doc} points at sections that do not exist: {missing}"


_CODE_REFERENCE = re.compile(r"\b(README|CONTRIBUTING\.md)[:,] *\"?([A-Z][^)\"]*)", re.S)


def _code_files() -> list[Path]:
    files: list[Path] = []
    for top in CODE_DIRS:
        for path in (ROOT / top).rglob("*"):
            if path.is_file() and path.suffix in CODE_SUFFIXES and ".venv" not in path.parts:
                files.append(path)
    return files


def test_every_pointer_from_code_names_a_section() -> None:
    missing: list[str] = []
    for path in _code_files():
        try:
            text = path.read_text()
        except UnicodeDecodeError:
            continue
        for match in _CODE_REFERENCE.finditer(text):
            doc = "README.md" if match.group(1) == "README" else "CONTRIBUTING.md"
            # A name wrapped over comment lines: drop the next lines' comment markers.
            name = re.sub(r"\n\s*(#|//)\s*", " ", match.group(2))
            if not _names(name, doc):
                missing.append(f"{path.relative_to(ROOT)}: {doc}: {' '.join(name.split())}")
    assert not missing, "pointers to sections that do not exist:\n" + "\n".join(missing)


def test_the_checks_see_a_wrong_pointer() -> None:
    assert not _names("Remove a node", "README.md")
    assert _names("Add or remove a node", "README.md")
    assert _names("What the node steps refuse", "README.md")
    assert not _names("Run the tests", "README.md")
