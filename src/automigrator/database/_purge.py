"""Back up, purge and restore a database: the mechanics behind the destructive policies.

Every function here runs in a worker thread, under the migration lock, after
every connection of ours is closed. What "backup" means per database:

- SQLite: a consistent copy through the sqlite3 backup API, beside the file:
  ``<db>.backup-<UTC time>.sqlite``, written under a temporary name and
  renamed, so a kill mid-copy never leaves a partial backup.
- PostgreSQL: the version table's schema is renamed to
  ``<schema>_quarantine_<UTC time>`` and an empty one created in its place,
  in one transaction: no row is touched, and no kill leaves the schema gone.
- MySQL/MariaDB: every table is moved (one atomic ``RENAME TABLE``) into a new
  database ``<db>_quarantine_<UTC time>``; views are dropped (they are
  schema, and the migrations make them again).

Each purge leaves a marker saying that the database is now a fresh one made
by a purge: a file ``<db>.automigrator-purged.json`` beside SQLite, a comment
on the new PostgreSQL schema, a table ``automigrator_purge`` in the MySQL
quarantine. While it is there no second purge is made: a crash loop purges
once. A migration that succeeds removes it (:meth:`Backups.settle`).

The newest ``keep`` backups are kept; older ones are deleted. Every backup is
therefore taken of a database that migrated successfully since its last purge
(pre-failure data), and the newest is never deleted. Names of other databases
and schemas are never matched: every ``LIKE`` is escaped.
"""

from __future__ import annotations

import contextlib
import datetime
import hashlib
import json
import logging
import math
import os
from collections.abc import Callable, Sequence
from contextlib import closing
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import sqlalchemy as sa
from sqlalchemy.engine import URL, Connection, Engine
from sqlalchemy.exc import DBAPIError

from ..errors import AlreadyPurgedError, BackupError, ConfigurationError, first_line
from ._connections import VersionTable, is_memory_sqlite, lost_schema_hint, translate_error
from ._redaction import redact

logger = logging.getLogger("automigrator")

SQLITE_COMPANIONS = ("-wal", "-shm", "-journal")
_MARKER = "automigrator purge"  # how our PostgreSQL schema comment starts
_STAMP_LENGTH = len("20261130t103000123456")
# Longest identifiers: PostgreSQL 63 bytes, MySQL/MariaDB 64 characters.
_NAME_LIMITS = {"postgresql": 63, "mysql": 64, "mariadb": 64}

Snapshot = Literal["taken", "absent"]
"""What RestoreBackup's copy holds: the database, or the fact that there was none."""


@dataclass(frozen=True)
class Purged:
    """What a purge did: where the backup is (None: none taken) and what went."""

    backup: str | None
    """The backup's file, schema or database, or None when none was taken."""
    purged: str
    """What was emptied, in words."""


def stamp() -> str:
    """A UTC time for backup names; sorts in time order."""
    return datetime.datetime.now(datetime.timezone.utc).strftime("%Y%m%dt%H%M%S%f")


def quarantine_prefix(name: str, backend: str) -> str:
    """The start of every quarantine name of ``name``: fits the server's limit with a stamp.

    A name too long to keep whole is cut and given a hash of the whole, so the
    prefix stays unique to it.
    """
    limit = _NAME_LIMITS.get(backend, 63) - _STAMP_LENGTH
    prefix = f"{name}_quarantine_"
    if len(prefix.encode()) <= limit:
        return prefix
    digest = hashlib.blake2b(name.encode(), digest_size=4).hexdigest()
    tail = f"_{digest}_quarantine_"
    head = name.encode()[: limit - len(tail)].decode(errors="ignore")
    return f"{head}{tail}"


def like_prefix(prefix: str) -> str:
    """A ``LIKE ... ESCAPE '!'`` pattern matching names that start with ``prefix`` only."""
    escaped = prefix.replace("!", "!!").replace("%", "!%").replace("_", "!_")
    return f"{escaped}%"


def sqlite_path(url: URL) -> Path:
    """The SQLite database's file; ConfigurationError if it has none."""
    database = url.database
    if is_memory_sqlite(url) or not database or database.startswith("file:"):
        raise ConfigurationError(
            f"The SQLite database {database or ':memory:'!r} is not a file: there is "
            "nothing to back up or restore."
        )
    return Path(database).resolve()


