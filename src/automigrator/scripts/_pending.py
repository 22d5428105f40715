"""A pending revision, as a preview or the lint lists it (no Alembic import: it is public)."""

from __future__ import annotations

from dataclasses import dataclass


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
    in_run_transaction: bool = False
    """env.py runs the whole upgrade in one transaction (Alembic's default,
    ``transaction_per_migration=False``, where DDL is transactional): the
    ``BEGIN`` and ``COMMIT`` around ``sql`` are the run's, not this revision's."""
