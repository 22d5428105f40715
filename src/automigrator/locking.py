"""One migration at a time across processes: a lock held in the database itself.

Each backend is a :class:`MigrationLock`. ``acquire(timeout)`` blocks a worker
thread for at most ``timeout`` seconds; the migrator calls it in short slices
so that it can log while it waits, honour ``Timeouts.lock`` and stop at once on
shutdown.

- PostgreSQL: a transaction-level advisory lock held by an open, idle
  transaction on a dedicated connection, never the migration connection,
  taken by polling ``pg_try_advisory_xact_lock`` (a waiter holds no
  transaction open, so a ``CREATE INDEX CONCURRENTLY`` under way need not
  wait for it). It ends with its transaction: at the release, when the
  holder's connection dies, and when the holder falls silent (see
  ``reap_after``). A pooler in transaction mode pins the server connection
  while the transaction is open, so it works through PgBouncer too.
- MySQL/MariaDB: ``GET_LOCK(name, timeout)`` on a dedicated connection, its
  result checked (1 held, 0 timed out, NULL error); ``RELEASE_LOCK`` after.
  The session's ``wait_timeout`` is ``reap_after``: a silent holder's
  session, and its lock, are ended by the server.
- SQLite: an OS file lock on ``<database file>.automigrator.lock`` beside the
  database (same file system, unlike /tmp); the OS drops it when the process
  dies. ``:memory:`` databases are private to a process, so a thread lock does.
"""

from __future__ import annotations

import hashlib
import logging
import math
import os
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Protocol, runtime_checkable

import sqlalchemy as sa
from sqlalchemy.engine import URL, Connection, Engine
from sqlalchemy.exc import DBAPIError, SQLAlchemyError

if TYPE_CHECKING:
    from filelock import FileLock

from .database._connections import (
    VersionTable,
    create_engine,
    is_memory_sqlite,
    parse_url,
    sqlite_file,
)
from .errors import ConfigurationError

logger = logging.getLogger("automigrator")

__all__ = [
    "HeldLock",
    "MigrationLock",
    "MySQLLock",
    "PostgresAdvisoryLock",
    "ProcessLock",
    "SQLiteFileLock",
    "lock_for",
]


@runtime_checkable
class MigrationLock(Protocol):
    """What the migrator needs of a lock; pass any object like this as ``lock=``."""

    def acquire(self, timeout: float) -> bool:
        """Block at most ``timeout`` seconds; True when the lock is now held."""
        ...

    def release(self) -> None:
        """Release a held lock. Called exactly once after a successful acquire."""
        ...

    def holder(self) -> str | None:
        """Who holds the lock, if the backend can tell (for the waiting log line)."""
        ...


@runtime_checkable
class HeldLock(Protocol):
    """A lock that can say whether it is still held (optional, beside ``MigrationLock``).

    The migration asks before its first revision, before each commit and
    after its last (before every revision where DDL is not transactional or
    no fence is held); a lock that was lost stops the run (``LockLostError``).
    """

    def held(self) -> bool:
        """True while this process still holds the lock (a dead connection: False)."""
        ...

    def guard(self, connection: Connection) -> bool | None:
        """Take the fence: a second lock, held by the connection that runs the DDL.

        Held for the whole run (autocommit blocks included), so a second
        migrator that took the main lock after this one lost it still cannot
        run DDL while this one's connection lives. True when taken, False
        when another process holds it, None when the backend has none.
        """
        ...

    def release_guard(self, dbapi_connection: Any) -> None:
        """Let the fence go on that (driver) connection, the run being over."""
        ...


