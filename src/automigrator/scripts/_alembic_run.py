"""Running env.py through Alembic: the upgrade, the stamp and the offline render.

The upgrade runs through the user's own env.py in the calling (worker)
thread. A supervisor goes with it: it records each applied revision, checks
the migration lock before each revision (and takes its guard on env.py's
connection), and ends the run between two revisions when a shutdown asks.
Alembic's and SQLAlchemy's errors are translated here, chained with ``from``.
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import threading
import time
import traceback
from collections.abc import Iterable, Iterator, Sequence
from configparser import Error as ConfigParserError
from contextlib import ExitStack, contextmanager
from typing import Any

import sqlalchemy as sa
from alembic.config import Config
from alembic.runtime.environment import EnvironmentContext
from alembic.runtime.migration import MigrationContext, MigrationInfo, RevisionStep
from alembic.script import ScriptDirectory
from alembic.script.revision import RevisionError
from alembic.util import CommandError
from sqlalchemy.engine import URL, Connection
from sqlalchemy.exc import DBAPIError

from .._status import AppliedRevision
from ..database._connections import (
    VersionTable,
    atomic_sqlite_revisions,
    create_engine,
    display,
    mismatch,
    translate_error,
)
from ..database._contention import UpgradeTry, failed_concurrent_index, is_contention
from ..database._ledger import LedgerEntry, RevisionFacts
from ..database._redaction import redact
from ..errors import (
    AutomigratorError,
    ConfigurationError,
    ContentionError,
    DatabaseUnavailableError,
    LockLostError,
    MigrationError,
    PartialMigrationError,
    first_line,
)
from ..locking import HeldLock, fenced
from ..process._logging import LoggingGuard
from ._alembic_compat import Destination, recording_operations, stamp_steps, upgrade_steps
from ._alembic_reads import LiveReads, fresh_module
from ._configfile import config_error_text
from ._fingerprints import of_script
from ._hooks import RunHooks
from ._pending import PendingRevision

logger = logging.getLogger("automigrator")


# Alembic keeps the running environment in module globals (alembic.context,
# alembic.op): two runs at once in one process would trample each other.
RUN_LOCK = threading.Lock()


class _Supervisor:
    """Goes with one upgrade: records and logs each applied revision, checks the
    lock before each one (and takes its guard), and stops between two when asked."""

    def __init__(
        self, hooks: RunHooks, version_table: VersionTable, live: UpgradeTry | None = None
    ) -> None:
        self.hooks = hooks
        self.live = live
        self.lock = hooks.lock if isinstance(hooks.lock, HeldLock) else None
        self.version_table = version_table
        self.steps: list[RevisionStep] = []
        self.asked = False
        # Where DDL is transactional, an applied revision stays only once its
        # transaction commits (with the whole run, by Alembic's default).
        self.transactional = False
        self.committed = 0  # applied revisions a commit has made final
        self.dialect = ""
        self.applied: list[AppliedRevision] = []
        self.guard: LoggingGuard | None = None
        self.yielded = 0  # steps handed to Alembic: it runs each as it gets it
        # The fence while held: (its pool, the check-in listener, the driver connection).
        self.fenced: tuple[Any, Any, Any] | None = None
        # env.py's SQLite connection, its revisions made atomic (none elsewhere).
        self.atomic_sqlite: Connection | None = None
        self.connection: Connection | None = None  # env.py's, once configured
        self.marking = False  # each attempt is recorded in the ledger
        self.rows: dict[str, int] = {}  # revision -> its running row, not yet applied
        self.refused = False  # the ledger refused a revision a stopped process left
        self.left_dirty: dict[str, LedgerEntry] = {}  # read under the fence, once a run
        self.ledger_broke = False  # a write of ours to the ledger failed in the run
        self._facts: dict[str, RevisionFacts] = {}
        self._steps: dict[str | None, Any] = {}
        self._mark = time.perf_counter()

    def planned(self, steps: Iterable[Any]) -> Iterator[Any]:
        self.asked = True  # env.py called run_migrations(): Alembic asks for the steps
        self.steps = list(steps)
        self._steps = {_revision_of(s): s for s in self.steps}  # facts() finds each by id
        return self._until_stopped()

    def _until_stopped(self) -> Iterator[Any]:
        # Alembic iterates over the steps once, each in its own transaction
        # where DDL is not transactional: ending the iteration between two
        # steps ends the run cleanly, with every applied revision recorded.
        # (Raising from on_version_apply instead would roll back the version
        # row of a revision whose DDL stays.)
        for index, step in enumerate(self.steps):
            if index and self.hooks.should_stop():
                logger.warning("Stopping before revision %s: shutdown", step.revision.revision)
                return
            # Fenced, with transactional DDL, nothing of a revision stays
            # without a commit, and each commit is checked (version_applied):
            # a check here too cost a pg_locks read per revision, which grows
            # with the locks the run's transaction holds (2.7x command.upgrade
            # at 1000 revisions). Without one of the two, every step is checked.
            if not (index and self.transactional and self.fenced is not None):
                self.check_lock(f"before {_step_name(step)}")
            if not index and self.atomic_sqlite is not None:
                # What Alembic wrote before the first revision (the version
                # table) commits now: the revision's transaction starts with it.
                self.atomic_sqlite.commit()
            self.yielded = index + 1
            self._mark_running(step, first=not index)
            if self.live is not None:
                self.live.log.next_revision()  # the mark is ours, never the revision's
            revision = getattr(step, "revision", None)
            if revision is not None:
                self.hooks.on_step(str(revision.revision), one_line(revision.doc))
            yield step

    def _mark_running(self, step: Any, *, first: bool) -> None:
        # Under the fence, on env.py's connection, in the revision's own
        # transaction: the rows of a migrator that lost its lock can never
        # touch another's.
        ledger, connection = self.hooks.ledger, self.connection
        revision = getattr(getattr(step, "revision", None), "revision", None)
        if ledger is None or connection is None or revision is None:
            return
        if self.dialect == "sqlite":
            # SQLite's revisions are atomic: nothing of one stays unless all
            # of it does, so its row is written with the version row instead.
            # Written before the revision, it would take the file's write lock
            # from a revision that writes through a connection of its own.
            self.marking = True
            return
        with self.ledger_writes():
            new = False
            if first:
                prepared = ledger.prepare(connection)
                self.marking, new = prepared.writable, prepared.new
            if not self.marking:
                return
            try:
                if first and not new:  # a ledger made just now is empty
                    self.left_dirty = ledger.left_dirty(connection)
                left = self.left_dirty.get(str(revision))
                if left is None:
                    facts = self.facts(str(revision))
                    self.rows[str(revision)] = ledger.begin(connection, facts, self.hooks.run)
            except DBAPIError as exc:
                if not _missing_privilege(exc) or self.dialect == "postgresql":
                    raise  # (PostgreSQL's privilege was checked in prepare())
                self.marking = False
                ledger.not_recorded("Cannot write to", first_line(exc.orig or exc))
                return
        if left is not None:
            self.refused = True  # left by a process that stopped in it: none live holds the fence
            raise left.refusal()

    @contextmanager
    def ledger_writes(self) -> Iterator[None]:
        """Around our writes to the ledger inside the run: their failure (a table of
        that name that is not ours, a value it refuses) is never the revision's,
        so never a ``migration`` failure a policy would purge for."""
        try:
            yield
        except (DBAPIError, ConfigurationError) as exc:
            self.refused = True  # nothing more is written to it
            self.ledger_broke = True
            if isinstance(exc, ConfigurationError):
                raise
            ledger = self.hooks.ledger
            raise ConfigurationError(
                f"Writing the ledger {ledger.name if ledger else ''} failed: "
                f"{type(exc).__name__}: {first_line(exc.orig or exc)}. Not the revision's "
                "fault: nothing is purged for it. Check History(table=) names a table of "
                "automigrator's own (or None for no ledger)."
            ) from exc

    def facts(self, revision: str) -> RevisionFacts:
        """What the ledger records of ``revision``: its file's fingerprint (checksum
        computed here, once per attempt)."""
        if revision not in self._facts:
            step = self._steps[revision]  # by id: a search each was O(n²) over a run
            found = of_script(step.revision)
            self._facts[revision] = (
                found.facts() if found is not None else RevisionFacts(revision=revision)
            )
        return self._facts[revision]

    def record_failure(self, error: AutomigratorError) -> None:
        """After env.py's run ended (its transaction over): the ledger says how the
        revision that was running failed (``partial`` with what stayed, else
        ``failed``). Nothing for a refusal; nor, under the fence, for a run that
        lost its lock (the caller does not ask then: a frozen lock connection
        would be asked twice)."""
        ledger = self.hooks.ledger
        revision = error.revision if isinstance(error, PartialMigrationError) else None
        revision = revision or self.running_revision()
        if ledger is None or not self.marking or self.refused or revision is None:
            return
        try:
            # Fenced: a run paused past its reap time writes nothing after its
            # successor (which holds the fence, or will find it held).
            with ledger.engine.connect() as conn, fenced(self.lock, conn) as ours:
                if not ours:
                    logger.warning(
                        "Not recording the failure of %s in the ledger: the migration lock "
                        "was lost (another process may be migrating)",
                        revision,
                    )
                    return
                ledger.failed(
                    conn,
                    self.facts(str(revision)),
                    self.hooks.run,
                    error=error.summary(),
                    row=self.rows.get(str(revision)),
                    kept=error.statements if isinstance(error, PartialMigrationError) else (),
                    duration=time.perf_counter() - self._mark,
                )
        except Exception as exc:
            logger.warning(
                "Could not record the failure of %s in the ledger (%s)%s",
                revision,
                first_line(exc),
                f": the next start refuses it until 'automigrator resolve {revision}'"
                if revision in self.rows
                else "",
            )

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

    def take_guard(self, connection: Connection) -> None:
        """Take the lock's fence on the connection that runs the DDL, for the whole run.

        It is let go when that connection goes back to its pool (or closes):
        after env.py's transaction ended, whatever way the run ended.
        """
        lock = self.lock
        guarded = None if lock is None else lock.guard(connection)
        if guarded is False:
            raise LockLostError(
                "Another process holds the migration's guard (the lock held by the connection "
                "that runs its DDL): it is migrating this database although our lock said "
                "otherwise (it lost its lock, and its migration still runs). Stopped before "
                "any revision; the next start plans again."
            )
        if lock is None or not guarded:
            return
        ours = connection.connection.dbapi_connection
        pool = connection.engine.pool

        def let_go(dbapi_connection: Any, record: Any) -> None:
            if dbapi_connection is ours and self.fenced is not None:
                self.fenced = None
                with contextlib.suppress(Exception):  # a dead connection took it along
                    lock.release_guard(dbapi_connection)

        sa.event.listen(pool, "checkin", let_go)
        self.fenced = (pool, let_go, ours)

    def drop_guard(self) -> None:
        """After the run: the fence is let go if env.py kept its connection open."""
        if self.fenced is None:
            return
        pool, let_go, ours = self.fenced
        self.fenced = None
        with contextlib.suppress(Exception):
            sa.event.remove(pool, "checkin", let_go)
        if self.lock is not None and not getattr(ours, "closed", False):
            with contextlib.suppress(Exception):
                self.lock.release_guard(ours)

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
            message=one_line(getattr(step.up_revision, "doc", "")),
            duration=now - self._mark,
        )
        self._mark = now
        ledger, connection = self.hooks.ledger, self.connection
        row = self.rows.pop(applied.revision, None)
        with self.ledger_writes():
            if ledger is not None and connection is not None and row is not None:
                ledger.applied(connection, row, applied.duration)  # with the version row
            elif ledger is not None and connection is not None and self.dialect == "sqlite":
                if not self.applied:  # in the first one's transaction
                    self.marking = ledger.prepare(connection).writable
                if self.marking:
                    facts = self.facts(applied.revision)
                    ledger.insert_applied(connection, facts, self.hooks.run, applied.duration)
        self.applied.append(applied)
        logger.info(
            "Applied %d/%d %s %s in %.2f s%s",
            len(self.applied),
            len(self.steps),
            applied.revision,
            applied.message,
            applied.duration,
            "" if commits or not self.transactional else " (kept when its transaction commits)",
        )
        self.hooks.on_applied(applied)

    def follow_commits(self, connection: Connection, *, transactional: bool) -> None:
        """Count, at each commit of env.py's connection, the revisions made final."""
        self.transactional = transactional
        self.dialect = connection.dialect.name
        self.connection = connection

        def committed(conn: Connection) -> None:
            self.committed = len(self.applied)

        sa.event.listen(connection, "commit", committed)

    def half_done(self) -> tuple[str, list[str]] | None:
        """The revision a stop now leaves half done, and what of it stays; else None.

        Inside a revision: what of it took effect. Between two: the last
        one, where DDL is transactional and its commit has not come (its
        autocommit blocks stay, its version row goes). SQLite is left out:
        its policies recover the whole file.
        """
        kept = self.live.log.kept if self.live is not None else []
        if not kept or self.dialect == "sqlite":
            return None
        if len(self.applied) < self.yielded:
            return str(self.steps[self.yielded - 1].revision.revision), list(kept)
        if self.transactional and self.committed < len(self.applied):
            return self.applied[-1].revision, list(kept)
        return None

    def running_revision(self) -> str | None:
        """The revision that was running when the run failed; None before the first."""
        if not self.yielded:
            return None
        index = min(len(self.applied), self.yielded - 1)  # the last one: at its commit
        return str(self.steps[index].revision.revision)


