"""A lint finding: one pending operation that is unsafe on a live database, and why.

Kept apart from the lint itself (``linting/``), which imports Alembic: the
status and the errors carry findings, and they must import without it.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Literal

RowsAre = Literal["exact", "estimate", "more_than"]
"""How ``rows`` is known: counted; the server's estimate; or a count stopped
past the threshold (the table has more than ``rows``)."""
Verdict = Literal["flagged", "allowed", "small", "post_deploy"]
"""``flagged``: unsafe; ``allowed``: unsafe, but its revision's file allows the
rule; ``small``: the rule only matters on a big table, and this one is small;
``post_deploy``: it breaks the old version, in a post-deploy revision, which
runs once that version is gone."""


@dataclass(frozen=True)
class LintFinding:
    """An operation of a pending revision that locks a busy table or breaks the old version."""

    revision: str
    rule: str
    """``index-not-concurrent``, ``drop-column``, ... (see the docs' rule list);
    ``squawk:<rule>`` for a rule of squawk's that automigrator has no name for."""
    table: str | None
    """The table it touches (``schema.table`` outside the default schema);
    None when it could not be told from raw SQL."""
    why: str
    """What goes wrong on a live database."""
    instead: str
    """The safe way to do it."""
    verdict: Verdict = "flagged"
    rows: int | None = None
    """The table's rows, read from the live database (the server's estimate
    on PostgreSQL and MySQL/MariaDB, a count up to the threshold otherwise);
    None when not read (no database, or the table was not found)."""
    rows_are: RowsAre = "exact"
    weighed: bool = False
    """Whether the rule depends on the table's size (a lock held while the
    table is scanned or rewritten) rather than on the old version's code."""
    old_version: bool = False
    """Whether only the old version breaks on it (a dropped or renamed column or
    table): a post-deploy revision may do it."""
    post_deploy: bool = False
    """Whether its revision is a post-deploy one (``post_deploy = True``)."""
    source: Literal["automigrator", "squawk"] = "automigrator"
    path: str = ""
    """The revision's file."""
    target: str | None = None
    """The column, index or constraint it acts on, where the operation names one."""
    line: int | None = None
    """The line of the revision's file that invoked the operation (None: raw SQL
    judged by squawk, or not known)."""

    def __str__(self) -> str:
        on = f" on {self.table}" if self.table else ""
        on += f" ({self.target})" if self.target and self.table else ""
        size = "" if not self.weighed else f" ({_rows(self.rows, self.rows_are)})"
        text = f"revision {self.revision}: {self.rule}{on}{size}: {self.why}"
        if self.verdict == "allowed":
            return f"{text} (allowed by its file)"
        if self.verdict == "small":
            return f"{text} (passed: the table is small)"
        if self.verdict == "post_deploy":
            return f"{text} (passed: a post-deploy revision, run after the rollout)"
        return f"{text}. Instead: {self.instead}"

    @property
    def where(self) -> str:
        """The revision's file, with the line of the operation where known."""
        return f"{self.path}:{self.line}" if self.line is not None else self.path

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-ready values."""
        return asdict(self)


def _rows(rows: int | None, known: RowsAre) -> str:
    if rows is None:
        return "size unknown: taken as big"
    return {"exact": "", "estimate": "about ", "more_than": "more than "}[known] + f"{rows:,} rows"
