"""One migration at a time across processes: a lock held in the database itself.

Each backend is a :class:`MigrationLock`. ``acquire(timeout)`` blocks a worker
thread for at most ``timeout`` seconds; the migrator calls it in short slices
so that it can log while it waits, honour ``lock_timeout`` and stop at once on
shutdown.

- PostgreSQL: a session-level advisory lock on a dedicated AUTOCOMMIT
  connection, never the migration connection, taken by polling
  ``pg_try_advisory_lock`` (a waiter holds no transaction open, so a
  ``CREATE INDEX CONCURRENTLY`` under way need not wait for it). The server
  drops it when the holder's connection dies. It does not survive PgBouncer in transaction
  pooling mode: give migrations a direct URL.
- MySQL/MariaDB: ``GET_LOCK(name, timeout)`` on a dedicated connection, its
  result checked (1 held, 0 timed out, NULL error); ``RELEASE_LOCK`` after.
- SQLite: an OS file lock on ``<database file>.automigrator.lock`` beside the
  database (same file system, unlike /tmp); the OS drops it when the process
  dies. ``:memory:`` databases are private to a process, so a thread lock does.
"""

from __future__ import annotations

import hashlib
import os
import socket
import threading
import time
from pathlib import Path
from typing import ClassVar, Protocol, runtime_checkable

import sqlalchemy as sa
from filelock import FileLock
from filelock import Timeout as FileLockTimeout
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.exc import DBAPIError

