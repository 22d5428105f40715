"""Calling Alembic: the config, the scripts, the plan, and running env.py.

With ``_scripts.py`` (which calls it) the only module that calls Alembic;
its private API is reached through ``_alembic_compat.py`` alone.

It loads the config and the script directory, plans an upgrade against the
revisions read from the database, and runs the upgrade through the user's own
env.py in the calling (worker) thread, recording each applied revision.
Alembic's and SQLAlchemy's errors are translated here, chained with ``from``.
"""

from __future__ import annotations

import io
import logging
import os
import threading
import time
import warnings
from collections.abc import Callable, Iterable, Iterator, Sequence
from configparser import Error as ConfigParserError
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

from alembic.config import Config
from alembic.runtime.environment import EnvironmentContext
from alembic.runtime.migration import MigrationContext, MigrationInfo, RevisionStep
from alembic.script import ScriptDirectory
from alembic.script.revision import RevisionError
from alembic.util import CommandError
from sqlalchemy.engine import URL, Connection
from sqlalchemy.exc import DBAPIError

from ._alembic_compat import recording_operations, stamp_steps, upgrade_steps, version_locations
from ._configfile import config_error_text
from ._contention import LiveRun, is_contention
from ._database import VersionTable, display, mismatch, translate_error
from ._logguard import LoggingGuard
from ._plan import PendingRevision, Plan
from ._redaction import redact
from ._status import AppliedRevision
from ._textgraph import graph_problem
from .errors import (
    AutomigratorError,
    ConfigurationError,
    ContentionError,
    DatabaseUnavailableError,
    LockLostError,
    MigrationError,
    first_line,
)
from .locking import HeldLock

logger = logging.getLogger("automigrator")

# Alembic keeps the running environment in module globals (alembic.context,
# alembic.op): two runs at once in one process would trample each other.
_RUN_LOCK = threading.Lock()

OnApplied = Callable[[AppliedRevision], None]
OnStep = Callable[[str, str], None]


def load_config(source: str | os.PathLike[str] | Config) -> Config:
    """An Alembic Config: built from a file ``_settings`` has read and checked, or as given.

    A given ``Config`` is checked here: it must name a ``script_location``.
    """
    if not isinstance(source, Config):
        path = Path(source)
        if path.suffix != ".toml":
            return Config(path)
        try:
            return Config(toml_file=path)
        except TypeError as exc:  # Alembic before 1.16 has no toml_file
            raise ConfigurationError(
                f"{str(path)!r}: Alembic settings in pyproject.toml need Alembic 1.16 or "
                "newer. Upgrade Alembic, or pass an alembic.ini."
            ) from exc
    try:
        location = option(source, "script_location")
    except ConfigParserError as exc:
        raise ConfigurationError(
            f"Could not read the Alembic config {source.config_file_name!r}: "
            f"{config_error_text(exc)}"
        ) from exc
    if not location:
        raise ConfigurationError(
            f"The Alembic config {source.config_file_name or source.toml_file_name!r} has no "
            "'script_location'. Add 'script_location = <folder with env.py>' to its "
            "[alembic] section."
        )
    return source


def option(cfg: Config, name: str) -> str | None:
    """An ``[alembic]`` option of the config (or of pyproject.toml's ``[tool.alembic]``)."""
    # get_alembic_option (Alembic 1.16+) also reads pyproject.toml.
    getter = getattr(cfg, "get_alembic_option", None) or cfg.get_main_option
    value: str | None = getter(name)
    return value


def set_url(cfg: Config, url: URL, *, section: str | None = None) -> None:
    """Make ``url`` the ``sqlalchemy.url`` that env.py reads (in ``section``, for multidb)."""
    # ConfigParser interpolates '%': a percent-encoded password must be doubled.
    value = url.render_as_string(hide_password=False).replace("%", "%%")
    if section is None:
        cfg.set_main_option("sqlalchemy.url", value)
    else:
        cfg.set_section_option(section, "sqlalchemy.url", value)


def config_url(cfg: Config) -> str | None:
    """The ``sqlalchemy.url`` of the config, if any."""
    return cfg.get_main_option("sqlalchemy.url") or None