def sqlite_copy(source: Path, destination: Path) -> None:
    """A consistent copy through the sqlite3 backup API, whole or not at all.

    Written to a temporary name, synced, then renamed over ``destination``.
    """
    import sqlite3  # here: a PostgreSQL or MariaDB process never loads SQLite's library

    partial = destination.with_name(f".{destination.name}.partial")
    try:
        partial.unlink(missing_ok=True)
        # closing(): sqlite3's own context manager commits but never closes.
        with closing(sqlite3.connect(source)) as src, closing(sqlite3.connect(partial)) as dst:
            src.backup(dst)
        with open(partial, "rb") as written:
            os.fsync(written.fileno())
        os.replace(partial, destination)
    except (sqlite3.Error, OSError) as exc:
        with contextlib.suppress(OSError):
            partial.unlink(missing_ok=True)  # never half a copy taking a backup's place
        raise BackupError(
            f"Could not write the copy {str(destination)!r} ({type(exc).__name__}: {exc}): "
            "free space there, or make the folder writable. Nothing was moved or deleted."
        ) from exc


def remove_sqlite_files(path: Path, *, database: bool = True) -> list[Path]:
    """Delete the database file (unless ``database=False``) and its -wal/-shm/-journal."""
    files = [Path(f"{path}{suffix}") for suffix in SQLITE_COMPANIONS]
    gone = [file for file in ([path] if database else []) + files if file.exists()]
    for file in gone:
        file.unlink()
    return gone


def _prune(names: Sequence[str], keep: int, drop: Callable[[str], object], what: str) -> None:
    """Drop all but the newest ``keep`` of ``names`` (sorted oldest first)."""
    for old in names[: max(0, len(names) - keep)]:
        drop(old)
        logger.info("Deleted an old %s beyond keep=%d: %s", what, keep, old)


