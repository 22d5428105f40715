"""``AutoMigrator``: plan, lock, re-plan, upgrade, verify; then the failure policy."""

from __future__ import annotations

import logging
import os
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING, Literal

import anyio
import anyio.to_thread
from sqlalchemy.engine import URL, Engine

from ._attempts import Attempts
from ._contention import DdlTimeouts
from ._database import VersionTable, create_engine, display, lock_engine
from ._gcfreeze import FrozenHeap, frozen_heap
from ._lifespan import MigrationRunner
from ._lint import Linter, LintMode
from ._options import LockOption, check_options
from ._plan import Plan
from ._planner import read_plan
from ._purge import Backups, Purged
from ._reporting import Reporter
from ._scripts import BeforeScripts, Scripts
from ._signals import listening
from ._status import AppliedRevision, MigrationState, MigrationStatus
from ._switch import read_switch
from ._upgrading import Upgrader
from ._waits import Waiter
from .errors import AutomigratorError, MigrationError, ShutdownRequestedError
from .events import Listener
from .locking import MigrationLock, lock_for
from .policies import BeforeUpgrade, Fail, FailurePolicy

if TYPE_CHECKING:
    from alembic.config import Config

logger = logging.getLogger("automigrator")


class AutoMigrator(MigrationRunner):
    """Brings the database schema to the scripts' head when the application starts.

    Use ``lifespan=migrator.lifespan`` (FastAPI, Starlette) or wrap any ASGI app
    in ``AutoMigrateMiddleware(app, migrator=migrator)``.

    Args:
        config: path to ``alembic.ini`` (or a ``pyproject.toml`` holding the
            Alembic settings), or an ``alembic.config.Config``.
        url: the database URL env.py sees; default: the config's ``sqlalchemy.url``.
        target: ``"head"`` (default; a single head is required, as in the
            Alembic CLI), ``"heads"`` for deliberate branches, or a revision id
            or branch label. Relative targets (``+1``) are refused.
        enabled: run migrations or not; ``None`` reads ``env_var`` once, here.
        env_var: the switch's environment variable (default ``RUN_MIGRATIONS``).
        default_enabled: the switch when ``env_var`` is unset. ``True``: code
            that installs the migrator means to migrate, and a forgotten
            variable must not leave an app serving an old schema.
        on_failure: a failure policy (default :class:`~automigrator.Fail`).
        lock: ``"auto"`` (the database's own lock), a
            :class:`~automigrator.MigrationLock`, or ``None`` (no lock: only
            safe when a single process ever migrates; logged as a warning).
        lock_url: a URL for the lock's connection only (default: ``url``):
            one that reaches the server directly when ``url`` goes through a
            pooler whose pool is too small to give the lock a server
            connection of its own. Give every replica the same one.
        lock_timeout: seconds to wait for another process's migration.
        connect_timeout: seconds to keep trying while the database refuses
            connections (it is still starting), backing off from 0.25 s to
            4 s; ``0`` fails at once. Bad credentials are never retried.
        version_table: env.py's version table, if not ``alembic_version``.
        version_table_schema: the schema of that table, if not the default.
        baseline: a revision to stamp an *unversioned* database at (tables but
            no version table) before upgrading; without it such a database is
            refused, untouched.
        mode: ``"migrate"`` (default), or ``"check"``: never migrate; wait (one
            query every 0.5 s, up to ``check_timeout``) for another process or
            a Job to bring the database to the target, else
            :class:`~automigrator.SchemaBehindError` through the failure policy.
        when_disabled: the switch off means ``"skip"`` (default) or ``"check"``.
        check_timeout: seconds check mode waits for the target.
        block_startup: ``True`` (default): the application starts once the
            schema is ready. ``False``: at once, migrating in the background;
            put a :class:`~automigrator.ReadinessGate` in front (the middleware
            has one) so requests get 503 until then.
        shutdown_timeout: with ``block_startup=False``, how long a shutdown
            waits for the running revision; the run stops before the next.
        before_scripts: sets the application up for scripts that need it (its
            settings, a Flask app context). Called in the worker thread before
            each import or run of env.py or the revision files (each may run
            on another thread, so keep it idempotent); it may return a context
            manager to run the work inside. Never called at head when the
            revision files state their ids plainly. If it raises, the run fails
            with a :class:`~automigrator.ConfigurationError`.
        multidb_name: for Alembic's ``multidb`` template, the database (ini
            section) this migrator handles; env.py sees only that one listed.
            :meth:`MigratorGroup.from_multidb
            <automigrator.MigratorGroup.from_multidb>` sets it.
        ddl_lock_timeout: seconds a migration statement may wait for a table
            lock (PostgreSQL ``lock_timeout``, MySQL/MariaDB ``lock_wait_timeout``,
            SQLite's busy timeout), so that queries on a busy table never queue
            behind it for longer; ``None`` leaves the server's setting.
        ddl_lock_retries: how many times a revision that met a busy table
            (lock timeout, deadlock, serialization failure) is tried again,
            after a pause with jitter and with a longer timeout (up to twice).
        progress_interval: seconds between "still applying" lines of a long revision.
        when_ahead: a database ahead of the code (a rollback deploy):
            ``"refuse"`` (default: :class:`~automigrator.SchemaAheadError`, as a
            wrong URL looks the same) or ``"serve"`` (ready, with a warning).
        lint: check the pending revisions before any DDL (the Plan and lint
            page): ``"warn"`` (default), ``"refuse"`` or ``"off"``.
        lint_rows: tables with fewer rows pass the rules that depend on size.
    """

    def __init__(
        self,
        config: str | os.PathLike[str] | Config,
        *,
        url: str | URL | None = None,
        target: str = "head",
        enabled: bool | None = None,
        env_var: str = "RUN_MIGRATIONS",
        default_enabled: bool = True,
        on_failure: FailurePolicy | None = None,
        lock: LockOption = "auto",
        lock_url: str | URL | None = None,
        lock_timeout: float = 300.0,
        connect_timeout: float = 60.0,
        version_table: str = "alembic_version",
        version_table_schema: str | None = None,
        baseline: str | None = None,
        mode: Literal["migrate", "check"] = "migrate",
        when_disabled: Literal["skip", "check"] = "skip",
        check_timeout: float = 300.0,
        block_startup: bool = True,
        shutdown_timeout: float = 30.0,
        before_scripts: BeforeScripts | None = None,
        multidb_name: str | None = None,
        ddl_lock_timeout: float | None = 2.0,
        ddl_lock_retries: int = 10,
        progress_interval: float = 10.0,
        when_ahead: Literal["refuse", "serve"] = "refuse",
        lint: LintMode = "warn",
        lint_rows: int = 100_000,
    ) -> None:
        check_options(
            target=target,
            lock=lock,
            lock_timeout=lock_timeout,
            connect_timeout=connect_timeout,
            mode=mode,
            when_disabled=when_disabled,
            check_timeout=check_timeout,
            before_scripts=before_scripts,
            on_failure=on_failure,
            ddl_lock_timeout=ddl_lock_timeout,
            ddl_lock_retries=ddl_lock_retries,
            progress_interval=progress_interval,
            when_ahead=when_ahead,
            lock_url=lock_url,
        )
        super().__init__(block_startup=block_startup, shutdown_timeout=shutdown_timeout)
        self.scripts = Scripts(
            config, url=url, multidb_name=multidb_name, before_scripts=before_scripts
        )
        self.url: URL = self.scripts.url
        # Built (not connected) here: a missing driver fails at import time, and
        # the driver's import is paid with the application's, not at start-up.
        self._engine: Engine = create_engine(self.url)
        self._lock_engine = self._engine if lock_url is None else lock_engine(lock_url, self.url)
        if enabled is None:
            self.enabled, self._switch_source = read_switch(env_var, default=default_enabled)
        else:
            self.enabled, self._switch_source = enabled, f"enabled={enabled}"
        self.target, self.baseline, self.mode = target, baseline, mode
        self.on_failure: FailurePolicy = on_failure if on_failure is not None else Fail()
        self.lock_option: LockOption = lock
        self.lock_timeout = float(lock_timeout)
        self.connect_timeout = float(connect_timeout)
        self.version_table = VersionTable(version_table, version_table_schema)
        self.when_disabled, self.when_ahead = when_disabled, when_ahead
        self.check_timeout = float(check_timeout)
        self.before_scripts = before_scripts
        self._checking = mode == "check"
        self._reporter = Reporter()
        self._waiter = Waiter(self._reporter, self.url, self.connect_timeout, self.lock_timeout)
        self._stop_requested = False  # a shutdown asked the background run to stop
        self._heap = FrozenHeap(owned=False)  # the freeze of the running migration
        self._backups = Backups(self._engine, self.version_table)
        self._attempts = Attempts(self._reporter, self._engine, self.version_table, self.url)
        self._upgrader = Upgrader(
            self.scripts,
            self._reporter,
            self._engine,
            timeouts=DdlTimeouts(ddl_lock_timeout, ddl_lock_retries),
            progress_interval=progress_interval,
        )
        self.linter = Linter(self.scripts, self._engine, target, lint, lint_rows, ddl_lock_timeout)
        # A MigratorGroup plans every database before any changes: its plan
        # (or why there is none) is this run's first.
        self._preplanned: Plan | AutomigratorError | None = None

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
        if not self.should_run() or self.mode == "check":
            return True
        try:
            plan = await self._waiter.reachable(lambda: self._plan(first=True))
            self._raise_refusal(plan, final=False)
        except ShutdownRequestedError:
            raise
        except AutomigratorError as exc:
            self._preplanned = exc
            return False
        finally:
            self._reporter.set(state=MigrationState.PENDING, waiting_for=None)
        self._preplanned = plan
        return True

    # -- the run --------------------------------------------------------------

    async def run(self) -> MigrationStatus:
        """Migrate once, applying the failure policy; returns the final status.

        Raises the error when the policy decides to fail. Safe to call again
        (an at-head database costs one query).
        """
        started = time.monotonic()
        self._checking = self.mode == "check"
        if not self.should_run():
            if self.when_disabled != "check":
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
                    self, self.on_failure, self.migrate, fresh=self._fresh, started=started
                )
        finally:
            done.set()

    def _fresh(self) -> None:
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
            planned = await self._waiter.reachable(lambda: self._plan(first=True))
        plan = self._reporter.planned(planned)
        self._raise_refusal(plan, final=False)
        if plan.kind == "at_head":
            return
        async with self.locked() as waited:
            if not waited:
                return await self._migrate_locked()
        # We waited while another process held the lock: it has just let go,
        # most likely at head. That needs no lock, so every waiter checks at
        # once instead of taking the lock in turn.
        plan = await self.plan()
        self._raise_refusal(plan, final=False)
        if plan.kind == "at_head":
            logger.info("Another process brought the schema to head while we waited")
            return
        # Still behind: the holder failed. Take the lock and keep it, even if
        # we wait for it again: waiters that let go whenever they had waited
        # would hand the lock round forever while no one migrates.
        async with self.locked():
            await self._migrate_locked()

    async def _migrate_locked(self) -> None:
        with frozen_heap() as self._heap:  # short GC pauses meanwhile
            await self._migrate_frozen()

    async def _migrate_frozen(self) -> None:
        # We hold the lock and will most likely upgrade: import the scripts
        # now, and plan on them. Another replica may have migrated since our
        # first plan.
        await anyio.to_thread.run_sync(self.scripts.imported)
        self._heap.more()
        plan = await self.plan()
        self._raise_refusal(plan)
        if plan.kind == "at_head":
            logger.info("Another process brought the schema to head before we took the lock")
            return
        await self.linter.before_upgrade(plan, self._reporter, baseline=self.baseline)
        if isinstance(self.on_failure, BeforeUpgrade):
            await self.on_failure.before_upgrade(self)  # e.g. RestoreBackup's copy
        if plan.kind == "unversioned":
            await self.stamp_baseline()
            plan = await self.plan()
        if plan.kind != "at_head":
            await self.upgrade(plan)
            await self.verify()
        # A purge's fresh database, or RestoreBackup's pending copy, is done with.
        await anyio.to_thread.run_sync(self._backups.settle)

    async def check(self) -> None:
        """Check mode: never migrate; wait up to ``check_timeout`` for the target.

        Then :class:`~automigrator.SchemaBehindError`; what waiting cannot fix
        (ahead of the code, several heads, unversioned) is refused at once.
        """
        plan = await self.plan()
        self._raise_refusal(plan)
        if plan.kind == "at_head":
            return
        await self._waiter.migration(plan, self.plan, self._raise_refusal, self.check_timeout)

    async def plan(self) -> Plan:
        """Read the database's revisions (one short connection) and classify them.

        While the database refuses connections, retries up to ``connect_timeout``.
        """
        return self._reporter.planned(await self._waiter.reachable(self._plan))

    def _plan(self, first: bool = False) -> Plan:
        plan = read_plan(self.scripts, self._engine, self.version_table, self.target, first=first)
        return plan.served_ahead() if self.when_ahead == "serve" else plan

    def _raise_refusal(self, plan: Plan, *, final: bool = True) -> None:
        refusal = plan.refusal(
            final=final, baseline=self.baseline, version_table=str(self.version_table)
        )
        if refusal is not None:
            raise refusal

    async def upgrade(self, plan: Plan) -> None:
        """Run the upgrade through env.py in a worker thread (again on a busy table)."""
        self._reporter.migrating(plan)
        await self._upgrader.run(
            self.target,
            version_table=self.version_table,
            on_applied=self._applied,
            should_stop=lambda: self._stop_requested,
            lock=self._waiter.held,  # checked before each revision
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

    async def stamp_baseline(self) -> None:
        """Stamp an unversioned database at ``baseline`` (called under the lock)."""
        baseline = self.baseline
        assert baseline is not None
        logger.warning(
            "The database has tables but no version table: stamping it at baseline %s", baseline
        )
        await anyio.to_thread.run_sync(
            lambda: self.scripts.stamp(baseline, version_table=self.version_table)
        )

    @asynccontextmanager
    async def locked(self) -> AsyncIterator[bool]:
        """Hold the migration lock for the duration of the block.

        Yields whether it had to wait for another process: ``migrate()`` then
        leaves the block at once and checks the schema without the lock.
        """
        # After a wait we check the schema against the scripts' graph: read
        # it while another process migrates, not after.
        lock = self._make_lock()
        async with self._waiter.holding(lock, read_ahead=self.scripts.graph) as waited:
            yield waited

    @asynccontextmanager
    async def exclusively(self) -> AsyncIterator[None]:
        """Hold the migration lock for a block of start-up work that must not run twice at once.

        For seeding (the first admin user, default groups): every replica
        runs the block, one at a time, so an idempotent seed ("create it if it
        is missing") never races another replica's into duplicate rows or a
        unique violation. Use it after the schema is ready (in the
        application's lifespan under :meth:`wrap_lifespan`, or after
        :meth:`wait_ready`). The status is left alone; waiting is bounded by
        ``lock_timeout`` like a migration's. See the recipe in the docs.
        """
        lock = self._make_lock()
        async with self._waiter.holding(lock, read_ahead=lambda: None, report=False):
            yield

    def _make_lock(self) -> MigrationLock | None:
        option = self.lock_option
        return lock_for(self._lock_engine, self.version_table) if option == "auto" else option

    # -- for failure policies ---------------------------------------------------

    async def purge(self, *, backup: bool = True, keep: int = 3) -> Purged:
        """Back the database up (unless ``backup=False``), then empty it.

        Call it under :meth:`locked`; see :class:`~automigrator.PurgeAndRetry`
        for what a backup is. A database purged and not migrated since is not
        purged again (:class:`~automigrator.AlreadyPurgedError` names the backup).
        """
        self._close_connections()
        return await anyio.to_thread.run_sync(
            lambda: self._backups.purge(backup=backup, keep=keep)
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
