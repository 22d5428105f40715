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
"""

from __future__ import annotations

import datetime
from collections.abc import Collection
from dataclasses import dataclass

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from ._connections import VersionTable

TABLE = "automigrator_partial"


@dataclass(frozen=True)
class Remembered:
    """A revision left partly applied: when, and what of it stayed."""

    revision: str
    failed_at: str
    statements: str


class Partials:
    """The partly applied revisions of one database (beside its version table)."""

    def __init__(self, engine: Engine, table: VersionTable) -> None:
        self.engine = engine
        self.seen = False  # the last look found the table: worth clearing after a success
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

    def among(self, revisions: Collection[str] | None) -> Remembered | None:
        """The first remembered revision among ``revisions`` (None: any at all)."""
        with self.engine.connect() as conn:
            self.seen = self._exists(conn)
            if not self.seen:
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
