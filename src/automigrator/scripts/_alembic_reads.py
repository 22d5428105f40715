"""Answering an offline render's reads from the live database.

Offline (``alembic upgrade --sql``), ``op.get_bind()`` is a mock that returns
nothing, so a revision that reads (``bind.execute(select(...))``,
``sa.inspect(bind)``, a batch operation that reflects its table) stops there,
and everything it would do after the read goes unseen. For the lint and
``plan --sql``, a revision that failed so is rendered again with
``op.get_bind()`` a real connection to the live database that only reads:

- a read (SELECT, WITH, SHOW, EXPLAIN, DESCRIBE, VALUES, TABLE, a PRAGMA that
  sets nothing: :func:`is_read`; one statement, calling no function that
  writes or reaches another session) runs and answers;
- anything else sent through it (an UPDATE, DDL, a SET, the ORM's
  ``query.delete()``) never reaches the database: it is written into the
  rendered SQL where it stands, as offline mode writes ``op.execute()``, and
  the cursor runs ``SELECT 1`` in its place, once per parameter set
  (SQLAlchemy handles the result as the write's, and the ORM finds the one row
  per key it counts on after an UPDATE);
- behind that, the session itself is read-only (PostgreSQL's transactions,
  each set so: a pooler hands its server session on; MySQL's ``READ ONLY``,
  SQLite's ``query_only``), each statement is bounded (``READ_TIMEOUT``
  seconds, ``LOCK_WAIT`` to wait for a lock), a revision's reads together
  (``BUDGET``), the transaction
  is rolled back after each revision, so no lock is held from one to the next,
  and the connection is thrown away after the render: its session settings
  never reach a pool, and no lock of it outlives the render;
- all this holds for every connection of the engine the revision sees
  (``op.get_bind().engine``: one it opens itself is answered alike and
  closed with the revision), and the revision's file is loaded anew for the
  render (:func:`fresh_module`), so what it keeps at module level stays there.

It guards a revision written for an online run, not against code that goes
around it on purpose (the raw driver connection, a URL of its own): that
runs as it would in ``alembic upgrade --sql``.

The reads see the database as it stands before the plan. On PostgreSQL, what
the plan makes before a read is there too: the tables it creates, and the live
tables whose columns it changes, as empty temporary tables made in the read's
transaction (:func:`planned`; made again as the revision's own operations
reshape them). Elsewhere a revision that reads a table an earlier pending
revision creates still fails, and is reported with the database's reason.
"""

from __future__ import annotations

import re
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
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
BUDGET = 15
"""Seconds all of one revision's reads may take (a backfill that reads a big
table in batches): past them, its next read fails, and it is named as not
linted past that point."""

_READ_WORDS = frozenset(
    {"select", "with", "show", "explain", "describe", "desc", "values", "table", "pragma"}
)
_COMMENTS = re.compile(r"--[^\n]*|/\*.*?\*/", re.S)
_QUOTED = re.compile(r"'(?:[^']|'')*'|\"(?:[^\"]|\"\")*\"|`[^`]*`|\$(\w*)\$.*?\$\1\$", re.S)
# Functions a SELECT may call that write, or act on another session or the
# server: a read through them is no read.
_SIDE_EFFECTS = re.compile(
    r"\b(?:set_config|setval|nextval|pg_terminate_backend|pg_cancel_backend"
    r"|pg_(?:try_)?advisory\w*|dblink\w*|lo_\w+|pg_notify|pg_reload_conf|pg_rotate_logfile"
    r"|pg_switch_wal|pg_create_\w+|pg_drop_\w+|pg_stat_reset\w*|pg_file_\w+|pg_logical_\w+"
    r"|pg_replication_\w+|pg_import_system_collations|get_lock|release_lock"
    r"|release_all_locks)\s*\(|\binto\s+(?:outfile|dumpfile)\b",
    re.I,
)
_READ_PRAGMAS = frozenset(
    {
        "table_info",
        "table_xinfo",
        "table_list",
        "index_list",
        "index_info",
        "index_xinfo",
        "foreign_key_list",
        "foreign_key_check",
        "integrity_check",
        "quick_check",
        "function_list",
        "pragma_list",
        "collation_list",
        "database_list",
        "compile_options",
    }
)
_ONE_ROW = "SELECT 1"
_SAVEPOINT = "automigrator_plan"


def is_read(sql: str) -> bool:
    """Whether ``sql`` only reads: one statement, whose first word (after comments
    and brackets) reads, calling no function that writes or reaches another
    session (``setval``, ``set_config``, ``pg_terminate_backend``, ``dblink``,
    an advisory lock, ``GET_LOCK``, ``INTO OUTFILE``...), and no PRAGMA that sets."""
    bare = _QUOTED.sub("''", _COMMENTS.sub(" ", sql)).lstrip("( \t\r\n")
    if ";" in bare.rstrip().rstrip(";") or _SIDE_EFFECTS.search(bare):
        return False
    first = bare.split(None, 1)[0].lower() if bare else ""
    if first == "pragma":
        return _read_pragma(bare)
    return first in _READ_WORDS