def load_script(cfg: Config) -> ScriptDirectory:
    """The script directory, checked: folders exist, revision files import, graph is sound."""
    try:
        script = ScriptDirectory.from_config(cfg)
    except CommandError as exc:
        raise ConfigurationError(
            f"Could not load the migration scripts: {exc}. Check 'script_location' in "
            f"{cfg.config_file_name or cfg.toml_file_name!r}."
        ) from exc
    # Alembic treats a missing versions folder as "no revisions", which would
    # make an empty database look up to date.
    for location in version_locations(script):
        if not Path(location).is_dir():
            raise ConfigurationError(
                f"The versions folder {str(location)!r} does not exist. Create it, or fix "
                "'script_location' / 'version_locations' in the Alembic config."
            )
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        try:
            heads = script.get_heads()
        except (RevisionError, CommandError, KeyError) as exc:
            # A KeyError is Alembic meeting a down_revision that names no
            # revision: the files' text says which file, and what to fix.
            problem = _graph_problem(script)
            raise ConfigurationError(
                problem or f"The revision graph is broken: {type(exc).__name__}: {exc}"
            ) from exc
        except Exception as exc:
            raise ConfigurationError(
                _graph_problem(script)
                or f"A revision file failed to import: {type(exc).__name__}: {exc}"
            ) from exc
    for warning in seen:
        if "present more than once" in str(warning.message):
            # Alembic keeps one of the two files and skips the other.
            raise ConfigurationError(
                _graph_problem(script) or f"A revision id is used twice: {warning.message}"
            )
        warnings.warn_explicit(warning.message, warning.category, warning.filename, warning.lineno)
    if not heads:
        raise no_revisions(script)
    return script


def _graph_problem(script: ScriptDirectory) -> str | None:
    recursive = bool(getattr(script, "recursive_version_locations", False))
    return graph_problem(version_locations(script), recursive)


def no_revisions(script: ScriptDirectory) -> ConfigurationError:
    """Scripts without one revision: a wrong folder, never "ready at base"."""
    folders = ", ".join(repr(folder) for folder in version_locations(script))
    return ConfigurationError(
        f"No revision file was found in {folders}: an empty database would look up to "
        "date. Point 'script_location' / 'version_locations' at the folder holding the "
        "revisions (if env.py chooses a folder at run time, set version_locations to it)."
    )


def make_plan(
    script: ScriptDirectory,
    target: str,
    db_revisions: tuple[str, ...] | None,
    *,
    has_tables: bool,
) -> Plan:
    """Compare the database's revisions with the scripts; no DDL, no env.py."""
    heads = tuple(sorted(script.get_heads()))
    if not heads:
        raise no_revisions(script)
    current = db_revisions or ()
    if target == "head" and len(heads) > 1:
        return Plan("multiple_heads", current, heads)
    unknown = tuple(rev for rev in current if not _known(script, rev))
    if unknown:
        return Plan("ahead_of_code", current, heads, unknown=unknown)
    if db_revisions is None and has_tables:
        return Plan("unversioned", current, heads)
    try:
        targets = tuple(sorted(r.revision for r in script.get_revisions(target) if r is not None))
        steps = upgrade_steps(script, target, current)
    except (CommandError, RevisionError) as exc:
        if _is_ancestor_of(script, target, current):
            # The database is already past a pinned target: nothing to do,
            # and we never downgrade (said plainly by the migrator).
            return Plan("at_head", current, targets, past_target=True)
        raise ConfigurationError(
            f"Unknown migration target {target!r}: {exc}. Use 'head', 'heads', a revision "
            "id or a branch label the scripts define."
        ) from exc
    pending = tuple(step.revision.revision for step in steps)
    if not pending:
        return Plan("at_head", current, targets, past_target=set(current) != set(targets))
    return Plan("behind" if current else "empty", current, targets, pending=pending)


def _known(script: ScriptDirectory, rev: str) -> bool:
    try:
        found = script.get_revision(rev)
    except (CommandError, RevisionError):
        return False
    return found is not None and found.revision == rev


def _is_ancestor_of(script: ScriptDirectory, target: str, current: Sequence[str]) -> bool:
    if not current:
        return False
    try:
        wanted = {r.revision for r in script.get_revisions(target) if r is not None}
        below = {r.revision for r in script.revision_map.iterate_revisions(tuple(current), "base")}
    except (CommandError, RevisionError):
        return False
    return bool(wanted) and wanted <= below


