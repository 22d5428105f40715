"""``AutoMigrator``: plan, lock, re-plan, upgrade, verify; then the failure policy."""

from __future__ import annotations

import logging
import os
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING

import anyio
import anyio.to_thread
from sqlalchemy.engine import URL, Engine

from ._lifespan import MigrationRunner
from ._plan import Plan, read_plan
from ._settings import (
    Baseline,
    Ddl,
    History,
    Lint,
    LintMode,
    LockOption,
    MigratorSettings,
    Mode,
    Switch,
    Timeouts,
    failure_policy,
    lock_option,
)
from ._status import AppliedRevision, MigrationState, MigrationStatus
from .database._connections import VersionTable, create_engine, display, lock_engine
from .database._ledger import Ledger
from .database._purge import Backups, Purged
from .errors import AutomigratorError, MigrationError, ShutdownRequestedError
from .events import Listener
from .linting._linter import Linter
from .locking import MigrationLock, lock_for
from .policies import BeforeUpgrade, FailurePolicy
from .process._gcfreeze import FrozenHeap, frozen_heap
from .process._signals import listening
from .run._attempts import Attempts
from .run._bookkeeping import Bookkeeper, Resolution
from .run._reporting import Reporter
from .run._upgrading import Upgrader
from .run._waits import Waiter
from .scripts._hooks import RunHooks
from .scripts._scripts import BeforeScripts, Scripts

if TYPE_CHECKING:
    from alembic.config import Config

logger = logging.getLogger("automigrator")


