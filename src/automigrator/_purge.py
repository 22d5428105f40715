"""Back up, purge and restore a database: the mechanics behind the destructive policies.

Every function here runs in a worker thread, under the migration lock, after
every connection of ours is closed. What "backup" means per database:

- SQLite: a consistent copy through the sqlite3 backup API, beside the file:
  ``<db>.backup-<UTC time>.sqlite``.
- PostgreSQL: the version table's schema is renamed to
  ``<schema>_quarantine_<UTC time>`` and an empty one created in its place:
  no row is touched.
- MySQL/MariaDB: every table is moved (one atomic ``RENAME TABLE``) into a new
  database ``<db>_quarantine_<UTC time>``; views are dropped (they are
  schema, and the migrations make them again).

The last ``keep`` backups are kept; older ones are deleted.
"""

from __future__ import annotations

import datetime
import logging
import sqlite3
from collections.abc import Callable, Sequence
from contextlib import closing
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import sqlalchemy as sa
from sqlalchemy.engine import URL, Connection, Engine

from ._database import VersionTable, is_memory_sqlite
from .errors import ConfigurationError

logger = logging.getLogger("automigrator")

SQLITE_COMPANIONS = ("-wal", "-shm", "-journal")


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
    """A consistent copy through the sqlite3 backup API (safe with a writer open)."""
    # closing(): sqlite3's own context manager commits but never closes.
    with closing(sqlite3.connect(source)) as src, closing(sqlite3.connect(destination)) as dst:
        src.backup(dst)


def backup_and_purge(engine: Engine, table: VersionTable, *, backup: bool, keep: int) -> Purged:
    """Back the database up (unless ``backup`` is False), then empty it."""
    backend = engine.url.get_backend_name()
    if backend == "sqlite":
        return _sqlite(engine.url, backup=backup, keep=keep)
    with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
        if backend == "postgresql":
            return _postgresql(conn, table, backup=backup, keep=keep)
        if backend in ("mysql", "mariadb"):
            return _mysql(conn, engine.url, backup=backup, keep=keep)
    raise ConfigurationError(f"Purging a {backend!r} database is not supported.")


def _sqlite(url: URL, *, backup: bool, keep: int) -> Purged:
    path = sqlite_path(url)
    copy = None
    if backup and path.exists():
        copy = path.with_name(f"{path.name}.backup-{stamp()}.sqlite")
        sqlite_copy(path, copy)
        olds = sorted(str(p) for p in path.parent.glob(f"{path.name}.backup-*.sqlite"))
        _prune(olds, keep, lambda old: Path(old).unlink(), "backup")
    gone = remove_sqlite_files(path)
    return Purged(str(copy) if copy else None, ", ".join(str(p) for p in gone) or "nothing")


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


def _postgresql(conn: Connection, table: VersionTable, *, backup: bool, keep: int) -> Purged:
    schema = table.schema or conn.execute(sa.text("SELECT current_schema()")).scalar_one()
    quote = conn.dialect.identifier_preparer.quote
    quoted = quote(schema)
    if not backup:
        conn.execute(sa.text(f"DROP SCHEMA {quoted} CASCADE"))
        conn.execute(sa.text(f"CREATE SCHEMA {quoted}"))
        return Purged(None, f"schema {schema} (dropped and created again)")
    quarantine = f"{schema}_quarantine_{stamp()}"[:63]
    conn.execute(
        sa.text(
            f"ALTER SCHEMA {quoted} RENAME TO {conn.dialect.identifier_preparer.quote(quarantine)}"
        )
    )
    conn.execute(sa.text(f"CREATE SCHEMA {quoted}"))
    _rotate(
        conn, "SELECT nspname FROM pg_namespace", "nspname", schema, keep, "DROP SCHEMA {} CASCADE"
    )
    return Purged(f"schema {quarantine}", f"schema {schema} (moved aside, an empty one made)")