class Backups:
    """One migrator's backups: purge (once per failure), settle, RestoreBackup's copy.

    Every method runs in a worker thread, with our connections closed.
    """

    def __init__(
        self, engine: Engine, table: VersionTable, *, lock_timeout: float | None = None
    ) -> None:
        self.engine = engine
        self.table = table
        # The purge's own statements wait this long for a table lock (the
        # migration's DDL lock timeout), never unbounded behind a blocker.
        self.lock_timeout = lock_timeout
        self.backend = engine.url.get_backend_name()
        self._snapshot: Snapshot | None = None
        self._restored = False  # this attempt's copy was put back

    # -- purge --------------------------------------------------------------

    def purge(
        self, *, backup: bool, keep: int, fence: Callable[[Connection], None] | None = None
    ) -> Purged:
        """Back the database up (unless ``backup`` is False), then empty it.

        Raises :class:`AlreadyPurgedError` while an earlier purge is unsettled,
        and our error tree's translation of a database that refused (nothing
        changed: PostgreSQL's purge is one transaction).
        """
        try:
            return self._purge(backup=backup, keep=keep, fence=fence)
        except DBAPIError as exc:
            raise translate_error(exc, self.engine.url, doing="purging the database") from exc

    def _purge(
        self, *, backup: bool, keep: int, fence: Callable[[Connection], None] | None
    ) -> Purged:
        # A server purge takes the lock's fence on its own connection first,
        # and checks the lock is still ours: a holder paused past its reap
        # time never purges what a successor has migrated since. (SQLite's
        # file lock is never reaped.)
        if self.backend == "sqlite":
            return self._purge_sqlite(backup=backup, keep=keep)
        if self.backend == "postgresql":
            with self.engine.begin() as conn:  # one transaction: all of it or none
                if fence is not None:
                    fence(conn)
                if self.lock_timeout is not None:
                    milliseconds = max(1, round(self.lock_timeout * 1000))
                    conn.execute(sa.text(f"SET LOCAL lock_timeout = {milliseconds:d}"))
                return self._purge_postgresql(conn, backup=backup, keep=keep)
        if self.backend in ("mysql", "mariadb"):
            with self.engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
                if fence is not None:
                    fence(conn)
                return self._purge_mysql(conn, backup=backup, keep=keep)
        raise ConfigurationError(f"Purging a {self.backend!r} database is not supported.")

    def settle(self) -> None:
        """A migration succeeded: the database is no longer a purge's fresh one.

        Also drops RestoreBackup's copy: the next attempt takes a new one.
        Best effort: a failure here is logged, never turned into a failed run
        (the migration did succeed; the marker then stays one run longer).
        """
        try:
            self._settle()
        except Exception as exc:
            logger.warning(
                "Could not clear the purge marker: %s: %s",
                type(exc).__name__,
                redact(first_line(exc), self.engine.url),
            )

    def _settle(self) -> None:
        if self.backend == "sqlite":
            database = self.engine.url.database or ""
            if is_memory_sqlite(self.engine.url) or database.startswith("file:"):
                return  # no file beside which a marker or a copy could be
            path = sqlite_path(self.engine.url)
            _marker(path).unlink(missing_ok=True)
            for copy in (sqlite_snapshot(self.engine.url), _absent_marker(path)):
                copy.unlink(missing_ok=True)
        elif self.backend == "postgresql":
            with self.engine.begin() as conn:
                schema = self._schema(conn)
                if _schema_comment(conn, schema).startswith(_MARKER):
                    conn.execute(sa.text(f"COMMENT ON SCHEMA {_quote(conn, schema)} IS NULL"))
        elif self.backend in ("mysql", "mariadb"):
            with self.engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
                for name in _unsettled_mysql_markers(conn, self._mysql_database()):
                    conn.execute(
                        sa.text(f"UPDATE {_quote(conn, name)}.automigrator_purge SET settled = 1")
                    )

    def _purge_sqlite(self, *, backup: bool, keep: int) -> Purged:
        path = sqlite_path(self.engine.url)
        marker = _marker(path)
        if marker.exists():
            raise AlreadyPurgedError(_read_marker(marker))
        copy = None
        if backup and path.exists():
            copy = path.with_name(f"{path.name}.backup-{stamp()}.sqlite")
            sqlite_copy(path, copy)
            olds = sorted(str(p) for p in path.parent.glob(f"{path.name}.backup-*.sqlite"))
            _prune(olds, keep, lambda old: Path(old).unlink(), "backup")
        _write_atomically(marker, json.dumps({"backup": str(copy) if copy else None}))
        gone = remove_sqlite_files(path)
        return Purged(str(copy) if copy else None, ", ".join(str(p) for p in gone) or "nothing")

    def _schema(self, conn: Connection) -> str:
        schema = self.table.schema or conn.execute(sa.text("SELECT current_schema()")).scalar()
        if schema is None:
            raise ConfigurationError(
                "The database has no current schema (search_path names none that exists): "
                f"{lost_schema_hint(conn)}"
            )
        return str(schema)

    def _purge_postgresql(self, conn: Connection, *, backup: bool, keep: int) -> Purged:
        schema = self._schema(conn)
        comment = _schema_comment(conn, schema)
        if comment.startswith(_MARKER):
            raise AlreadyPurgedError(comment.partition("; backup ")[2] or None)
        quoted = _quote(conn, schema)
        quarantine = None
        if backup:
            quarantine = quarantine_prefix(schema, "postgresql") + stamp()
            conn.execute(sa.text(f"ALTER SCHEMA {quoted} RENAME TO {_quote(conn, quarantine)}"))
        else:
            conn.execute(sa.text(f"DROP SCHEMA {quoted} CASCADE"))
        conn.execute(sa.text(f"CREATE SCHEMA {quoted}"))
        note = f"{_MARKER} at {stamp()}; backup schema {quarantine}" if quarantine else _MARKER
        # COMMENT takes no bound parameter: a literal, quotes doubled.
        literal = "'" + note.replace("'", "''") + "'"
        conn.execute(sa.text(f"COMMENT ON SCHEMA {quoted} IS {literal}"))
        if quarantine is None:
            return Purged(None, f"schema {schema} (dropped and created again)")
        _rotate(
            conn,
            "SELECT nspname FROM pg_namespace",
            "nspname",
            quarantine_prefix(schema, "postgresql"),
            keep,
            "DROP SCHEMA {} CASCADE",
        )
        return Purged(f"schema {quarantine}", f"schema {schema} (moved aside, an empty one made)")

    def _mysql_database(self) -> str:
        database = self.engine.url.database
        if not database:
            raise ConfigurationError("The MySQL URL names no database: nothing to purge.")
        return database

    def _purge_mysql(self, conn: Connection, *, backup: bool, keep: int) -> Purged:
        database = self._mysql_database()
        unsettled = _unsettled_mysql_markers(conn, database)
        if unsettled:
            raise AlreadyPurgedError(f"database {unsettled[-1]}")
        quote = conn.dialect.identifier_preparer.quote
        rows = conn.execute(
            sa.text(
                "SELECT table_name, table_type FROM information_schema.tables "
                "WHERE table_schema = :db"
            ),
            {"db": database},
        ).all()
        tables = [name for name, kind in rows if kind == "BASE TABLE"]
        views = [name for name, kind in rows if kind == "VIEW"]
        # The quarantine holds the marker even without a backup: a purge is
        # remembered either way. The marker is written before anything moves:
        # a process killed while its RENAME waits (which the server may still
        # finish) leaves the intent, and the next start does not purge again.
        quarantine = quarantine_prefix(database, "mysql") + stamp()
        conn.execute(sa.text(f"CREATE DATABASE {quote(quarantine)}"))
        conn.execute(
            sa.text(f"CREATE TABLE {quote(quarantine)}.automigrator_purge (settled BOOL NOT NULL)")
        )
        conn.execute(sa.text(f"INSERT INTO {quote(quarantine)}.automigrator_purge VALUES (0)"))
        if self.lock_timeout is not None:
            seconds = max(1, math.ceil(self.lock_timeout))
            conn.execute(sa.text(f"SET SESSION lock_wait_timeout = {seconds:d}"))
        try:
            if tables and backup:
                moves = ", ".join(
                    f"{quote(database)}.{quote(t)} TO {quote(quarantine)}.{quote(t)}"
                    for t in tables
                )
                conn.execute(sa.text(f"RENAME TABLE {moves}"))
            elif tables:
                conn.execute(sa.text("SET FOREIGN_KEY_CHECKS = 0"))
                for name in tables:
                    conn.execute(sa.text(f"DROP TABLE {quote(database)}.{quote(name)}"))
                conn.execute(sa.text("SET FOREIGN_KEY_CHECKS = 1"))
        except DBAPIError:
            if backup:
                # RENAME TABLE is atomic: it moved nothing, so the intent goes.
                conn.execute(sa.text(f"DROP DATABASE {quote(quarantine)}"))
            raise
        # Views last, once the tables are moved (they are schema: the
        # migrations make them again), under the same lock timeout.
        for view in views:
            conn.execute(sa.text(f"DROP VIEW {quote(database)}.{quote(view)}"))
        _rotate(
            conn,
            "SELECT schema_name FROM information_schema.schemata",
            "schema_name",
            quarantine_prefix(database, "mysql"),
            keep,
            "DROP DATABASE {}",
        )
        if not backup:
            return Purged(None, f"{len(tables)} table(s) of {database} (dropped)")
        return Purged(f"database {quarantine}", f"{len(tables)} table(s) of {database} (moved)")

    # -- RestoreBackup's copy ---------------------------------------------------

    def check_snapshot_possible(self) -> None:
        """Refuse (before any DDL) a database that RestoreBackup cannot copy."""
        if self.backend != "sqlite":
            raise ConfigurationError(
                f"RestoreBackup works on SQLite files, not on {self.backend}: PostgreSQL rolls "
                "a failed run back by itself; on MySQL/MariaDB use PurgeAndRetry, or Fail."
            )

    def snapshot(self) -> None:
        """Copy the SQLite database aside before migrating, unless a copy is pending.

        A copy still there was left by an attempt that was stopped (killed)
        before its end. Nothing is put back from it: each revision commits
        whole or not at all (``atomic_sqlite_revisions``), so the database
        stands at the last revision that attempt completed, and since then
        the application may have written to it (putting the copy back would
        go back in time over those rows). The copy is replaced by this
        attempt's own.
        """
        url = self.engine.url
        path, copy, absent = (
            sqlite_path(url),
            sqlite_snapshot(url),
            _absent_marker(sqlite_path(url)),
        )
        if copy.exists() or absent.exists():
            logger.warning(
                "An earlier migration attempt was stopped before its end; its copy %s is "
                "not put back (each revision commits whole or not at all: the database stands "
                "at the last one it completed) and is replaced by this attempt's copy",
                copy if copy.exists() else "(there was no database)",
            )
            absent.unlink(missing_ok=True)
        if path.exists():
            sqlite_copy(path, copy)
            self._snapshot = "taken"
        else:
            _write_atomically(absent, "")
            copy.unlink(missing_ok=True)
            self._snapshot = "absent"
        self._restored = False
        logger.info("Copied the database aside before migrating: %s", copy)

    def restore(self) -> bool:
        """Put back this attempt's copy, then drop it; False if there was none.

        The migrator calls it under the lock as soon as a revision of the
        attempt fails (no other process can have written in between); the
        policy's later call finds it done and says True. Once the database is
        back as it was, the copy has done its work: kept, a later start
        could put it back over whatever was written since.
        """
        if self._restored:
            return True  # already, under the lock, as the attempt failed
        snapshot, self._snapshot = self._snapshot, None
        if snapshot is None:
            return False
        restore_snapshot(self.engine.url, snapshot)
        path = sqlite_path(self.engine.url)
        for done in (sqlite_snapshot(self.engine.url), _absent_marker(path)):
            done.unlink(missing_ok=True)
        self._restored = True
        return True

    def holds_snapshot(self) -> bool:
        """Whether this attempt took a copy that is not put back yet."""
        return self._snapshot is not None and not self._restored

    def forget_snapshot(self) -> None:
        """An attempt of this process is over: the copy it took, if still there, goes.

        The policy has decided by now; a copy nobody put back (a busy table,
        a shutdown, a lost lock: failures that are not the revision's) is
        not needed: the database stands at a revision boundary. Only a
        process killed mid-attempt leaves one (the next attempt replaces it).
        """
        if self._snapshot is not None:
            path = sqlite_path(self.engine.url)
            for copy in (sqlite_snapshot(self.engine.url), _absent_marker(path)):
                copy.unlink(missing_ok=True)
        self._snapshot = None
        self._restored = False