@contextmanager
def fenced(lock: object, connection: Connection) -> Iterator[bool]:
    """Hold ``lock``'s fence on ``connection`` (one of ours) for the block: a write
    of ours under the lock, outside the migration's own connection.

    Yields False when the lock was lost meanwhile or another process holds
    the fence (then write nothing: a holder paused past its reap time must
    never write after its successor). The fence is let go after the block,
    so a later run's own connection can take it. Begin the block's
    transaction inside it: the fence outlives it.
    """
    if not isinstance(lock, HeldLock):
        yield True
        return
    guarded = lock.guard(connection)
    try:
        yield guarded is not False and lock.held()
    finally:
        if guarded:
            lock.release_guard(connection.connection.dbapi_connection)


_DEFAULT_TABLE = VersionTable()


def _key_name(engine: Engine, table: VersionTable) -> str:
    # Two applications sharing one server must not block each other, so the
    # key names the database, the schema and the version table.
    url = engine.url
    return f"automigrator:{url.database or ''}:{table.schema or ''}:{table.name}"


class _ServerLock:
    """A lock held by a connection of its own, never the migration's.

    While held, a heartbeat thread runs a trivial query on that connection
    every ``reap_after / 6`` seconds, and the session tells the server to end
    it after ``reap_after`` seconds of silence. A holder that vanished (its
    node cut off without FIN or RST, its process frozen) so loses the lock
    about ``reap_after`` seconds later, instead of when the server's TCP
    keepalives notice, by default hours later; a live holder never does.
    """

    def __init__(self, engine: Engine, reap_after: float) -> None:
        if not reap_after >= _HEARTBEATS_PER_REAP:
            raise ConfigurationError(
                f"reap_after={reap_after!r}: give at least {_HEARTBEATS_PER_REAP} seconds "
                "(the heartbeat runs every reap_after / 6 seconds)."
            )
        self._engine = engine
        self.reap_after = float(reap_after)
        self._conn: Connection | None = None
        # One statement at a time on the lock's connection: the heartbeat
        # thread, held() from the migration's thread, release() from another.
        self._mutex = threading.Lock()
        self._beating: threading.Event | None = None
        self._seen_holder: str | None = None
        # The deadline of the statement on the lock's connection, if one runs.
        self._watch = threading.Condition()
        self._armed: float | None = None
        self._watchdog: threading.Thread | None = None

    def _connection(self) -> Connection:
        if self._conn is None:
            self._conn = self._open()
        return self._conn

    def _open(self) -> Connection:
        raise NotImplementedError

    def held(self) -> bool:
        with self._mutex:
            if self._conn is None:
                return False
            try:
                with self._deadline():
                    return bool(self._conn.execute(self._held_query()).scalar())
            except SQLAlchemyError:
                # The connection is gone, and the lock with it (a heartbeat
                # that met the loss leaves it invalidated: PendingRollbackError).
                return False

    def _fence(self) -> tuple[str, str] | None:
        """The statements that take and let go of the fence; None where there is none."""
        return None

    def guard(self, connection: Connection) -> bool | None:
        fence = self._fence()
        if fence is None:
            return None
        # Straight to the driver: through SQLAlchemy the statement would begin
        # a transaction that Alembic then takes for the caller's.
        return bool(_driver_scalar(connection.connection.dbapi_connection, fence[0]))

    def release_guard(self, dbapi_connection: Any) -> None:
        fence = self._fence()
        if fence is None:
            return
        # Through a pooler in transaction mode each statement may reach
        # another server connection than the one holding the fence; the one
        # just given back is handed out first (PgBouncer's default), so a
        # few tries reach it. Each try is its own transaction.
        for _ in range(_RELEASE_TRIES):
            released = _driver_scalar(dbapi_connection, fence[1])
            dbapi_connection.rollback()
            if released:
                return
        logger.warning(
            "The migration's fence (%r) could not be let go: its server connection was not "
            "reached. A pooler in transaction mode keeps it until that connection closes; "
            "until then a migration stops with LockLostError. Point env.py at the server "
            "directly, or use session pooling.",
            self,
        )

    def abort(self) -> None:
        """Cut the lock's connection from another thread (it froze mid-query).

        Shutting its socket down wakes the thread blocked on it with an
        error; the server drops the session, and the lock with it.
        """
        conn = self._conn
        if conn is None:
            return
        try:
            fileno = conn.connection.dbapi_connection.fileno()  # type: ignore[union-attr]
            with socket.socket(fileno=os.dup(fileno)) as sock:
                sock.shutdown(socket.SHUT_RDWR)
        except (AttributeError, OSError, ValueError):
            pass  # no socket of its own to cut (the driver's read timeout bounds it)

    @contextmanager
    def _deadline(self) -> Iterator[None]:
        # A statement on a connection that froze (no answer, no reset: the
        # kernel of a proxy or a NAT still acknowledges) would block for
        # ever. After reap_after the server has ended the lock's session
        # anyway: cut the socket, and the statement fails as a lost lock.
        # One watchdog thread per lock, armed for each statement (a
        # threading.Timer apiece cost 1.5 ms of each revision's lock check).
        with self._watch:
            if self._watchdog is None:
                self._watchdog = threading.Thread(
                    target=self._watch_statements, name="automigrator-lock-deadline", daemon=True
                )
                self._watchdog.start()
            self._armed = time.monotonic() + self.reap_after
            self._watch.notify()
        try:
            yield
        finally:
            with self._watch:
                self._armed = None

    def _watch_statements(self) -> None:
        with self._watch:
            while True:
                armed = self._armed
                if armed is None:
                    # Idle a while (the lock let go, or between heartbeats):
                    # ends, and the next statement starts another.
                    if not self._watch.wait(self.reap_after) and self._armed is None:
                        self._watchdog = None
                        return
                    continue
                left = armed - time.monotonic()
                if left > 0:
                    self._watch.wait(left)
                    continue
                self._armed = None  # once per statement
                self.abort()

    def _held_query(self) -> sa.TextClause:
        raise NotImplementedError

    def _start_heartbeat(self) -> None:
        stop = threading.Event()
        self._beating = stop
        threading.Thread(
            target=self._heartbeat, args=(stop,), name="automigrator-lock-heartbeat", daemon=True
        ).start()

    def _heartbeat(self, stop: threading.Event) -> None:
        while not stop.wait(self.reap_after / _HEARTBEATS_PER_REAP):
            with self._mutex:
                if stop.is_set() or self._conn is None:
                    return
                try:
                    with self._deadline():
                        self._conn.execute(sa.text("SELECT 1"))
                except SQLAlchemyError:
                    return  # gone: held() says so before the next revision

    def _stop_heartbeat(self) -> None:
        stop, self._beating = self._beating, None
        if stop is not None:
            stop.set()

    def release(self) -> None:
        self._stop_heartbeat()
        with self._mutex:
            try:
                if self._conn is not None:
                    with self._deadline():
                        self._unlock(self._conn)
            finally:
                self._close()

    def _unlock(self, conn: Connection) -> None:
        raise NotImplementedError

    def _close(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            conn.close()

    def holder(self) -> str | None:
        # A waiter names the holder it saw on its own connection at the end
        # of its last try: 64 waiters then open 64 connections, not 128.
        if self._conn is not None and self._seen_holder is not None:
            return self._seen_holder
        try:
            with self._engine.connect() as conn:
                return self._describe_holder(conn)
        except DBAPIError:
            return None

    def _describe_holder(self, conn: Connection) -> str | None:
        raise NotImplementedError


class PostgresAdvisoryLock(_ServerLock):
    """A PostgreSQL advisory lock held by an open transaction on a connection of its own.

    The lock is transaction-scoped (``pg_try_advisory_xact_lock``) and the
    transaction stays open, idle, until the release rolls it back. A pooler
    in transaction mode (PgBouncer) pins a server connection to a client for
    as long as its transaction is open, so the lock works through one; a
    session-level lock would stay with a server connection that other
    clients then use. The transaction takes no snapshot between statements,
    so a ``CREATE INDEX CONCURRENTLY`` does not wait for it.
    """

    def __init__(
        self, engine: Engine, table: VersionTable = _DEFAULT_TABLE, *, reap_after: float = 30.0
    ) -> None:
        super().__init__(engine, reap_after)
        self.name = _key_name(engine, table)
        digest = hashlib.blake2b(self.name.encode(), digest_size=8).digest()
        self.key = int.from_bytes(digest, "big", signed=True)

    def _open(self) -> Connection:
        # AUTOCOMMIT for the driver: we send BEGIN and ROLLBACK ourselves,
        # so that a waiter's poll is one statement and one round trip.
        return self._engine.connect().execution_options(isolation_level="AUTOCOMMIT")

    def _key_halves(self) -> dict[str, int]:
        # pg_locks shows a bigint advisory key as two unsigned 32-bit halves.
        unsigned = self.key & 0xFFFFFFFFFFFFFFFF
        return {"hi": unsigned >> 32, "lo": unsigned & 0xFFFFFFFF}

    def _unlock(self, conn: Connection) -> None:
        conn.execute(sa.text("ROLLBACK"))  # ends the transaction, and the lock with it

    # Every statement of the lock's transaction is sent without bound
    # parameters, as literals of our own integers: a statement with them goes
    # through the extended protocol, whose unnamed portal keeps a snapshot
    # until the next statement, and CREATE INDEX CONCURRENTLY would wait for
    # the idle transaction (forever: a deadlock with our own migration).
    def _held_query(self) -> sa.TextClause:
        key = self._key_halves()
        return sa.text(
            "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND granted "
            f"AND pid = pg_backend_pid() AND classid = {key['hi']:d} AND objid = {key['lo']:d} "
            "AND objsubid = 1"
        )

    def _try_query(self) -> sa.TextClause:
        # The server ends the lock's transaction, and frees the lock, after
        # reap_after seconds without a statement (the heartbeat's or ours).
        return sa.text(
            f"SELECT pg_try_advisory_xact_lock({self.key:d}), "
            "set_config('idle_in_transaction_session_timeout', "
            f"'{round(self.reap_after * 1000):d}ms', true)"
        )

    def _fence(self) -> tuple[str, str]:
        # A session-level lock on a second key, on the migration's own
        # connection: it outlives each transaction and autocommit block.
        # Advisory locks are re-entrant: a server session that already holds
        # it is another migrator's, handed over by a pooler in transaction
        # mode, never ours (we take it once per run): refused, like a holder.
        key = self.key ^ _GUARD_BITS
        unsigned = key & 0xFFFFFFFFFFFFFFFF
        take = (
            "SELECT CASE WHEN EXISTS (SELECT 1 FROM pg_locks WHERE locktype = 'advisory' "
            f"AND granted AND pid = pg_backend_pid() AND classid = {unsigned >> 32:d} "
            f"AND objid = {unsigned & 0xFFFFFFFF:d} AND objsubid = 1) THEN false "
            f"ELSE pg_try_advisory_lock({key:d}) END"
        )
        return take, f"SELECT pg_advisory_unlock({key:d})"

    def acquire(self, timeout: float) -> bool:
        # Polled, never waited for in the server: a session blocked in
        # pg_advisory_lock is a running transaction, and CREATE INDEX
        # CONCURRENTLY waits out every transaction older than each of its
        # phases, so blocked waiters held up the very migration they wait for.
        conn = self._connection()
        deadline = time.monotonic() + max(timeout, 0.0)
        pause = _FIRST_POLL
        # The probe, outside any transaction, takes the lock and lets it go
        # within the statement: one round trip per poll while it is held
        # elsewhere (64 waiters poll 5 times a second each).
        probe = sa.text(f"SELECT pg_try_advisory_xact_lock({self.key:d})")
        attempt = self._try_query()
        while True:
            with self._mutex:
                if conn.execute(probe).scalar():
                    conn.execute(sa.text("BEGIN"))
                    if conn.execute(attempt).scalar():
                        self._seen_holder = None
                        self._start_heartbeat()
                        return True
                    conn.execute(sa.text("ROLLBACK"))  # another waiter was quicker
            left = deadline - time.monotonic()
            if left <= 0:
                with self._mutex:
                    self._seen_holder = self._describe_holder(conn)
                return False
            time.sleep(min(pause, left))
            pause = min(pause * 2, _LAST_POLL)

    def _describe_holder(self, conn: Connection) -> str | None:
        query = sa.text(
            "SELECT a.pid, a.application_name, a.client_addr, a.backend_start "
            "FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid "
            "WHERE l.locktype = 'advisory' AND l.granted "
            "AND l.classid = :hi AND l.objid = :lo AND l.objsubid = 1"
        )
        row = conn.execute(query, self._key_halves()).first()
        if row is None:
            return None
        who = f"pid {row.pid}"
        if row.application_name:
            who += f" ({row.application_name})"
        if row.client_addr:
            who += f" from {row.client_addr}"
        return f"{who}, connected since {row.backend_start:%H:%M:%S}"

    def __repr__(self) -> str:
        return f"PostgresAdvisoryLock(key={self.key}, name={self.name!r})"


class MySQLLock(_ServerLock):
    """A MySQL/MariaDB named lock (``GET_LOCK``) on its own connection.

    The session's ``wait_timeout`` is ``reap_after``: the server ends it,
    and frees the lock, once its heartbeat stops.
    """

    def __init__(
        self, engine: Engine, table: VersionTable = _DEFAULT_TABLE, *, reap_after: float = 30.0
    ) -> None:
        super().__init__(engine, reap_after)
        # Lock names are limited to 64 characters: hash the long form.
        digest = hashlib.blake2b(_key_name(engine, table).encode(), digest_size=16).hexdigest()
        self.name = f"automigrator:{digest}"

    def _open(self) -> Connection:
        conn = self._engine.connect().execution_options(isolation_level="AUTOCOMMIT")
        conn.execute(
            sa.text("SET SESSION wait_timeout = :seconds"),
            {"seconds": max(1, math.ceil(self.reap_after))},
        )
        return conn

    def _unlock(self, conn: Connection) -> None:
        conn.execute(sa.text("SELECT RELEASE_LOCK(:name)"), {"name": self.name})

    def _fence(self) -> tuple[str, str]:
        # A second named lock, taken by the migration's own connection (named
        # locks nest: one this session already holds is another migrator's).
        name = f"{self.name}:guard"
        take = f"SELECT IF(IS_USED_LOCK('{name}') = CONNECTION_ID(), 0, GET_LOCK('{name}', 0))"
        return take, f"SELECT RELEASE_LOCK('{name}')"

    def _held_query(self) -> sa.TextClause:
        return sa.text("SELECT IS_USED_LOCK(:name) = CONNECTION_ID()").bindparams(name=self.name)

    def acquire(self, timeout: float) -> bool:
        seconds = 0 if timeout <= 0 else max(1, round(timeout))
        with self._mutex:
            # Evaluated left to right: after a timeout, who holds it now.
            got, holder = (
                self._connection()
                .execute(
                    sa.text("SELECT GET_LOCK(:name, :seconds), IS_USED_LOCK(:name)"),
                    {"name": self.name, "seconds": seconds},
                )
                .one()
            )
            if got is None:
                self._close()
                raise ConfigurationError(
                    f"GET_LOCK({self.name!r}) returned NULL: the server refused."
                )
            self._seen_holder = None if got or holder is None else f"connection id {holder}"
        if got:
            self._start_heartbeat()
        return bool(got)

    def _describe_holder(self, conn: Connection) -> str | None:
        value = conn.execute(sa.text("SELECT IS_USED_LOCK(:name)"), {"name": self.name}).scalar()
        return f"connection id {value}" if value is not None else None

    def __repr__(self) -> str:
        return f"MySQLLock(name={self.name!r})"


class SQLiteFileLock:
    """An OS file lock beside the SQLite database file."""

    def __init__(self, database: str | Path) -> None:
        self.path = Path(f"{Path(database).resolve()}.automigrator.lock")
        # Imported here, not at the top: filelock's import costs 1.7 MB of
        # peak RSS, and a start at head never takes the lock.
        from filelock import FileLock

        self._lock: FileLock = FileLock(str(self.path), thread_local=False)

    def acquire(self, timeout: float) -> bool:
        from filelock import Timeout

        try:
            self._lock.acquire(timeout=timeout, poll_interval=0.02)
        except Timeout:
            return False
        return True

    def release(self) -> None:
        self._lock.release()

    def held(self) -> bool:
        return bool(self._lock.is_locked)

    def guard(self, connection: Connection) -> bool | None:
        return None

    def release_guard(self, dbapi_connection: Any) -> None:
        return None

    def holder(self) -> str | None:
        return None

    def __repr__(self) -> str:
        return f"SQLiteFileLock(path={str(self.path)!r})"


class ProcessLock:
    """A lock within this process only: for ``:memory:`` SQLite and for tests."""

    _locks: ClassVar[dict[str, threading.Lock]] = {}
    _guard: ClassVar[threading.Lock] = threading.Lock()

    def __init__(self, name: str = "default") -> None:
        self.name = name
        with self._guard:
            self._lock = self._locks.setdefault(name, threading.Lock())

    def acquire(self, timeout: float) -> bool:
        if timeout <= 0:
            return self._lock.acquire(blocking=False)
        return self._lock.acquire(timeout=timeout)

    def release(self) -> None:
        self._lock.release()

    def holder(self) -> str | None:
        return None

    def __repr__(self) -> str:
        return f"ProcessLock(name={self.name!r})"


def lock_for(database: str | URL | Engine, table: VersionTable | None = None) -> MigrationLock:
    """The lock ``lock="auto"`` takes for ``database`` (a URL or an engine) and ``table``.

    Every migrator of that database and version table takes this one: hold
    it to keep them out (a test standing in for a running migration).
    """
    table = table if table is not None else VersionTable()
    engine = database if isinstance(database, Engine) else create_engine(parse_url(database))
    backend = engine.url.get_backend_name()
    if backend == "postgresql":
        return PostgresAdvisoryLock(engine, table)
    if backend in ("mysql", "mariadb"):
        return MySQLLock(engine, table)
    if backend == "sqlite":
        if is_memory_sqlite(engine.url):
            return ProcessLock(f"sqlite-memory:{table}")
        return SQLiteFileLock(sqlite_file(engine.url))
    raise ConfigurationError(
        f"No cross-process migration lock is available for the {backend!r} dialect. Pass "
        "lock=<an object with acquire(timeout), release() and holder()> (see "
        "automigrator.MigrationLock), or lock=None if only one process ever migrates."
    )


# A waiter polls the PostgreSQL lock after 20 ms, backing off to every 200 ms:
# it takes the lock within 0.2 s of its release, for a query of microseconds.
_FIRST_POLL = 0.02
_LAST_POLL = 0.2

# The heartbeat runs six times per reap_after: a holder loses its lock only
# after five heartbeats in a row went missing.
_HEARTBEATS_PER_REAP = 6

# Flips bits of the session key: the guard's key, distinct from it.
_GUARD_BITS = 0x5A5A5A5A5A5A5A5A
# Tries to let the fence go before saying it could not be (see release_guard).
_RELEASE_TRIES = 64


def _driver_scalar(dbapi_connection: Any, sql: str) -> Any:
    cursor = dbapi_connection.cursor()
    try:
        cursor.execute(sql)
        row = cursor.fetchone()
        return row[0] if row else None
    finally:
        cursor.close()
