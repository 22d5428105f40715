"""docs/architecture.md's import order is the code's: every import goes down its table.

The table lists each top-level module and each folder once; a module may
import only modules of the rows below its own. A new module the table does
not place fails here too, so the map cannot fall behind the code.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "src" / "automigrator"
DOC = ROOT / "docs" / "architecture.md"


def rows() -> dict[str, int]:
    """Each module or folder (``run/``) of the Import order table, with its row."""
    text = DOC.read_text()
    table = text[text.index("## Import order") :].split("\n## ")[0]
    placed: dict[str, int] = {}
    for line in table.splitlines():
        match = re.match(r"\|\s*(\d+)\s*\|([^|]*)\|", line)
        if match:
            for name in re.findall(r"`([\w/]+)`", match.group(2)):
                placed[name] = int(match.group(1))
    return placed


def unit(path: Path) -> str:
    """The table's name for the module at ``path``: its folder, or its own name."""
    parts = path.relative_to(PACKAGE).parts
    return f"{parts[0]}/" if len(parts) > 1 else path.stem


def imported_units(path: Path) -> set[str]:
    """The table names this module imports, relative imports resolved."""
    here = list(path.relative_to(PACKAGE).with_suffix("").parts[:-1])
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if not isinstance(node, ast.ImportFrom) or not node.level:
            continue
        base = here[: len(here) - (node.level - 1)] if node.level > 1 else here
        module = [*base, *(node.module.split(".") if node.module else [])]
        targets = [module] if module else [[alias.name] for alias in node.names]
        for target in targets:
            first = target[0]
            found.add(f"{first}/" if (PACKAGE / first).is_dir() else first)
    return found


def test_every_module_is_placed_and_imports_only_rows_below() -> None:
    placed = rows()
    modules = [p for p in PACKAGE.rglob("*.py") if p.name != "__init__.py" or p.parent != PACKAGE]
    unplaced = sorted({unit(p) for p in modules} - set(placed))
    upward = sorted(
        f"{p.relative_to(PACKAGE)} imports {target} (row {placed[target]}, not below "
        f"{placed[unit(p)]})"
        for p in modules
        if unit(p) in placed
        for target in imported_units(p) - {unit(p), "__init__"}
        if target in placed and placed[target] <= placed[unit(p)]
    )

    assert len(placed) >= 20  # the table was found and read
    assert unplaced == []
    assert upward == []
