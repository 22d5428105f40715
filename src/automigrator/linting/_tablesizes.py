"""How many rows the tables a plan touches hold, cheaply, on the live database.

First the server's own estimate (PostgreSQL ``pg_class.reltuples``, MySQL and
MariaDB ``information_schema.tables.table_rows``), which costs nothing; when
it says "small" (or has never been computed: a table not yet analysed), a
count that stops at ``limit + 1`` rows, so a wrong estimate never passes a
big table and a small one is counted exactly. Each query may wait at most a
second for a table lock: on a busy table the size is unknown, which the lint
treats as big.
"""

from __future__ import annotations

import logging

from sqlalchemy import text
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.exc import DBAPIError

from .._findings import RowsAre

logger = logging.getLogger("automigrator")

Table = tuple[str | None, str]
"""(schema or None, name)."""
Size = tuple[int, RowsAre]

_ESTIMATES = {
    "postgresql": "SELECT c.reltuples FROM pg_class c WHERE c.oid = to_regclass("
    "CASE WHEN CAST(:schema AS text) IS NULL THEN quote_ident(:name) "
    "ELSE quote_ident(:schema) || '.' || quote_ident(:name) END)",
    "mysql": "SELECT table_rows FROM information_schema.tables "
    "WHERE table_schema = COALESCE(:schema, DATABASE()) AND table_name = :name",
    "sqlite": "SELECT -1 FROM sqlite_master WHERE type = 'table' AND name = :name "
    "AND :schema IS NULL",
}


def row_counts(engine: Engine, tables: list[Table], limit: int) -> dict[Table, Size | None]:
    """Each table's rows and how they are known; None: not found, or not read."""
    if not tables:
        return {}
    dialect = "mysql" if engine.dialect.name == "mariadb" else engine.dialect.name
    counts: dict[Table, Size | None] = {}
    with engine.connect() as conn:
        _bound_waits(conn, dialect)
        try:
            for table in tables:
                counts[table] = _rows(conn, dialect, table, limit)
        finally:
            if dialect == "mysql":
                conn.exec_driver_sql("SET SESSION lock_wait_timeout = DEFAULT")
            conn.rollback()
    return counts


def _bound_waits(conn: Connection, dialect: str) -> None:
    if dialect == "postgresql":
        conn.exec_driver_sql("SET LOCAL lock_timeout = '1s'")
        conn.exec_driver_sql("SET LOCAL statement_timeout = '10s'")
    elif dialect == "mysql":
        conn.exec_driver_sql("SET SESSION lock_wait_timeout = 1")


def _rows(conn: Connection, dialect: str, table: Table, limit: int) -> Size | None:
    schema, name = table
    query = _ESTIMATES.get(dialect)
    if query is None:
        return None
    try:
        with conn.begin_nested():
            estimate = conn.execute(text(query), {"schema": schema, "name": name}).scalar()
            if estimate is None:
                return None  # no such table
            if float(estimate) >= limit:
                return int(estimate), "estimate"
            quoted = conn.dialect.identifier_preparer
            where = (quoted.quote_schema(schema) + "." if schema else "") + quoted.quote(name)
            counted = conn.exec_driver_sql(
                f"SELECT COUNT(*) FROM (SELECT 1 FROM {where} LIMIT {int(limit) + 1}) AS sized"
            ).scalar()
            counted = int(counted or 0)
            return (limit, "more_than") if counted > limit else (counted, "exact")
    except DBAPIError as exc:
        logger.info("Could not read the size of table %s: %s", name, str(exc).splitlines()[0])
        return None
