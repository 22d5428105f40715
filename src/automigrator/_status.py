"""The migration state machine and the status snapshot that everyone reads."""

from __future__ import annotations

import enum
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

from ._findings import LintFinding
from .errors import ErrorKind


class MigrationState(str, enum.Enum):
    """Where a migrator is in its run.

    ``pending -> [waiting ->] [migrating ->] ready | degraded | failed``, or
    ``disabled`` when the switch is off. ``waiting`` is for the database to
    accept connections or for another process's lock (``status.waiting_for``).
    """

    PENDING = "pending"
    WAITING = "waiting"
    MIGRATING = "migrating"
    READY = "ready"
    DEGRADED = "degraded"
    FAILED = "failed"
    DISABLED = "disabled"

    def __str__(self) -> str:
        return self.value


@dataclass(frozen=True)
class AppliedRevision:
    """One revision that an upgrade applied."""

    revision: str
    message: str
    duration: float
    """Seconds, from the end of the previous revision to the end of this one."""


@dataclass(frozen=True)
class RunningRevision:
    """The revision being applied now."""

    revision: str
    message: str
    started: float
    """When it started (``time.time()``)."""

    @property
    def elapsed(self) -> float:
        """Seconds since it started."""
        return max(0.0, time.time() - self.started)


@dataclass(frozen=True)
class Blocker:
    """A session that keeps the running revision waiting for a table lock.

    Never its query text (the application's data) nor its user or host.
    """

    pid: int
    """The server's id of the session (PostgreSQL pid, MySQL connection id)."""
    state: str
    """``active``, ``idle in transaction``, ..."""
    seconds: float | None = None
    """How long its transaction has been open (None: the server did not say)."""
    application: str | None = None
    """The name the client gave itself (PostgreSQL ``application_name``)."""
    table: str | None = None
    """The table the revision waits for, when the server says."""

    def __str__(self) -> str:
        name = f" ({self.application})" if self.application else ""
        since = f" for {self.seconds:.0f} s" if self.seconds is not None else ""
        return f"pid {self.pid}{name}, {self.state}{since}"


@dataclass(frozen=True)
class MigrationStatus:
    """A snapshot of what a migrator did; ``AutoMigrator.status`` returns the latest.

    It holds no URL, SQL statement or traceback, so it is safe to show in a
    health endpoint or a log.
    """

    state: MigrationState = MigrationState.PENDING
    revisions_before: tuple[str, ...] | None = None
    """The database's revisions when the run began (None: not read yet)."""
    revisions_after: tuple[str, ...] | None = None
    """The database's revisions when the run ended (None: not read)."""
    heads: tuple[str, ...] = ()
    """The revisions the run aims at (the scripts' heads for ``target="head"``)."""
    applied: tuple[AppliedRevision, ...] = ()
    duration: float | None = None
    """Seconds from the start of the run to its end."""
    error: str | None = None
    """One line saying what went wrong, without secrets."""
    error_kind: ErrorKind | None = None
    attempts: int = 0
    """How many times the migrate step ran (retries included)."""
    waiting_for: Literal["database", "lock", "migration"] | None = None
    """In state ``waiting``: for the database to accept connections, for the lock, or
    (check mode) for another process to migrate."""
    running: RunningRevision | None = None
    """In state ``migrating``: the revision being applied and since when."""
    blocked_by: tuple[Blocker, ...] = ()
    """In state ``migrating``: who keeps the running revision waiting for a table lock."""
    ddl_retries: int = 0
    """Revisions tried again after a lock timeout, deadlock or serialization failure."""
    ddl_lock_timeout: float | None = None
    """In state ``migrating``: the lock timeout of the try running now (seconds; it grows
    on later tries), or None (no try runs, or ``Ddl(lock_timeout=None)``)."""
    post_deploy: tuple[str, ...] = ()
    """Post-deploy revisions left pending (``Switch(post_deploy=False)``, the default):
    ``automigrator upgrade --post-deploy`` applies them after the rollout."""
    ahead: tuple[str, ...] = ()
    """Served on a database ahead of the code (``History(when_ahead=)``): the database's
    revisions this code does not know."""
    lint: tuple[LintFinding, ...] = ()
    """The lint's flagged findings on the pending revisions (``lint="warn"`` or
    ``"refuse"``): which revision, rule and table, and how many rows."""
    databases: Mapping[str, MigrationStatus] | None = None
    """A :class:`~automigrator.MigratorGroup`'s members' statuses, by name; None otherwise."""

    @property
    def ready(self) -> bool:
        """True when the schema is known to be at the target."""
        return self.state is MigrationState.READY

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict of the snapshot (with ``databases`` for a group)."""
        data: dict[str, Any] = {
            "state": self.state.value,
            "revisions_before": list(self.revisions_before)
            if self.revisions_before is not None
            else None,
            "revisions_after": list(self.revisions_after)
            if self.revisions_after is not None
            else None,
            "heads": list(self.heads),
            "applied": [
                {"revision": a.revision, "message": a.message, "duration": round(a.duration, 6)}
                for a in self.applied
            ],
            "duration": round(self.duration, 6) if self.duration is not None else None,
            "error": self.error,
            "error_kind": self.error_kind,
            "attempts": self.attempts,
            "waiting_for": self.waiting_for,
            "running": None
            if self.running is None
            else {
                "revision": self.running.revision,
                "message": self.running.message,
                "elapsed": round(self.running.elapsed, 3),
            },
            "blocked_by": [
                {
                    "pid": b.pid,
                    "state": b.state,
                    "seconds": b.seconds,
                    "application": b.application,
                    "table": b.table,
                }
                for b in self.blocked_by
            ],
            "ddl_retries": self.ddl_retries,
            "ddl_lock_timeout": self.ddl_lock_timeout,
            "post_deploy": list(self.post_deploy),
            "ahead": list(self.ahead),
            "lint": [
                # "rows": 100000 alone would read as the table's size where
                # the count stopped at Lint(rows=): "rows_are" says "more_than".
                {
                    "revision": f.revision,
                    "rule": f.rule,
                    "table": f.table,
                    "rows": f.rows,
                    "rows_are": f.rows_are if f.rows is not None else None,
                }
                for f in self.lint
            ],
        }
        if self.databases is not None:
            data["databases"] = {name: s.to_dict() for name, s in self.databases.items()}
        return data
