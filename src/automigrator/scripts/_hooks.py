"""The hooks of an upgrade run: what it tells its migrator, and asks it, as it goes."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from sqlalchemy.engine import Connection

from .._status import AppliedRevision
from ..database._ledger import Ledger, RunFacts
from ..locking import MigrationLock


@dataclass(frozen=True)
class RunHooks:
    """Built once per upgrade by the migrator and passed down unchanged.

    The path is ``Upgrader.run`` -> ``Scripts.upgrade`` ->
    ``_alembic_run.run_env`` -> its supervisor, which calls them from the
    worker thread that runs env.py.
    """

    on_step: Callable[[str, str], None]
    """A revision begins: ``(revision, message)``."""
    on_applied: Callable[[AppliedRevision], None]
    """A revision was applied (and, with transactional DDL, is about to commit)."""
    should_stop: Callable[[], bool]
    """Asked before each revision after the first: True ends the run there (a shutdown)."""
    lock: MigrationLock | None
    """The lock held for this run: checked before each revision, its guard taken on
    env.py's connection where the lock has one."""
    ledger: Ledger | None = None
    """Where each attempt is recorded: its ``running`` row is written in the
    revision's own transaction and becomes ``applied`` with its version row,
    so a stop half way (without transactional DDL) leaves it ``running``."""
    run: RunFacts = field(default_factory=RunFacts)
    """What every row of this run records: who, the lock wait, the lint's verdicts."""
    prepare: Callable[[Connection], None] | None = None
    """Before the first step, on env.py's connection (fenced, in its
    transaction): a baseline's tables made (``Baseline.create``)."""

    @classmethod
    def lock_only(
        cls, lock: MigrationLock | None, prepare: Callable[[Connection], None] | None = None
    ) -> RunHooks:
        """For a stamp: no revision runs, only the lock matters (checked, fenced)."""
        return cls(
            lambda revision, message: None,
            lambda applied: None,
            lambda: False,
            lock,
            prepare=prepare,
        )
