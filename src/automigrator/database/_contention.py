"""Live tables: the DDL lock timeout, recognising contention, and who blocks a revision.

A migration's ``ALTER TABLE`` queues behind any open transaction that
touched the table, and every later query on that table queues behind the
``ALTER``: the application stalls for as long as the blocker lives. So each
transaction of a migration gets a short lock timeout (PostgreSQL
``SET LOCAL lock_timeout``; MySQL/MariaDB ``lock_wait_timeout`` and
``innodb_lock_wait_timeout`` for the session; SQLite its busy timeout), and a
revision that times out is tried again later (``_upgrading.py``), with a
timeout that grows a little each time.

PostgreSQL's ``autocommit_block()`` gets no timeout: ``CREATE INDEX
CONCURRENTLY`` and its like take locks that do not stop reads or writes,
and a timeout there would leave an invalid index behind.
"""

from __future__ import annotations

import math
import re
import time
from dataclasses import dataclass, field
from typing import Any

import sqlalchemy as sa
from sqlalchemy import event
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.exc import DBAPIError

from .._status import Blocker

# PostgreSQL: lock_not_available, deadlock_detected, serialization_failure.
_CONTENTION_SQLSTATES = {"55P03", "40P01", "40001"}
# MySQL/MariaDB: lock wait timeout, deadlock.
_CONTENTION_MYSQL_CODES = {1205, 1213}
# SQLite: SQLITE_BUSY ("database is locked"), SQLITE_LOCKED ("database table is locked").
_SQLITE_BUSY_CODES = {5, 6}


def is_contention(exc: BaseException) -> bool:
    """A lock timeout, a deadlock or a serialization failure: the database was busy."""
    if not isinstance(exc, DBAPIError):
        return False
    orig = exc.orig
    code = getattr(orig, "sqlstate", None) or getattr(orig, "pgcode", None)
    if code in _CONTENTION_SQLSTATES:
        return True
    args = getattr(orig, "args", ())
    if args and isinstance(args[0], int) and args[0] in _CONTENTION_MYSQL_CODES:
        return True
    sqlite_code = getattr(orig, "sqlite_errorcode", None)
    if sqlite_code is not None:
        return int(sqlite_code) & 0xFF in _SQLITE_BUSY_CODES
    # Python < 3.11's sqlite3 has no error code: its message says it.
    return type(orig).__module__.startswith("sqlite3") and "is locked" in str(orig)


# Statements that change nothing: never "kept" (a revision that only read
# before it failed may be tried again, and is no partial one).
_READ_ONLY = ("SELECT ", "SHOW ", "EXPLAIN ", "DESCRIBE ", "SET ", "BEGIN")


class StatementLog:
    """Which statements of the running revision stay whatever happens next.

    A revision that hit a lock timeout may be tried again only if nothing
    it did stays: on PostgreSQL, everything in a transaction that rolls
    back goes; what ran in an autocommit block, or was committed, stays;
    where DDL is not transactional (MySQL/MariaDB, SQLite) every statement
    stays.
    """

    def __init__(self, ours: str | None = None) -> None:
        self.ours = ours  # the ledger: its rows are never the revision's
        self.transactional = True
        self.kept: list[str] = []
        self._pending: list[str] = []

    def next_revision(self) -> None:
        """A new revision starts: what the earlier ones did is theirs."""
        self.kept, self._pending = [], []

    def attach(self, connection: Connection, *, transactional: bool) -> None:
        """Follow the statements and commits of the migration's ``connection``."""
        self.transactional = transactional
        if transactional and connection.dialect.name == "sqlite":
            # Atomic revisions (atomic_sqlite_revisions): a revision that failed,
            # even at its COMMIT (SQLite's busy error comes there), left nothing.
            return
        event.listen(connection, "after_cursor_execute", self._executed)
        event.listen(connection, "commit", self._committed)
        event.listen(connection, "rollback", self._rolled_back)

    def _executed(self, conn: Connection, cursor: Any, statement: str, *args: Any) -> None:
        head = " ".join(statement.split())[:80]
        if head.upper().startswith(_READ_ONLY) or (self.ours and self.ours in head):
            return  # a read leaves nothing behind to meet again; the ledger's rows are ours
        if not self.transactional or _autocommit(conn):
            self.kept.append(head)
        else:
            self._pending.append(head)

    def _committed(self, conn: Connection) -> None:
        self.kept.extend(self._pending)
        self._pending = []

    def _rolled_back(self, conn: Connection) -> None:
        self._pending = []


@dataclass(frozen=True)
class Holder:
    """A blocker as the server knows its transaction: it is gone when that transaction ends.

    ``exact``: the server named it as the blocker (PostgreSQL
    ``pg_blocking_pids``); otherwise it is one of the candidates (MariaDB keeps
    no table of metadata-lock holders), and the real blocker is among them.
    """

    blocker: Blocker
    transaction: str
    exact: bool
    complete: bool = True
    """False: there were more candidates than are listed (none can be waited on)."""