class AutoMigrator(MigrationRunner):
    """Brings the database schema to the scripts' head when the application starts.

    Use ``lifespan=migrator.lifespan`` (FastAPI, Starlette) or wrap any ASGI app
    in ``AutoMigrateMiddleware(app, migrator=migrator)``. Every argument but
    ``config`` is keyword-only and checked here (a wrong one raises
    :class:`~automigrator.ConfigurationError` naming it); ``None`` means the
    settings object's defaults. The Settings page says what each one does.

    Args:
        config: ``alembic.ini`` (or a ``pyproject.toml``), or an Alembic ``Config``.
        url: the database URL env.py sees; default: the config's.
        target: ``"head"``, ``"heads"``, a revision id or a branch label.
        enabled: ``True``, ``False`` or a :class:`~automigrator.Switch`.
        on_failure: a failure policy (default :class:`~automigrator.Fail`).
        lock: ``"auto"``, a :class:`~automigrator.MigrationLock`, or ``None``.
        lock_url: a URL for the lock's connection only (past a pooler).
        timeouts: a :class:`~automigrator.Timeouts`.
        version_table: a name or a :class:`~automigrator.VersionTable`.
        baseline: the revision an unversioned database is stamped at first,
            or a :class:`~automigrator.Baseline` that also makes the tables of
            a create_all-first app on an empty database.
        mode: ``"migrate"``, or ``"check"``: never migrate, wait for the target.
        block_startup: start the app once ready, or at once behind a gate.
        before_scripts: sets the app up before env.py and the revisions load.
        multidb_name: for Alembic's ``multidb`` template, this one's database.
        ddl: a :class:`~automigrator.Ddl` (the table-lock timeout, its retries).
        history: a :class:`~automigrator.History` (the ledger; serving ahead).
        lint: a :class:`~automigrator.Lint`, or its mode alone.
    """

    def __init__(
        self,
        config: str | os.PathLike[str] | Config,
        *,
        url: str | URL | None = None,
        target: str = "head",
        enabled: bool | Switch | None = None,
        on_failure: FailurePolicy | None = None,
        lock: LockOption = "auto",
        lock_url: str | URL | None = None,
        timeouts: Timeouts | None = None,
        version_table: str | VersionTable | None = None,
        baseline: str | Baseline | None = None,
        mode: Mode = "migrate",
        block_startup: bool = True,
        before_scripts: BeforeScripts | None = None,
        multidb_name: str | None = None,
        ddl: Ddl | None = None,
        history: History | None = None,
        lint: LintMode | Lint | None = None,
    ) -> None:
        settings = MigratorSettings.build(
            target=target,
            enabled=enabled,
            timeouts=timeouts,
            ddl=ddl,
            lint=lint,
            version_table=version_table,
            baseline=baseline,
            mode=mode,
            history=history,
            block_startup=block_startup,
        )
        self.on_failure: FailurePolicy = failure_policy(on_failure)
        self._lock_option = lock_option(lock, lock_url)
        super().__init__(
            block_startup=settings.block_startup, shutdown_timeout=settings.timeouts.shutdown
        )
        self._settings = settings
        self.scripts = Scripts(
            config, url=url, multidb_name=multidb_name, before_scripts=before_scripts
        )
        self.url: URL = self.scripts.url
        # Built (not connected) here: a missing driver fails at import time, and
        # the driver's import is paid with the application's, not at start-up.
        self._engine: Engine = create_engine(self.url)
        self._lock_engine = self._engine if lock_url is None else lock_engine(lock_url, self.url)
        self.enabled, self._switch_source = settings.switch.read()
        self._checking = settings.mode == "check"  # each run() decides again
        self._reporter = Reporter()
        self._waiter = Waiter(self._reporter, self.url, settings.timeouts)
        self._stop_requested = False  # a shutdown asked the background run to stop
        self._heap = FrozenHeap(owned=False)  # the freeze of the running migration
        self._backups = Backups(
            self._engine, settings.version_table, lock_timeout=settings.ddl.lock_timeout
        )
        self._attempts = Attempts(self._reporter, self._engine, settings.version_table, self.url)
        table, timeout = settings.history.table, settings.ddl.lock_timeout
        self.ledger = Ledger(self._engine, self.version_table, table, timeout) if table else None
        upgrading = (self._engine, settings, self.ledger)
        self._upgrader = Upgrader(self.scripts, self._reporter, *upgrading)
        self._books = Bookkeeper(self.scripts, self.ledger, settings, self._waiter, self._upgrader)
        self.linter = Linter(self.scripts, self._engine, settings)
        # A MigratorGroup plans every database before any changes: its plan
        # (or why there is none) is this run's first.
        self._preplanned: Plan | AutomigratorError | None = None

    @property
    def settings(self) -> MigratorSettings:
        """The settings this migrator was built with (frozen: build another to change them)."""
        return self._settings

    @property
    def target(self) -> str:
        """The revision(s) a run brings the database to (``settings.target``)."""
        return self._settings.target

    @property
    def baseline(self) -> str | None:
        """The revision an unversioned database is stamped at (``settings.baseline``)."""
        return self._settings.baseline.revision if self._settings.baseline else None

    @property
    def version_table(self) -> VersionTable:
        """env.py's version table (``settings.version_table``)."""
        return self._settings.version_table

    def __repr__(self) -> str:
        return (
            f"AutoMigrator({self.scripts.name!r}, "
            f"url={display(self.url)!r}, target={self.target!r}, enabled={self.enabled}, "
            f"on_failure={self.on_failure!r})"
        )

    @property
    def status(self) -> MigrationStatus:
        """The latest snapshot: state, revisions before/after, applied, error."""
        return self._reporter.status

    @property
    def config(self) -> Config:
        """The Alembic config env.py sees (with ``url=`` applied).

        Built, importing Alembic, on first use: a start at head never needs it.
        """
        return self.scripts.config

    def subscribe(self, listener: Listener) -> Callable[[], None]:
        """Call ``listener(event)`` for every :class:`~automigrator.Event`; returns an unsubscribe.

        See :mod:`automigrator.events` for the events and where they are called.
        """
        return self._reporter.subscribe(listener)

    def database_urls(self) -> tuple[URL, ...]:
        """This migrator's database URL."""
        return (self.url,)

    def request_stop(self) -> None:
        """Ask a running migration to stop before its next revision (a shutdown)."""
        self._stop_requested = True

    async def preflight(self) -> bool:
        """Plan ahead of :meth:`run` (for MigratorGroup); False when it cannot go ahead.

        The plan, or the error that stops it (unreachable, ahead of the
        code, several heads), becomes the first attempt's, so the failure
        policy sees it and the database is not asked twice.
        """
        self._preplanned = None
        if not self.should_run() or self._settings.mode == "check":
            return True
        try:
            plan = await self._waiter.once_reachable(lambda: self._plan(first=True))
            self.raise_for_plan(plan, final=False)
        except ShutdownRequestedError:
            raise
        except AutomigratorError as exc:
            self._preplanned = exc
            return False
        finally:
            self._reporter.done_waiting(MigrationState.PENDING)
        self._preplanned = plan
        return True

    # -- the run --------------------------------------------------------------

    async def run(self) -> MigrationStatus:
        """Migrate once, applying the failure policy; returns the final status.

        Raises the error when the policy decides to fail. Safe to call again
        (an at-head database costs one query).
        """
        started = time.monotonic()
        self._checking = self._settings.mode == "check"
        if not self.should_run():
            if self._settings.switch.when_disabled != "check":
                self._reporter.reset(MigrationStatus(state=MigrationState.DISABLED, duration=0.0))
                logger.info(
                    "Migrations disabled (%s): not touching the database", self._switch_source
                )
                return self.status
            logger.info("Migrations disabled (%s): checking the schema only", self._switch_source)
            self._checking = True
        self._reporter.reset(MigrationStatus(state=MigrationState.PENDING))
        self.scripts.forget()
        self._stop_requested = False
        done = self._begin()
        try:
            with self._reporter.failed_if_interrupted(started), listening():
                return await self._attempts.run(
                    self, self.on_failure, self.migrate, before_each=self._renew, started=started
                )
        finally:
            self._backups.forget_snapshot()  # the policy has decided: a copy left goes
            done.set()

    def _renew(self) -> None:
        # Each attempt imports the scripts and takes its snapshot anew.
        self._backups.forget_snapshot()
        self.scripts.forget()

    # -- the steps users override ---------------------------------------------

    def should_run(self) -> bool:
        """Whether to run migrations at all; override to decide otherwise.

        Default: the ``enabled`` argument, or the ``RUN_MIGRATIONS`` switch.
        """
        return self.enabled

    async def migrate(self) -> None:
        """One attempt: plan, and if behind, lock, re-plan, upgrade and verify.

        Override to wrap your own recovery around ``await super().migrate()``
        (the reference design's ``migrate()`` callback). Raise to report a
        failure; the failure policy sees what you raise.
        """
        if self._checking:
            await self.check()
            return
        planned, self._preplanned = self._preplanned, None
        if isinstance(planned, AutomigratorError):
            raise planned
        if planned is None:
            planned = await self._waiter.once_reachable(lambda: self._plan(first=True))
        plan = self._reporter.planned(planned)
        self.raise_for_plan(plan, final=False)
        if plan.kind == "at_head" and not self._books.unrecorded(plan):
            return
        async with self.locked() as waited:
            if not waited:
                return await self._migrate_locked(adopting=plan.kind == "at_head")
        # We waited while another process held the lock: it has just let go,
        # most likely at head. That needs no lock, so every waiter checks at
        # once instead of taking the lock in turn.
        plan = await self.plan()
        self.raise_for_plan(plan, final=False)
        if plan.kind == "at_head" and not self._books.unrecorded(plan):
            logger.info("Another process brought the schema to head while we waited")
            return
        # Still behind: the holder failed. Take the lock and keep it, even if
        # we wait for it again: waiters that let go whenever they had waited
        # would hand the lock round forever while no one migrates.
        async with self.locked():
            await self._migrate_locked(adopting=plan.kind == "at_head")

    async def _migrate_locked(self, adopting: bool = False) -> None:
        if adopting and await self._books.adopted_at_head(self.plan, self.raise_for_plan):
            return  # at head: the ledger's missing revisions recorded, Alembic not imported
        # We hold the lock and will most likely upgrade: import the scripts
        # now (the GC frozen meanwhile: short pauses), and plan on them.
        # Another replica may have migrated since our first plan.
        with frozen_heap() as self._heap:
            await anyio.to_thread.run_sync(self.scripts.imported)
            self._heap.more()
            plan = await self.plan()
            self.raise_for_plan(plan)
            await self._books.adopt(plan)  # revisions the ledger lacks (applied before it)
            if plan.kind == "at_head":
                logger.info("The schema is at head: nothing to migrate")
                return
            self._books.linted(await self.linter.before_upgrade(plan, self._reporter))
            if isinstance(self.on_failure, BeforeUpgrade):
                await self.on_failure.before_upgrade(self)  # e.g. RestoreBackup's copy
            if self._upgrader.stamps_first(plan):
                empty = plan.kind == "empty"  # nothing old serves from it: no post-deploy left
                await self._upgrader.stamp_baseline(plan, self.version_table, self._waiter.held)
                plan = await self.plan()
                plan = plan.with_post_deploy() if empty else plan
            if plan.kind != "at_head":
                try:
                    await self.upgrade(plan)
                    await self.verify()
                    await self._books.check_drift()  # History(drift="warn")
                except AutomigratorError as exc:
                    # RestoreBackup's copy goes back under this lock: after it,
                    # another process could migrate or write before the policy.
                    if exc.kind == "migration" and self._backups.holds_snapshot():
                        await self.restore_snapshot()
                    raise
            # A purge's fresh database, or RestoreBackup's pending copy, is done with.
            await anyio.to_thread.run_sync(self._backups.settle)

    async def check(self) -> None:
        """Check mode: never migrate; wait up to ``Timeouts.check`` for the target.

        Then :class:`~automigrator.SchemaBehindError`; what waiting cannot fix
        (ahead of the code, several heads, unversioned) is refused at once.
        """
        plan = await self.plan()
        self.raise_for_plan(plan)
        if plan.kind == "at_head":
            return
        await self._waiter.until_target(plan, self.plan, self.raise_for_plan)

    async def plan(self) -> Plan:
        """Read the database's revisions (one short connection) and classify them.

        While the database refuses connections, retries up to ``Timeouts.connect``.
        """
        return self._reporter.planned(await self._waiter.once_reachable(self._plan))

    def _plan(self, first: bool = False) -> Plan:
        plan = read_plan(
            self.scripts,
            self._engine,
            self.version_table,
            self.target,
            first=first,
            ledger=self.ledger,
            post_deploy=self._settings.switch.post_deploy,
        )
        self._books.warn_edits(plan)
        return plan.served_ahead(self._settings.when_ahead)

    def raise_for_plan(self, plan: Plan, *, final: bool = True) -> None:
        """Raise what forbids acting on ``plan``: ahead of the code, several heads, unversioned.

        The one check a start, :func:`~automigrator.preview`,
        :func:`~automigrator.lint` and the command line all make before
        anything else. An unversioned database is refused only when
        ``final`` (under the lock: another replica may have been seen half
        way), and never with a ``baseline``.
        """
        refusal = plan.refusal(
            final=final,
            baseline=self.baseline,
            version_table=str(self.version_table),
            edits=self._settings.history.on_edit == "refuse",
        )
        if refusal is not None:
            raise refusal

    async def upgrade(self, plan: Plan) -> None:
        """Run the upgrade through env.py in a worker thread (again on a busy table)."""
        self._reporter.migrating(plan)
        hooks = RunHooks(
            on_step=self._reporter.revision_begins,
            on_applied=self._applied,
            should_stop=lambda: self._stop_requested,
            lock=self._waiter.held,  # checked as the run goes (locking.HeldLock)
            ledger=self.ledger,
            run=self._books.run_facts(self._waiter.waited_for),
        )
        await self._upgrader.run(
            plan,
            target=plan.upgrade_target(self.target),
            version_table=self.version_table,
            hooks=hooks,
        )
        if self._stop_requested:
            applied = self.status.applied
            raise ShutdownRequestedError.between_revisions(applied[-1] if applied else None)

    def _applied(self, applied: AppliedRevision) -> None:
        self._heap.after_revision(len(self.status.applied) + 1)
        self._reporter.applied(applied)

    async def verify(self) -> None:
        """Read the version table again; anything but the target is a failure."""
        plan = await self.plan()
        if plan.kind != "at_head":
            raise MigrationError.not_recorded(plan.db_revisions, plan.heads)

    @asynccontextmanager
    async def locked(self) -> AsyncIterator[bool]:
        """Hold the migration lock for the duration of the block.

        Yields whether it had to wait for another process: ``migrate()`` then
        leaves the block at once and checks the schema without the lock.
        """
        # After a wait we check the schema against the scripts' graph: read
        # it while another process migrates, not after.
        lock = self.migration_lock()
        async with self._waiter.holding(lock, read_ahead=self.scripts.graph) as waited:
            yield waited

    @asynccontextmanager
    async def exclusively(self) -> AsyncIterator[None]:
        """Hold the migration lock for a block of start-up work that must not run twice at once.

        For seeding: every replica runs the block, one at a time, after the
        schema is ready; waiting is bounded by ``Timeouts.lock``. A block that
        ends after its lock was lost raises :class:`~automigrator.LockLostError`
        on exit, so a transaction opened around it rolls back. See the recipe.
        """
        async with self._waiter.exclusively(self.migration_lock()):
            yield

    def migration_lock(self) -> MigrationLock | None:
        """A new instance of the lock this migrator takes (None with ``lock=None``)."""
        option = self._lock_option
        return lock_for(self._lock_engine, self.version_table) if option == "auto" else option

    async def resolve(self, revision: str, decision: Resolution, *, reason: str) -> None:
        """``automigrator resolve``: a person's word on ``revision``, kept in the
        ledger with who and why (see ``Bookkeeper.resolve``), under the lock."""
        async with self.locked():
            await self._books.resolve(revision, decision, reason, await self.plan())

    # -- for failure policies ---------------------------------------------------

    async def purge(self, *, backup: bool = True, keep: int = 3) -> Purged:
        """Back the database up (unless ``backup=False``), then empty it.

        Call it under :meth:`locked`; see :class:`~automigrator.PurgeAndRetry`
        for what a backup is. A database purged and not migrated since is not
        purged again (:class:`~automigrator.AlreadyPurgedError` names the backup).
        """
        self._close_connections()
        return await anyio.to_thread.run_sync(
            lambda: self._backups.purge(backup=backup, keep=keep, fence=self._waiter.fence)
        )

    async def snapshot(self) -> None:
        """SQLite: copy the database aside before migrating (for :class:`RestoreBackup`)."""
        self._backups.check_snapshot_possible()
        self._close_connections()
        await anyio.to_thread.run_sync(self._backups.snapshot)

    async def restore_snapshot(self) -> bool:
        """Put back the copy :meth:`snapshot` took in this attempt; False if none."""
        self._close_connections()
        return await anyio.to_thread.run_sync(self._backups.restore)

    def _close_connections(self) -> None:
        # Nothing of ours may hold the files or the schema while they change.
        self._engine.dispose()
        self.scripts.forget()
