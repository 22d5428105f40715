"""Answering an offline render's reads from the live database.

Offline (``alembic upgrade --sql``), ``op.get_bind()`` is a mock that returns
nothing, so a revision that reads (``bind.execute(select(...))``,
``sa.inspect(bind)``, a batch operation that reflects its table) stops there,
and everything it would do after the read goes unseen. For the lint and
``plan --sql``, a revision that failed so is rendered again with
``op.get_bind()`` a real connection to the live database that only reads:

- a read (SELECT, WITH, SHOW, EXPLAIN, DESCRIBE, VALUES, TABLE, a PRAGMA that
  sets nothing) runs and answers;
- anything else sent through it (an UPDATE, DDL, a SET, the ORM's
  ``query.delete()``) never reaches the database: it is written into the
  rendered SQL where it stands, as offline mode writes ``op.execute()``, and
  the cursor runs ``SELECT 1`` in its place, once per parameter set
  (SQLAlchemy handles the result as the write's, and the ORM finds the one row
  per key it counts on after an UPDATE);
- behind that, the session itself is read-only (PostgreSQL and MySQL's
  ``READ ONLY``, SQLite's ``query_only``), each statement is bounded
  (``READ_TIMEOUT`` seconds, ``LOCK_WAIT`` to wait for a lock), the transaction
  is rolled back after each revision, so no lock is held from one to the next,
  and the connection is thrown away after the render: its session settings
  never reach a pool, and no lock of it outlives the render.

The reads see the database as it stands before the plan: a revision that
reads a table an earlier pending revision creates still fails, and is
reported with the database's reason.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import sqlalchemy as sa
from alembic.runtime.migration import MigrationContext
from sqlalchemy import event, text
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.sql.elements import TextClause
from sqlalchemy.sql.expression import Delete, Insert, Update
from sqlalchemy.sql.selectable import CompoundSelect, Select, TextualSelect

READ_TIMEOUT = 5
"""Seconds one read may take before the server cancels it (the revision is then
reported as not linted, with the reason)."""
LOCK_WAIT = 1
"""Seconds a read waits for a lock on a table (one that DDL holds, say)."""

_READ_WORDS = frozenset(
    {"select", "with", "show", "explain", "describe", "desc", "values", "table", "pragma"}
)
_LEADING_COMMENTS = re.compile(r"^(\s+|--[^\n]*\n?|/\*.*?\*/)+", re.S)
_ONE_ROW = "SELECT 1"
_SAVEPOINT = "automigrator_plan"


def is_read(sql: str) -> bool:
    """Whether ``sql`` only reads: its first word (after comments and brackets)."""
    body = _LEADING_COMMENTS.sub("", sql).lstrip("( \t\n")
    first = body.split(None, 1)[0].lower() if body else ""
    if first == "pragma":  # PRAGMA table_info(t) reads; PRAGMA foreign_keys = OFF sets
        return "=" not in body
    return first in _READ_WORDS


def _session_setup(connection: Connection) -> list[str]:
    """The statements that make ``connection``'s session read-only and bounded."""
    dialect = connection.dialect
    if dialect.name == "postgresql":
        return [
            "SET SESSION CHARACTERISTICS AS TRANSACTION READ ONLY",
            f"SET statement_timeout = {READ_TIMEOUT * 1000}",
            f"SET lock_timeout = {LOCK_WAIT * 1000}",
        ]
    if dialect.name in ("mysql", "mariadb"):
        bound = (
            f"SET SESSION max_statement_time = {READ_TIMEOUT}"
            if getattr(dialect, "is_mariadb", False)
            else f"SET SESSION max_execution_time = {READ_TIMEOUT * 1000}"
        )
        return [
            "SET SESSION TRANSACTION READ ONLY",
            bound,
            f"SET SESSION lock_wait_timeout = {LOCK_WAIT}",
            f"SET SESSION innodb_lock_wait_timeout = {LOCK_WAIT}",
        ]
    if dialect.name == "sqlite":
        return ["PRAGMA query_only = ON"]
    return []  # another database: the interception alone keeps writes away


