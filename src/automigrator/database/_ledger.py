"""The ledger: every attempt at a revision, kept beside the version table.

Alembic's version table holds the heads and nothing else: not when a
revision ran, for how long, by whom, whether the file that ran is the file
in the image now, nor that a run stopped half way. The ledger
(``automigrator_history`` by default, ``History(table=...)``, in the version
table's schema) keeps one row per attempt at a revision:

``running``
    written on env.py's connection, under the fence, in the revision's own
    transaction, before its first statement. Where DDL is transactional
    (PostgreSQL, SQLite's atomic revisions) it goes with the revision if the
    revision goes; on MySQL/MariaDB the revision's first DDL statement
    commits it, so a process killed half way leaves it, and the next start
    refuses the revision (the dirty flag).
``applied``
    the same row, updated with the version row (same transaction), with
    how long the revision took.
``failed``
    nothing of it stayed (rolled back, or failed before its first effect).
``partial``
    some of its statements stayed: every start refuses it until a person
    resolves it (``automigrator resolve``). Never purged, never retried.
``adopted``
    it was in the database before the ledger was (trust on first use: the
    checksum is the file's as it is then).
``resolved`` / ``undone``
    a person finished a partial revision by hand (the version table now
    says it is applied) or undid it (the next start runs it again).
``accepted``
    a person accepted an edit of an applied revision: its new checksum.

Rows are only ever added (a ``running`` row becomes its outcome): the
latest row of a revision says where it stands. Reading them costs one
query (``latest()``, five narrow columns), which the plan makes after its
read of the version table; whole rows are read only to describe a refusal.
The checksums compared against the files are computed in ``scripts/`` and
handed here as text: this module never reads a file.
"""

from __future__ import annotations

import datetime
import logging
import os
import socket
import sys
from collections.abc import Collection, Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from typing import Any, Literal, NamedTuple

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from ..errors import ConfigurationError, PartialMigrationError, first_line
from ..process._gcfreeze import frozen_heap
from ._connections import VersionTable
from ._contention import apply_timeout

logger = logging.getLogger("automigrator")

TABLE = "automigrator_history"
"""The ledger's default name."""

Outcome = Literal[
    "running", "applied", "failed", "partial", "adopted", "resolved", "undone", "accepted"
]
APPLIED: frozenset[str] = frozenset({"applied", "adopted", "resolved", "accepted"})
"""Outcomes after which the revision is in the database: its checksum is checked."""
DIRTY: frozenset[str] = frozenset({"running", "partial"})
"""Outcomes that refuse every start until a person resolves the revision."""


# Seconds a row's time may run ahead of ours and still be taken as recent.
_CLOCK_SLACK = 5.0


def now() -> str:
    """The time a row records: UTC, to the millisecond, sortable as text."""
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="milliseconds")


def _user() -> str:
    import getpass  # here: only a run that writes rows asks (a start at head writes none)

    try:
        return getpass.getuser()
    except Exception:  # no user name in a container without /etc/passwd: not an error
        return str(os.getuid()) if hasattr(os, "getuid") else ""


@dataclass(frozen=True)
class RevisionFacts:
    """What the scripts say of one revision: its place and its checksums."""

    revision: str
    parents: tuple[str, ...] = ()
    script: str | None = None
    """The file's name under its version folder."""
    source_hash: str | None = None
    """SHA-256 of the file's bytes: a quick first comparison."""
    checksum: str | None = None
    """The checksum of its meaning (``scripts/_checksums``); None if not computed."""


@dataclass(frozen=True)
class RunFacts:
    """What every row of one run shares: who ran it, how long it waited, the lint."""

    lock_wait: float | None = None
    app_version: str | None = None
    verdicts: Mapping[str, str] = field(default_factory=dict)
    """Revision -> ``"compatible"`` (the version of the app before it keeps
    working on it) or ``"breaking"``, from the lint; absent: not linted."""
    host: str = field(default_factory=socket.gethostname)
    pid: int = field(default_factory=os.getpid)
    user: str = field(default_factory=_user)


class Prepared(NamedTuple):
    """What ``Ledger.prepare`` found: whether the run can write its rows, and
    whether it made the ledger just now (empty: nothing left dirty to read)."""

    writable: bool
    new: bool


