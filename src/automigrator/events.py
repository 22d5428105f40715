"""Events: what a run does, for metrics, alerts and tracing.

``migrator.subscribe(listener)`` calls ``listener(event)`` for every
:class:`Event`: ``start`` (a run, or a retry, begins), ``waiting`` (for the
database, the lock, or in check mode for another process's migration),
``migrating``, ``revision_applied``, ``blocked`` (who keeps the running
revision waiting for a table lock changed: ``status.blocked_by``),
``ddl_retry`` (a revision that met a busy table is tried again),
``lint`` (the lint flagged pending revisions before the upgrade: ``status.lint``),
``decision`` (a failure policy's), and
the end: ``ready``, ``degraded``, ``failed`` or ``disabled``.

Listeners are plain callables, called where the event happens: on the event
loop, except ``revision_applied``, which comes from the worker thread that
runs the migration. Keep them short and thread-safe (count, enqueue). An
exception in a listener is logged and otherwise ignored: a metrics bug must
not fail a start-up.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

from ._status import AppliedRevision, MigrationState, MigrationStatus
from .policies import Decision

__all__ = ["Event", "EventName", "Listener"]

EventName = Literal[
    "start",
    "waiting",
    "migrating",
    "revision_applied",
    "blocked",
    "ddl_retry",
    "lint",
    "decision",
    "ready",
    "degraded",
    "failed",
    "disabled",
]

# The event a change of state is announced by.
STATE_EVENTS: dict[MigrationState, EventName] = {
    MigrationState.PENDING: "start",
    MigrationState.WAITING: "waiting",
    MigrationState.MIGRATING: "migrating",
    MigrationState.READY: "ready",
    MigrationState.DEGRADED: "degraded",
    MigrationState.FAILED: "failed",
    MigrationState.DISABLED: "disabled",
}


@dataclass(frozen=True)
class Event:
    """One thing a run did."""

    name: EventName
    status: MigrationStatus
    """The status right after the event."""
    revision: AppliedRevision | None = None
    """For ``revision_applied``."""
    decision: Decision | None = None
    """For ``decision``."""


Listener = Callable[[Event], object]