def _read_pragma(statement: str) -> bool:
    # PRAGMA user_version and PRAGMA table_info(t) read; PRAGMA query_only = 0
    # and PRAGMA query_only(0) set.
    match = re.match(r"\s*pragma\s+(?:(?:\w+|'')\.)?(\w+)\s*(\S?)", statement, re.I)
    if match is None:
        return False
    name, after = match.group(1).lower(), match.group(2)
    return after in ("", ";") or (after == "(" and name in _READ_PRAGMAS)


def _session_setup(connection: Connection) -> list[str]:
    """The statements that make ``connection``'s session read-only and bounded."""
    dialect = connection.dialect
    if dialect.name == "postgresql":
        return []  # each transaction's own (_TRANSACTION_BOUNDS): a pooler hands sessions on
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


# PostgreSQL: set in each transaction, before its first statement of the
# revision's, and gone with it. Session settings would outlive the lint on a
# server connection that PgBouncer (transaction mode) hands to the app next.
_TRANSACTION_BOUNDS = (
    "SET TRANSACTION READ ONLY",
    f"SET LOCAL statement_timeout = {READ_TIMEOUT * 1000}",
    f"SET LOCAL lock_timeout = {LOCK_WAIT * 1000}",
)
_BOUNDED = "automigrator_reads_bounded"


class LiveReads:
    """The live database, lent to offline renders for their reads (blocking; one
    render at a time, under the run lock). Opens its connection at the first
    render that needs it; :meth:`close` throws it away, with every connection a
    revision opened through ``op.get_bind().engine``."""

    def __init__(self, engine: Engine) -> None:
        # An engine of its own over the same pool: its listeners make every
        # connection it gives (a revision's own, through bind.engine, too)
        # read-only, bounded and answered as below; the app's engine has none.
        self.engine = engine.execution_options()
        self.connection: Connection | None = None
        self.opened: list[Connection] = []
        self.context: MigrationContext | None = None  # the render writes go into
        self.ops: list[Any] = []  # the plan's operations before the next read
        self.scratching = False  # temporary tables made for this revision
        self.deadline = float("inf")  # when the revision's reads have had their time
        self.own = False  # our own statements (set-up, scratch tables): not intercepted
        event.listen(self.engine, "engine_connect", self._read_only)
        for ended in ("commit", "rollback"):  # a new transaction: bounds again
            event.listen(self.engine, ended, _unbounded)
        event.listen(self.engine, "before_execute", self._before_execute, retval=True)
        event.listen(self.engine, "before_cursor_execute", self._before_cursor, retval=True)

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
            self._build(self.connection, again=True)

    def lend(self, context: MigrationContext) -> None:
        """Make ``op.get_bind()`` of ``context`` (an offline context) the read-only
        connection, where the dialects agree; its writes go into ``context``'s SQL."""
        if context.dialect.name != self.engine.dialect.name:
            return  # env.py renders for another database: it is refused later
        if self.connection is None:
            self.connection = self.engine.connect()
        self.context = context
        self.deadline = time.monotonic() + BUDGET
        context.impl.connection = self.connection
        if self.connection.dialect.name == "postgresql":
            self._build(self.connection, again=False)
            self.scratching = True

    def _build(self, connection: Connection, *, again: bool) -> None:
        # Temporary tables (pg_temp, first on the search path, gone at the
        # rollback) with no foreign key and no type of their own: nothing outside
        # the session changes. A live table the plan alters is shadowed by an
        # empty copy (LIKE reads its definition; it locks the table as a SELECT
        # does), altered as the plan alters it: the revision reads no rows
        # there, but the columns it expects.
        # Their SQL is written first, read-only: a type's own code runs there.
        # The transaction is read-write only for our statements (a savepoint
        # before them and the bounds after: rolled back to, it is read-write
        # again), then read-only and bounded; should anything fail between,
        # the connection is thrown away, never left writable.
        made = planned(self.ops).statements(connection.dialect)
        self.own = True
        try:
            if again:
                connection.exec_driver_sql(f"ROLLBACK TO SAVEPOINT {_SAVEPOINT}")
            else:
                connection.exec_driver_sql(f"SAVEPOINT {_SAVEPOINT}")
            live = sa.inspect(connection)
            for name, new, statements in made:
                if live.has_table(name) != new:
                    for statement in statements:
                        connection.exec_driver_sql(statement)
            for statement in _TRANSACTION_BOUNDS:  # after the savepoint: made again with it
                connection.exec_driver_sql(statement)
            connection.info[_BOUNDED] = True
        except BaseException:
            self.close()
            raise
        finally:
            self.own = False

    def end_revision(self) -> None:
        """Roll back what the revision read, releasing its locks; close what else
        it opened."""
        self.context, self.scratching = None, False
        for extra in [c for c in self.opened if c is not self.connection]:
            _discard(extra)
        self.opened = [c for c in self.opened if c is self.connection]
        if self.connection is not None:
            try:
                self.connection.rollback()
            except Exception:  # the connection is gone: the next revision gets another
                self.close()

    def close(self) -> None:
        """Throw every connection away (their session settings and locks go with
        them)."""
        self.connection, opened, self.opened = None, self.opened, []
        for connection in opened:
            _discard(connection)

    def _read_only(self, connection: Connection) -> None:
        self.opened.append(connection)
        self.own = True
        try:
            for statement in _session_setup(connection):
                connection.exec_driver_sql(statement)
            connection.commit()
        except BaseException:
            connection.invalidate()
            raise
        finally:
            self.own = False

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
        if self.own:
            return statement, parameters
        if time.monotonic() > self.deadline:
            raise TimeoutError(f"its reads took over {BUDGET} s; not linted past them")
        if conn.dialect.name == "postgresql" and not conn.info.get(_BOUNDED):
            for bound in _TRANSACTION_BOUNDS:  # the transaction's first statement of ours
                cursor.execute(bound)
            conn.info[_BOUNDED] = True
        if is_read(statement):
            return statement, parameters
        if context is None or context.compiled is None:  # exec_driver_sql(): not rendered yet
            self._write(text(statement), {})
        # One row per parameter set: the row count the write would have had where
        # each matches one row, which the ORM checks after an UPDATE by key.
        if executemany:
            return _ONE_ROW, [type(one)() for one in parameters]
        return _ONE_ROW, ()

    def _write(self, element: Any, params: dict[str, Any]) -> None:
        if self.context is None:  # outside a render (a connection a revision kept): nowhere
            return
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

    def statements(self, dialect: Any) -> list[tuple[str, bool, list[str]]]:
        """(table, made by the plan, the SQL of its temporary table): for a table
        the plan makes, where the live database lacks it; for one it alters,
        where the live database has it."""
        from sqlalchemy.schema import CreateIndex, CreateTable

        quote = dialect.identifier_preparer.quote
        made: list[tuple[str, bool, list[str]]] = []
        for table in self.tables:
            ddl = [str(CreateTable(table).compile(dialect=dialect))]
            ddl += [str(CreateIndex(i).compile(dialect=dialect)) for i in table.indexes]
            made.append((table.name, True, ddl))
        for name, changes in self.altered.items():
            copy = f"CREATE TEMPORARY TABLE {quote(name)} (LIKE {quote(name)} "
            copy += "INCLUDING DEFAULTS INCLUDING INDEXES)"
            alters = [f"ALTER TABLE pg_temp.{quote(name)} {change}" for change in changes]
            made.append((name, False, [copy, *alters]))
        return made


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
            columns[op.table_name], indexes[op.table_name] = made_by(op)
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


