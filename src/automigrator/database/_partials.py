"""Partly applied revisions, remembered in the database until a person resolves them.

A revision that failed after some of its statements took effect (no
transactional DDL) leaves the schema between two revisions. Alembic's
version table cannot say so: it still names the revision before, and the
next start would run the revision again into its own half-done work, then
take that failure for the revision's. So the failure is written to a table
of ours, ``automigrator_partial``, beside the version table; every start
that would run a remembered revision refuses instead, until
``automigrator resolve REVISION`` (or a successful migration past it)
clears it. One short connection when written, and one query under the lock
before an upgrade; none at head.

A process killed in the middle of a revision writes nothing on its way out,
so each revision's row is written *before* it runs (``RUNNING``), in its own
transaction, and deleted with its version row: where a kill leaves some of
the revision committed and not its version row, the row stays, and the next
start refuses the revision like any partial one. Nothing of the revision
committed (PostgreSQL's transactional DDL, SQLite's atomic revisions, a
MySQL kill before its first DDL) takes the row with it. The table exists
only during an upgrade, or while a partial revision is remembered.
"""

from __future__ import annotations

import datetime
import logging
from collections.abc import Collection
from dataclasses import dataclass

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from ..errors import PartialMigrationError, first_line
from ._connections import VersionTable

logger = logging.getLogger("automigrator")

TABLE = "automigrator_partial"
# What a revision's row says while it runs: written in the revision's own
# transaction, so it stays only if something of the revision was committed
# (a DDL statement on MySQL/MariaDB, an autocommit block on PostgreSQL) and
# its version row was not: the process stopped half way.
RUNNING = "(the process running it stopped before it finished: any of its statements may stay)"


@dataclass(frozen=True)
class Remembered:
    """A revision left partly applied: when, and what of it stayed."""

    revision: str
    failed_at: str
    statements: str

    def refusal(self) -> PartialMigrationError:
        """The error every start raises for this revision until it is resolved."""
        if self.statements == RUNNING:
            what = (
                "was being applied when its process stopped (killed, or cut off) before it "
                "finished: some of its statements may stay. Compare the schema with the "
                "revision, finish or undo what it did by hand"
            )
        else:
            what = (
                f"was left partly applied (these statements stay: {self.statements}). "
                "Finish or undo them by hand"
            )
        return PartialMigrationError(
            f"Revision {self.revision} {what} (at {self.failed_at}), then run "
            f"'automigrator resolve {self.revision}'; nothing was run.",
            revision=self.revision,
            statements=tuple(self.statements.split("; ")),
        )


class Partials:
    """The partly applied revisions of one database (beside its version table)."""

    def __init__(self, engine: Engine, table: VersionTable) -> None:
        self.engine = engine
        metadata = sa.MetaData()
        self.table = sa.Table(
            TABLE,
            metadata,
            sa.Column("revision", sa.String(255), primary_key=True),
            sa.Column("failed_at", sa.String(40), nullable=False),
            sa.Column("statements", sa.Text, nullable=False),
            schema=table.schema,
        )

    def remember(self, revision: str, statements: Collection[str]) -> None:
        """Write down that ``revision`` stopped half way, with what of it stayed."""
        at = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
        with self.engine.begin() as conn:
            self.table.create(conn, checkfirst=True)
            conn.execute(self.table.delete().where(self.table.c.revision == revision))
            conn.execute(
                self.table.insert().values(
                    revision=revision, failed_at=at, statements="; ".join(statements)
                )
            )

    def prepare(self, conn: Connection) -> bool:
        """On env.py's connection, under the fence, before its first revision: the
        table exists. False (and a warning) where it cannot be made (no CREATE
        privilege, its catalog busy past the DDL lock timeout env.py's
        connection has): the run goes on unmarked. PostgreSQL tries it in a
        savepoint, so that a refusal leaves the run's transaction usable."""
        try:
            if conn.dialect.name == "postgresql":
                with conn.begin_nested():
                    self.table.create(conn, checkfirst=True)
            else:
                self.table.create(conn, checkfirst=True)
        except sa.exc.DBAPIError as exc:
            logger.warning(
                "Could not create %s (%s): a process stopped half way through a revision "
                "will not be noticed by the next start",
                TABLE,
                first_line(exc.orig or exc),
            )
            return False
        return True

    def mark_running(self, conn: Connection, revision: str) -> Remembered | None:
        """On env.py's connection, in ``revision``'s transaction, before its first
        statement, under the fence: mark it running. A row already there was left
        by a process that stopped in it (no live one can hold the fence): it is
        returned, and nothing is marked."""
        found = conn.execute(
            sa.select(self.table).where(self.table.c.revision == revision)
        ).first()
        if found is not None:
            return Remembered(found.revision, found.failed_at, found.statements)
        at = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
        conn.execute(
            self.table.insert().values(revision=revision, failed_at=at, statements=RUNNING)
        )
        return None

    def clear_running(self, conn: Connection, revision: str | None = None) -> None:
        """``revision``'s running row goes (None: every one): on env.py's connection, with
        its version row, or from a connection of our own when nothing of it stayed."""
        query = self.table.delete().where(self.table.c.statements == RUNNING)
        if revision is not None:
            query = query.where(self.table.c.revision == revision)
        conn.execute(query)

    def forget_running(self, revision: str) -> None:
        """``revision`` failed and nothing of it stayed: its running mark goes (from a
        connection of ours, while env.py's still holds the fence)."""
        with self.engine.begin() as conn:
            if self._exists(conn):
                self.clear_running(conn, revision)

    def drop(self) -> None:
        """After a successful upgrade past every pending revision: the table goes."""
        with self.engine.begin() as conn:
            if self._exists(conn):
                self.table.drop(conn)

    def among(self, revisions: Collection[str] | None) -> Remembered | None:
        """The first remembered revision among ``revisions`` (None: any at all)."""
        with self.engine.connect() as conn:
            if not self._exists(conn):
                return None
            query = sa.select(self.table).order_by(self.table.c.failed_at)
            if revisions is not None:
                query = query.where(self.table.c.revision.in_(list(revisions)))
            row = conn.execute(query).first()
        return None if row is None else Remembered(row.revision, row.failed_at, row.statements)

    def forget(self, revision: str | None = None) -> int:
        """Clear ``revision`` (None: every one); returns how many were cleared."""
        with self.engine.begin() as conn:
            if not self._exists(conn):
                return 0
            query = self.table.delete()
            if revision is not None:
                query = query.where(self.table.c.revision == revision)
            return int(conn.execute(query).rowcount or 0)

    def _exists(self, conn: Connection) -> bool:
        return sa.inspect(conn).has_table(TABLE, schema=self.table.schema)
