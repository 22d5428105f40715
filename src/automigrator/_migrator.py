"""``AutoMigrator``: plan, lock, re-plan, upgrade, verify; then the failure policy."""

from __future__ import annotations

import logging
import os
import time
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import (
    AbstractContextManager,
    ExitStack,
    asynccontextmanager,
    contextmanager,
)
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, TypeVar

import anyio
import anyio.abc
import anyio.lowlevel
import anyio.to_thread
from sqlalchemy.engine import URL, Engine
from sqlalchemy.exc import DBAPIError

from . import _headcache
from ._database import (
    VersionTable,
    create_engine,
    display,
    has_other_tables,
    parse_url,
    read_revisions,
    redact,
    translate_error,
)
from ._gcfreeze import FrozenHeap, frozen_heap
from ._runner import MigrationRunner, one_line
from ._settings import Settings, read_settings
from ._shutdown import cancelled_by_shutdown
from ._state import AppliedRevision, MigrationState, MigrationStatus, Plan, PlanKind
from ._switch import read_switch
from ._waits import LOG_EVERY, LockOption, Waits
from .errors import (
    AutomigratorError,
    ConfigurationError,
    DatabaseUnavailableError,
    MigrationError,
    MultipleHeadsError,
    SchemaAheadError,
    SchemaBehindError,
    ShutdownRequestedError,
    UnversionedDatabaseError,
)
from .events import STATE_EVENTS, Event, Listener
from .locking import MigrationLock
from .policies import Decision, Fail, Failure, FailurePolicy

if TYPE_CHECKING:
    # Alembic itself is imported only when the scripts' graph is needed: a
    # start at head does without it (0.1 s and 11 MB).
    from alembic.config import Config
    from alembic.script import ScriptDirectory

    from ._purge import Purged

logger = logging.getLogger("automigrator")

BeforeScripts = Callable[[], AbstractContextManager[Any] | None]

# Check mode polls the version table this often.
_CHECK_EVERY = 0.5
# At the end of a failed run we read where the database is, if it answers soon.
_END_READ_TIMEOUT = 5.0
# While migrating, freeze what the migration made every so many revisions.
_REFREEZE_EVERY = 100

T = TypeVar("T")


