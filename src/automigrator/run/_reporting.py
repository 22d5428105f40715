"""The status and the events of one migrator: the one place the status changes."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import replace
from typing import Any, Literal

from .._findings import LintFinding
from .._plan import Plan
from .._status import AppliedRevision, Blocker, MigrationState, MigrationStatus, RunningRevision
from ..errors import AutomigratorError, ShutdownRequestedError
from ..events import STATE_EVENTS, Event, Listener
from ..policies import Decision

logger = logging.getLogger("automigrator")

_FINAL = (MigrationState.READY, MigrationState.DEGRADED, MigrationState.FAILED)


class Reporter:
    """Holds the latest :class:`MigrationStatus` and tells the listeners what changed.

    The status is a frozen snapshot swapped whole (one attribute store), so
    readers on any thread see a consistent one without a lock. Each change of
    state is announced as its event (``STATE_EVENTS``).
    """

    def __init__(self) -> None:
        self.status = MigrationStatus()
        self._listeners: list[Listener] = []

    def _change(self, **changes: Any) -> None:
        # The one writer of the status; a new state is announced. Callers use
        # the named transitions below, each typed.
        before = self.status.state
        self.status = replace(self.status, **changes)
        if self.status.state is not before:
            self.emit(Event(STATE_EVENTS[self.status.state], self.status))

    # -- the transitions of a run, in the order they happen --------------------

    def attempt(self, number: int) -> None:
        """Attempt ``number`` (1, 2, ...) of the run begins."""
        self._change(attempts=number)

    def waiting(self, what: Literal["database", "lock", "migration"]) -> None:
        """The run waits for the database, the migration lock, or (check mode) the target."""
        self._change(state=MigrationState.WAITING, waiting_for=what)

    def done_waiting(self, state: MigrationState | None = None) -> None:
        """The wait is over; the state becomes ``state`` (None: left as it is)."""
        if state is None:
            self._change(waiting_for=None)
        else:
            self._change(state=state, waiting_for=None)

    def locked(self) -> None:
        """The migration lock was taken at once: the run goes on under it."""
        self._change(state=MigrationState.MIGRATING)

    def linted(self, flagged: tuple[LintFinding, ...]) -> None:
        """The lint of the pending revisions flagged ``flagged``."""
        self._change(lint=flagged)
        self.emit(Event("lint", self.status))

    def revision_started(self, running: RunningRevision) -> None:
        """A revision begins; nothing blocks it yet."""
        self._change(running=running, blocked_by=())

    def try_begins(self, timeout: float | None) -> None:
        """An upgrade try begins, with this DDL lock timeout."""
        self._change(ddl_lock_timeout=timeout)

    def try_ended(self) -> None:
        """An upgrade try ended, well or not: no revision runs, nothing blocks."""
        self._change(running=None, blocked_by=(), ddl_lock_timeout=None)

    def revision_begins(self, revision: str, message: str) -> None:
        """A revision begins (called from the migration's worker thread)."""
        running = RunningRevision(revision=revision, message=message, started=time.time())
        self.revision_started(running)

    def blocked(self, by: tuple[Blocker, ...]) -> None:
        """The running revision waits for a table lock these sessions hold."""
        self._change(blocked_by=by)
        self.emit(Event("blocked", self.status))

    def ddl_retried(self) -> None:
        """A revision that met a busy table is tried again."""
        self._change(ddl_retries=self.status.ddl_retries + 1)
        self.emit(Event("ddl_retry", self.status))

    def attempt_failed(self, error: AutomigratorError) -> None:
        """The attempt failed with ``error``; the failure policy decides next."""
        self._change(error=error.summary(), error_kind=error.kind)

    def retrying(self) -> None:
        """The policy decided to try again: back to ``pending``."""
        self._change(state=MigrationState.PENDING)

    def revisions_read(self, revisions: tuple[str, ...]) -> None:
        """After a failure: where the database really is."""
        self._change(revisions_after=revisions)

    def planned(self, plan: Plan) -> Plan:
        """A plan was read: the revisions before (the first plan's) and now, the heads."""
        before = self.status.revisions_before
        self._change(
            revisions_before=plan.db_revisions if before is None else before,
            revisions_after=plan.db_revisions,
            heads=plan.heads,
        )
        logger.debug("Plan: %s", plan)
        if plan.post_deploy != self.status.post_deploy:
            self._change(post_deploy=plan.post_deploy)
            if plan.post_deploy and plan.kind == "at_head":
                logger.info(
                    "Post-deploy revision(s) %s left pending: the application is ready without "
                    "them; 'automigrator upgrade --post-deploy' applies them once every replica "
                    "runs this version",
                    ", ".join(plan.post_deploy),
                )
        if plan.unknown and plan.kind == "at_head" and self.status.ahead != plan.unknown:
            self._change(ahead=plan.unknown)
            why = (
                "the ledger records each revision it does not know as compatible with the "
                "version before it (when_ahead='compatible')"
                if plan.ahead
                else "when_ahead='serve'"
            )
            logger.warning(
                "The database is at %s, which this code does not know: it is ahead of the "
                "code (an old replica during a rollout, or a rollback deploy). Serving: %s; "
                "nothing is migrated or downgraded.",
                ", ".join(plan.unknown),
                why,
            )
        if plan.past_target:
            logger.warning(
                "The database is at %s, past the target %s: automigrator never downgrades, "
                "so nothing is done. Downgrade with the Alembic CLI if that is what you meant.",
                ", ".join(plan.db_revisions),
                ", ".join(plan.heads),
            )
        return plan

    def migrating(self, plan: Plan) -> None:
        """The upgrade of ``plan`` begins."""
        self._change(state=MigrationState.MIGRATING)
        left = plan.post_deploy
        logger.info(
            "Migrating from %s to %s: %d revision(s) to apply%s",
            ", ".join(plan.db_revisions) or "an empty database",
            ", ".join(plan.destination or plan.heads),
            len(plan.pending),
            f"; post-deploy revision(s) {', '.join(left)} left for 'automigrator upgrade "
            "--post-deploy' after the rollout"
            if left
            else "",
        )

    def reset(self, status: MigrationStatus) -> None:
        """A run begins (``pending``) or is skipped (``disabled``): a whole new status."""
        self.status = status
        self.emit(Event(STATE_EVENTS[status.state], status))

    def finish(self, state: MigrationState, started: float) -> None:
        """The run ends in ``state``; it started at ``started`` (monotonic)."""
        self._change(state=state, duration=time.monotonic() - started)
        if state is MigrationState.READY:
            logger.info(
                "Schema ready at %s (%d revision(s) applied in %.2f s)",
                ", ".join(self.status.revisions_after or ()) or "base",
                len(self.status.applied),
                self.status.duration or 0.0,
            )

    @contextmanager
    def failed_if_interrupted(self, started: float) -> Iterator[None]:
        """Around a run: a shutdown or a cancellation leaves the status ``failed``.

        Never ``waiting`` or ``migrating`` behind a run that ended.
        """
        try:
            yield
        except ShutdownRequestedError as exc:
            logger.warning("%s", exc.message)
            self.attempt_failed(exc)
            self.finish(MigrationState.FAILED, started)
            raise
        except BaseException:
            if self.status.state not in _FINAL:
                # Cancelled by the server or the caller: say so.
                self._change(error="Stopped before the run finished", error_kind="shutdown")
                self.finish(MigrationState.FAILED, started)
            raise

    def applied(self, revision: AppliedRevision) -> None:
        """One more revision applied (called from the migration's worker thread)."""
        self._change(applied=(*self.status.applied, revision))
        self.emit(Event("revision_applied", self.status, revision=revision))

    def decided(self, decision: Decision, error: AutomigratorError) -> None:
        """A failure policy decided what to do about ``error``: say so, and announce it."""
        self.emit(Event("decision", self.status, decision=decision))
        # "Migration failed" only where a revision failed: a lock or a wait
        # that timed out migrated nothing (an init container's `wait` least of all).
        revision = getattr(error, "revision", None)
        ran = revision and error.kind != "schema_ahead"  # its revision is the database's
        what = f"Revision {revision} failed" if ran else "Could not reach the target"
        said = (what, error.kind, error.summary(), decision.policy)
        if decision.action == "retry":
            logger.warning(
                "%s (%s: %s); %s decided to retry in %.1f s: %s",
                *said,
                decision.delay,
                decision.reason,
            )
        elif decision.action == "degrade":
            logger.critical(
                "%s (%s: %s); %s decided to continue DEGRADED: %s. The "
                "application is starting on a schema that may not match its code.",
                *said,
                decision.reason,
            )
        else:
            # The error is raised next, and whoever catches it (the server,
            # the command) shows it: name the decision, not the error again.
            logger.error(
                "%s (%s); %s decided to stop: %s",
                what,
                error.kind,
                decision.policy,
                decision.reason,
            )

    def subscribe(self, listener: Listener) -> Callable[[], None]:
        """Call ``listener(event)`` for every event; returns an unsubscribe."""
        self._listeners.append(listener)
        return lambda: self._listeners.remove(listener)

    def emit(self, event: Event) -> None:
        """Hand ``event`` to every listener; a failing listener is logged, never raised."""
        for listener in tuple(self._listeners):
            try:
                listener(event)
            except Exception:
                logger.exception("An event listener (%r) failed on %s", listener, event.name)