class LiveReads:
    """The live database, lent to offline renders for their reads (blocking; one
    render at a time, under the run lock). Opens its connection at the first
    render that needs it; :meth:`close` throws it away."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self.connection: Connection | None = None
        self.context: MigrationContext | None = None  # the render writes go into
        self.ops: list[Any] = []  # the plan's operations before the next read
        self.scratching = False  # temporary tables made for this revision
        self.own = False  # our own statements (the scratch tables): not intercepted

    def plan_made(self, operations: Iterable[Any]) -> None:
        """The operations the plan runs before the next revision: the tables they
        make, and the live tables whose columns they change, are made as empty
        temporary tables for its reads (PostgreSQL; each revision's own)."""
        self.ops = list(operations)

    def applied(self, operation: Any) -> None:
        """An operation the revision invokes: where it makes or reshapes a table,
        the temporary tables are made again to match, for the reads after it."""
        self.ops.append(operation)
        if self.scratching and self.connection is not None and _reshapes(operation):
            self.own = True
            try:
                self.connection.exec_driver_sql(f"ROLLBACK TO SAVEPOINT {_SAVEPOINT}")
                self._build(self.connection)
            finally:
                self.own = False

    def lend(self, context: MigrationContext) -> None:
        """Make ``op.get_bind()`` of ``context`` (an offline context) the read-only
        connection, where the dialects agree; its writes go into ``context``'s SQL."""
        if context.dialect.name != self.engine.dialect.name:
            return  # env.py renders for another database: it is refused later
        if self.connection is None:
            self.connection = self._connect()
        self.context = context
        context.impl.connection = self.connection
        if self.connection.dialect.name == "postgresql":
            # The transaction's first statement may make it read-write (the
            # session's are read-only), for the temporary tables; a savepoint
            # before them, so that they can be made again (read-write again too).
            self.own = True
            try:
                self.connection.exec_driver_sql("SET TRANSACTION READ WRITE")
                self.connection.exec_driver_sql(f"SAVEPOINT {_SAVEPOINT}")
                self._build(self.connection)
            finally:
                self.own = False
            self.scratching = True

    def _build(self, connection: Connection) -> None:
        # Temporary tables (pg_temp, first on the search path, gone at the
        # rollback) with no foreign key and no type of their own: nothing outside
        # the session changes. A live table the plan alters is shadowed by an
        # empty copy (LIKE reads its definition; it locks the table as a SELECT
        # does), altered as the plan alters it: the revision reads no rows
        # there, but the columns it expects. Then read-only for the revision.
        quote = connection.dialect.identifier_preparer.quote
        planned_now = planned(self.ops)
        live = sa.inspect(connection)
        for table in planned_now.tables:
            if not live.has_table(table.name):
                table.create(connection)
        for name, changes in planned_now.altered.items():
            if live.has_table(name):
                connection.exec_driver_sql(
                    f"CREATE TEMPORARY TABLE {quote(name)} (LIKE {quote(name)} "
                    "INCLUDING DEFAULTS INCLUDING INDEXES)"
                )
                for change in changes:
                    connection.exec_driver_sql(f"ALTER TABLE pg_temp.{quote(name)} {change}")
        connection.exec_driver_sql("SET TRANSACTION READ ONLY")

    def end_revision(self) -> None:
        """Roll back what the revision read, releasing its locks."""
        self.context, self.scratching = None, False
        if self.connection is not None:
            try:
                self.connection.rollback()
            except Exception:  # the connection is gone: the next revision gets another
                self.close()

    def close(self) -> None:
        """Throw the connection away (its session settings go with it)."""
        connection, self.connection = self.connection, None
        if connection is not None:
            connection.invalidate()
            connection.close()

    def _connect(self) -> Connection:
        connection = self.engine.connect()
        try:
            for statement in _session_setup(connection):
                connection.exec_driver_sql(statement)
            connection.commit()
        except BaseException:
            connection.invalidate()
            connection.close()
            raise
        # After the set-up, which these would take for writes.
        event.listen(connection, "before_execute", self._before_execute, retval=True)
        event.listen(connection, "before_cursor_execute", self._before_cursor, retval=True)
        return connection

    def _before_execute(
        self,
        conn: Connection,
        element: Any,
        multiparams: Any,
        params: Any,
        execution_options: Any,
    ) -> tuple[Any, Any, Any]:
        if self.own:
            return element, multiparams, params
        # A write is rendered here, where its values are at hand, and goes on
        # unchanged: SQLAlchemy (the ORM's query.delete() above all) handles its
        # result as a write's; the cursor gets a read of nothing instead.
        if not (
            isinstance(element, Select | CompoundSelect | TextualSelect)
            or (isinstance(element, TextClause) and is_read(element.text))
        ):
            for one in multiparams or [params]:
                self._write(element, one)
            if multiparams and conn.dialect.name == "sqlite":
                # SQLite runs no read as an executemany(): one read instead.
                return text(_ONE_ROW), [], {}
        return element, multiparams, params

    def _before_cursor(
        self,
        conn: Connection,
        cursor: Any,
        statement: str,
        parameters: Any,
        context: Any,
        executemany: bool,
    ) -> tuple[str, Any]:
        if self.own or is_read(statement):
            return statement, parameters
        if context is None or context.compiled is None:  # exec_driver_sql(): not rendered yet
            self._write(text(statement), {})
        # One row per parameter set: the row count the write would have had where
        # each matches one row, which the ORM checks after an UPDATE by key.
        if executemany:
            return _ONE_ROW, [type(one)() for one in parameters]
        return _ONE_ROW, ()

    def _write(self, element: Any, params: dict[str, Any]) -> None:
        assert self.context is not None  # set by lend() before any render reads
        # With its values where they fit (an UPDATE's SET); else as a comment:
        # the ORM's statements bind names no Core construct takes.
        try:
            self.context.execute(_bound(element, params))
            return
        except Exception:  # as a comment: SQL with placeholders is no SQL to judge
            pass
        try:
            written = str(element.compile(dialect=self.context.dialect))
        except Exception:
            written = f"a {type(element).__name__}, not rendered"
        lines = "\n".join(f"-- {line}" for line in written.splitlines())
        self.context.impl.static_output(
            f"-- through op.get_bind(), values bound when run:\n{lines}"
        )


def _bound(element: Any, params: dict[str, Any]) -> Any:
    """``element`` with its parameters' values in it, so that it renders as one
    statement (as it would have run)."""
    if not params:
        return element
    try:
        if isinstance(element, TextClause):
            return element.bindparams(**params)
        if isinstance(element, Insert | Update):
            return element.values(**params)
        if isinstance(element, Delete):
            return element.params(**params)
    except Exception:  # a name the statement does not know: render it as written
        return element
    return element


@dataclass
class Planned:
    """The schema the plan makes before a revision, where the live one lacks it."""

    tables: list[sa.Table] = field(default_factory=list)
    """The tables it makes, as it leaves them (to be made as temporary tables)."""
    altered: dict[str, list[str]] = field(default_factory=dict)
    """Live tables it alters: the ALTER TABLE clauses of a temporary copy."""


def planned(operations: Iterable[Any]) -> Planned:
    """What ``operations`` make and alter: the tables they make (their columns, an
    enum as text, no key, default or foreign key; their indexes), and the
    columns they add to, drop from or rename in the others."""
    from alembic.operations import ops
    from sqlalchemy.dialects import postgresql

    dialect = postgresql.dialect()  # type: ignore[no-untyped-call]
    quote = dialect.identifier_preparer.quote
    columns: dict[str, dict[str, Any]] = {}
    indexes: dict[str, dict[str, list[str]]] = {}
    altered: dict[str, list[str]] = {}
    for op in operations:
        table = getattr(op, "table_name", None)
        if isinstance(op, ops.CreateTableOp):
            new = op.to_table()
            columns[new.name] = {c.name: c.type for c in new.columns}
            indexes[new.name] = {
                str(i.name): [c.name for c in i.columns] for i in new.indexes if i.name
            }
        elif isinstance(op, ops.DropTableOp):
            columns.pop(op.table_name, None)
        elif table in columns:
            if isinstance(op, ops.AddColumnOp):
                columns[table][op.column.name] = op.column.type
            elif isinstance(op, ops.DropColumnOp):
                columns[table].pop(op.column_name, None)
            elif isinstance(op, ops.CreateIndexOp) and op.index_name:
                named = [c for c in op.columns if isinstance(c, str)]
                if len(named) == len(op.columns):
                    indexes[table][str(op.index_name)] = named
        elif table is not None and getattr(op, "schema", None) is None:
            if isinstance(op, ops.AddColumnOp):
                given = op.column.type  # an enum's type is not made: as text
                kind = "TEXT" if isinstance(given, sa.Enum) else given.compile(dialect=dialect)
                altered.setdefault(table, []).append(f"ADD COLUMN {quote(op.column.name)} {kind}")
            elif isinstance(op, ops.DropColumnOp):
                altered.setdefault(table, []).append(f"DROP COLUMN {quote(op.column_name)}")
            elif isinstance(op, ops.AlterColumnOp) and op.modify_name:
                altered.setdefault(table, []).append(
                    f"RENAME COLUMN {quote(op.column_name)} TO {quote(op.modify_name)}"
                )
    metadata = sa.MetaData()
    made = Planned(altered=altered)
    for name, typed in columns.items():
        new = sa.Table(
            name,
            metadata,
            *(
                sa.Column(column, sa.Text() if isinstance(kind, sa.Enum) else kind)
                for column, kind in typed.items()
            ),
            prefixes=["TEMPORARY"],
        )
        for index, on in indexes.get(name, {}).items():
            if set(on) <= set(typed):
                sa.Index(index, *(new.c[c] for c in on))
        made.tables.append(new)
    return made


def _reshapes(op: Any) -> bool:
    from alembic.operations import ops

    if isinstance(op, ops.AlterColumnOp):
        return op.modify_name is not None
    return isinstance(
        op,
        ops.CreateTableOp
        | ops.DropTableOp
        | ops.AddColumnOp
        | ops.DropColumnOp
        | ops.CreateIndexOp,
    )
