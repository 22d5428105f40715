"""What to do when a migration run fails: failure policies.

A policy is any object with ``async def handle(self, failure) -> Decision``
(the :class:`FailurePolicy` Protocol). The migrator calls it with a
:class:`Failure` (the error, its kind, the attempt number, the decisions taken
so far) and acts on the :class:`Decision` it returns:

- ``Decision.fail(reason)``: re-raise the error; start-up fails.
- ``Decision.degrade(reason)``: start the application in the *degraded* state.
- ``Decision.retry(reason, delay=...)``: run the migrate step again.
- ``Decision.pass_on(reason)``: this policy has no opinion; in a chain the next
  policy decides, and at the end of a chain (or alone) it means fail.

Policies keep their options in ``__init__`` and no state of their own: what
they need to count (earlier attempts) is in the ``Failure``. One instance is
therefore safe to share between runs and replicas. The migrator logs every
decision.
"""

from __future__ import annotations

import logging
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass, replace
from typing import Literal, Protocol, runtime_checkable

from sqlalchemy.engine import URL

from ._checks import count, flag, seconds
from ._checks import kinds as check_kinds
from ._plan import Plan
from ._status import MigrationStatus
from .database._purge import Purged
from .errors import (
    AlreadyPurgedError,
    AutomigratorError,
    ConfigurationError,
    ErrorKind,
    first_line,
)

__all__ = [
    "BeforeUpgrade",
    "Chain",
    "Decision",
    "Fail",
    "Failure",
    "FailurePolicy",
    "LogAndContinue",
    "PolicyMigrator",
    "PurgeAndRetry",
    "RestoreBackup",
    "Retry",
]

logger = logging.getLogger("automigrator")

Action = Literal["fail", "degrade", "retry", "pass"]


@dataclass(frozen=True)
class Decision:
    """A policy's answer to a failure."""

    action: Action
    reason: str
    delay: float = 0.0
    """Seconds to wait before a retry."""
    policy: str = ""
    """The ``repr`` of the policy that decided (filled in by the migrator)."""

    @classmethod
    def fail(cls, reason: str) -> Decision:
        """Re-raise: start-up fails."""
        return cls("fail", reason)

    @classmethod
    def degrade(cls, reason: str) -> Decision:
        """Start anyway, in the degraded state."""
        return cls("degrade", reason)

    @classmethod
    def retry(cls, reason: str, *, delay: float = 0.0) -> Decision:
        """Run the migrate step again after ``delay`` seconds."""
        return cls("retry", reason, seconds("Decision.retry", "delay", delay, zero=True))

    @classmethod
    def pass_on(cls, reason: str = "not handled") -> Decision:
        """No opinion: the next policy in a chain decides (alone: fail)."""
        return cls("pass", reason)


class PolicyMigrator(Protocol):
    """The migrator as a failure policy sees it: what it may use of the one whose run failed.

    :class:`~automigrator.AutoMigrator` is one; the Protocol keeps policies
    free of the migrator's module (policies sit below it).
    """

    @property
    def url(self) -> URL:
        """The database URL (render it with ``hide_password=True``)."""
        ...

    @property
    def status(self) -> MigrationStatus:
        """The run's status so far."""
        ...

    def locked(self) -> AbstractAsyncContextManager[bool]:
        """Hold the migration lock for a block; yields whether it had to wait."""
        ...

    async def plan(self) -> Plan:
        """Read the database's revisions and classify them against the scripts."""
        ...

    async def purge(self, *, backup: bool = True, keep: int = 3) -> Purged:
        """Back the database up (unless ``backup=False``), then empty it."""
        ...

    async def snapshot(self) -> None:
        """SQLite: copy the database aside before migrating."""
        ...

    async def restore_snapshot(self) -> bool:
        """Put back the copy :meth:`snapshot` took in this attempt; False if none."""
        ...


@dataclass(frozen=True)
class Failure:
    """What a policy is told about a failed run."""

    error: AutomigratorError
    attempt: int
    """1 for the first run of the migrate step, 2 after one retry, and so on."""
    history: tuple[Decision, ...]
    """Decisions already taken in this run, oldest first."""
    migrator: PolicyMigrator
    """The migrator whose run failed (an :class:`~automigrator.AutoMigrator`)."""

    @property
    def kind(self) -> ErrorKind:
        """The error's class: configuration, transient, schema_ahead, ..., migration."""
        return self.error.kind


@runtime_checkable
class FailurePolicy(Protocol):
    """Decides what happens after a failed migration run."""

    async def handle(self, failure: Failure) -> Decision:
        """Return what to do about ``failure``; may act first (alert, back up)."""
        ...


@runtime_checkable
class BeforeUpgrade(Protocol):
    """A policy that acts before the first DDL of each attempt (optional).

    Called under the migration lock, after the re-plan, before any stamp or
    upgrade: :class:`RestoreBackup` copies the database aside here.
    """

    async def before_upgrade(self, migrator: PolicyMigrator) -> None:
        """Prepare for the upgrade that is about to run."""
        ...