class _Recorder:
    """Collects the revisions applied during one upgrade, and logs each one."""

    def __init__(
        self,
        on_applied: OnApplied,
        version_table: VersionTable,
        should_stop: Callable[[], bool] = lambda: False,
        lock: object = None,
        live: LiveRun | None = None,
        on_step: OnStep = lambda revision, message: None,
    ) -> None:
        self.on_applied = on_applied
        self.live = live
        self.on_step = on_step
        self.should_stop = should_stop
        self.lock = lock if isinstance(lock, HeldLock) else None
        self.version_table = version_table
        self.steps: list[RevisionStep] = []
        self.applied: list[AppliedRevision] = []
        self.guard: LoggingGuard | None = None
        self.yielded = 0  # steps handed to Alembic: it runs each as it gets it
        self.guarded = False  # the lock's transaction guard is held (PostgreSQL)
        self._mark = time.perf_counter()

    def planned(self, steps: Iterable[Any]) -> Iterator[Any]:
        self.steps = list(steps)
        return self._until_stopped()

    def _until_stopped(self) -> Iterator[Any]:
        # Alembic iterates over the steps once, each in its own transaction
        # where DDL is not transactional: ending the iteration between two
        # steps ends the run cleanly, with every applied revision recorded.
        # (Raising from on_version_apply instead would roll back the version
        # row of a revision whose DDL stays.)
        for index, step in enumerate(self.steps):
            if index and self.should_stop():
                logger.warning("Stopping before revision %s: shutdown", step.revision.revision)
                return
            if not self.guarded:  # the guard already keeps others out until our commit
                self.check_lock(f"before {_step_name(step)}")
            self.yielded = index + 1
            if self.live is not None:
                self.live.log.next_revision()
            revision = getattr(step, "revision", None)
            if revision is not None:
                self.on_step(str(revision.revision), str(revision.doc or "").strip())
            yield step

    def lock_lost(self) -> bool:
        """True when there is a lock to check and it is no longer ours."""
        return self.lock is not None and not self.lock.held()

    def check_lock(self, when: str) -> None:
        """Raise LockLostError if the migration lock is no longer ours."""
        if self.lock_lost():
            raise LockLostError(
                f"The migration lock was lost {when} (its connection was closed: a server "
                "timeout, a pooler or the network). The run stopped there; another process "
                "may be migrating. The next start continues from what was committed."
            )

    def take_guard(self, connection: Any) -> None:
        """Take the lock's transaction-level guard on the migration's connection."""
        guarded = None if self.lock is None else self.lock.guard(connection)
        self.guarded = bool(guarded)
        if guarded is False:
            raise LockLostError(
                "Another process holds the migration's transaction guard: it is migrating "
                "this database although our lock said otherwise (the lock was lost). Stopped "
                "before any revision."
            )

    def started(self) -> None:
        self._mark = time.perf_counter()

    def version_applied(
        self, *, ctx: MigrationContext, step: MigrationInfo, heads: set[str], run_args: Any
    ) -> None:
        now = time.perf_counter()
        if step.is_stamp:
            logger.info("Stamped the database at %s", ", ".join(step.up_revision_ids))
            return
        commits = ctx.opts.get("transaction_per_migration") or len(self.applied) + 1 == len(
            self.steps
        )
        if ctx.impl.transactional_ddl and commits:
            # Still inside the transaction, just before its commit: a lost lock
            # rolls it back. (Without transactional DDL the changes are made:
            # keep the row.) One check per commit, not per revision: a
            # pg_locks read costs a round trip and a scan.
            self.check_lock(f"before revision {step.up_revision_id} committed")
        applied = AppliedRevision(
            revision=step.up_revision_id or "",
            message=str(getattr(step.up_revision, "doc", "") or "").strip(),
            duration=now - self._mark,
        )
        self._mark = now
        self.applied.append(applied)
        logger.info(
            "Applied %d/%d %s %s in %.2f s",
            len(self.applied),
            len(self.steps),
            applied.revision,
            applied.message,
            applied.duration,
        )
        self.on_applied(applied)

    def running_revision(self) -> str | None:
        """The revision that was running when the run failed; None before the first."""
        if not self.yielded:
            return None
        index = min(len(self.applied), self.yielded - 1)  # the last one: at its commit
        return str(self.steps[index].revision.revision)


def _step_name(step: Any) -> str:
    # A RevisionStep names its revision; a StampStep (baseline) does not.
    revision = getattr(getattr(step, "revision", None), "revision", None)
    return f"revision {revision}" if revision else "the stamp"