def _quote(conn: Connection, name: str) -> str:
    return str(conn.dialect.identifier_preparer.quote(name))


def _schema_comment(conn: Connection, schema: str) -> str:
    found = conn.execute(
        sa.text(
            "SELECT obj_description(oid, 'pg_namespace') FROM pg_namespace WHERE nspname = :s"
        ),
        {"s": schema},
    ).scalar()
    return str(found or "")


def _unsettled_mysql_markers(conn: Connection, database: str) -> list[str]:
    """The quarantines of ``database`` whose purge no migration has settled yet.

    Every quarantine is asked, not the newest by name: names carry the
    purging host's clock, which may have been ahead or jumped back. A marker
    table without its row (a kill between the two statements) recorded no
    purge: nothing was moved before that row.
    """
    names = (
        conn.execute(
            sa.text(
                "SELECT table_schema FROM information_schema.tables "
                "WHERE table_schema LIKE :pattern ESCAPE '!' AND table_name = 'automigrator_purge'"
            ),
            {"pattern": like_prefix(quarantine_prefix(database, "mysql"))},
        )
        .scalars()
        .all()
    )
    unsettled = []
    for name in sorted(names):
        query = f"SELECT count(*) FROM {_quote(conn, name)}.automigrator_purge WHERE NOT settled"
        if conn.execute(sa.text(query)).scalar():
            unsettled.append(str(name))
    return unsettled


