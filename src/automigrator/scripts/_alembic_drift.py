"""Alembic's autogenerate comparison, for drift: through env.py (as ``alembic check``) or direct.

``compare_env()`` runs env.py with a work function that compares its
``target_metadata`` with the database and returns no step, so no revision
runs; ``dont_mutate`` keeps Alembic from creating a missing version table.
``compare_models()`` compares given models on a connection of ours. Both
add the same options to the comparison (our own tables left out, the types
a database stores under another name taken as equal: ``_typematch``; an
index's column directions read from the catalog where reflection drops
them) and describe each difference as one line. Errors are translated here,
chained with ``from``.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from typing import Any

from alembic.autogenerate import compare_metadata
from alembic.config import Config
from alembic.runtime.environment import EnvironmentContext
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from alembic.util import CommandError
from sqlalchemy import MetaData, text
from sqlalchemy.engine import URL, Connection, Dialect
from sqlalchemy.exc import DBAPIError
from sqlalchemy.sql import operators
from sqlalchemy.sql.elements import ColumnClause, TextClause, UnaryExpression

from ..database._connections import VersionTable, create_engine, display, mismatch, translate_error
from ..database._ledger import TABLE
from ..database._redaction import redact
from ..errors import AutomigratorError, ConfigurationError, first_line
from ..process._logging import LoggingGuard
from ._alembic_run import RUN_LOCK
from ._typematch import same_type

# Tables of ours that live beside the version table: never the models'.
OWN_TABLES: tuple[str, ...] = (TABLE,)

Models = MetaData | Sequence[MetaData]


def compare_env(
    cfg: Config,
    script: ScriptDirectory,
    *,
    url: URL,
    version_table: VersionTable,
    ours: tuple[str, ...] = OWN_TABLES,
) -> list[str]:
    """The differences between env.py's ``target_metadata`` and its database, one line each.

    env.py runs here as for a migration (its own engine and options), but
    Alembic is handed a work function that compares and runs nothing.
    """
    found: list[str] = []
    asked = False

    def compare(rev: Any, context: MigrationContext) -> list[Any]:
        nonlocal asked
        asked = True
        metadata = context.opts.get("target_metadata")
        if metadata is None:
            raise ConfigurationError(
                f"{script.env_py_location} passes no target_metadata to context.configure(): "
                "drift has no models to compare the database with. Pass your models' MetaData "
                "(context.configure(..., target_metadata=Base.metadata)), as autogenerate "
                "needs; nothing was changed."
            )
        found.extend(_differences(context, metadata, url))
        return []  # no step: nothing runs

    env = EnvironmentContext(cfg, script, fn=compare, as_sql=False, dont_mutate=True)
    configure = env.configure

    def configure_for_comparison(*args: Any, **kwargs: Any) -> None:
        connection = kwargs.get("connection")
        if isinstance(connection, Connection):
            _check_where(url, connection.engine.url)
        kwargs.update(_options(kwargs, version_table, ours))
        configure(*args, **kwargs)

    env.configure = configure_for_comparison  # type: ignore[method-assign]
    with RUN_LOCK, LoggingGuard():
        try:
            with env:
                script.run_env()
        except AutomigratorError:
            raise
        except DBAPIError as exc:
            raise translate_error(exc, url, doing="comparing the schema") from exc
        except Exception as exc:
            detail = redact(f"{type(exc).__name__}: {first_line(exc)}", url)
            raise ConfigurationError(
                f"env.py failed while comparing the schema of {display(url)} with its "
                f"target_metadata: {detail}. Fix env.py or what it imports; nothing was changed."
            ) from exc
    if not asked:
        raise ConfigurationError(
            "env.py returned without calling context.run_migrations(): there was nothing to "
            "compare. Fix env.py (Alembic's templates call it inside "
            "context.begin_transaction()); nothing was changed."
        )
    return found


def compare_models(
    url: URL,
    metadata: Models,
    *,
    version_table: VersionTable,
    ours: tuple[str, ...] = OWN_TABLES,
) -> list[str]:
    """The differences between ``metadata`` and the database at ``url``, one line each.

    On a short connection of ours, with Alembic's default options and ours.
    """
    options = _options({}, version_table, ours)
    options.update(version_table=version_table.name, version_table_schema=version_table.schema)
    try:
        with create_engine(url).connect() as conn:
            context = MigrationContext.configure(conn, opts=options)
            return _differences(context, metadata, url)
    except DBAPIError as exc:
        raise translate_error(exc, url, doing="comparing the schema") from exc


def _options(
    theirs: dict[str, Any], version_table: VersionTable, ours: tuple[str, ...]
) -> dict[str, Any]:
    """Our comparison options, combined with those env.py gives to configure()."""
    include_name = theirs.get("include_name")

    def ours_left_out(name: str | None, type_: str, parents: dict[str, Any]) -> bool:
        if type_ == "table" and _is_ours(name, parents.get("schema_name"), version_table, ours):
            return False
        return include_name is None or bool(include_name(name, type_, parents))

    return {"include_name": ours_left_out, "compare_type": _compare_type(theirs)}


def _is_ours(
    name: str | None, schema: str | None, version_table: VersionTable, ours: tuple[str, ...]
) -> bool:
    # Ours beside the version table: in its schema, or the default one
    # (which reflection names None).
    beside = schema is None or version_table.schema is None or schema == version_table.schema
    return beside and (name == version_table.name or name in ours)


def _compare_type(theirs: dict[str, Any]) -> bool | Callable[..., bool | None]:
    """env.py's ``compare_type`` first; then the known equivalences; then Alembic's."""
    given = theirs.get("compare_type", True)
    if given is False:
        return False  # env.py turned type comparison off: so be it

    def compare(
        context: MigrationContext,
        inspected: Any,
        declared: Any,
        inspected_type: Any,
        declared_type: Any,
    ) -> bool | None:
        if callable(given):
            said = given(context, inspected, declared, inspected_type, declared_type)
            if said is not None:
                return bool(said)
        if same_type(context.dialect, inspected_type, declared_type):
            return False
        return None  # Alembic's own comparison decides

    return compare


def _differences(context: MigrationContext, metadata: Models, url: URL) -> list[str]:
    try:
        # A sequence of MetaData is what env.py may pass (Alembic's docs), and
        # what autogenerate takes, though compare_metadata is annotated narrower.
        diffs: list[Any] = compare_metadata(context, metadata)  # type: ignore[arg-type]
    except CommandError as exc:
        raise ConfigurationError(
            f"Alembic could not compare the schema: {redact(first_line(exc), url)}."
        ) from exc
    flat = [d for diff in diffs for d in (diff if isinstance(diff, list) else [diff])]
    flat = _unsorted_reflection_left_out(flat, context)
    return [redact(_line(diff, context.dialect), url) for diff in flat]


# -- an index's sort order, which reflection drops ---------------------------------
#
# SQLAlchemy reflects the direction of an index's columns on PostgreSQL only:
# on SQLite and MySQL/MariaDB a ``DESC`` column comes back as the plain
# column, so an index the models declare with ``DESC`` columns shows as
# removed and added again, though the database holds it as declared. Such a
# pair (same table, same name) is left out when the database's own catalog
# records the models' columns, in their order and direction, and their
# uniqueness; anything else in the index (an expression, a prefix length, a
# partial index, NULLS FIRST) keeps the pair for Alembic's verdict.

_DIRECTION = re.compile(r'^\s*[`"]?(\w+)[`"]?(?:\s+(ASC|DESC))?\s*$', re.IGNORECASE)

_Sorted = tuple[tuple[str, bool], ...]  # (column, descending) in index order


def _unsorted_reflection_left_out(diffs: list[Any], context: MigrationContext) -> list[Any]:
    if context.dialect.name not in ("sqlite", "mysql", "mariadb"):
        return diffs
    removed = {_index_key(d[1]): d for d in diffs if d[0] == "remove_index"}
    added = {_index_key(d[1]): d for d in diffs if d[0] == "add_index"}
    same: set[int] = set()
    for key in removed.keys() & added.keys():
        stored, declared = removed[key][1], added[key][1]
        wanted = _declared_order(declared)
        if wanted is None or [name for name, _ in wanted] != [c.name for c in stored.columns]:
            continue
        if _catalog_order(context, stored) == (wanted, bool(declared.unique)):
            same.update((id(removed[key]), id(added[key])))
    return [d for d in diffs if id(d) not in same]


def _index_key(index: Any) -> tuple[str, str | None]:
    return _table(index.table), index.name


def _declared_order(index: Any) -> _Sorted | None:
    """The model's columns and directions, when its index holds nothing else."""
    if index.dialect_kwargs:
        return None  # mysql_length, sqlite_where, ...: not judged here
    order: list[tuple[str, bool]] = []
    for element in index.expressions:
        expression, descending = _unwrapped(element), False
        if isinstance(expression, UnaryExpression):
            if expression.modifier not in (operators.desc_op, operators.asc_op):
                return None
            descending = expression.modifier is operators.desc_op
            expression = _unwrapped(expression.element)
        if isinstance(expression, TextClause):
            match = _DIRECTION.match(expression.text)
            if match is None:
                return None
            name, direction = match.groups()
            descending = descending or (direction or "").upper() == "DESC"
        elif isinstance(expression, ColumnClause):
            name = expression.name
        else:
            return None
        order.append((name, descending))
    return tuple(order)