def _check_where(ours: URL, theirs: URL) -> None:
    """Refuse an env.py that migrates another database than the one planned and locked."""
    how = mismatch(ours, theirs)
    if how is None:
        return
    said = (
        f"env.py connects to {display(theirs)!r}, but automigrator was given {display(ours)!r}: "
        "the plan, the lock and the checks are on the one, the migration on the other."
    )
    fix = (
        " Make env.py read its URL from the config (config.get_main_option('sqlalchemy.url'), "
        "which automigrator sets), or give automigrator the URL env.py uses."
    )
    if how == "database":
        raise ConfigurationError(said + fix + " Nothing was changed.")
    logger.warning(
        "%s If both reach the same server (a pooler, a service name), ignore this.%s", said, fix
    )


def _environment(
    cfg: Config,
    script: ScriptDirectory,
    fn: Any,
    destination: str,
    recorder: _Recorder,
    url: URL,
) -> EnvironmentContext:
    """An EnvironmentContext whose configure() and run_migrations() add our recorder.

    Alembic publishes the context to env.py as ``alembic.context``, binding
    each name with ``getattr`` on the instance when it is entered; a subclass
    would not be published, so we wrap the two methods on this one instance.
    """
    env = EnvironmentContext(cfg, script, fn=fn, destination_rev=destination)
    configure = env.configure
    run_migrations = env.run_migrations

    def configure_with_recorder(*args: Any, **kwargs: Any) -> None:
        # env.py has just run fileConfig(); give the app its logging back
        # before any revision runs, so the revisions' lines reach its handlers.
        if recorder.guard is not None:
            recorder.guard.restore()
        table = VersionTable(
            kwargs.get("version_table") or "alembic_version", kwargs.get("version_table_schema")
        )
        if table != recorder.version_table:
            raise ConfigurationError(
                f"env.py uses the version table {str(table)!r} but automigrator was told "
                f"{str(recorder.version_table)!r}. Pass version_table= and "
                "version_table_schema= to AutoMigrator to match env.py."
            )
        theirs = kwargs.pop("on_version_apply", None) or ()
        theirs = tuple(theirs) if isinstance(theirs, (list, tuple)) else (theirs,)
        kwargs["on_version_apply"] = (*theirs, recorder.version_applied)
        connection = kwargs.get("connection")
        if isinstance(connection, Connection):
            _check_where(url, connection.engine.url)
        configure(*args, **kwargs)
        if recorder.live is not None and isinstance(connection, Connection):
            recorder.live.attach(
                connection, transactional=env.get_context().impl.transactional_ddl
            )

    def run_migrations_with_recorder(**kw: Any) -> None:
        connection = env.get_context().connection
        if connection is not None and connection.in_transaction():
            recorder.take_guard(connection)  # before Alembic reads the version table
        recorder.started()
        run_migrations(**kw)

    env.configure = configure_with_recorder  # type: ignore[method-assign]
    env.run_migrations = run_migrations_with_recorder  # type: ignore[method-assign]
    return env


def upgrade(
    cfg: Config,
    script: ScriptDirectory,
    target: str,
    *,
    url: URL,
    version_table: VersionTable,
    on_applied: OnApplied,
    should_stop: Callable[[], bool] = lambda: False,
    lock: object = None,
    live: LiveRun | None = None,
    on_step: OnStep = lambda revision, message: None,
) -> tuple[AppliedRevision, ...]:
    """Run ``alembic upgrade <target>`` through the user's env.py, in this thread.

    This is ``alembic.command.upgrade`` with the script directory built once
    (by the caller, shared with plan and verify) and a recorder attached.
    ``should_stop`` is asked before each revision after the first: when it
    says so, the run ends there, cleanly (Alembic commits what it applied).
    A ``lock`` that is a :class:`~automigrator.locking.HeldLock` is checked
    before each revision and before a transactional one commits, and its
    guard is taken on the migration's connection. ``live`` gives env.py's
    connection the try's lock timeout and follows what each revision keeps;
    ``on_step(revision, message)`` is called as each revision begins.
    """
    return _run_env(
        cfg,
        script,
        lambda rev: upgrade_steps(script, target, rev),
        destination=target,
        url=url,
        recorder=_Recorder(on_applied, version_table, should_stop, lock, live, on_step),
    )