@dataclass
class UpgradeTry:
    """One try of an upgrade: its lock timeout, and what the worker thread learnt."""

    timeout: float | None
    session: int | None = None
    """The server's id of env.py's connection, once configured (None: SQLite, unknown)."""
    log: StatementLog = field(default_factory=StatementLog)
    statement: float | None = None
    """When the statement running now began (``time.monotonic()``); None between them."""
    seen: tuple[float, tuple[Holder, ...]] | None = None
    """The blockers last seen, and the start of the statement they kept waiting."""

    def attach(self, connection: Connection, *, transactional: bool) -> None:
        """env.py configured ``connection``: give it the timeout, learn its id, follow it."""
        apply_timeout(connection, self.timeout)
        self.session = session_id(connection)
        self.log.attach(connection, transactional=transactional)
        event.listen(connection, "before_cursor_execute", self._begins)
        event.listen(connection, "after_cursor_execute", self._ends)

    def _begins(self, *args: Any) -> None:
        self.statement = time.monotonic()

    def _ends(self, *args: Any) -> None:
        # A statement that failed keeps its start: its blockers are the failure's.
        self.statement = None

    def holders(self) -> tuple[Holder, ...]:
        """Who kept the statement that failed waiting (as last seen while it waited)."""
        if self.seen is None or self.seen[0] != self.statement:
            return ()
        if not all(h.complete for h in self.seen[1]):
            return ()  # the blocker may be one not listed: wait for none of them
        return self.seen[1]


def _autocommit(conn: Connection) -> bool:
    dbapi = conn.connection.dbapi_connection
    return bool(getattr(dbapi, "autocommit", False))


def effective_timeout(backend: str, timeout: float | None) -> float | None:
    """The lock timeout ``backend`` will use for ``timeout``: MySQL/MariaDB count whole
    seconds, at least 1 (0 would mean no wait at all, and a revision's later
    statement failing at once where DDL is not transactional leaves the
    earlier ones behind)."""
    if timeout is None or backend not in ("mysql", "mariadb"):
        return timeout
    return float(max(1, math.ceil(timeout)))


def apply_timeout(connection: Connection, timeout: float | None) -> None:
    """Give the migration's ``connection`` this try's lock timeout (None: leave it)."""
    if timeout is None:
        return
    backend = connection.dialect.name
    if backend == "postgresql":
        _WaitAllowance(max(1, round(timeout * 1000))).attach(connection)
    elif backend in ("mysql", "mariadb"):
        seconds = int(effective_timeout(backend, timeout) or 1)  # whole seconds only
        _driver_execute(
            connection,
            f"SET SESSION lock_wait_timeout = {seconds}, innodb_lock_wait_timeout = {seconds}",
        )
    elif backend == "sqlite":
        _driver_execute(connection, f"PRAGMA busy_timeout = {max(1, round(timeout * 1000))}")


# Statements that take a lock that stops a table's reads or writes: DDL, and
# a new table's foreign key (SHARE ROW EXCLUSIVE on the table it references).
_STRONG = re.compile(
    r"^(?:ALTER|DROP|TRUNCATE|LOCK|REINDEX|CLUSTER|REFRESH|"
    r"CREATE\s+(?:UNIQUE\s+)?INDEX|CREATE\s+(?:OR\s+REPLACE\s+)?(?:CONSTRAINT\s+)?TRIGGER|"
    r"CREATE\s+(?:UNLOGGED\s+)?TABLE\b.*\bREFERENCES)\b",
    re.IGNORECASE | re.DOTALL,
)
_OWN_TIMEOUT = re.compile(r"^SET\s+(?:LOCAL\s+|SESSION\s+)?lock_timeout\b", re.IGNORECASE)
# Leading comments and blanks, before a statement's first word.
_LEAD = re.compile(r"^(?:\s+|--[^\n]*(?:\n|$)|/\*.*?\*/)*", re.DOTALL)
# The part of the timeout a later statement always gets, however much is spent.
_FLOOR = 0.05


def _head(statement: str) -> str:
    return statement[_LEAD.match(statement).end() :]  # type: ignore[union-attr]