def _mysql(conn: Connection, url: URL, *, backup: bool, keep: int) -> Purged:
    database = url.database
    if not database:
        raise ConfigurationError("The MySQL URL names no database: nothing to purge.")
    quote = conn.dialect.identifier_preparer.quote
    rows = conn.execute(
        sa.text(
            "SELECT table_name, table_type FROM information_schema.tables WHERE table_schema = :db"
        ),
        {"db": database},
    ).all()
    tables = [name for name, kind in rows if kind == "BASE TABLE"]
    for view in (name for name, kind in rows if kind == "VIEW"):
        conn.execute(sa.text(f"DROP VIEW {quote(database)}.{quote(view)}"))
    if not backup:
        conn.execute(sa.text("SET FOREIGN_KEY_CHECKS = 0"))
        for name in tables:
            conn.execute(sa.text(f"DROP TABLE {quote(database)}.{quote(name)}"))
        conn.execute(sa.text("SET FOREIGN_KEY_CHECKS = 1"))
        return Purged(None, f"{len(tables)} table(s) of {database} (dropped)")
    quarantine = f"{database}_quarantine_{stamp()}"[:64]
    conn.execute(sa.text(f"CREATE DATABASE {quote(quarantine)}"))
    if tables:
        moves = ", ".join(
            f"{quote(database)}.{quote(t)} TO {quote(quarantine)}.{quote(t)}" for t in tables
        )
        conn.execute(sa.text(f"RENAME TABLE {moves}"))
    _rotate(
        conn,
        "SELECT schema_name FROM information_schema.schemata",
        "schema_name",
        database,
        keep,
        "DROP DATABASE {}",
    )
    return Purged(f"database {quarantine}", f"{len(tables)} table(s) of {database} (moved)")


def _rotate(conn: Connection, catalog: str, column: str, name: str, keep: int, drop: str) -> None:
    """Keep the newest ``keep`` quarantines of ``name`` listed in ``catalog``; drop the rest."""
    quote = conn.dialect.identifier_preparer.quote
    olds = sorted(
        conn.execute(
            sa.text(f"{catalog} WHERE {column} LIKE :pattern"),
            {"pattern": f"{name}\\_quarantine\\_%"},
        ).scalars()
    )
    _prune(olds, keep, lambda old: conn.execute(sa.text(drop.format(quote(old)))), "backup")


def sqlite_snapshot(url: URL) -> Path:
    """The copy RestoreBackup takes before migrating (one per database, replaced)."""
    path = sqlite_path(url)
    return path.with_name(f"{path.name}.before-migration.sqlite")


def take_snapshot(url: URL) -> Snapshot:
    """Copy the SQLite database aside before migrating (or note that there is none)."""
    path, copy = sqlite_path(url), sqlite_snapshot(url)
    if not path.exists():
        copy.unlink(missing_ok=True)
        return "absent"
    sqlite_copy(path, copy)
    return "taken"


def restore_snapshot(url: URL, snapshot: Snapshot) -> None:
    """Put the database back as :func:`take_snapshot` found it."""
    path = sqlite_path(url)
    if snapshot == "absent":  # there was no database: there is none again
        remove_sqlite_files(path)
        return
    remove_sqlite_files(path, database=False)
    sqlite_copy(sqlite_snapshot(url), path)


class Backups:
    """One migrator's backups: purge, and RestoreBackup's copy of this attempt.

    Every method runs in a worker thread, with our connections closed.
    """

    def __init__(self, engine: Engine, table: VersionTable) -> None:
        self.engine = engine
        self.table = table
        self._snapshot: Snapshot | None = None

    def purge(self, *, backup: bool, keep: int) -> Purged:
        """Back the database up (unless ``backup`` is False), then empty it."""
        return backup_and_purge(self.engine, self.table, backup=backup, keep=keep)

    def check_snapshot_possible(self) -> None:
        """Refuse (before any DDL) a database that RestoreBackup cannot copy."""
        backend = self.engine.url.get_backend_name()
        if backend != "sqlite":
            raise ConfigurationError(
                f"RestoreBackup works on SQLite files, not on {backend}: PostgreSQL rolls a "
                "failed run back by itself; on MySQL/MariaDB use PurgeAndRetry, or Fail."
            )

    def snapshot(self) -> None:
        """Copy the SQLite database aside before migrating."""
        self._snapshot = take_snapshot(self.engine.url)
        logger.info(
            "Copied the database aside before migrating: %s", sqlite_snapshot(self.engine.url)
        )

    def restore(self) -> bool:
        """Put back this attempt's copy; False if none was taken."""
        snapshot, self._snapshot = self._snapshot, None
        if snapshot is None:
            return False
        restore_snapshot(self.engine.url, snapshot)
        return True

    def forget_snapshot(self) -> None:
        """A new attempt: the last one's copy is not this one's."""
        self._snapshot = None