def render_offline(
    cfg: Config,
    script: ScriptDirectory,
    target: str,
    current: Sequence[str],
    *,
    sql: bool,
    operations: dict[str, list[Any]] | None = None,
) -> list[PendingRevision]:
    """Each pending revision from ``current`` to ``target``; with ``sql``, its SQL.

    Rendered one revision at a time through env.py in offline mode (``alembic
    upgrade --sql``), each starting from the heads the ones before it leave, so
    a revision that cannot be rendered is reported and the rest still are.
    Nothing connects to the database (env.py's offline path takes a URL).
    With ``operations``, each revision's Alembic operations (``op.add_column``
    is an ``AddColumnOp``), as it invokes them, are listed there by revision.
    """
    steps = list(upgrade_steps(script, target, tuple(current)))
    heads = list(current)
    rendered: list[PendingRevision] = []
    with _RUN_LOCK, LoggingGuard(), ExitStack() as stack:
        stack.enter_context(_quiet_offline_lines())
        recorded = stack.enter_context(recording_operations()) if operations is not None else None
        for step in steps:
            if recorded is not None and operations is not None:
                recorded.into = operations.setdefault(step.revision.revision, [])
            text, why = _render_step(cfg, script, step, heads) if sql else (None, None)
            revision = step.revision
            rendered.append(
                PendingRevision(
                    revision=step.revision.revision,
                    down_revisions=tuple(step.from_revisions),
                    message=str(revision.doc or "").strip(),
                    path=str(revision.path),
                    sql=text,
                    not_renderable=why,
                )
            )
            heads = [h for h in heads if h not in step.from_revisions] + [step.revision.revision]
    return rendered


@contextmanager
def _quiet_offline_lines() -> Iterator[None]:
    # Alembic logs "Running upgrade a -> b" in offline mode as it does when it
    # runs one: in a server's log, a lint or a preview would read as a
    # migration. Dropped for this thread only (a filter on the logger, which
    # env.py's fileConfig() leaves in place).
    thread = threading.get_ident()

    def quiet(record: logging.LogRecord) -> bool:
        return record.thread != thread

    target = logging.getLogger("alembic.runtime.migration")
    target.addFilter(quiet)
    try:
        yield
    finally:
        target.removeFilter(quiet)


def _render_step(
    cfg: Config, script: ScriptDirectory, step: Any, heads: list[str]
) -> tuple[str | None, str | None]:
    buffer = io.StringIO()
    env = EnvironmentContext(
        cfg,
        script,
        fn=lambda rev, context: [step],
        as_sql=True,
        starting_rev=list(heads) or None,  # a list works: Alembic reads it with to_list()
        destination_rev=step.revision.revision,
        output_buffer=buffer,
    )
    try:
        with env:
            script.run_env()
    except Exception as exc:
        return None, f"{type(exc).__name__}: {first_line(exc)}"
    return buffer.getvalue(), None


def stamp(
    cfg: Config, script: ScriptDirectory, revision: str, *, url: URL, version_table: VersionTable
) -> None:
    """Run ``alembic stamp <revision>`` (no DDL but the version table) through env.py."""
    _run_env(
        cfg,
        script,
        lambda rev: stamp_steps(script, revision, rev),
        destination=revision,
        url=url,
        recorder=_Recorder(lambda _: None, version_table),
    )


def _run_env(
    cfg: Config,
    script: ScriptDirectory,
    make_steps: Callable[[Any], Iterable[Any]],
    *,
    destination: str,
    url: URL,
    recorder: _Recorder,
) -> tuple[AppliedRevision, ...]:
    def steps(rev: Any, context: MigrationContext) -> Iterator[Any]:
        return recorder.planned(make_steps(rev))

    with _RUN_LOCK, LoggingGuard() as guard:
        recorder.guard = guard
        try:
            with _environment(cfg, script, steps, destination, recorder, url):
                script.run_env()
        except AutomigratorError:
            raise
        except Exception as exc:
            # A revision that failed after our lock was lost may have met
            # another process's migration (its table already exists): that is
            # never the revision's fault, and must never be purged for.
            error = _translate_run_error(exc, recorder, url)
            revision = recorder.running_revision()
            if isinstance(error, MigrationError) and revision and recorder.lock_lost():
                raise LockLostError(
                    f"Revision {revision} failed "
                    f"({redact(f'{type(exc).__name__}: {first_line(exc)}', url)}) after the "
                    "migration lock was lost (its connection was closed: a server timeout, "
                    "a pooler or the network). Another process may have migrated meanwhile, "
                    "so this is not taken for the revision's fault; the next start plans again."
                ) from exc
            raise error from exc
    return tuple(recorder.applied)


