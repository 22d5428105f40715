"""Schema drift: the live schema against the models, as Alembic's autogenerate compares them.

``drift(migrator)`` reads the plan (one short connection, as a start does),
then runs the user's env.py as ``alembic check`` does
(``scripts/_alembic_drift``), in a worker thread: env.py connects and
configures as for a migration, and instead of running revisions Alembic
compares its ``target_metadata`` with what the database holds. Nothing is
written (no DDL, not even a version table) and no lock is taken. Our own
tables are left out, and types the database reflects differently from the
way the models state them (a MariaDB ``TINYINT(1)`` for a ``Boolean``) are
taken as equal: the Drift section of the command's docs lists each case.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import anyio.to_thread

from ._migrator import AutoMigrator
from ._plan import PlanKind
from .database._connections import display

if TYPE_CHECKING:
    from sqlalchemy import MetaData


@dataclass(frozen=True)
class DriftReport:
    """How one database's schema differs from the models.

    Each difference is one line, its kind first, database side before the
    arrow and the models' after it: ``add_column users.email VARCHAR(255)``
    (the models have it, the database does not), ``remove_table legacy``
    (the reverse), ``modify_type users.name VARCHAR(50) -> VARCHAR(100)``.
    """

    database: str
    """The URL, password hidden."""
    plan: PlanKind
    """Where the database stands against the scripts (``at_head``, ``behind``, ...)."""
    revisions: tuple[str, ...]
    """The database's revisions now."""
    heads: tuple[str, ...]
    """The target's revisions."""
    pending: tuple[str, ...]
    """The revisions an upgrade would apply: their changes show as drift until applied."""
    differences: tuple[str, ...]
    """One line per difference; empty when the schema matches the models."""

    @property
    def at_head(self) -> bool:
        """The database is at the target: any difference is a model without its revision."""
        return self.plan == "at_head"

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-ready values."""
        return {
            "database": self.database,
            "plan": self.plan,
            "at_head": self.at_head,
            "revisions": list(self.revisions),
            "heads": list(self.heads),
            "pending": list(self.pending),
            "differences": list(self.differences),
        }

    def __str__(self) -> str:
        found = f"{len(self.differences)} difference(s) from the models"
        if self.at_head:
            where = f"at {', '.join(self.revisions)}"
        else:
            where = (
                f"not at the target ({self.plan.replace('_', ' ')}: at "
                f"{', '.join(self.revisions) or 'base'}, target {', '.join(self.heads) or 'base'}"
                + (f", pending {', '.join(self.pending)}" if self.pending else "")
                + "): the pending revisions' changes show as drift until they are applied"
            )
        return "\n".join([f"{self.database}: {where}; {found}", *self.differences])


async def drift(
    migrator: AutoMigrator, *, metadata: MetaData | Sequence[MetaData] | None = None
) -> DriftReport:
    """Compare ``migrator``'s live schema with the models, as ``alembic check`` does.

    The models are env.py's ``target_metadata``: env.py is run as for a
    migration, with its own connection and options (``include_object``,
    ``include_schemas``, ``compare_type``, ...), and nothing is written.
    With ``metadata``, those models are compared on a connection of ours
    instead, with Alembic's default options, and env.py is not run. A
    database that is not at the target is compared all the same; the report
    says so (:attr:`DriftReport.at_head`).

    Raises ``ConfigurationError`` when env.py passes no ``target_metadata``
    to ``context.configure()``, or fails.
    """
    plan = await migrator.plan()
    scripts, table, url = migrator.scripts, migrator.version_table, migrator.url
    ledger = migrator.settings.history.table
    ours = (ledger,) if ledger else ()

    def compare() -> list[str]:
        from .scripts import _alembic_drift  # imports Alembic: only when asked

        if metadata is not None:
            return _alembic_drift.compare_models(url, metadata, version_table=table, ours=ours)
        return scripts.drift(table, ours)

    differences = await anyio.to_thread.run_sync(compare)
    return DriftReport(
        database=display(url),
        plan=plan.kind,
        revisions=plan.db_revisions,
        heads=plan.heads,
        pending=plan.pending,
        differences=tuple(differences),
    )
