"""The compatibility tables name the tests that prove each row: those tests must exist.

A renamed or deleted test would otherwise leave a row claiming a proof that
is gone. Names that follow a ``path::test`` on the same table cell
(``test_a``, ``test_b``) belong to the same file.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", ROOT / "docs" / "compatibility.md"]
REFERENCE = re.compile(r"`(tests/[\w/]+\.py)(?:::(\w+)(?:\[[^\]]*\])?)?`")
BARE = re.compile(r"`(test_\w+)`")


def functions_in(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    return {
        node.name
        for node in ast.walk(tree)
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef))
    }


def references(page: Path) -> list[tuple[str, str | None]]:
    found: list[tuple[str, str | None]] = []
    for line in page.read_text().splitlines():
        if not line.startswith("|"):
            continue
        for cell in line.split("|"):
            file = None
            for token in re.finditer(rf"{REFERENCE.pattern}|{BARE.pattern}", cell):
                if token.group(1):
                    file = token.group(1)
                    found.append((file, token.group(2)))
                elif file is not None:
                    found.append((file, token.group(3)))
    return found


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.name)
def test_every_named_test_exists(page: Path) -> None:
    refs = references(page)
    missing = [
        f"{file}::{name}" if name else file
        for file, name in refs
        if not (ROOT / file).is_file() or (name and name not in functions_in(ROOT / file))
    ]

    assert len(refs) >= 20  # the tables are there and were read
    assert missing == []