def one_line(doc: object) -> str:
    """A revision's message on one line: Alembic's ``doc`` is the docstring's first
    paragraph, which may span lines; the log says one revision a line."""
    return " ".join(str(doc or "").split())


def _revision_of(step: Any) -> str | None:
    # A RevisionStep names its revision; a StampStep (baseline) does not.
    revision = getattr(getattr(step, "revision", None), "revision", None)
    return str(revision) if revision else None


def _step_name(step: Any) -> str:
    revision = _revision_of(step)
    return f"revision {revision}" if revision else "the stamp"


@contextmanager
def _no_other_sqlite_file(ours: URL) -> Iterator[None]:
    """While env.py runs here: a SQLite connection to another file is refused before
    it is made (connecting would create that file), in this thread only."""
    here = threading.current_thread()

    def before_connect(dialect: Any, record: Any, cargs: Any, cparams: Any) -> None:
        if threading.current_thread() is not here or dialect.name != "sqlite":
            return
        database = cargs[0] if cargs else cparams.get("database")
        if isinstance(database, str) and database and not database.startswith("file:"):
            _check_where(ours, ours.set(database=database))

    sa.event.listen(sa.engine.Engine, "do_connect", before_connect)
    try:
        yield
    finally:
        sa.event.remove(sa.engine.Engine, "do_connect", before_connect)


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
    destination: Destination,
    recorder: _Supervisor,
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
                f"{str(recorder.version_table)!r}. Pass "
                "version_table=VersionTable(name, schema) to AutoMigrator to match env.py."
            )
        theirs = kwargs.pop("on_version_apply", None) or ()
        theirs = tuple(theirs) if isinstance(theirs, (list, tuple)) else (theirs,)
        kwargs["on_version_apply"] = (*theirs, recorder.version_applied)
        connection = kwargs.get("connection")
        # A transaction env.py began itself is its own: Alembic commits none then.
        external = isinstance(connection, Connection) and connection.in_transaction()
        if isinstance(connection, Connection):
            _check_where(url, connection.engine.url)
        configure(*args, **kwargs)
        if isinstance(connection, Connection) and connection.dialect.name == "sqlite":
            atomic_sqlite_revisions(connection)
            if not external:
                recorder.atomic_sqlite = connection
        if isinstance(connection, Connection):
            transactional = env.get_context().impl.transactional_ddl
            recorder.follow_commits(connection, transactional=transactional)
            if recorder.live is not None:
                atomic = transactional or recorder.atomic_sqlite is not None
                recorder.live.attach(connection, transactional=atomic)

    def run_migrations_with_recorder(**kw: Any) -> None:
        connection = env.get_context().connection
        if isinstance(connection, Connection):
            recorder.take_guard(connection)  # before Alembic reads the version table
            prepare = recorder.hooks.prepare
            if prepare is not None:
                recorder.check_lock("before the baseline's tables were made")
                try:
                    prepare(connection)
                except Exception as exc:
                    # The app's own code, before any revision: never env.py's
                    # fault, nor the database's reach, nor a purge's cause.
                    raise ConfigurationError(
                        "Baseline(create=...) failed making the baseline's tables: "
                        f"{redact(f'{type(exc).__name__}: {first_line(exc)}', url)}. Fix it (or "
                        "the models it creates); nothing was stamped, and a database "
                        "without transactional DDL may keep the tables it made."
                    ) from exc
                if recorder.atomic_sqlite is not None:
                    # No transaction of Alembic's holds them on SQLite (it
                    # begins one per step, and a stamp at base has none).
                    recorder.atomic_sqlite.commit()
        recorder.started()
        run_migrations(**kw)

    env.configure = configure_with_recorder  # type: ignore[method-assign]
    env.run_migrations = run_migrations_with_recorder  # type: ignore[method-assign]
    return env