class Fail:
    """Re-raise the error so that start-up fails (the default)."""

    async def handle(self, failure: Failure) -> Decision:
        return Decision.fail(f"{failure.kind} failure")

    def __repr__(self) -> str:
        return "Fail()"


class LogAndContinue:
    """Log at CRITICAL and start the application in the degraded state.

    The status says ``degraded`` (and the health endpoint can report it), so
    the application knows its schema may be stale.

    Args:
        kinds: the error kinds to continue on; others fail. Default: all.
    """

    def __init__(self, *, kinds: tuple[ErrorKind, ...] | None = None) -> None:
        self.kinds = None if kinds is None else check_kinds("LogAndContinue", kinds)

    async def handle(self, failure: Failure) -> Decision:
        if self.kinds is not None and failure.kind not in self.kinds:
            return Decision.fail(f"{failure.kind} failure is not in {self.kinds!r}")
        return Decision.degrade(f"{failure.kind} failure: continuing without an up-to-date schema")

    def __repr__(self) -> str:
        if self.kinds is None:
            return "LogAndContinue()"
        return f"LogAndContinue(kinds={self.kinds!r})"


def _decided_by(history: tuple[Decision, ...], policy: object, action: Action) -> int:
    """How many times ``policy`` already took ``action`` in this run."""
    name = repr(policy)
    return sum(1 for d in history if d.policy == name and d.action == action)


class Retry:
    """Run the migrate step again after a transient failure, with backoff.

    A database that is restarting, a lock held a little too long: worth
    another try. Every other kind is passed on.

    Args:
        times: retries at most (after the first attempt).
        delay: seconds before the first retry; doubled for each next one.
        max_delay: the cap of that doubling.
        kinds: the error kinds to retry (default: ``transient`` and
            ``contention``: a busy table is worth another try).
    """

    def __init__(
        self,
        *,
        times: int = 3,
        delay: float = 1.0,
        max_delay: float = 30.0,
        kinds: tuple[ErrorKind, ...] = ("transient", "contention"),
    ) -> None:
        self.times = count("Retry", "times", times, least=1)
        self.delay = seconds("Retry", "delay", delay, zero=True)
        self.max_delay = seconds("Retry", "max_delay", max_delay, zero=True)
        if self.max_delay < self.delay:
            raise ConfigurationError(
                f"Retry(delay={delay!r}, max_delay={max_delay!r}): max_delay must be >= delay."
            )
        self.kinds = check_kinds("Retry", kinds)

    async def handle(self, failure: Failure) -> Decision:
        if failure.kind not in self.kinds:
            return Decision.pass_on(f"{failure.kind} failure is not retried")
        done = _decided_by(failure.history, self, "retry")
        if done >= self.times:
            return Decision.pass_on(f"retried {done} time(s) already")
        wait = min(self.delay * 2**done, self.max_delay)
        return Decision.retry(f"retry {done + 1} of {self.times}", delay=wait)

    def __repr__(self) -> str:
        return (
            f"Retry(times={self.times}, delay={self.delay:g}, max_delay={self.max_delay:g}, "
            f"kinds={self.kinds!r})"
        )


class Chain:
    """Ask several policies in order; the first that does not pass on decides.

    ``Chain(Retry(), PurgeAndRetry(), LogAndContinue())`` reads as the
    reference design: retry transient failures, then purge and migrate from
    scratch once, then start degraded. When every member passes on, the run
    fails. Each member's decision is logged under that member's name, and
    members count their own earlier decisions, so each keeps its own limits.
    """

    def __init__(self, *policies: FailurePolicy) -> None:
        if not policies or not all(isinstance(p, FailurePolicy) for p in policies):
            raise ConfigurationError(f"Chain needs failure policies, got {policies!r}")
        self.policies = policies

    async def handle(self, failure: Failure) -> Decision:
        passed: list[str] = []
        for policy in self.policies:
            decision = await policy.handle(failure)
            if decision.action != "pass":
                # Why the others passed ("not purging again: the data is in
                # ...") reaches the log line with the decision.
                reason = "; ".join([decision.reason, *passed])
                return replace(decision, policy=decision.policy or repr(policy), reason=reason)
            passed.append(f"{type(policy).__name__} passed: {decision.reason}")
        return Decision.fail(
            f"every policy in the chain passed the failure on ({'; '.join(passed)})"
        )

    async def before_upgrade(self, migrator: PolicyMigrator) -> None:
        """Each member's own ``before_upgrade``, in order."""
        for policy in self.policies:
            if isinstance(policy, BeforeUpgrade):
                await policy.before_upgrade(migrator)

    def __repr__(self) -> str:
        return f"Chain({', '.join(repr(p) for p in self.policies)})"