class AutoMigrator(Waits, MigrationRunner):
    """Brings the database schema to the scripts' head when the application starts.

    Use ``lifespan=migrator.lifespan`` (FastAPI, Starlette) or wrap any ASGI app
    in ``AutoMigrateMiddleware(app, migrator=migrator)``.

    Args:
        config: path to ``alembic.ini`` (or a ``pyproject.toml`` holding the
            Alembic settings), or an ``alembic.config.Config``.
        url: the database URL; overrides ``sqlalchemy.url`` in the config that
            env.py sees. Without it, the config's ``sqlalchemy.url`` is used.
        target: ``"head"`` (default, as the Alembic CLI: a single head is
            required), ``"heads"`` for deliberate branches, or a revision id or
            branch label. Relative targets (``+1``) are refused.
        enabled: run migrations or not; ``None`` reads ``env_var`` once, here.
        env_var: the switch's environment variable (default ``RUN_MIGRATIONS``).
        default_enabled: the switch when ``env_var`` is unset. ``True`` by
            default: code that installs the migrator means to migrate, and a
            forgotten variable must not leave an app serving an old schema.
        on_failure: a failure policy (default :class:`~automigrator.Fail`).
        lock: ``"auto"`` (the database's own lock), a
            :class:`~automigrator.MigrationLock`, or ``None`` (no lock: only
            safe when a single process ever migrates; logged as a warning).
        lock_timeout: seconds to wait for another process's migration.
        connect_timeout: seconds to keep trying while the database refuses
            connections at start (it is still starting); retries back off
            from 0.25 s to 4 s. ``0`` fails on the first refusal. Bad
            credentials and unknown databases are never retried.
        version_table: where env.py keeps the revisions, if not Alembic's
            default ``alembic_version``.
        version_table_schema: the schema of that table, if not the default.
        baseline: a revision to stamp an *unversioned* database at (tables but
            no version table) before upgrading. Without it such a database is
            refused, untouched.
        mode: ``"migrate"`` (default), or ``"check"``: never migrate; start
            when the database is at the target, waiting (one query every
            0.5 s) up to ``check_timeout`` while another process or a Job
            migrates it; then :class:`~automigrator.SchemaBehindError`
            through the failure policy. For replicas that must not migrate.
        when_disabled: what the switch off means: ``"skip"`` (default: do
            nothing) or ``"check"`` (check mode).
        check_timeout: seconds check mode waits for the database to reach
            the target.
        block_startup: ``True`` (default): the application starts once the
            schema is ready. ``False``: it starts at once and migrations run
            in the background; put a :class:`~automigrator.ReadinessGate` in
            front (``AutoMigrateMiddleware`` has one) so requests get 503
            until then.
        shutdown_timeout: with ``block_startup=False``, how long a shutdown
            waits for the running revision to finish; the run stops before
            the next one.
        before_scripts: for scripts that need the application set up first
            (its settings loaded, a Flask app context). Called in the worker
            thread just before env.py or revision files are imported or run;
            it may return a context manager, which the work then runs inside
            (``lambda: flask_app.app_context()``). Called again for each such
            piece of work (the import under the lock, the upgrade), since
            each may run on another thread: one-off set-up should be
            idempotent. Never called at head when the revision files state
            their ids plainly, as Alembic writes them. If it raises, the run
            fails with a :class:`~automigrator.ConfigurationError`.

    .. versionadded:: 0.1
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
    ) -> None:
        if not target or target[0] in "+-" or ":" in target:
            raise ConfigurationError(
                f"target={target!r} is not a start-up target. Use 'head', 'heads', a revision "
                "id or a branch label; relative targets and ranges would move on every start."
            )
        if lock_timeout <= 0:
            raise ConfigurationError(f"lock_timeout must be > 0 seconds, got {lock_timeout!r}.")
        if mode not in ("migrate", "check") or when_disabled not in ("skip", "check"):
            raise ConfigurationError(
                f"mode={mode!r}, when_disabled={when_disabled!r}: mode is 'migrate' or "
                "'check'; when_disabled is 'skip' or 'check'."
            )
        if not check_timeout > 0:
            raise ConfigurationError(f"check_timeout must be > 0 seconds, got {check_timeout!r}.")
        if not connect_timeout >= 0:
            raise ConfigurationError(
                f"connect_timeout must be >= 0 seconds, got {connect_timeout!r}."
            )
        if not (lock is None or lock == "auto" or isinstance(lock, MigrationLock)):
            raise ConfigurationError(
                f"lock={lock!r} is not a lock. Use 'auto', None, or an object with "
                "acquire(timeout), release() and holder()."
            )
        if before_scripts is not None and not callable(before_scripts):
            raise ConfigurationError(
                f"before_scripts={before_scripts!r} is not callable: pass a function that "
                "sets the application up (it may return a context manager)."
            )
        if on_failure is not None and not isinstance(on_failure, FailurePolicy):
            raise ConfigurationError(
                f"on_failure={on_failure!r} is not a failure policy: it needs "
                "'async def handle(self, failure) -> Decision'."
            )
        self._settings: Settings | None = None
        self._config: Config | None = None
        # A member of MigratorGroup.from_multidb: the multidb template's
        # database (its ini section) that this migrator, and env.py, handle.
        self._multidb_name: str | None = None
        if isinstance(config, (str, os.PathLike)):
            self._settings = read_settings(config)
            config_url, self._config_name = self._settings.url, str(config)
        else:
            from . import _alembic

            self._config = _alembic.load_config(config)
            config_url = _alembic.config_url(self._config)
            self._config_name = self._config.config_file_name or "<Config>"
        raw_url = url if url is not None else config_url
        if raw_url is None:
            raise ConfigurationError(
                "No database URL: pass url= to AutoMigrator or set sqlalchemy.url in "
                f"{self._config_name!r}."
            )
        self.url: URL = parse_url(raw_url)
        self._url_given = url is not None
        # Built (not connected) here: a missing driver fails at import time, and
        # the driver's import is paid with the application's, not at start-up.
        self._engine: Engine = create_engine(self.url)
        if self._config is not None and self._url_given:
            self._apply_url(self._config)
        if enabled is None:
            self.enabled, self._switch_source = read_switch(env_var, default=default_enabled)
        else:
            self.enabled, self._switch_source = enabled, f"enabled={enabled}"
        self.target = target
        self.on_failure: FailurePolicy = on_failure if on_failure is not None else Fail()
        self.lock_option: LockOption = lock
        self.lock_timeout = float(lock_timeout)
        self.connect_timeout = float(connect_timeout)
        self.version_table = VersionTable(version_table, version_table_schema)
        self.baseline = baseline
        self.mode = mode
        self.when_disabled = when_disabled
        self.check_timeout = float(check_timeout)
        self._checking = mode == "check"
        self.block_startup = block_startup
        self.shutdown_timeout = float(shutdown_timeout)
        self.before_scripts = before_scripts
        self._stop_requested = False  # a shutdown asked the background run to stop
        self._listeners: list[Listener] = []
        self._status = MigrationStatus()
        self._script: ScriptDirectory | None = None
        self._graph: ScriptDirectory | None = None  # read, not imported: for plans
        self._heap = FrozenHeap(owned=False)  # the freeze of the running migration
        self._snapshot: Literal["taken", "absent"] | None = None  # RestoreBackup's copy
        # A MigratorGroup plans every database before any changes: its plan
        # (or why there is none) is this run's first.
        self._preplanned: Plan | AutomigratorError | None = None
        if lock is None:
            logger.warning(
                "Migration lock disabled (lock=None): concurrent replicas may migrate at "
                "the same time and fail."
            )

    def __repr__(self) -> str:
        return (
            f"AutoMigrator({self._config_name!r}, "
            f"url={display(self.url)!r}, target={self.target!r}, enabled={self.enabled}, "
            f"on_failure={self.on_failure!r})"
        )

    # -- what users read ------------------------------------------------------

    @property
    def status(self) -> MigrationStatus:
        """The latest snapshot: state, revisions before/after, applied, error."""
        return self._status

    @property
    def config(self) -> Config:
        """The Alembic config env.py sees (with ``url=`` applied).

        Built, importing Alembic, on first use: a start at head never needs it.
        """
        if self._config is None:
            from . import _alembic

            assert self._settings is not None
            config = _alembic.load_config(self._settings.path)
            if self._url_given:
                self._apply_url(config)
            self._config = config
        return self._config

    def _apply_url(self, config: Config) -> None:
        from . import _alembic

        if self._multidb_name is None:
            _alembic.set_url(config, self.url)
        else:  # the multidb template's env.py migrates the databases listed here
            _alembic.set_url(config, self.url, section=self._multidb_name)
            config.set_main_option("databases", self._multidb_name)

    async def _preflight(self) -> bool:
        """Plan ahead of :meth:`run` (for MigratorGroup); False when it cannot go ahead.

        The plan, or the error that stops it (unreachable, ahead of the
        code, several heads), becomes the first attempt's, so the failure
        policy sees it and the database is not asked twice.
        """
        self._preplanned = None
        if not self.should_run() or self.mode == "check":
            return True
        try:
            plan = await self._reachable(self._first_plan_sync)
            self._refuse(plan, final=False)
        except ShutdownRequestedError:
            raise
        except AutomigratorError as exc:
            self._preplanned = exc
            return False
        finally:
            self._set(state=MigrationState.PENDING, waiting_for=None)
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
                self._status = MigrationStatus(state=MigrationState.DISABLED, duration=0.0)
                self._emit(Event("disabled", self._status))
                logger.info(
                    "Migrations disabled (%s): not touching the database", self._switch_source
                )
                return self._status
            logger.info("Migrations disabled (%s): checking the schema only", self._switch_source)
            self._checking = True
        self._status = MigrationStatus(state=MigrationState.PENDING)
        self._emit(Event("start", self._status))
        self._script, self._graph = None, None
        self._stop_requested = False
        done = self._begin()
        try:
            return await self._attempts(started)
        except ShutdownRequestedError as exc:
            logger.warning("%s", exc.message)
            self._set(error=one_line(exc), error_kind=exc.kind)
            self._finish(MigrationState.FAILED, started)
            raise
        except BaseException:
            if self._status.state not in _FINAL:
                # Cancelled by the server or the caller: say so rather than
                # leave "waiting" or "migrating" behind.
                self._set(error="Stopped before the run finished", error_kind="shutdown")
                self._finish(MigrationState.FAILED, started)
            raise
        finally:
            done.set()

    async def _attempts(self, started: float) -> MigrationStatus:
        history: list[Decision] = []
        attempt = 0
        logger.info("Checking the schema of %s", display(self.url))
        while True:
            attempt += 1
            self._set(attempts=attempt)
            self._snapshot = None
            try:
                await self.migrate()
            except ShutdownRequestedError:
                raise
            except AutomigratorError as exc:
                error: AutomigratorError = exc
            except Exception as exc:
                error = MigrationError(redact(f"{type(exc).__name__}: {exc}", self.url))
                error.__cause__ = exc
            else:
                self._finish(MigrationState.READY, started)
                logger.info(
                    "Schema ready at %s (%d revision(s) applied in %.2f s)",
                    ", ".join(self._status.revisions_after or ()) or "base",
                    len(self._status.applied),
                    self._status.duration or 0.0,
                )
                return self._status
            self._set(error=one_line(error), error_kind=error.kind)
            failure = Failure(error=error, attempt=attempt, history=tuple(history), migrator=self)
            try:
                decision = await self.on_failure.handle(failure)
            except BaseException:
                await self._end(MigrationState.FAILED, started)
                raise
            # A chain names the member that decided; a lone policy is named here.
            decision = replace(decision, policy=decision.policy or repr(self.on_failure))
            history.append(decision)
            self._emit(Event("decision", self._status, decision=decision))
            if decision.action == "retry":
                logger.warning(
                    "Migration failed (%s: %s); %s decided to retry in %.1f s: %s",
                    error.kind,
                    one_line(error),
                    decision.policy,
                    decision.delay,
                    decision.reason,
                )
                self._set(state=MigrationState.PENDING)
                self._script, self._graph = None, None
                await anyio.sleep(decision.delay)
                continue
            if decision.action == "degrade":
                await self._end(MigrationState.DEGRADED, started)
                logger.critical(
                    "Migration failed (%s: %s); %s decided to continue DEGRADED: %s. The "
                    "application is starting on a schema that may not match its code.",
                    error.kind,
                    one_line(error),
                    decision.policy,
                    decision.reason,
                )
                return self._status
            logger.error(
                "Migration failed (%s: %s); %s decided to fail start-up: %s",
                error.kind,
                one_line(error),
                decision.policy,
                decision.reason,
            )
            await self._end(MigrationState.FAILED, started)
            raise error

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
            planned = await self._reachable(self._first_plan_sync)
        plan = await self._record(planned)
        self._refuse(plan, final=False)
        if plan.kind == "at_head":
            return
        while True:
            async with self.locked() as waited:
                if not waited:
                    try:
                        with frozen_heap() as self._heap:  # short GC pauses meanwhile
                            await self._migrate_locked()
                    finally:
                        self._heap = FrozenHeap(owned=False)
                    return
            # We waited while another process held the lock: it has just let
            # go, most likely at head. That needs no lock, so every waiter
            # checks at once instead of taking the lock in turn; a database
            # still behind (the holder failed) sends us back for the lock.
            plan = await self.plan()
            self._refuse(plan, final=False)
            if plan.kind == "at_head":
                logger.info("Another process brought the schema to head while we waited")
                return

    async def _migrate_locked(self) -> None:
        # We hold the lock and will most likely upgrade: import the scripts
        # now, and plan on them. Another replica may have migrated since our
        # first plan.
        await anyio.to_thread.run_sync(self._script_)
        self._heap.more()
        plan = await self.plan()
        self._refuse(plan)
        if plan.kind == "at_head":
            logger.info("Another process brought the schema to head before we took the lock")
            return
        before_upgrade = getattr(self.on_failure, "before_upgrade", None)
        if before_upgrade is not None:
            await before_upgrade(self)  # e.g. RestoreBackup's copy
        if plan.kind == "unversioned":
            await self.stamp_baseline()
            plan = await self.plan()
            if plan.kind == "at_head":
                return
        await self.upgrade(plan)
        await self.verify()

    async def check(self) -> None:
        """Check mode: never migrate; wait until the database is at the target.

        Polls with one query every 0.5 s for up to ``check_timeout`` seconds
        (state ``waiting``, ``waiting_for="migration"``), then raises
        :class:`~automigrator.SchemaBehindError`. A database ahead of the
        code, several heads or an unversioned database are refused at once.
        """
        started = time.monotonic()
        plan = await self.plan()
        self._refuse(plan)
        if plan.kind == "at_head":
            return
        logger.info(
            "Check mode: the database is at %s, not at %s; waiting up to %g s for another "
            "process to migrate it",
            ", ".join(plan.db_revisions) or "base",
            ", ".join(plan.heads),
            self.check_timeout,
        )
        self._set(state=MigrationState.WAITING, waiting_for="migration")
        deadline, next_log = started + self.check_timeout, started + LOG_EVERY
        with anyio.CancelScope() as scope, cancelled_by_shutdown(scope) as signals:
            while (now := time.monotonic()) < deadline:
                await anyio.sleep(min(_CHECK_EVERY, deadline - now))
                plan = await self.plan()
                self._refuse(plan)
                if plan.kind == "at_head":
                    logger.info("Check mode: the database reached %s", ", ".join(plan.heads))
                    self._set(state=MigrationState.PENDING, waiting_for=None)
                    return
                if time.monotonic() >= next_log:
                    logger.info(
                        "Check mode: still waiting for %s (the database is at %s)",
                        ", ".join(plan.heads),
                        ", ".join(plan.db_revisions) or "base",
                    )
                    next_log += LOG_EVERY
        if signals:
            raise self._shutdown_error(signals, "another process's migration", started)
        raise SchemaBehindError(
            f"Check mode: after {self.check_timeout:g} s the database is still at "
            f"{', '.join(plan.db_revisions) or 'base'}, not at {', '.join(plan.heads)}. "
            "Nothing here migrates it: run the migration Job (or a replica in migrate mode), "
            "or raise check_timeout."
        )

    async def plan(self) -> Plan:
        """Read the database's revisions (one short connection) and classify them.

        While the database refuses connections, retries up to ``connect_timeout``.
        """
        return await self._record(await self._reachable(self._plan_sync))

    async def _record(self, plan: Plan) -> Plan:
        before = self._status.revisions_before
        self._set(
            revisions_before=plan.db_revisions if before is None else before,
            revisions_after=plan.db_revisions,
            heads=plan.heads,
        )
        logger.debug("Plan: %s", plan)
        return plan

    async def upgrade(self, plan: Plan) -> None:
        """Run the upgrade through env.py in a worker thread."""
        self._set(state=MigrationState.MIGRATING)
        logger.info(
            "Migrating from %s to %s: %d revision(s) to apply",
            ", ".join(plan.db_revisions) or "an empty database",
            ", ".join(plan.heads),
            len(plan.pending),
        )
        await anyio.to_thread.run_sync(self._upgrade_sync)

    async def verify(self) -> None:
        """Read the version table again; anything but the target is a failure."""
        plan = await self.plan()
        if plan.kind != "at_head":
            raise MigrationError(
                f"After the upgrade the database is at {', '.join(plan.db_revisions) or 'base'}, "
                f"not at {', '.join(plan.heads)}: env.py did not record the revisions (does it "
                "call context.run_migrations() inside a transaction that is committed, and "
                "with the same version table?)."
            )

    async def stamp_baseline(self) -> None:
        """Stamp an unversioned database at ``baseline`` (called under the lock)."""
        assert self.baseline is not None
        logger.warning(
            "The database has tables but no version table: stamping it at baseline %s",
            self.baseline,
        )
        await anyio.to_thread.run_sync(self._stamp_sync)

    @asynccontextmanager
    async def locked(self) -> AsyncIterator[bool]:
        """Hold the migration lock for the duration of the block.

        Yields whether it had to wait for another process: ``migrate()`` then
        leaves the block at once and checks the schema without the lock.
        """
        lock = self._make_lock()
        if lock is None:
            yield False
            return
        waited = await self._acquire(lock)
        try:
            yield waited
        finally:
            with anyio.CancelScope(shield=True):
                await anyio.to_thread.run_sync(lock.release)
            logger.debug("Released the migration lock %r", lock)

    # -- for failure policies ---------------------------------------------------

    async def purge(self, *, backup: bool = True, keep: int = 3) -> Purged:
        """Back the database up (unless ``backup=False``), then empty it.

        Closes every connection of ours first. Call it under :meth:`locked`.
        What a backup is on each database: see :class:`~automigrator.PurgeAndRetry`.
        """
        from . import _purge

        self._close_connections()
        return await anyio.to_thread.run_sync(
            lambda: _purge.backup_and_purge(
                self._engine, self.version_table, backup=backup, keep=keep
            )
        )

    async def snapshot(self) -> None:
        """SQLite: copy the database aside before migrating (for :class:`RestoreBackup`)."""
        from . import _purge

        if self.url.get_backend_name() != "sqlite":
            raise ConfigurationError(
                f"RestoreBackup works on SQLite files, not on {self.url.get_backend_name()}: "
                "PostgreSQL rolls a failed run back by itself; on MySQL/MariaDB use "
                "PurgeAndRetry, or Fail."
            )
        self._close_connections()
        path, copy = _purge.sqlite_path(self.url), _purge.sqlite_snapshot(self.url)

        def take() -> Literal["taken", "absent"]:
            if not path.exists():
                copy.unlink(missing_ok=True)
                return "absent"
            _purge.sqlite_copy(path, copy)
            return "taken"

        self._snapshot = await anyio.to_thread.run_sync(take)
        logger.info("Copied the database aside before migrating: %s", copy)

    async def restore_snapshot(self) -> bool:
        """Put back the copy :meth:`snapshot` took in this attempt; False if none."""
        from . import _purge

        state, self._snapshot = self._snapshot, None
        if state is None:
            return False
        self._close_connections()
        path, copy = _purge.sqlite_path(self.url), _purge.sqlite_snapshot(self.url)

        def put_back() -> None:
            if state == "taken":
                _purge.sqlite_restore(self.url, copy)
            else:  # there was no database: there is none again
                for file in (path, *(Path(f"{path}{s}") for s in _purge.SQLITE_COMPANIONS)):
                    file.unlink(missing_ok=True)

        await anyio.to_thread.run_sync(put_back)
        return True

    def _close_connections(self) -> None:
        # Nothing of ours may hold the files or the schema while they change.
        self._engine.dispose()
        self._script, self._graph = None, None

    def _request_stop(self) -> None:
        self._stop_requested = True

    # -- internals ------------------------------------------------------------

    def _set(self, **changes: Any) -> None:
        # One atomic attribute swap: readers on other threads see a whole snapshot.
        before = self._status.state
        self._status = replace(self._status, **changes)
        if self._status.state is not before:
            self._emit(Event(STATE_EVENTS[self._status.state], self._status))

    def subscribe(self, listener: Listener) -> Callable[[], None]:
        """Call ``listener(event)`` for every :class:`~automigrator.Event`; returns an unsubscribe.

        See :mod:`automigrator.events` for the events and where they are called.
        """
        self._listeners.append(listener)
        return lambda: self._listeners.remove(listener)

    def _emit(self, event: Event) -> None:
        for listener in tuple(self._listeners):
            try:
                listener(event)
            except Exception:
                logger.exception("An event listener (%r) failed on %s", listener, event.name)

    def _finish(self, state: MigrationState, started: float) -> None:
        self._set(state=state, duration=time.monotonic() - started)

    async def _end(self, state: MigrationState, started: float) -> None:
        # Best effort: after a failure, show where the database really is
        # (transactional DDL may have rolled everything back).
        def read() -> tuple[str, ...] | None:
            try:
                with self._engine.connect() as conn:
                    return read_revisions(conn, self.version_table) or ()
            except Exception:
                return None

        after = None
        with anyio.move_on_after(_END_READ_TIMEOUT):
            after = await anyio.to_thread.run_sync(read, abandon_on_cancel=True)
        if after is not None:
            self._set(revisions_after=after)
        self._finish(state, started)

    def _script_(self) -> ScriptDirectory:
        if self._script is None:
            from . import _alembic

            with self._app_set_up():
                self._script = _alembic.load_script(self.config)
        return self._script

    def _set_up_app(self, stack: ExitStack) -> None:
        """Run ``before_scripts`` in this (worker) thread; enter what it returns."""
        if self.before_scripts is None:
            return
        try:
            entered = self.before_scripts()
            if entered is not None:
                stack.enter_context(entered)
        except Exception as exc:
            raise ConfigurationError(
                f"before_scripts ({self.before_scripts!r}) failed: {type(exc).__name__}: "
                f"{exc}. It sets the application up for the migration scripts; fix it, "
                "or the set-up it needs."
            ) from exc

    @contextmanager
    def _app_set_up(self) -> Iterator[None]:
        with ExitStack() as stack:
            self._set_up_app(stack)
            yield

    def _plan_sync(self, *, first: bool = False) -> Plan:
        remembered = self._remembered_heads()
        # Without remembered heads, the graph is read before connecting:
        # script errors come before any wait for the database. The first
        # plan of an attempt defers it: an empty database needs no graph to
        # know it is behind, and the replica that migrates imports the
        # scripts anyway.
        graph = self._graph_() if remembered is None and not first else None
        try:
            with self._engine.connect() as conn:
                revisions = read_revisions(conn, self.version_table)
                has_tables = revisions is None and has_other_tables(conn, self.version_table)
        except DBAPIError as exc:
            error = translate_error(exc, self.url, doing="reading the version table")
            if isinstance(error, DatabaseUnavailableError):
                self._graph_()  # a script error first: waiting would not fix it
            raise error from exc
        if remembered is not None and _at(remembered, revisions, self.target):
            return Plan("at_head", revisions or (), remembered)  # one query, no graph
        if first and not revisions:
            # Nothing applied yet: behind whatever the scripts hold. Multiple
            # heads are refused under the lock, still before any DDL.
            kind: PlanKind = "unversioned" if has_tables else "empty"
            return Plan(kind, (), remembered or ())
        graph = graph or self._graph_()
        from . import _alembic

        return _alembic.make_plan(graph, self.target, revisions, has_tables=has_tables)

    def _first_plan_sync(self) -> Plan:
        return self._plan_sync(first=True)

    def _remembered_heads(self) -> tuple[str, ...] | None:
        if self.target not in ("head", "heads") or self._graph or self._script:
            return None  # a pinned target, or the graph is at hand anyway
        where = self._cache_place()
        return None if where is None else _headcache.recall(*where)

    def _cache_place(self) -> tuple[Path, str] | None:
        # Remembered heads need the config as a file we can read ourselves:
        # a Config object built in code has nothing to key them on.
        if self._settings is None:
            return None
        folder = self._settings.script_folder()
        key = _headcache.config_key(self._settings.path)
        if folder is None or key is None:
            return None
        return folder / "__pycache__" / _headcache.FILE_NAME, key

    def _graph_(self) -> ScriptDirectory:
        # Planning needs the graph only: read it without importing the
        # revision files. Imported (as Alembic does) only to run them, or
        # when the files cannot be read plainly.
        if self._script is not None:
            return self._script
        if self._graph is None:
            from . import _fastheads

            with ExitStack() as stack:
                # The hook runs only if a file must be imported after all.
                graph = _fastheads.load(self.config, lambda: self._set_up_app(stack))
            if graph is None:
                self._graph = self._script_()
            else:
                self._graph = graph.script
                where = self._cache_place()
                if graph.plain and where is not None:
                    _headcache.remember(*where, graph.script, graph.heads)
        return self._graph

    def _upgrade_sync(self) -> None:
        from . import _alembic

        script = self._script_()
        with self._app_set_up():
            _alembic.upgrade(
                self.config,
                script,
                self.target,
                url=self.url,
                version_table=self.version_table,
                on_applied=self._applied,
                should_stop=lambda: self._stop_requested,
            )
        if self._stop_requested:
            done = self._status.applied[-1].revision if self._status.applied else "none"
            raise ShutdownRequestedError(
                f"The application is shutting down: the migration stopped after revision "
                f"{done}, before the next one. The next start continues from there.",
                signal=0,
            )

    def _stamp_sync(self) -> None:
        assert self.baseline is not None
        from . import _alembic

        script = self._script_()
        with self._app_set_up():
            _alembic.stamp(
                self.config, script, self.baseline, url=self.url, version_table=self.version_table
            )

    def _applied(self, applied: AppliedRevision) -> None:
        if len(self._status.applied) % _REFREEZE_EVERY == _REFREEZE_EVERY - 1:
            self._heap.more()  # what the last revisions made stays out of GC passes too
        self._set(applied=(*self._status.applied, applied))
        self._emit(Event("revision_applied", self._status, revision=applied))

    def _refuse(self, plan: Plan, *, final: bool = True) -> None:
        # "Unversioned" is only final under the lock (final=True): without it
        # we may have seen another replica's tables before its version table.
        if plan.kind == "multiple_heads":
            raise MultipleHeadsError(
                f"The migration scripts have {len(plan.heads)} heads ({', '.join(plan.heads)}) "
                "and the target is 'head': usually two branches each added a revision on the "
                "same parent. Run 'alembic merge heads' and deploy the merge revision, or pass "
                "target='heads' if the branches are deliberate. Nothing was changed.",
                heads=plan.heads,
            )
        if plan.kind == "ahead_of_code":
            raise SchemaAheadError(
                f"The database is at revision {', '.join(plan.unknown)}, which these migration "
                "scripts do not know: this deploy is older than the database (a rollback?). "
                "Deploy code that contains that revision, or downgrade the database with the "
                "newer code first. Nothing was changed.",
                revisions=plan.unknown,
            )
        if plan.kind == "unversioned" and self.baseline is None and final:
            raise UnversionedDatabaseError(
                f"The database has tables but no version table {str(self.version_table)!r}: "
                "these migrations did not create it. If its schema matches a revision, pass "
                "baseline='<revision>' to stamp it there first; if env.py keeps the version "
                "table elsewhere, pass version_table=/version_table_schema=. Nothing was "
                "changed."
            )


def _at(heads: tuple[str, ...], revisions: tuple[str, ...] | None, target: str) -> bool:
    """Whether the version table holds exactly the heads (and the target allows them)."""
    return (
        bool(revisions)
        and set(revisions or ()) == set(heads)
        and (target == "heads" or len(heads) == 1)
    )


_FINAL = (MigrationState.READY, MigrationState.DEGRADED, MigrationState.FAILED)