class Latest(NamedTuple):
    """A revision's latest row, as the check of every start reads it: five
    columns, a plain tuple (thousands of them cost next to nothing)."""

    id: int
    revision: str
    outcome: str
    checksum: str | None
    source_hash: str | None

    def as_entry(self) -> LedgerEntry:
        """What is known of the row when the whole of it cannot be read (deleted since)."""
        return LedgerEntry(
            self.id, self.revision, self.outcome, "?", "", self.checksum, self.source_hash
        )


@dataclass(frozen=True)
class LedgerEntry:
    """One row of the ledger."""

    id: int
    revision: str
    outcome: str
    at: str
    parents: str = ""
    checksum: str | None = None
    source_hash: str | None = None
    script: str | None = None
    duration: float | None = None
    lock_wait: float | None = None
    host: str | None = None
    pid: int | None = None
    user: str | None = None
    app_version: str | None = None
    statement: int | None = None
    """For ``partial``: the position (from 1) of the statement that failed."""
    detail: str | None = None
    """For ``partial``: the statements that stayed; for a resolve: the reason."""
    error: str | None = None
    old_app: str | None = None
    """The lint's verdict: ``compatible``, ``breaking``, or None (not linted)."""

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-ready values."""
        return asdict(self)

    def ended(self) -> datetime.datetime:
        """When the attempt ended (started, if it has not)."""
        started = datetime.datetime.fromisoformat(self.at)
        return started + datetime.timedelta(seconds=self.duration or 0.0)

    def refusal(self) -> PartialMigrationError:
        """The error every start raises for this dirty revision until it is resolved."""
        fix = (
            f"then run 'automigrator resolve {self.revision} --applied' (you finished it) "
            f"or '--not-applied' (you undid it; the next start runs it again); nothing was run."
        )
        if self.outcome == "running":
            what = (
                "was being applied when its process stopped (killed, or cut off) before it "
                "finished: some of its statements may stay. Compare the schema with the "
                "revision, finish or undo what it did by hand"
            )
            statements: tuple[str, ...] = ()
        else:
            statements = tuple((self.detail or "").split("; "))
            failed = f", and statement {self.statement} failed" if self.statement else ""
            on = f" ({self.error})" if self.error else ""
            what = (
                f"was left partly applied (these statements stay: {self.detail}{failed}{on}). "
                "Finish or undo them by hand"
            )
        by = f" by {self.host} pid {self.pid}" if self.host else ""
        return PartialMigrationError(
            f"Revision {self.revision} {what} (at {self.at}{by}), {fix}",
            revision=self.revision,
            statements=statements,
        )


class Ledger:
    """The ledger of one database (beside its version table).

    Args:
        engine: the migrator's engine (short connections of ours).
        version_table: the ledger goes in its schema.
        name: the ledger's table name.
        lock_timeout: how long our own writes wait for a table lock
            (``Ddl.lock_timeout``; None: the server's).
    """

    def __init__(
        self,
        engine: Engine,
        version_table: VersionTable,
        name: str = TABLE,
        lock_timeout: float | None = None,
    ) -> None:
        self.engine = engine
        self.name = name
        self.lock_timeout = lock_timeout
        self._unreadable = False  # said once: the ledger is there, not readable
        metadata = sa.MetaData()
        self.table = sa.Table(
            name,
            metadata,
            sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
            sa.Column("revision", sa.String(255), nullable=False, index=True),
            sa.Column("outcome", sa.String(16), nullable=False),
            sa.Column("at", sa.String(40), nullable=False),
            sa.Column("parents", sa.String(1000), nullable=False, default=""),
            sa.Column("checksum", sa.String(100)),
            sa.Column("source_hash", sa.String(64)),
            sa.Column("script", sa.String(500)),
            sa.Column("duration", sa.Float),
            sa.Column("lock_wait", sa.Float),
            sa.Column("host", sa.String(255)),
            sa.Column("pid", sa.Integer),
            sa.Column("user", sa.String(255)),
            sa.Column("app_version", sa.String(255)),
            sa.Column("statement", sa.Integer),
            sa.Column("detail", sa.Text),
            sa.Column("error", sa.Text),
            sa.Column("old_app", sa.String(16)),
            schema=version_table.schema,
        )
        # Built once: the two statements every revision runs (PostgreSQL,
        # MySQL) cost more to build, key and look up in SQLAlchemy's cache
        # than to run, each time a new statement.
        t = self.table
        self._begin = t.insert()  # its id: RETURNING where there is one, else lastrowid
        self._applied = (
            t.update()
            .where(t.c.id == sa.bindparam("row_id"))
            .values(outcome="applied", duration=sa.bindparam("applied_after"))
        )

    # -- reads ------------------------------------------------------------------

    def latest(self, conn: Connection) -> dict[str, Latest] | None:
        """Each revision's latest row, as the check reads it; None when there is
        no ledger (one query, of five narrow columns: at head it is all a start
        reads of the ledger, whatever the history's length).

        Called last on the plan's connection: a missing table's error on
        PostgreSQL ends that connection's transaction.
        """
        t = self.table
        # Plain SQL: compiling a select (and setting up its result) is paid
        # afresh in every process, and at every start it cost more than the
        # query itself. Every row, each revision's latest kept here: a fresh
        # server connection plans and runs a GROUP BY slower than it sends
        # the few rows more (docs/performance.md, "The ledger at head").
        name = conn.dialect.identifier_preparer.format_table(t)
        query = f"SELECT id, revision, outcome, checksum, source_hash FROM {name}"
        try:
            result = conn.exec_driver_sql(query)
        except sa.exc.DBAPIError as exc:
            if exc.connection_invalidated:
                raise
            conn.rollback()
            self.check_shape(conn)  # a table of that name, not ours: said, never read
            if sa.inspect(conn).has_table(self.name, schema=t.schema) and not self._unreadable:
                # There, but not ours to read (a role granted the version
                # table alone, for check mode): nothing is checked, and said once.
                self._unreadable = True
                logger.warning(
                    "Cannot read the ledger %s (%s): edited revisions and revisions left "
                    "partly applied are not checked by this process",
                    self.name,
                    first_line(exc.orig or exc),
                )
            return None
        with frozen_heap():  # the rows are here: a row apiece, no wait (_plan)
            latest: dict[str, Latest] = {}
            # In slices, not all(): a list of a thousand rows beside the tuples
            # kept was a start's peak memory (P5); row by row cost 0.5 ms more
            # at 1000 rows. The outcome is one of a few words: one string each.
            for rows in result.partitions(256):
                for row_id, revision, outcome, checksum, source_hash in rows:
                    kept = latest.get(revision)
                    if kept is None or row_id > kept.id:
                        latest[revision] = Latest(
                            row_id, revision, sys.intern(outcome), checksum, source_hash
                        )
            return latest

    def read_latest(self) -> dict[str, Latest] | None:
        """``latest()`` on a connection of its own."""
        with self.engine.connect() as conn:
            return self.latest(conn)

    def by_id(self, ids: Collection[int]) -> dict[int, LedgerEntry]:
        """Whole rows, by id (on a connection of its own): what a refusal describes."""
        if not ids:
            return {}
        t = self.table
        with self.engine.connect() as conn:
            rows = conn.execute(sa.select(t).where(t.c.id.in_(sorted(ids))))
            return {row.id: _entry(row) for row in rows}

    def entries(self, revision: str | None = None) -> list[LedgerEntry]:
        """Every row, oldest first (``revision``'s only, if given); [] without a ledger."""
        with self.engine.connect() as conn:
            if not self._exists(conn):
                return []
            self.check_shape(conn)
            query = sa.select(self.table).order_by(self.table.c.id)
            if revision is not None:
                query = query.where(self.table.c.revision == revision)
            return [_entry(row) for row in conn.execute(query)]

    def dirty(
        self, revisions: Collection[str] | None, latest: Mapping[str, Latest]
    ) -> LedgerEntry | None:
        """The first revision among ``revisions`` (None: any) left running or partial,
        in ``latest`` (``read_latest()``'s answer)."""
        found = [
            e
            for e in latest.values()
            if e.outcome in DIRTY and (revisions is None or e.revision in revisions)
        ]
        if not found:
            return None
        first = min(found, key=lambda e: e.id)
        return self.by_id([first.id]).get(first.id) or first.as_entry()

    def failed_lately(
        self,
        revisions: Collection[str],
        within: float,
        latest: Mapping[str, Latest],
    ) -> list[LedgerEntry]:
        """The whole rows of ``revisions`` whose latest attempt failed less than
        ``within`` seconds ago, first failed first (``latest`` as for ``dirty``)."""
        if within <= 0:
            return []
        failed = [
            e.id for e in latest.values() if e.outcome == "failed" and e.revision in revisions
        ]
        now = datetime.datetime.now(datetime.timezone.utc)
        since = now - datetime.timedelta(seconds=within)
        # A row from the future (a host whose clock runs ahead) is not taken
        # for a recent failure: it would hold every other host back as long
        # as the clocks differ.
        ahead = now + datetime.timedelta(seconds=_CLOCK_SLACK)
        return [
            entry
            for _, entry in sorted(self.by_id(failed).items())
            if since < entry.ended() <= ahead
        ]

    # -- on env.py's connection, under the fence ---------------------------------

    def prepare(self, conn: Connection) -> Prepared:
        """Before a run's first revision: the ledger exists. Not writable (and a
        warning) where it cannot be made (no CREATE privilege, its catalog busy
        past the DDL lock timeout env.py's connection has): the run goes on
        unrecorded. PostgreSQL tries it in a savepoint, so that a refusal
        leaves the run's transaction usable."""
        try:
            if conn.dialect.name == "postgresql":
                with conn.begin_nested():
                    prepared = self._made_or_checked(conn, ask=True)
            else:
                prepared = self._made_or_checked(conn, ask=False)
        except sa.exc.DBAPIError as exc:
            self.not_recorded("Could not create", first_line(exc.orig or exc))
            return Prepared(writable=False, new=False)
        if not prepared.writable:
            self.not_recorded("Cannot write to", "no INSERT or UPDATE privilege on it")
        return prepared

    def _made_or_checked(self, conn: Connection, *, ask: bool) -> Prepared:
        if not sa.inspect(conn).has_table(self.name, schema=self.table.schema):
            # Made here, now: our columns, owned by this role (which may
            # write to it), and empty. Its shape and privileges are not asked
            # again: on PostgreSQL that cost more than making it.
            self.table.create(conn, checkfirst=False)
            return Prepared(writable=True, new=True)
        self.check_shape(conn)
        # PostgreSQL: a refused INSERT would end the run's transaction; ask
        # first. Elsewhere a refused write fails alone: begin() is asked.
        return Prepared(writable=self._writable(conn) if ask else True, new=False)

    def not_recorded(self, what: str, why: str) -> None:
        """Say that this run goes unrecorded, and why."""
        logger.warning(
            "%s the ledger %s (%s): this run is not recorded, and a process stopped half "
            "way through a revision will not be noticed by the next start",
            what,
            self.name,
            why,
        )

    def check_shape(self, conn: Connection) -> None:
        """A table of the ledger's name that lacks the ledger's columns is someone
        else's (one of the app's, or a hand-made one): ConfigurationError, naming
        it, before anything is written to it."""
        inspector = sa.inspect(conn)
        if not inspector.has_table(self.name, schema=self.table.schema):
            return
        found = {column["name"] for column in inspector.get_columns(self.name, self.table.schema)}
        missing = sorted(set(self.table.c.keys()) - found)
        if missing:
            raise ConfigurationError(
                f"The table {self.table.fullname} is not automigrator's ledger (it has no "
                f"{', '.join(missing)} column): it may be one of your own. Pass "
                "History(table=...) another name (or None for no ledger), or rename that "
                "table; nothing was changed."
            )

    def _writable(self, conn: Connection) -> bool:
        name = self.table.fullname
        query = sa.text("SELECT has_table_privilege(:name, 'SELECT, INSERT, UPDATE')")
        return bool(conn.execute(query, {"name": name}).scalar())

    def left_dirty(self, conn: Connection) -> dict[str, LedgerEntry]:
        """Before a run's first revision, in its transaction: the revisions whose
        latest row was left running or partial. Under the fence no live process
        can add one while the run lasts, so one read serves every revision of
        the run (a read per revision was a round trip each on a server)."""
        t = self.table
        last = sa.select(sa.func.max(t.c.id)).group_by(t.c.revision).scalar_subquery()
        query = sa.select(t).where(t.c.id.in_(last)).where(t.c.outcome.in_(sorted(DIRTY)))
        return {row.revision: _entry(row) for row in conn.execute(query)}

    def begin(self, conn: Connection, facts: RevisionFacts, run: RunFacts) -> int:
        """Before ``facts.revision``'s first statement, in its transaction: its
        ``running`` row, whose id is returned. The caller has made sure, with
        ``left_dirty()``, that no process left the revision dirty."""
        values = self._values(facts, run, "running")
        key = conn.execute(self._begin, values).inserted_primary_key
        assert key is not None
        return int(key[0])

    def insert_applied(
        self, conn: Connection, facts: RevisionFacts, run: RunFacts, duration: float
    ) -> None:
        """SQLite: with the version row, in the revision's transaction, its ``applied``
        row (its revisions are atomic: no ``running`` row is needed)."""
        values = self._values(facts, run, "applied")
        conn.execute(self.table.insert().values(duration=duration, **values))

    def applied(self, conn: Connection, row: int, duration: float) -> None:
        """With the version row: the ``running`` row becomes ``applied``."""
        conn.execute(self._applied, {"row_id": row, "applied_after": duration})

    # -- from a connection of ours ------------------------------------------------

    @contextmanager
    def writing(self, conn: Connection) -> Iterator[Connection]:
        """A transaction on ``conn`` (ours) whose waits for a table lock are bounded:
        a write never queues for ever behind a busy catalog."""
        with conn.begin():
            apply_timeout(conn, self.lock_timeout)
            yield conn

    def failed(
        self,
        conn: Connection,
        facts: RevisionFacts,
        run: RunFacts,
        *,
        error: str,
        row: int | None,
        kept: Collection[str] = (),
        duration: float | None = None,
    ) -> None:
        """On ``conn`` (ours, fenced by the caller): ``facts.revision`` failed:
        ``partial`` if ``kept`` holds statements that stayed, else ``failed``.
        Its ``running`` row, where one stayed, becomes that; else (rolled back
        with the revision) a new row says it."""
        outcome: Outcome = "partial" if kept else "failed"
        values = self._values(facts, run, outcome)
        # The duration too: the row's time is when it began, and a restart
        # within History(rerun_failed_after=) of its end is refused.
        values.update(error=error[:2000], duration=duration)
        if kept:
            values.update(detail="; ".join(kept), statement=len(kept) + 1)
        t = self.table
        with self.writing(conn):
            self.table.create(conn, checkfirst=True)
            if row is not None:
                done = conn.execute(
                    t.update()
                    .where(t.c.id == row)
                    .where(t.c.outcome == "running")
                    .values(
                        outcome=outcome,
                        error=values["error"],
                        detail=values.get("detail"),
                        statement=values.get("statement"),
                        duration=duration,
                    )
                )
                if done.rowcount:
                    return
            if duration is not None:  # its time is when it began, as a running row's
                began = datetime.datetime.now(datetime.timezone.utc) - datetime.timedelta(
                    seconds=duration
                )
                values["at"] = began.isoformat(timespec="milliseconds")
            conn.execute(t.insert().values(**values))

    def adopt(self, conn: Connection, revisions: Iterable[RevisionFacts], run: RunFacts) -> int:
        """Record ``revisions``, already in the database, as ``adopted`` (on ``conn``,
        fenced by the caller); returns how many."""
        self.table.create(conn, checkfirst=True)
        rows = [self._values(facts, run, "adopted") for facts in revisions]
        if rows:
            conn.execute(self.table.insert(), rows)
        return len(rows)

    def record(self, conn: Connection, facts: RevisionFacts, run: RunFacts, **values: Any) -> None:
        """A person's decision (``resolved``, ``undone``, ``accepted``), with who and why."""
        self.table.create(conn, checkfirst=True)
        row = self._values(facts, run, values.pop("outcome"))
        row.update(values)
        conn.execute(self.table.insert().values(**row))

    def _values(self, facts: RevisionFacts, run: RunFacts, outcome: Outcome) -> dict[str, Any]:
        return {
            "revision": facts.revision,
            "outcome": outcome,
            "at": now(),
            "parents": ",".join(facts.parents),
            "checksum": facts.checksum,
            "source_hash": facts.source_hash,
            "script": facts.script,
            "lock_wait": run.lock_wait,
            "host": run.host[:255],
            "pid": run.pid,
            "user": run.user[:255],
            "app_version": run.app_version,
            "old_app": run.verdicts.get(facts.revision),
        }

    def _exists(self, conn: Connection) -> bool:
        return sa.inspect(conn).has_table(self.name, schema=self.table.schema)


def _entry(row: Any) -> LedgerEntry:
    return LedgerEntry(**{name: getattr(row, name) for name in _FIELDS})


_FIELDS = tuple(LedgerEntry.__dataclass_fields__)