def _unwrapped(expression: Any) -> Any:
    # Alembic hands a text() element of an index over wrapped, the TextClause as `.text`.
    inner = getattr(expression, "text", None)
    return inner if isinstance(inner, TextClause) else expression


def _catalog_order(context: MigrationContext, index: Any) -> tuple[_Sorted, bool] | None:
    """The database's own record of the index: its columns and directions, and uniqueness."""
    connection, table = context.connection, index.table
    if connection is None or table is None:
        return None
    if context.dialect.name == "sqlite":
        return _sqlite_order(connection, table.schema, table.name, index.name)
    return _mysql_order(connection, table.schema, table.name, index.name)


def _sqlite_order(
    connection: Connection, schema: str | None, table: str, name: str
) -> tuple[_Sorted, bool] | None:
    quote = connection.dialect.identifier_preparer.quote_identifier
    prefix = f"{quote(schema)}." if schema else ""
    listed = connection.exec_driver_sql(f"PRAGMA {prefix}index_list({quote(table)})").fetchall()
    # index_list: (seq, name, unique, origin, partial)
    found = [row for row in listed if row[1] == name]
    if len(found) != 1 or found[0][4]:
        return None
    # index_xinfo: (seqno, cid, name, desc, coll, key); cid -2 is an expression
    rows = connection.exec_driver_sql(f"PRAGMA {prefix}index_xinfo({quote(name)})").fetchall()
    keys = sorted((row for row in rows if row[5]), key=lambda row: row[0])
    if any(row[2] is None for row in keys):
        return None
    return tuple((str(row[2]), bool(row[3])) for row in keys), bool(found[0][2])