class _WaitAllowance:
    """PostgreSQL's lock timeout for one transaction's waits together, not each.

    ``lock_timeout`` bounds each wait: a transaction that took one table's
    ACCESS EXCLUSIVE lock and then waits for a second table (or a row, or a
    table its foreign key references), and a third, stalls the first
    table's queries for all those waits together. So once a statement that
    takes such a lock has run (DDL, a foreign key to an existing table),
    each later statement, whatever it is, gets what is left of the timeout
    since then (at least a twentieth of it): the first table's queries wait
    about one timeout behind the transaction. Statements before it (a data
    backfill) leave the timeout whole. A revision that sets its own
    ``lock_timeout`` is left alone.
    """

    def __init__(self, milliseconds: int) -> None:
        self.milliseconds = milliseconds
        self.floor = max(1, round(milliseconds * _FLOOR))
        self.held_since: float | None = None  # a lock taken at (monotonic)
        self.current = milliseconds
        self.own = False  # the revision set its own timeout

    def attach(self, connection: Connection) -> None:
        event.listen(connection, "begin", self._begin)
        event.listen(connection, "before_cursor_execute", self._before)
        event.listen(connection, "after_cursor_execute", self._after)
        if connection.in_transaction():
            self._begin(connection)

    def _begin(self, conn: Connection) -> None:
        self.held_since, self.current, self.own = None, self.milliseconds, False
        # SET LOCAL ends with the transaction: autocommit blocks (CREATE
        # INDEX CONCURRENTLY) run without it.
        if not _autocommit(conn):
            _driver_execute(conn, f"SET LOCAL lock_timeout = {self.milliseconds}")

    def _before(self, conn: Connection, cursor: Any, statement: str, *args: Any) -> None:
        if self.held_since is None or self.own or _autocommit(conn):
            return
        spent = (time.monotonic() - self.held_since) * 1000
        left = max(self.floor, round(self.milliseconds - spent))
        if left < self.current * 0.9:  # a few SETs per transaction, not one a statement
            _driver_execute(conn, f"SET LOCAL lock_timeout = {left}")
            self.current = left

    def _after(self, conn: Connection, cursor: Any, statement: str, *args: Any) -> None:
        head = _head(statement)
        if _OWN_TIMEOUT.match(head):
            self.own = True
        elif self.held_since is None and _STRONG.match(head) and not _autocommit(conn):
            self.held_since = time.monotonic()


def _driver_execute(conn: Connection, sql: str) -> None:
    # Straight to the driver: through SQLAlchemy this would begin a
    # transaction that Alembic then takes for the caller's, and never commits.
    cursor = conn.connection.dbapi_connection.cursor()  # type: ignore[union-attr]
    try:
        cursor.execute(sql)
    finally:
        cursor.close()


def session_id(connection: Connection) -> int | None:
    """The server's id for the migration's connection (to ask who blocks it)."""
    backend = connection.dialect.name
    if backend == "postgresql":
        sql = "SELECT pg_backend_pid()"
    elif backend in ("mysql", "mariadb"):
        sql = "SELECT CONNECTION_ID()"
    else:
        return None
    cursor = connection.connection.dbapi_connection.cursor()  # type: ignore[union-attr]
    try:
        cursor.execute(sql)
        row = cursor.fetchone()
    finally:
        cursor.close()
    return int(row[0]) if row else None


_PG_BLOCKERS = sa.text(
    "SELECT a.pid, a.application_name, a.state, "
    "extract(epoch FROM now() - coalesce(a.xact_start, a.state_change)) AS seconds, "
    "coalesce(a.xact_start::text, '') AS xact, "
    "(SELECT l.relation::regclass::text FROM pg_locks l "
    " WHERE l.pid = :pid AND NOT l.granted AND l.relation IS NOT NULL LIMIT 1) AS waited "
    "FROM pg_stat_activity a WHERE a.pid = ANY(pg_blocking_pids(:pid)) "
    "ORDER BY a.xact_start NULLS LAST LIMIT 5"
)
_PG_OPEN = sa.text(
    "SELECT pid, coalesce(xact_start::text, '') AS xact FROM pg_stat_activity "
    "WHERE pid = ANY(:pids)"
)

# A transaction is known by its id and start: MariaDB gives a read-only
# transaction an id from its object, which the session's next one may reuse.
# MariaDB keeps no table of metadata-lock holders unless a plugin is loaded:
# while our session waits for a lock, every other open InnoDB transaction
# is a candidate (the one that touched the table is among them), but not
# one that itself waits for a metadata lock (it queued behind ours). All of
# them are waited on (the oldest few may be unrelated long ones); the status
# shows the oldest SHOWN.
_MYSQL_WAITING = sa.text(
    "SELECT p.STATE, t.trx_state FROM information_schema.PROCESSLIST p "
    "LEFT JOIN information_schema.INNODB_TRX t ON t.trx_mysql_thread_id = p.ID "
    "WHERE p.ID = :pid"
)
_MYSQL_OPEN = sa.text(
    "SELECT t.trx_mysql_thread_id AS pid, p.COMMAND AS command, "
    "CONCAT(t.trx_id, '/', t.trx_started) AS xact, "
    "TIMESTAMPDIFF(SECOND, t.trx_started, NOW()) AS seconds "
    "FROM information_schema.INNODB_TRX t "
    "JOIN information_schema.PROCESSLIST p ON p.ID = t.trx_mysql_thread_id "
    "WHERE t.trx_mysql_thread_id <> :pid "
    "AND coalesce(p.STATE, '') NOT LIKE '%metadata lock%' ORDER BY t.trx_started LIMIT :limit"
)
# Candidates listed at most; past that the next try comes after a pause.
_CANDIDATES = 200
_MYSQL_STILL = sa.text(
    "SELECT trx_mysql_thread_id AS pid, CONCAT(trx_id, '/', trx_started) AS xact "
    "FROM information_schema.INNODB_TRX "
    "WHERE trx_mysql_thread_id IN :pids"
).bindparams(sa.bindparam("pids", expanding=True))