from ._database import VersionTable, is_memory_sqlite
from .errors import ConfigurationError

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

    The migration asks before each revision, and before a transactional
    run commits; a lock that was lost stops the run (``LockLostError``).
    """

    def held(self) -> bool:
        """True while this process still holds the lock (a dead connection: False)."""
        ...

    def guard(self, connection: Connection) -> bool | None:
        """Take a second, transaction-scoped guard on the migration's own connection.

        True when held, False when another process holds it, None when the
        backend has no such guard.
        """
        ...


_DEFAULT_TABLE = VersionTable()


def _key_name(engine: Engine, table: VersionTable) -> str:
    # Two applications sharing one server must not block each other, so the
    # key names the database, the schema and the version table.
    url = engine.url
    return f"automigrator:{url.database or ''}:{table.schema or ''}:{table.name}"


class _ServerLock:
    """A lock held by a dedicated AUTOCOMMIT connection, never the migration's."""

    _unlock_sql = ""

    def __init__(self, engine: Engine) -> None:
        self._engine = engine
        self._conn: Connection | None = None

    def _connection(self) -> Connection:
        if self._conn is None:
            conn = self._engine.connect().execution_options(isolation_level="AUTOCOMMIT")
            # The lock lives as long as this session: no server idle timeout
            # may end it while the migration runs on another connection.
            conn.execute(sa.text(self._keep_alive_sql))
            self._conn = conn
        return self._conn

    _keep_alive_sql = "SELECT 1"
    _held_sql = ""

    def held(self) -> bool:
        if self._conn is None:
            return False
        try:
            return bool(
                self._conn.execute(sa.text(self._held_sql), self._unlock_params()).scalar()
            )
        except DBAPIError:
            return False  # the connection is gone, and the lock with it

    def guard(self, connection: Connection) -> bool | None:
        return None

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

    def _unlock_params(self) -> dict[str, object]:
        raise NotImplementedError

    def release(self) -> None:
        try:
            if self._conn is not None:
                self._conn.execute(sa.text(self._unlock_sql), self._unlock_params())
        finally:
            self._close()

    def _close(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            conn.close()


class PostgresAdvisoryLock(_ServerLock):
    """A session-level PostgreSQL advisory lock on its own AUTOCOMMIT connection."""

    _unlock_sql = "SELECT pg_advisory_unlock(:key)"
    _keep_alive_sql = (
        "SELECT set_config(name, '0', false) FROM pg_settings "
        "WHERE name IN ('idle_session_timeout', 'idle_in_transaction_session_timeout')"
    )
    _held_sql = (
        "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND granted "
        "AND pid = pg_backend_pid() AND classid = :hi AND objid = :lo AND objsubid = 1"
    )

    def __init__(self, engine: Engine, table: VersionTable = _DEFAULT_TABLE) -> None:
        super().__init__(engine)
        self.name = _key_name(engine, table)
        digest = hashlib.blake2b(self.name.encode(), digest_size=8).digest()
        self.key = int.from_bytes(digest, "big", signed=True)

    def _unlock_params(self) -> dict[str, object]:
        unsigned = self.key & 0xFFFFFFFFFFFFFFFF
        return {"key": self.key, "hi": unsigned >> 32, "lo": unsigned & 0xFFFFFFFF}

    def guard(self, connection: Connection) -> bool | None:
        # A transaction-level lock on a second key, on the migration's own
        # connection: two migrations cannot overlap even if a session lock
        # was lost, since each holds this one until its transaction ends.
        found = connection.execute(
            sa.text("SELECT pg_try_advisory_xact_lock(:key)"), {"key": self.key ^ _GUARD_BITS}
        )
        return bool(found.scalar())

    def acquire(self, timeout: float) -> bool:
        # Polled, never waited for in the server: a session blocked in
        # pg_advisory_lock is a running transaction, and CREATE INDEX
        # CONCURRENTLY waits out every transaction older than each of its
        # phases, so blocked waiters held up the very migration they wait for.
        conn = self._connection()
        deadline = time.monotonic() + max(timeout, 0.0)
        pause = _FIRST_POLL
        while True:
            got = conn.execute(sa.text("SELECT pg_try_advisory_lock(:key)"), {"key": self.key})
            if got.scalar():
                return True
            left = deadline - time.monotonic()
            if left <= 0:
                return False
            time.sleep(min(pause, left))
            pause = min(pause * 2, _LAST_POLL)

    def holder(self) -> str | None:
        query = sa.text(
            "SELECT a.pid, a.application_name, a.client_addr, a.backend_start "
            "FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid "
            "WHERE l.locktype = 'advisory' AND l.granted "
            "AND l.classid = :hi AND l.objid = :lo AND l.objsubid = 1"
        )
        params = self._unlock_params()
        try:
            with self._engine.connect() as conn:
                row = conn.execute(query, params).first()
        except DBAPIError:
            return None
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
    """A MySQL/MariaDB named lock (``GET_LOCK``) on its own connection."""

    _unlock_sql = "SELECT RELEASE_LOCK(:name)"
    # The longest wait_timeout the server takes (a year): never idle-closed.
    _keep_alive_sql = "SET SESSION wait_timeout = 31536000"
    _held_sql = "SELECT IS_USED_LOCK(:name) = CONNECTION_ID()"

    def __init__(self, engine: Engine, table: VersionTable = _DEFAULT_TABLE) -> None:
        super().__init__(engine)
        # Lock names are limited to 64 characters: hash the long form.
        digest = hashlib.blake2b(_key_name(engine, table).encode(), digest_size=16).hexdigest()
        self.name = f"automigrator:{digest}"

    def _unlock_params(self) -> dict[str, object]:
        return {"name": self.name}

    def acquire(self, timeout: float) -> bool:
        seconds = 0 if timeout <= 0 else max(1, round(timeout))
        got = (
            self._connection()
            .execute(
                sa.text("SELECT GET_LOCK(:name, :seconds)"),
                {"name": self.name, "seconds": seconds},
            )
            .scalar()
        )
        if got is None:
            self._close()
            raise ConfigurationError(f"GET_LOCK({self.name!r}) returned NULL: the server refused.")
        return bool(got)

    def holder(self) -> str | None:
        try:
            with self._engine.connect() as conn:
                pid = conn.execute(sa.text("SELECT IS_USED_LOCK(:name)"), {"name": self.name})
                value = pid.scalar()
        except DBAPIError:
            return None
        return f"connection id {value}" if value is not None else None

    def __repr__(self) -> str:
        return f"MySQLLock(name={self.name!r})"


class SQLiteFileLock:
    """An OS file lock beside the SQLite database file."""

    def __init__(self, database: str | Path) -> None:
        self.path = Path(f"{Path(database).resolve()}.automigrator.lock")
        self._lock = FileLock(str(self.path), thread_local=False)

    def acquire(self, timeout: float) -> bool:
        try:
            self._lock.acquire(timeout=timeout, poll_interval=0.02)
        except FileLockTimeout:
            return False
        return True

    def release(self) -> None:
        self._lock.release()

    def held(self) -> bool:
        return bool(self._lock.is_locked)

    def guard(self, connection: Connection) -> bool | None:
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


def lock_for(engine: Engine, table: VersionTable) -> MigrationLock:
    """The default lock for the engine's database (``lock="auto"``)."""
    backend = engine.url.get_backend_name()
    if backend == "postgresql":
        return PostgresAdvisoryLock(engine, table)
    if backend in ("mysql", "mariadb"):
        return MySQLLock(engine, table)
    if backend == "sqlite":
        if is_memory_sqlite(engine.url):
            return ProcessLock(f"sqlite-memory:{table}")
        return SQLiteFileLock(engine.url.database or "")
    raise ConfigurationError(
        f"No cross-process migration lock is available for the {backend!r} dialect. Pass "
        "lock=<an object with acquire(timeout), release() and holder()> (see "
        "automigrator.MigrationLock), or lock=None if only one process ever migrates."
    )


# A waiter polls the PostgreSQL lock after 20 ms, backing off to every 200 ms:
# it takes the lock within 0.2 s of its release, for a query of microseconds.
_FIRST_POLL = 0.02
_LAST_POLL = 0.2

# Flips bits of the session key: the guard's key, distinct from it.
_GUARD_BITS = 0x5A5A5A5A5A5A5A5A
