"""Answering an offline render's reads from the live database.

Offline (``alembic upgrade --sql``), ``op.get_bind()`` is a mock that returns
nothing, so a revision that reads (``bind.execute(select(...))``,
``sa.inspect(bind)``, a batch operation that reflects its table) stops there,
and everything it would do after the read goes unseen. For the lint and
``plan --sql``, a revision that failed so is rendered again with
``op.get_bind()`` a real connection to the live database that only reads:

- a read (SELECT, WITH, SHOW, EXPLAIN, DESCRIBE, VALUES, TABLE, a PRAGMA that
  sets nothing) runs and answers;
- anything else sent through it (an UPDATE, DDL, a SET) never reaches the
  database: it is written into the rendered SQL where it stands, as offline
  mode writes ``op.execute()``, and a no-op read runs in its place;
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
from typing import Any

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
_NOTHING = "SELECT 1 WHERE 1 = 0"  # valid on PostgreSQL, MariaDB, MySQL 8 and SQLite


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

    def lend(self, context: MigrationContext) -> None:
        """Make ``op.get_bind()`` of ``context`` (an offline context) the read-only
        connection, where the dialects agree; its writes go into ``context``'s SQL."""
        if context.dialect.name != self.engine.dialect.name:
            return  # env.py renders for another database: it is refused later
        if self.connection is None:
            self.connection = self._connect()
        self.context = context
        context.impl.connection = self.connection

    def end_revision(self) -> None:
        """Roll back what the revision read, releasing its locks."""
        self.context = None
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
        if isinstance(element, Select | CompoundSelect | TextualSelect) or (
            isinstance(element, TextClause) and is_read(element.text)
        ):
            return element, multiparams, params
        for one in multiparams or [params]:
            self._write(_bound(element, one))
        return text(_NOTHING), [], {}

    def _before_cursor(
        self,
        conn: Connection,
        cursor: Any,
        statement: str,
        parameters: Any,
        context: Any,
        executemany: bool,
    ) -> tuple[str, Any]:
        # What came past _before_execute: exec_driver_sql(), the dialect's own.
        if is_read(statement):
            return statement, parameters
        self._write(text(statement))
        return _NOTHING, ()

    def _write(self, element: Any) -> None:
        assert self.context is not None  # set by lend() before any render reads
        try:
            self.context.execute(element)
        except Exception:  # not renderable as it stands (a parameter with no value)
            self.context.impl.static_output(f"{element};")


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