def _translate_run_error(exc: Exception, recorder: _Recorder, url: URL) -> AutomigratorError:
    revision = recorder.running_revision()
    if is_contention(exc):
        return _contention_error(exc, recorder, revision, url)
    if isinstance(exc, DBAPIError) and (revision is None or _connection_lost(exc)):
        # Failed before the first revision ran (env.py could not connect), or
        # the connection dropped: not the migration's fault.
        error = translate_error(exc, url, doing="running env.py")
        if isinstance(error, (ConfigurationError, DatabaseUnavailableError)):
            return error
    if isinstance(exc, DBAPIError) and _server_timeout(exc):
        return DatabaseUnavailableError(
            f"The server cancelled a statement of revision {revision} on a timeout of its own "
            f"({redact(first_line(exc), url)}): statement_timeout or max_execution_time on "
            "the server, the role or the database. Not the revision's fault; raise that "
            "setting for migrations (the next start retries)."
        )
    if isinstance(exc, ConfigParserError):  # env.py reading the ini: never echo the value
        detail = f"{type(exc).__name__}: {config_error_text(exc)}"
    else:
        detail = redact(f"{type(exc).__name__}: {first_line(exc)}", url)
    if revision is None:
        # env.py itself failed (an import, the app's settings) before any
        # revision ran: nothing was changed, and no retry or purge will fix it.
        return ConfigurationError(
            f"env.py failed before any revision ran, against {display(url)}: {detail}. "
            "Fix env.py or what it imports; nothing was changed."
        )
    message = next((s.doc for s in recorder.steps if s.revision.revision == revision), "") or ""
    done = len(recorder.applied)
    return MigrationError(
        f"Migration {revision} ({message.strip() or 'no message'}) failed after "
        f"{done} of {len(recorder.steps)} revision(s) were applied: {detail}. Fix the revision "
        "and start again; on databases without transactional DDL (SQLite, MySQL/MariaDB) "
        "its partial changes may remain.",
        revision=revision,
    )


def _contention_error(
    exc: Exception, recorder: _Recorder, revision: str | None, url: URL
) -> AutomigratorError:
    detail = redact(f"{type(exc).__name__}: {first_line(exc)}", url)
    name = f"Revision {revision}" if revision else "The version table's update"
    timeout = recorder.live.timeout if recorder.live is not None else None
    waited = f" (ddl_lock_timeout {timeout:g} s)" if timeout is not None else ""
    kept = recorder.live.log.kept if recorder.live is not None else []
    if not kept:
        return ContentionError(
            f"{name} met a busy table{waited}: {detail}. It was rolled back and nothing of "
            "it stayed: another transaction held a lock it needed.",
            revision=revision,
        )
    # Where DDL is not transactional, what ran before the timeout stays: a
    # second try would meet its own half-done work. Only a person can finish it.
    statements = "; ".join(kept[:5]) + ("; ..." if len(kept) > 5 else "")
    return MigrationError(
        f"{name} met a busy table{waited} after {len(kept)} of its statement(s) were "
        f"applied, and those stay (this database has no transactional DDL): {statements}. "
        f"{detail}. Finish or undo them by hand, then start again.",
        revision=revision,
    )


# Server-side timeouts that cancel a statement: PostgreSQL query_canceled
# (statement_timeout); MySQL max_execution_time (3024), MariaDB max_statement_time (1969).
_TIMEOUT_SQLSTATES = {"57014"}
_TIMEOUT_MYSQL_CODES = {3024, 1969}


def _server_timeout(exc: DBAPIError) -> bool:
    orig = exc.orig
    code = getattr(orig, "sqlstate", None) or getattr(orig, "pgcode", None)
    args = getattr(orig, "args", ())
    return code in _TIMEOUT_SQLSTATES or bool(
        args and isinstance(args[0], int) and args[0] in _TIMEOUT_MYSQL_CODES
    )


def _connection_lost(exc: DBAPIError) -> bool:
    """The driver lost its connection: SQLAlchemy's dialect recognised a disconnect."""
    return bool(exc.connection_invalidated)