def _mysql_order(
    connection: Connection, schema: str | None, table: str, name: str
) -> tuple[_Sorted, bool] | None:
    rows = connection.execute(
        text(
            "SELECT column_name, collation, sub_part, non_unique "
            "FROM information_schema.statistics "
            "WHERE table_schema = COALESCE(:schema, DATABASE()) "
            "AND table_name = :table AND index_name = :name ORDER BY seq_in_index"
        ),
        {"schema": schema, "table": table, "name": name},
    ).fetchall()
    # No column (an expression), a prefix length, or no order (a HASH or
    # FULLTEXT index): not judged here.
    if not rows or any(r[0] is None or r[1] not in ("A", "D") or r[2] is not None for r in rows):
        return None
    return tuple((str(r[0]), r[1] == "D") for r in rows), not rows[0][3]


def _check_where(ours: URL, theirs: URL) -> None:
    if mismatch(ours, theirs) == "database":
        raise ConfigurationError(
            f"env.py connects to {display(theirs)!r}, but automigrator was given "
            f"{display(ours)!r}: the drift would be another database's. Make env.py read its "
            "URL from the config (config.get_main_option('sqlalchemy.url'), which automigrator "
            "sets), or give automigrator the URL env.py uses."
        )


# -- one line per difference ------------------------------------------------------


