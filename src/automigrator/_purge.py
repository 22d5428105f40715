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
from contextlib import closing
from dataclasses import dataclass
from pathlib import Path

import sqlalchemy as sa
from sqlalchemy.engine import URL, Connection, Engine

from ._database import VersionTable
from .errors import ConfigurationError

logger = logging.getLogger("automigrator")

SQLITE_COMPANIONS = ("-wal", "-shm", "-journal")


@dataclass(frozen=True)
class Purged:
    """What a purge did: where the backup is (None: none taken) and what went."""

    backup: str | None
    purged: str


def stamp() -> str:
    """A UTC time for backup names; sorts in time order."""
    return datetime.datetime.now(datetime.timezone.utc).strftime("%Y%m%dt%H%M%S%f")


def sqlite_path(url: URL) -> Path:
    database = url.database
    if not database or database == ":memory:" or database.startswith("file:"):
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
        _keep_newest(sorted(path.parent.glob(f"{path.name}.backup-*.sqlite")), keep)
    gone = [p for p in (path, *(Path(f"{path}{s}") for s in SQLITE_COMPANIONS)) if p.exists()]
    for file in gone:
        file.unlink()
    return Purged(str(copy) if copy else None, ", ".join(str(p) for p in gone) or "nothing")


def _keep_newest(paths: list[Path], keep: int) -> None:
    for old in paths[: max(0, len(paths) - keep)]:
        old.unlink()
        logger.info("Deleted an old backup beyond keep=%d: %s", keep, old)


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
    olds = (
        conn.execute(
            sa.text(
                "SELECT nspname FROM pg_namespace WHERE nspname LIKE :pattern ORDER BY nspname"
            ),
            {"pattern": f"{schema}\\_quarantine\\_%"},
        )
        .scalars()
        .all()
    )
    for old in olds[: max(0, len(olds) - keep)]:
        conn.execute(sa.text(f"DROP SCHEMA {quote(old)} CASCADE"))
        logger.info("Dropped an old backup schema beyond keep=%d: %s", keep, old)
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
    olds = sorted(
        conn.execute(
            sa.text(
                "SELECT schema_name FROM information_schema.schemata "
                "WHERE schema_name LIKE :pattern"
            ),
            {"pattern": f"{database}\\_quarantine\\_%"},
        ).scalars()
    )
    for old in olds[: max(0, len(olds) - keep)]:
        conn.execute(sa.text(f"DROP DATABASE {quote(old)}"))
        logger.info("Dropped an old backup database beyond keep=%d: %s", keep, old)
    return Purged(f"database {quarantine}", f"{len(tables)} table(s) of {database} (moved)")


def sqlite_snapshot(url: URL) -> Path:
    """The copy RestoreBackup takes before migrating (one per database, replaced)."""
    path = sqlite_path(url)
    return path.with_name(f"{path.name}.before-migration.sqlite")


def sqlite_restore(url: URL, snapshot: Path) -> None:
    """Put the snapshot back: the database's content is as it was before."""
    path = sqlite_path(url)
    for companion in SQLITE_COMPANIONS:
        Path(f"{path}{companion}").unlink(missing_ok=True)
    sqlite_copy(snapshot, path)