def made_by(op: Any) -> tuple[dict[str, Any], dict[str, list[str]]]:
    """The columns (name: type) and named indexes (name: columns) of a
    ``CreateTableOp``, read from what the revision gave it. (Not its
    ``to_table()``: an ``sa.Index`` given to ``op.create_table`` belongs to
    the table the render made, and joins no second one.)"""
    columns = {c.name: c.type for c in op.columns if isinstance(c, sa.Column)}
    indexes: dict[str, list[str]] = {}
    for item in op.columns:
        if isinstance(item, sa.Index) and item.name:
            on = [e if isinstance(e, str) else getattr(e, "name", None) for e in item.expressions]
            if all(isinstance(name, str) for name in on):
                indexes[str(item.name)] = [str(name) for name in on]
        elif isinstance(item, sa.Column) and item.index:
            indexes[f"ix_{op.table_name}_{item.name}"] = [item.name]  # the default name
    return columns, indexes


def _unbounded(connection: Connection) -> None:
    connection.info[_BOUNDED] = False


def _discard(connection: Connection) -> None:
    # Closed at the server, whatever it holds; one the revision closed is done.
    if not connection.closed:
        connection.invalidate()
    connection.close()


@contextmanager
def fresh_module(step: Any) -> Iterator[None]:
    """``step`` (Alembic's upgrade step of one revision) running its file loaded
    anew, for the block.

    What a render with live reads leaves in the file's module (a module-level
    ``MetaData`` holding a table it reflected, from a temporary copy or from
    the database before the plan) must not reach the upgrade that follows,
    which runs the module loaded first.
    """
    from alembic.util import load_python_file

    path = Path(step.revision.path)
    module, upgrade = step.revision.module, step.migration_fn
    fresh = load_python_file(str(path.parent), path.name)
    step.revision.module, step.migration_fn = fresh, fresh.upgrade
    try:
        yield
    finally:
        step.revision.module, step.migration_fn = module, upgrade


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