SHOWN = 5
"""Blockers shown in the status and the log, oldest first."""


def blockers(engine: Engine, session: int) -> tuple[Holder, ...]:
    """Who keeps the migration's session (``session``) waiting for a lock, if anyone.

    Never their query text (it holds the application's data), never a user
    or host: a pid, a state, how long, and the application's own name.
    """
    backend = engine.url.get_backend_name()
    with engine.connect() as conn:
        if backend == "postgresql":
            rows = conn.execute(_PG_BLOCKERS, {"pid": session}).all()
            return tuple(
                Holder(
                    Blocker(
                        pid=row.pid,
                        state=row.state or "unknown",
                        seconds=float(row.seconds) if row.seconds is not None else None,
                        application=row.application_name or None,
                        table=row.waited,
                    ),
                    transaction=row.xact,
                    exact=True,
                )
                for row in rows
            )
        if backend in ("mysql", "mariadb"):
            waiting = conn.execute(_MYSQL_WAITING, {"pid": session}).first()
            if waiting is None or not (
                "lock" in str(waiting.STATE or "").lower() or waiting.trx_state == "LOCK WAIT"
            ):
                return ()
            limit = {"pid": session, "limit": _CANDIDATES + 1}
            rows = conn.execute(_MYSQL_OPEN, limit).all()
            return tuple(
                Holder(
                    Blocker(
                        pid=row.pid,
                        state="idle in transaction" if row.command == "Sleep" else "active",
                        seconds=float(row.seconds) if row.seconds is not None else None,
                    ),
                    transaction=str(row.xact),
                    exact=False,
                    complete=len(rows) <= _CANDIDATES,
                )
                for row in rows[:_CANDIDATES]
            )
    return ()


def still_open(engine: Engine, holders: tuple[Holder, ...]) -> tuple[Holder, ...]:
    """Those of ``holders`` whose transaction is still open: a read of the server's
    activity, which takes no lock and so waits in no queue."""
    if not holders:
        return ()
    pids = [h.blocker.pid for h in holders]
    query = _PG_OPEN if engine.url.get_backend_name() == "postgresql" else _MYSQL_STILL
    with engine.connect() as conn:
        open_now = {(row.pid, str(row.xact)) for row in conn.execute(query, {"pids": pids})}
    return tuple(h for h in holders if (h.blocker.pid, h.transaction) in open_now)


# CREATE [UNIQUE] INDEX CONCURRENTLY [IF NOT EXISTS] name ON ...
_CONCURRENT_INDEX = re.compile(
    r"^\s*CREATE\s+(?:UNIQUE\s+)?INDEX\s+CONCURRENTLY\s+(?:IF\s+NOT\s+EXISTS\s+)?"
    r'((?:"[^"]+"|[\w$]+)(?:\.(?:"[^"]+"|[\w$]+))?)\s+ON\b',
    re.IGNORECASE,
)


def failed_concurrent_index(engine: Engine, statement: str | None) -> tuple[str, bool] | None:
    """After a failed ``CREATE INDEX CONCURRENTLY``: its INVALID index, dropped if it can be.

    PostgreSQL leaves the index of a build that failed (a lock timeout while
    it waited out older transactions) INVALID, and the next try fails on it
    as "already exists". Returns (name, dropped) when such an index is there;
    None when the statement was no concurrent build or left no INVALID index.
    Only an INVALID index of that very name is dropped, concurrently, and
    only if that takes no longer than a second.
    """
    found = _CONCURRENT_INDEX.match(statement or "")
    if found is None:
        return None
    name = found.group(1)
    with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
        invalid = conn.execute(
            sa.text("SELECT NOT indisvalid FROM pg_index WHERE indexrelid = to_regclass(:name)"),
            {"name": name},
        ).scalar()
        if not invalid:
            return None
        try:
            conn.exec_driver_sql("SET lock_timeout = '1s'")
            conn.exec_driver_sql(f"DROP INDEX CONCURRENTLY IF EXISTS {name}")
        except DBAPIError:
            return name, False
    return name, True
