"""Reading a plan: the database's revisions (one short connection) against the scripts."""

from __future__ import annotations

import anyio
import anyio.to_thread
from sqlalchemy.engine import Engine
from sqlalchemy.exc import DBAPIError

from ._database import (
    VersionTable,
    check_schema_exists,
    has_other_tables,
    read_revisions,
    translate_error,
)
from ._plan import Plan, PlanKind, holds_heads
from ._scripts import Scripts
from ._threads import abandonable
from .errors import DatabaseUnavailableError


def read_plan(
    scripts: Scripts,
    engine: Engine,
    version_table: VersionTable,
    target: str,
    *,
    first: bool = False,
) -> Plan:
    """Read the version table and classify it against the scripts (in a worker thread).

    At head with remembered heads this is one query and no graph. ``first``
    (the first plan of an attempt) defers the graph for a database with no
    revisions: it is behind whatever the scripts hold, and the replica that
    migrates imports the scripts anyway.
    """
    remembered = scripts.remembered_heads(target)
    # Without remembered heads, the graph is read before connecting: script
    # errors come before any wait for the database.
    graph = scripts.graph() if remembered is None and not first else None
    try:
        with engine.connect() as conn:
            revisions = read_revisions(conn, version_table)
            if revisions is None:
                check_schema_exists(conn, version_table)
            has_tables = revisions is None and has_other_tables(conn, version_table)
    except DBAPIError as exc:
        error = translate_error(exc, scripts.url, doing="reading the version table")
        if isinstance(error, DatabaseUnavailableError):
            scripts.graph()  # a script error first: waiting would not fix it
        raise error from exc
    if remembered is not None and holds_heads(remembered, revisions, target):
        return Plan("at_head", revisions or (), remembered)  # one query, no graph
    if first and not revisions:
        # Multiple heads are refused under the lock, still before any DDL.
        kind: PlanKind = "unversioned" if has_tables else "empty"
        return Plan(kind, (), remembered or ())
    from . import _alembic

    return _alembic.make_plan(graph or scripts.graph(), target, revisions, has_tables=has_tables)


async def revisions_soon(
    engine: Engine, version_table: VersionTable, limit: float
) -> tuple[str, ...] | None:
    """The version table's rows if the database answers within ``limit`` seconds; else None.

    Best effort, for the status after a failure: nothing is raised.
    """

    def read() -> tuple[str, ...] | None:
        try:
            with engine.connect() as conn:
                return read_revisions(conn, version_table) or ()
        except Exception:
            return None

    with anyio.move_on_after(limit):
        return await abandonable(read)
    return None