def _line(diff: tuple[Any, ...], dialect: Dialect) -> str:
    kind = diff[0]
    if kind in ("add_table", "remove_table"):
        return f"{kind} {_table(diff[1])}"
    if kind in ("add_column", "remove_column"):
        _, schema, table, column = diff
        null = "" if column.nullable else " NOT NULL"
        return f"{kind} {_name(schema, table)}.{column.name} {_type(column.type, dialect)}{null}"
    if kind in ("add_index", "remove_index"):
        index = diff[1]
        unique = " UNIQUE" if index.unique else ""
        columns = ", ".join(_expression(e, dialect) for e in index.expressions)
        return f"{kind} {index.name} on {_table(index.table)} ({columns}){unique}"
    if kind in ("add_constraint", "remove_constraint"):
        constraint = diff[1]
        what = _CONSTRAINTS.get(type(constraint).__name__, type(constraint).__name__)
        columns = ", ".join(c.name for c in constraint.columns)
        name = constraint.name or "(unnamed)"
        return f"{kind} {name} on {_table(constraint.table)} {what} ({columns})"
    if kind in ("add_fk", "remove_fk"):
        fk = diff[1]
        columns = ", ".join(fk.column_keys)
        target = ", ".join(element.target_fullname for element in fk.elements)
        return f"{kind} {fk.name or '(unnamed)'} on {_table(fk.table)} ({columns}) -> {target}"
    if kind in ("add_table_comment", "remove_table_comment"):
        return f"{kind} {_table(diff[1])} {diff[1].comment!r}"
    if kind.startswith("modify_"):
        _, schema, table, column, _existing, before, after = diff
        shows: dict[str, Callable[[Any], str]] = {
            "modify_type": lambda value: _type(value, dialect),
            "modify_nullable": lambda value: "NULL" if value else "NOT NULL",
            "modify_default": lambda value: _default(value, dialect),
        }
        show = shows.get(kind, repr)
        return f"{kind} {_name(schema, table)}.{column} {show(before)} -> {show(after)}"
    return f"{kind} {diff[1:]!r}"


_CONSTRAINTS = {"UniqueConstraint": "UNIQUE", "CheckConstraint": "CHECK"}


def _name(schema: str | None, table: str) -> str:
    return f"{schema}.{table}" if schema else table


def _table(table: Any) -> str:
    return _name(table.schema, table.name) if table is not None else "?"


def _type(type_: Any, dialect: Dialect) -> str:
    try:
        return str(type_.compile(dialect=dialect))
    except Exception:  # a type this dialect cannot render (another dialect's)
        return repr(type_)


def _expression(expression: Any, dialect: Dialect) -> str:
    name = getattr(expression, "name", None)
    if isinstance(name, str):
        return name
    try:
        return str(expression.compile(dialect=dialect))
    except Exception:
        return str(expression)


def _default(default: Any, dialect: Dialect) -> str:
    if default is None:
        return "(none)"
    value = getattr(default, "arg", default)
    if isinstance(value, str):
        return repr(value)
    try:
        return str(value.compile(dialect=dialect))
    except Exception:
        return repr(value)
