"""squawk, the PostgreSQL migration linter, on each pending revision's rendered SQL.

squawk (``pip install automigrator[lint]``, the ``squawk-cli`` package) reads
SQL, so it also sees ``op.execute("...")`` that the operation rules cannot.
It runs once for the whole plan, one file per revision; its findings are
mapped onto automigrator's rule names where they mean the same, so a
problem both see is reported once. Its style rules (``prefer-*``) judge the
schema, not the deploy, and are left out, as is its statement timeout rule
(a long migration is not a fault); its lock timeout rule is kept only when
automigrator sets none (``Ddl(lock_timeout=None)``).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

ENV_VAR = "AUTOMIGRATOR_SQUAWK"
"""``off`` to never run squawk; a path to run that one."""

# squawk's rules that are automigrator's under another name.
SAME_AS: dict[str, str] = {
    "require-concurrent-index-creation": "index-not-concurrent",
    "adding-required-field": "add-not-null-column",
    "changing-column-type": "change-column-type",
    "constraint-missing-not-valid": "add-constraint",
    "adding-foreign-key-constraint": "add-constraint",
    "disallowed-unique-constraint": "add-constraint",
    "adding-not-nullable-field": "set-not-null",
    "ban-drop-column": "drop-column",
    "ban-drop-table": "drop-table",
    "renaming-column": "rename-column",
    "renaming-table": "rename-table",
    "require-lock-timeout": "no-lock-timeout",
}
LEFT_OUT = frozenset({"require-statement-timeout", "prefer-robust-stmts"})
# squawk's rules whose statement scans nothing and breaks no old version (a
# DROP INDEX, a DROP CONSTRAINT: the old version's writes all still pass):
# their one cost is a brief lock, which a lock timeout bounds. Left out while
# automigrator sets one (ddl.lock_timeout), as require-lock-timeout is.
BRIEF_LOCK = frozenset({"require-concurrent-index-deletion", "ban-drop-constraint"})
# squawk's rules we have no name for whose reason is "may break existing
# clients": only the old version breaks on them, as on our old_version rules.
OLD_VERSION = frozenset(
    {"ban-drop-function", "ban-drop-view", "ban-drop-not-null", "ban-drop-default"}
)

_NAME = r'(?:"[^"]+"|[\w$]+)(?:\.(?:"[^"]+"|[\w$]+))?'
_TABLE = re.compile(
    r"(?:ALTER\s+TABLE\s+(?:IF\s+EXISTS\s+)?(?:ONLY\s+)?"
    r"|CREATE\s+(?:UNIQUE\s+)?INDEX\s+(?:CONCURRENTLY\s+)?(?:IF\s+NOT\s+EXISTS\s+)?"
    r"(?:(?!ON\s)\S+\s+)?ON\s+(?:ONLY\s+)?"
    r"|(?:CREATE|DROP)\s+TABLE\s+(?:IF\s+(?:NOT\s+)?EXISTS\s+)?)"
    rf"({_NAME})",
    re.IGNORECASE,
)


@dataclass(frozen=True)
class Hit:
    """One squawk finding, with the table of the statement it is in."""

    rule: str
    message: str
    help: str
    table: str | None
    statement: str
    """The statement it is in, its whitespace folded (see :func:`folded`)."""


def find() -> str | None:
    """The squawk to run, or None: ``AUTOMIGRATOR_SQUAWK``, else the one installed beside
    this Python (a virtualenv not activated), else on ``PATH``."""
    chosen = os.environ.get(ENV_VAR, "").strip()
    if chosen.lower() in ("off", "0", "false", "no"):
        return None
    if chosen:
        return chosen
    beside = Path(sys.executable).parent / ("squawk.exe" if os.name == "nt" else "squawk")
    return str(beside) if beside.is_file() else shutil.which("squawk")


class SquawkError(Exception):
    """squawk could not be run, or said something we cannot read."""


def knows(binary: str, rule: str) -> bool | None:
    """Whether squawk has a rule of that name; None when squawk cannot be asked."""
    with tempfile.TemporaryDirectory(prefix="automigrator-squawk-") as folder:
        Path(folder, "empty.sql").write_text("", encoding="utf-8")
        try:
            # squawk checks the names it is told to exclude: exit 2 for a
            # name it does not have.
            done = subprocess.run(
                [binary, f"--exclude={rule}", "empty.sql"],
                capture_output=True,
                text=True,
                timeout=60,
                cwd=folder,
                check=False,
            )
        except (OSError, subprocess.TimeoutExpired):
            return None
    if done.returncode == 2 and "invalid rule name" in done.stderr:
        return False
    return done.returncode == 0 or None


def run(binary: str, sql: Mapping[str, str]) -> dict[str, list[Hit]]:
    """squawk's findings for each revision's SQL (keyed as ``sql`` is)."""
    if not sql:
        return {}
    with tempfile.TemporaryDirectory(prefix="automigrator-squawk-") as folder:
        files = {}
        for number, (key, text) in enumerate(sql.items()):
            path = Path(folder, f"{number}.sql")
            path.write_text(text, encoding="utf-8")
            files[str(path)] = key
        try:
            done = subprocess.run(
                [binary, "--reporter", "json", *files],
                capture_output=True,
                text=True,
                timeout=60,
                cwd=folder,  # no project's .squawk.toml changes what we read
                check=False,
            )
        except (OSError, subprocess.TimeoutExpired) as exc:
            raise SquawkError(f"could not run {binary}: {exc}") from exc
    if done.returncode not in (0, 1):
        raise SquawkError(f"{binary} exited {done.returncode}: {done.stderr.strip()[:300]}")
    try:
        found = json.loads(done.stdout or "[]")
    except ValueError as exc:
        raise SquawkError(f"{binary} printed no JSON: {done.stdout[:200]!r}") from exc
    hits: dict[str, list[Hit]] = {key: [] for key in sql}
    for item in found:
        owner = files.get(str(item.get("file")))
        rule = str(item.get("rule_name"))
        if owner is None or rule in LEFT_OUT or rule.startswith("prefer-"):
            continue
        statement = statement_at(sql[owner], int(item.get("line", 0)))
        hits[owner].append(
            Hit(
                rule,
                str(item.get("message", "")),
                str(item.get("help") or ""),
                table_of(statement),
                folded(statement),
            )
        )
    return hits


def statement_at(sql: str, line: int) -> str:
    """The statement on (0-based) ``line`` of Alembic's offline output.

    Statements there end in ``;`` and are apart by a blank line.
    """
    lines = sql.splitlines()
    start = min(line, len(lines) - 1)
    while start > 0 and lines[start - 1].strip():
        start -= 1
    end = start
    while end < len(lines) - 1 and not lines[end].rstrip().endswith(";"):
        end += 1
    return "\n".join(lines[start : end + 1]).rstrip().removesuffix(";")


def folded(sql: str) -> str:
    """``sql`` with its whitespace folded, for comparing statements."""
    return " ".join(sql.split())


def table_of(statement: str) -> str | None:
    """The table a statement alters, indexes, creates or drops."""
    match = _TABLE.search(statement)
    if match is None:
        return None
    return ".".join(part.strip('"') for part in re.findall(r'"[^"]+"|[^.]+', match.group(1)))