class PurgeAndRetry:
    """After a failed migration: back up, empty the database, migrate from scratch.

    For unattended boxes (a kiosk, an appliance, an edge device on SQLite)
    where start-up must succeed and the data can be rebuilt. Never a default.
    It acts on ``migration`` failures only: a database ahead of the code,
    several heads, bad settings, an unreachable database or a lock timeout
    are passed on, and nothing is touched.

    Under the migration lock it plans again (a database another process
    migrated meanwhile is not purged; one another process has just purged is
    migrated from scratch, not purged again), and purges at most once per failure:
    a database purged and not migrated successfully since is refused
    (:class:`~automigrator.AlreadyPurgedError`, passed on with the backup's
    name), so a crash loop or a crowd of replicas purges once. It takes a
    backup (unless ``backup=False``), purges, logs both at CRITICAL, and asks
    for a retry:

    - SQLite: a copy through the sqlite3 backup API beside the file, then
      the file and its ``-wal``, ``-shm`` and ``-journal`` are deleted;
    - PostgreSQL: the schema is renamed to ``<schema>_quarantine_<time>`` and
      an empty one is created, in one transaction (no row is destroyed);
    - MySQL/MariaDB: the tables are moved into a new database
      ``<db>_quarantine_<time>`` (views are dropped).

    Args:
        max_attempts: purges at most, per run.
        backup: ``False`` purges without a backup (say so explicitly).
        keep: backups kept; older ones are deleted.
    """

    def __init__(self, *, max_attempts: int = 1, backup: bool = True, keep: int = 3) -> None:
        self.max_attempts = count("PurgeAndRetry", "max_attempts", max_attempts, least=1)
        self.backup = flag("PurgeAndRetry", "backup", backup)
        self.keep = count("PurgeAndRetry", "keep", keep, least=1)

    async def handle(self, failure: Failure) -> Decision:
        if failure.kind != "migration":
            return Decision.pass_on(f"{failure.kind} failure: not the migration's fault")
        fresh_runs = _decided_by(failure.history, self, "retry")
        if fresh_runs >= self.max_attempts:
            return Decision.pass_on(f"migrated from scratch {fresh_runs} time(s) already")
        migrator = failure.migrator
        async with migrator.locked():
            # Decided again under the lock: another process may have brought
            # the database to the target (and served on it) since we failed.
            plan = await migrator.plan()
            if plan.kind == "at_head":
                return Decision.retry("another process migrated the database; nothing purged")
            if plan.kind not in ("behind", "empty", "unversioned"):
                return Decision.pass_on(f"the database is now {plan.kind}; nothing purged")
            try:
                purged = await migrator.purge(backup=self.backup, keep=self.keep)
            except AlreadyPurgedError as exc:
                if plan.kind == "empty" and migrator.status.revisions_before and not fresh_runs:
                    # Our run began on a database with revisions; another
                    # process purged it since and has not migrated the fresh
                    # one yet (or died first). Giving up would serve degraded
                    # on an empty database that one attempt may well migrate.
                    backup = exc.backup or "no backup"
                    return Decision.retry(
                        f"the database was purged since this run began ({backup}) and is "
                        "empty: migrating it from scratch, nothing purged"
                    )
                return Decision.pass_on(exc.message)
            except AutomigratorError as exc:  # the database refused: nothing was purged
                logger.error("The purge failed, nothing was purged: %s", exc.summary())
                return Decision.pass_on(f"the purge failed ({exc.summary()})")
        logger.critical(
            "Migration failed (%s). PURGED %s; backup: %s. Migrating from scratch.",
            first_line(failure.error.message),
            purged.purged,
            purged.backup or "none (backup=False)",
        )
        return Decision.retry(f"purged {purged.purged}; backup {purged.backup or 'none'}")

    def __repr__(self) -> str:
        return (
            f"PurgeAndRetry(max_attempts={self.max_attempts}, backup={self.backup}, "
            f"keep={self.keep})"
        )


class RestoreBackup:
    """SQLite: copy the database before migrating; on a migration failure, put it back.

    The database is then exactly as before the attempt (same tables, same
    rows), and the failure is passed on: alone, start-up fails;
    ``Chain(RestoreBackup(), LogAndContinue())`` starts degraded on the old
    schema. The copy (``<db>.before-migration.sqlite``) goes back under the
    migration lock as the revision fails, and is dropped once put back, so
    what is written after (degraded, or by the old version) is never gone
    back over. A copy left by a killed attempt is not put back (each SQLite
    revision commits whole or not at all: the database stands at a revision
    boundary); the next attempt replaces it. Other databases are refused
    before any DDL: PostgreSQL rolls a failed run back by itself.
    """

    async def before_upgrade(self, migrator: PolicyMigrator) -> None:
        """Copy the database aside before the first DDL."""
        await migrator.snapshot()

    async def handle(self, failure: Failure) -> Decision:
        if failure.kind != "migration":
            return Decision.pass_on(f"{failure.kind} failure: nothing to restore")
        restored = await failure.migrator.restore_snapshot()
        if not restored:
            return Decision.pass_on("no copy was taken in this attempt")
        logger.critical(
            "Migration failed (%s). The database was put back as it was before the attempt.",
            first_line(failure.error.message),
        )
        return Decision.pass_on("database restored from the copy taken before migrating")

    def __repr__(self) -> str:
        return "RestoreBackup()"