def _rotate(
    conn: Connection, catalog: str, column: str, prefix: str, keep: int, drop: str
) -> None:
    """Keep the newest ``keep`` quarantines named ``prefix...`` in ``catalog``; drop the rest."""
    olds = sorted(
        conn.execute(
            sa.text(f"{catalog} WHERE {column} LIKE :pattern ESCAPE '!'"),
            {"pattern": like_prefix(prefix)},
        ).scalars()
    )
    _prune(olds, keep, lambda old: conn.execute(sa.text(drop.format(_quote(conn, old)))), "backup")


def _marker(path: Path) -> Path:
    return path.with_name(f"{path.name}.automigrator-purged.json")


def _read_marker(marker: Path) -> str | None:
    try:
        backup = json.loads(marker.read_text(encoding="utf-8")).get("backup")
    except (OSError, ValueError, AttributeError):
        return None
    return str(backup) if backup else None


def _absent_marker(path: Path) -> Path:
    return path.with_name(f"{path.name}.before-migration.absent")


def _write_atomically(path: Path, text: str) -> None:
    partial = path.with_name(f".{path.name}.partial")
    partial.write_text(text, encoding="utf-8")
    os.replace(partial, path)


def sqlite_snapshot(url: URL) -> Path:
    """The copy RestoreBackup takes before migrating (kept until a migration succeeds)."""
    path = sqlite_path(url)
    return path.with_name(f"{path.name}.before-migration.sqlite")


def restore_snapshot(url: URL, snapshot: Snapshot) -> None:
    """Put the database back as the copy holds it; the copy itself stays (its caller
    drops it once this returns).

    A kill at any point leaves the copy intact, so the next start restores again.
    """
    path = sqlite_path(url)
    if snapshot == "absent":  # there was no database: there is none again
        remove_sqlite_files(path)
        return
    remove_sqlite_files(path, database=False)
    sqlite_copy(sqlite_snapshot(url), path)