def render_offline(
    cfg: Config,
    script: ScriptDirectory,
    target: Destination,
    current: Sequence[str],
    *,
    url: URL,
    sql: bool,
    operations: dict[str, list[Any]] | None = None,
    reads: sa.Engine | None = None,
) -> list[PendingRevision]:
    """Each pending revision from ``current`` to ``target``; with ``sql``, its SQL.

    Rendered one revision at a time through env.py in offline mode (``alembic
    upgrade --sql``), each starting from the heads the ones before it leave, so
    a revision that cannot be rendered is reported and the rest still are.
    Nothing connects to the database (env.py's offline path takes a URL).
    What env.py and the revisions say (their SQL, their errors) is redacted
    with ``url``: user code may quote the URL it was given.
    With ``operations``, each revision's Alembic operations (``op.add_column``
    is an ``AddColumnOp``), as it invokes them, are listed there by revision.
    With ``reads``, a revision that fails offline is rendered again with
    ``op.get_bind()`` a read-only connection to that database
    (``_alembic_reads``): its reads are answered, its writes rendered.
    """
    try:
        steps = list(upgrade_steps(script, target, tuple(current)))
    except (CommandError, RevisionError) as exc:
        # Only a start that names its own starting point gets here with a
        # revision the scripts lack (the lint's since=): say which.
        raise ConfigurationError(
            f"Cannot start from {', '.join(current) or 'base'}: {exc}. Name a revision id or "
            "branch label the scripts define, or 'base' for all of them."
        ) from exc
    heads = list(current)
    rendered: list[PendingRevision] = []
    with RUN_LOCK, LoggingGuard(), ExitStack() as stack:
        stack.enter_context(_quiet_offline_lines())
        lent = stack.enter_context(_lent(reads)) if reads is not None and sql else None
        # The reads need the plan's operations too (the tables it makes).
        seen: dict[str, list[Any]] = {} if operations is None else operations
        wanted = operations is not None or lent is not None
        recorded = stack.enter_context(recording_operations()) if wanted else None
        for step in steps:
            if recorded is not None:
                recorded.into = seen.setdefault(step.revision.revision, [])
                recorded.path = str(step.revision.path)
            text, why, whole = (
                _render_step(cfg, script, step, heads, url) if sql else (None, None, False)
            )
            if why is not None and lent is not None and recorded is not None:
                # It may have read the database: again, with reads answered, and
                # the tables the plan made before (and makes as it goes) there.
                done = [op for r, ops in seen.items() if r != step.revision.revision for op in ops]
                lent.plan_made(done)
                recorded.into = seen[step.revision.revision] = []
                recorded.then = lent.applied
                try:
                    with fresh_module(step):
                        text, why, whole = _render_step(cfg, script, step, heads, url, lent)
                finally:
                    recorded.then = None
            text, why = (None if t is None else redact(t, url) for t in (text, why))
            revision = step.revision
            rendered.append(
                PendingRevision(
                    revision=step.revision.revision,
                    down_revisions=tuple(step.from_revisions),
                    message=str(revision.doc or "").strip(),
                    path=str(revision.path),
                    sql=text,
                    not_renderable=why,
                    in_run_transaction=whole,
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


@contextmanager
def _lent(engine: sa.Engine) -> Iterator[LiveReads]:
    reads = LiveReads(engine)
    try:
        yield reads
    finally:
        reads.close()


def _render_step(
    cfg: Config,
    script: ScriptDirectory,
    step: Any,
    heads: list[str],
    url: URL,
    reads: LiveReads | None = None,
) -> tuple[str | None, str | None, bool]:
    """One revision's SQL, or why it could not be rendered; and whether env.py runs
    the whole upgrade in one transaction (so the BEGIN and COMMIT are the run's).
    With ``reads``, ``op.get_bind()`` answers reads from the live database."""
    buffer = io.StringIO()

    def steps(rev: Any, context: MigrationContext) -> list[Any]:
        if reads is not None:  # the context env.py configured, before the revision runs
            reads.lend(context)
        return [step]

    env = EnvironmentContext(
        cfg,
        script,
        fn=steps,
        as_sql=True,
        starting_rev=list(heads) or None,  # a list works: Alembic reads it with to_list()
        destination_rev=step.revision.revision,
        output_buffer=buffer,
    )
    try:
        with env:
            script.run_env()
    except Exception as exc:
        return None, f"{type(exc).__name__}: {first_line(exc)}", False
    finally:
        if reads is not None:
            reads.end_revision()
    try:
        context = env.get_context()
    except Exception:  # Alembic's own: env.py never called configure(), nothing rendered
        return buffer.getvalue(), None, False
    _check_rendered_for(url, context.dialect.name)
    whole = context.impl.transactional_ddl and not context.opts.get("transaction_per_migration")
    return buffer.getvalue(), None, bool(whole)


def _check_rendered_for(url: URL, rendered: str) -> None:
    """Refuse SQL env.py rendered for another kind of database (``rendered``) than
    ``url``'s: its offline path took a URL from elsewhere, and the lint would judge
    the wrong SQL."""
    expected = url.get_dialect().name
    if rendered != expected:
        raise ConfigurationError(
            f"env.py rendered the revisions' SQL for {rendered}, but the URL is a {expected} "
            f"URL ({display(url)}): its offline path takes a URL from somewhere else (an "
            "environment variable, the app's settings). Make it read "
            "config.get_main_option('sqlalchemy.url'), which automigrator sets, or give the "
            "URL (or --dialect) it renders for."
        )


def run_env(
    cfg: Config,
    script: ScriptDirectory,
    destination: Destination,
    *,
    url: URL,
    version_table: VersionTable,
    hooks: RunHooks,
    live: UpgradeTry | None = None,
    stamp: bool = False,
) -> tuple[AppliedRevision, ...]:
    """Run ``alembic upgrade <destination>`` (or ``stamp``) through the user's env.py, here.

    This is ``alembic.command.upgrade`` with the script directory built once
    (by the caller, shared with plan and verify) and a supervisor attached.
    ``hooks.should_stop`` is asked before each revision after the first:
    when it says so, the run ends there, cleanly (Alembic commits what it
    applied). A ``hooks.lock`` that is a
    :class:`~automigrator.locking.HeldLock` is checked before each revision
    and before a transactional one commits, and its guard is taken on the
    migration's connection. ``live`` gives env.py's connection the try's
    lock timeout and follows what each revision keeps. With ``stamp``, the
    version table is set to ``destination`` and no revision runs.
    """
    make_steps = stamp_steps if stamp else upgrade_steps
    recorder = _Supervisor(hooks, version_table, live)

    def steps(rev: Any, context: MigrationContext) -> Iterator[Any]:
        return recorder.planned(make_steps(script, destination, rev))

    with RUN_LOCK, LoggingGuard() as guard:
        recorder.guard = guard
        try:
            try:
                with (
                    _environment(cfg, script, steps, destination, recorder, url),
                    _no_other_sqlite_file(url),
                ):
                    script.run_env()
            finally:
                recorder.drop_guard()
            if recorder.applied:
                # A run that lost its lock never ends ready, whatever its last
                # revision did: the fence kept others out, the status says so.
                recorder.check_lock("after its last revision")
            if not recorder.asked:
                raise ConfigurationError(
                    "env.py returned without calling context.run_migrations(): no revision "
                    "could run. Fix env.py (Alembic's templates call it inside "
                    "context.begin_transaction()); nothing was changed."
                )
        except AutomigratorError as stopped:
            # A stop of ours (a lost lock) inside a revision, or before the
            # commit of one whose autocommit blocks ran, leaves it half done.
            ours = isinstance(stopped, LockLostError) or recorder.ledger_broke
            half = recorder.half_done() if ours else None
            lost = isinstance(stopped, LockLostError)  # nothing may be written then
            if half is not None:
                partial = _partial_error(recorder, *half, stopped.summary())
                if not lost:
                    recorder.record_failure(partial)
                raise partial from stopped
            if not lost:
                recorder.record_failure(stopped)
            raise
        except Exception as exc:
            # A revision that failed after our lock was lost may have met
            # another process's migration (its table already exists): that is
            # never the revision's fault, and must never be purged for.
            error = _translate_run_error(exc, recorder, url)
            revision = recorder.running_revision()
            lost = recorder.lock_lost()  # asked once: a frozen lock connection waits
            if not lost:
                recorder.record_failure(error)
            if isinstance(error, MigrationError) and revision and lost:
                raise LockLostError(
                    f"Revision {revision} failed "
                    f"({redact(f'{type(exc).__name__}: {first_line(exc)}', url)}) after the "
                    "migration lock was lost (its connection was closed: a server timeout, "
                    "a pooler or the network). Another process may have migrated meanwhile, "
                    "so this is not taken for the revision's fault; the next start plans again."
                ) from exc
            raise error from exc
    return tuple(recorder.applied)


def _translate_run_error(exc: Exception, recorder: _Supervisor, url: URL) -> AutomigratorError:
    revision = recorder.running_revision()
    half = recorder.half_done()
    if half is not None:
        # Whatever the error (a busy table, a lost connection, the revision's
        # own), part of a revision stays: only a person can finish it.
        detail = redact(f"{type(exc).__name__}: {first_line(exc)}", url)
        return _partial_error(recorder, *half, detail)
    if recorder.dialect == "postgresql" and isinstance(exc, DBAPIError):
        leftover = failed_concurrent_index(create_engine(url), exc.statement)
        if leftover is not None:
            return _failed_build_error(exc, revision, *leftover, url)
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
    if _missing_privilege(exc):
        # The same refusal on every try, and no purge grants a privilege.
        return ConfigurationError(
            f"Revision {revision or '(before the first)'} was refused by the database for lack "
            f"of a privilege: {detail}. Grant the database user what the revision needs (or "
            "migrate as the tables' owner); this is not the revision's fault, and nothing "
            "is purged for it."
        )
    if revision is not None and _raised_by_us(exc, recorder):
        # Our own code failed between revisions (a module of ours replaced
        # under the running process, or a bug of ours): never the revision's
        # fault, and no purge or retry of the revision would fix it.
        return ConfigurationError(
            f"automigrator's own code failed while revision {revision} ran: {detail}. Not "
            "the revision's fault, and nothing is purged for it. A package changed under "
            "the running process (installed while it ran) or a fault of automigrator's: "
            "reinstall automigrator and start again; if it persists, report this message."
        )
    if revision is None:
        # env.py itself failed (an import, the app's settings) before any
        # revision ran: nothing was changed, and no retry or purge will fix it.
        return ConfigurationError(
            f"env.py failed before any revision ran, against {display(url)}: {detail}. "
            "Fix env.py or what it imports; nothing was changed."
        )
    message = next((s.doc for s in recorder.steps if s.revision.revision == revision), "") or ""
    detail += _line_in_revision(exc, recorder)
    done = len(recorder.applied)
    if recorder.transactional and not done:
        where = f"failed: {detail}."
    elif recorder.transactional:
        # Alembic's default runs every revision in one transaction: those
        # "applied" before this one went with it unless a commit came between.
        kept = recorder.committed
        where = (
            f"failed: {detail}. Of the {done} revision(s) that ran before it, {kept} were "
            f"committed and stay; {done - kept} were rolled back with it (same transaction)."
        )
    elif recorder.atomic_sqlite is not None:
        where = (
            f"failed after {done} of {len(recorder.steps)} revision(s) were applied: {detail}. "
            "It was rolled back whole (each SQLite revision is one transaction); those "
            "before it stay."
        )
    else:
        where = (
            f"failed after {done} of {len(recorder.steps)} revision(s) were applied: {detail}. "
            "On databases without transactional DDL (MySQL/MariaDB) its partial changes may "
            "remain."
        )
    return MigrationError(
        f"Migration {revision} ({message.strip() or 'no message'}) {where} Fix the revision "
        "and start again.",
        revision=revision,
    )


def _line_in_revision(exc: BaseException, recorder: _Supervisor) -> str:
    """`` (0005_broken.py, line 19, in upgrade)``: where in a revision file it
    failed, the line a person looks at first (the traceback is not always shown
    whole: a server prints the error's message)."""
    files = _revision_files(recorder)
    found = [
        f for f in traceback.extract_tb(exc.__traceback__) if os.path.realpath(f.filename) in files
    ]
    if not found:
        return ""
    frame = found[-1]
    return f" ({os.path.basename(frame.filename)}, line {frame.lineno}, in {frame.name})"


def _revision_files(recorder: _Supervisor) -> set[str]:
    return {
        os.path.realpath(p) for s in recorder.steps if (p := getattr(s.revision, "path", None))
    }


_PACKAGE = os.path.dirname(os.path.dirname(os.path.realpath(__file__))) + os.sep


def _raised_by_us(exc: BaseException, recorder: _Supervisor) -> bool:
    """Whether ``exc`` came from automigrator's own code that Alembic's run loop
    calls between revisions (the steps, the applied-revision callback, the
    ledger's and the status's hooks), not from a revision's: below the loop,
    a frame of this package and none of a revision file. A database's error is
    judged by what it says (the rules before this one), not by where it rose."""
    if isinstance(exc, DBAPIError):
        return False
    frames = traceback.extract_tb(exc.__traceback__)
    loops = [
        i
        for i, frame in enumerate(frames)
        if frame.name == "run_migrations"
        and frame.filename.endswith(os.path.join("alembic", "runtime", "migration.py"))
    ]
    if not loops:
        return False
    below = [os.path.realpath(frame.filename) for frame in frames[loops[-1] + 1 :]]
    files = _revision_files(recorder)
    if any(path in files for path in below):
        return False
    return any(path.startswith(_PACKAGE) for path in below)


# PostgreSQL insufficient_privilege (also "must be owner of ...").
_PRIVILEGE_SQLSTATES = {"42501"}
# MySQL/MariaDB: table, column or routine command denied; database access
# denied; "you need (at least one of) the ... privilege".
_PRIVILEGE_MYSQL_CODES = {1142, 1143, 1370, 1044, 1227}
# SQLite: SQLITE_READONLY (a file or folder the process may not write).
_SQLITE_READONLY = 8


def _missing_privilege(exc: Exception) -> bool:
    if not isinstance(exc, DBAPIError):
        return False
    orig = exc.orig
    code = getattr(orig, "sqlstate", None) or getattr(orig, "pgcode", None)
    if code in _PRIVILEGE_SQLSTATES:
        return True
    args = getattr(orig, "args", ())
    if args and isinstance(args[0], int) and args[0] in _PRIVILEGE_MYSQL_CODES:
        return True
    sqlite_code = getattr(orig, "sqlite_errorcode", None)
    if sqlite_code is not None:
        return int(sqlite_code) & 0xFF == _SQLITE_READONLY
    # Python < 3.11's sqlite3 has no error code: its message says it.
    return type(orig).__module__.startswith("sqlite3") and "readonly database" in str(orig)


def _partial_error(
    recorder: _Supervisor, revision: str, kept: list[str], detail: str
) -> PartialMigrationError:
    message = next((s.doc for s in recorder.steps if s.revision.revision == revision), "") or ""
    statements = "; ".join(kept[:5]) + ("; ..." if len(kept) > 5 else "")
    where = "in an autocommit block" if recorder.transactional else "without transactional DDL"
    return PartialMigrationError(
        f"Revision {revision} ({message.strip() or 'no message'}) failed after "
        f"{len(kept)} of its statement(s) took effect, and those stay (they ran {where}): "
        f"{statements}. It failed on: {detail}. Finish or undo them by hand, then run "
        f"'automigrator resolve {revision}'; until then every start refuses to run it "
        "(nothing is retried or purged for it).",
        revision=revision,
        statements=tuple(kept),
    )


def _failed_build_error(
    exc: Exception, revision: str | None, index: str, dropped: bool, url: URL
) -> ContentionError:
    # The build waited out other transactions and gave up (a lock timeout of
    # the server's, the database's or the role's): the revision is fine.
    after = (
        "its INVALID index was dropped, so nothing of it stayed"
        if dropped
        else "its INVALID index could not be dropped yet (the table is busy): the next try "
        "drops it first"
    )
    return ContentionError(
        f"Revision {revision} built the index {index} concurrently, and the build failed "
        f"({redact(f'{type(exc).__name__}: {first_line(exc)}', url)}): {after}. Another "
        "transaction kept it waiting; try again at a quieter time.",
        revision=revision,
    )


def _contention_error(
    exc: Exception, recorder: _Supervisor, revision: str | None, url: URL
) -> AutomigratorError:
    detail = redact(f"{type(exc).__name__}: {first_line(exc)}", url)
    name = f"Revision {revision}" if revision else "The version table's update"
    timeout = recorder.live.timeout if recorder.live is not None else None
    waited = f" (Ddl(lock_timeout={timeout:g}))" if timeout is not None else ""
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
