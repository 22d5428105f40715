"""The plan: where the database stands against the scripts, and what that forbids."""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Literal

from .errors import (
    AutomigratorError,
    MultipleHeadsError,
    SchemaAheadError,
    UnversionedDatabaseError,
)

PlanKind = Literal["empty", "behind", "at_head", "ahead_of_code", "multiple_heads", "unversioned"]


@dataclass(frozen=True)
class Plan:
    """What the database holds compared with the scripts, and what an upgrade would do."""

    kind: PlanKind
    db_revisions: tuple[str, ...]
    """The version table's rows; empty when there is no version table."""
    heads: tuple[str, ...]
    """The revisions the run aims at: the scripts' heads for ``target="head"`` or
    ``"heads"``, else the revision(s) the target names."""
    pending: tuple[str, ...] = ()
    """Revisions an upgrade would apply, in order."""
    unknown: tuple[str, ...] = ()
    """Database revisions the scripts do not know (``ahead_of_code``)."""
    past_target: bool = False
    """``at_head`` because the database is already past a pinned target (never downgraded)."""

    def served_ahead(self) -> Plan:
        """``ahead_of_code`` taken as it is (``when_ahead="serve"``): nothing to do.

        The unknown revisions stay in ``unknown``.
        """
        return replace(self, kind="at_head") if self.kind == "ahead_of_code" else self

    def refusal(
        self, *, final: bool = True, baseline: str | None = None, version_table: str = ""
    ) -> AutomigratorError | None:
        """The error that forbids acting on this plan, or None.

        ``unversioned`` is only final under the lock (``final=True``): without
        it we may have seen another replica's tables before its version table.
        """
        if self.kind == "multiple_heads":
            return MultipleHeadsError(heads=self.heads)
        if self.kind == "ahead_of_code":
            return SchemaAheadError(revisions=self.unknown)
        if self.kind == "unversioned" and baseline is None and final:
            return UnversionedDatabaseError(version_table=version_table)
        return None


def holds_heads(heads: tuple[str, ...], revisions: tuple[str, ...] | None, target: str) -> bool:
    """Whether the version table holds exactly ``heads`` (and the target allows them)."""
    return (
        bool(revisions)
        and set(revisions or ()) == set(heads)
        and (target == "heads" or len(heads) == 1)
    )


@dataclass(frozen=True)
class PendingRevision:
    """A revision an upgrade would apply; with a preview's ``sql=True``, its SQL."""

    revision: str
    down_revisions: tuple[str, ...]
    message: str
    path: str
    sql: str | None
    """The SQL, or None when it could not be rendered."""
    not_renderable: str | None
    """Why it could not be rendered offline (it reads data through
    ``op.get_bind()``, say), or None."""
