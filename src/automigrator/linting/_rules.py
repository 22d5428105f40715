"""The lint's rules on Alembic's operation objects, one dialect at a time.

Each rule says what goes wrong on a live database with the old version of
the application still serving, and the safe way instead. They read the
operations a revision invokes (``op.create_index(...)`` is a
``CreateIndexOp``), so they work where no SQL can be rendered and on every
dialect; squawk (``_squawk``) adds its own on PostgreSQL's rendered SQL.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any, TypeGuard

from alembic.operations import ops
from sqlalchemy import CHAR, REAL, Double, Enum, Float, String
from sqlalchemy.dialects import postgresql
from sqlalchemy.types import NullType, to_instance

from .._findings import LintFinding
from ..scripts._alembic_compat import line_of


@dataclass(frozen=True)
class Rule:
    """A rule's name, the dialects it applies to, and what it tells the user."""

    name: str
    dialects: frozenset[str]
    weighed: bool
    """True: a lock held while the table is scanned or rewritten, harmless on a
    small table. False: the old version breaks, or queries queue, at any size."""
    why: str
    instead: str
    old_version: bool = False
    """Only the old version breaks on it (a dropped or renamed column or table): what a
    post-deploy revision, run once that version is gone, is for."""
    breaks_old_version: bool = False
    """The old version breaks on it, and not only it (a NOT NULL column it does not
    write also fails on a table with rows)."""


_PG, _MY, _LITE = "postgresql", "mysql", "sqlite"
# A table made by raw SQL (op.execute) is as new as one made by op.create_table.
_CREATE_TABLE = re.compile(
    r'\bCREATE\s+TABLE\s+(?:IF\s+NOT\s+EXISTS\s+)?((?:"[^"]+"|[\w$]+)(?:\.(?:"[^"]+"|[\w$]+))?)',
    re.IGNORECASE,
)
_ALL = frozenset({_PG, _MY, _LITE})
_OLD_VERSION = "the old version of the application, still serving during the deploy, "

RULES: dict[str, Rule] = {
    rule.name: rule
    for rule in (
        Rule(
            "index-not-concurrent",
            frozenset({_PG}),
            True,
            "CREATE INDEX blocks every write to the table until the index is built",
            "create it with postgresql_concurrently=True inside "
            "op.get_context().autocommit_block() (CONCURRENTLY cannot run in a transaction)",
        ),
        Rule(
            "add-not-null-column",
            _ALL,
            False,
            "a NOT NULL column without a server default fails on a table with rows, and "
            + _OLD_VERSION
            + "inserts rows without it",
            "add it nullable or with a server_default, backfill, and make it NOT NULL "
            "in a later release",
            breaks_old_version=True,
        ),
        Rule(
            "change-column-type",
            _ALL,
            True,
            "changing a column's type rewrites the table while holding a lock that "
            "blocks its reads and writes",
            "add a column of the new type, write both, backfill, move the reads, and drop "
            "the old column in a later release",
        ),
        Rule(
            "add-constraint",
            frozenset({_PG}),
            True,
            "adding a foreign key, check or unique constraint scans the table (or builds "
            "an index) while blocking its writes",
            "add a foreign key or check with postgresql_not_valid=True and VALIDATE "
            "CONSTRAINT it in a later revision; for unique, CREATE UNIQUE INDEX "
            "CONCURRENTLY, then ADD CONSTRAINT ... UNIQUE USING INDEX",
        ),
        Rule(
            "set-not-null",
            frozenset({_PG, _MY}),
            True,
            "SET NOT NULL scans the whole table (MySQL/MariaDB rebuild it) while holding "
            "a lock that blocks its writes",
            "on PostgreSQL 12+, add CHECK (column IS NOT NULL) NOT VALID, VALIDATE it, then "
            "SET NOT NULL (no scan); elsewhere, at a quiet time",
        ),
        Rule(
            "drop-column",
            _ALL,
            False,
            _OLD_VERSION + "still reads and writes the column",
            "stop using it (remove it from the models) and drop it in a post-deploy revision "
            "(post_deploy = True: run after the rollout), or in the next release",
            old_version=True,
        ),
        Rule(
            "drop-table",
            _ALL,
            False,
            _OLD_VERSION + "still reads and writes the table",
            "stop using it and drop it in a post-deploy revision (post_deploy = True: run "
            "after the rollout), or in the next release",
            old_version=True,
        ),
        Rule(
            "rename-column",
            _ALL,
            False,
            _OLD_VERSION + "still uses the old name",
            "add the new column, write both, backfill, move the reads, and drop the old one "
            "in a post-deploy revision (post_deploy = True) or a later release",
            old_version=True,
        ),
        Rule(
            "rename-table",
            _ALL,
            False,
            _OLD_VERSION + "still uses the old name",
            "create the new table (or a view under the old name), move the code over, and "
            "drop the old one in a post-deploy revision (post_deploy = True) or a later release",
            old_version=True,
        ),
        Rule(
            "no-lock-timeout",
            frozenset({_PG, _MY}),
            False,
            "without a lock timeout, a statement waiting for its table lock (behind one "
            "long query) makes every later query on the table wait behind it",
            "keep Ddl(lock_timeout=) set (it is by default), or SET lock_timeout in the revision",
        ),
    )
}


def breaks_old_version(f: LintFinding) -> bool:
    """Whether the version of the app before ``f``'s revision breaks on it: the
    ledger's ``breaking`` verdict, which an old replica restarted mid-rollout reads."""
    known = RULES.get(f.rule)
    return f.old_version or (known is not None and known.breaks_old_version)


def finding(
    rule: str,
    table: str | None,
    *,
    revision: str,
    path: str,
    op: ops.MigrateOperation | None = None,
) -> LintFinding:
    """``rule``'s finding on ``table`` in ``revision`` (about ``op``, where one)."""
    known = RULES[rule]
    return LintFinding(
        revision=revision,
        rule=rule,
        table=table,
        target=_target_of(op) if op is not None else None,
        line=line_of(op) if op is not None else None,
        why=known.why,
        instead=known.instead,
        weighed=known.weighed,
        old_version=known.old_version,
        path=path,
    )


def table_name(name: str, schema: str | None) -> str:
    """How findings name a table: ``schema.table`` outside the default schema."""
    return f"{schema}.{name}" if schema else name


def check(
    operations: Iterable[ops.MigrateOperation],
    *,
    dialect: str,
    lock_timeout: bool,
    created: set[str],
    revision: str,
    path: str,
    existing: Callable[[str, str], Any] | None = None,
) -> Iterator[LintFinding]:
    """The findings of one revision's operations, in order.

    ``created`` holds the tables, and the columns (``column_key``), the plan
    created before (exempt: nothing uses them yet); this revision's new
    ones are added to it.
    ``lock_timeout``: whether automigrator sets one for each revision.
    ``existing``: the live database's type of a (table, column), for a type
    change that does not say the type it changes from (``existing_type``).
    """
    dialect = _MY if dialect == "mariadb" else dialect
    locked: str | None = None  # the first existing table the revision locks
    sets_timeout = False
    for op in operations:
        if isinstance(op, ops.ExecuteSQLOp):
            sql = str(op.sqltext)
            sets_timeout |= "lock_timeout" in sql.lower()
            created.update(m.group(1).replace('"', "") for m in _CREATE_TABLE.finditer(sql))
            continue
        if isinstance(op, ops.CreateTableOp):
            created.add(table_name(op.table_name, op.schema))
            continue
        table = _table_of(op)
        if table is None or table in created:
            if isinstance(op, ops.RenameTableOp) and table in created:
                created.add(table_name(op.new_table_name, op.schema))
            continue
        column = _column_of(op)
        if isinstance(op, ops.AddColumnOp) and column is not None:
            created.add(column_key(table, column))
        elif column is not None and column_key(table, column) in created:
            if isinstance(op, ops.AlterColumnOp) and op.modify_name is not None:
                created.add(column_key(table, op.modify_name))
            continue  # a column this plan added: the old version never used it
        locked = locked or table
        for rule in _rules_for(op, dialect, existing):
            if dialect in RULES[rule].dialects:
                yield finding(rule, table, revision=revision, path=path, op=op)
    if locked and not lock_timeout and not sets_timeout and dialect in (_PG, _MY):
        yield finding("no-lock-timeout", locked, revision=revision, path=path)


def column_key(table: str, column: str) -> str:
    """How ``check``'s ``created`` holds a column (beside table names, which hold
    no colon)."""
    return f"{table}:{column}"


def _target_of(op: ops.MigrateOperation) -> str | None:
    """The column, index or constraint ``op`` names."""
    column = _column_of(op)
    if column is not None:
        return column
    for name in ("index_name", "constraint_name"):
        value = getattr(op, name, None)
        if isinstance(value, str):
            return value
    return None


def _column_of(op: ops.MigrateOperation) -> str | None:
    if isinstance(op, ops.AddColumnOp):
        return str(op.column.name)
    if isinstance(op, (ops.AlterColumnOp, ops.DropColumnOp)):
        return str(op.column_name)
    return None


def _table_of(op: ops.MigrateOperation) -> str | None:
    if isinstance(op, ops.CreateForeignKeyOp):
        return table_name(op.source_table, op.kw.get("source_schema"))
    name = getattr(op, "table_name", None)
    return table_name(name, getattr(op, "schema", None)) if isinstance(name, str) else None


def _rules_for(
    op: ops.MigrateOperation, dialect: str, existing: Callable[[str, str], Any] | None
) -> Iterator[str]:
    if isinstance(op, ops.CreateIndexOp):
        if not op.kw.get("postgresql_concurrently"):
            yield "index-not-concurrent"
    elif isinstance(op, ops.AddColumnOp):
        column = op.column
        generated = column.computed is not None or column.identity is not None
        if not column.nullable and column.server_default is None and not generated:
            yield "add-not-null-column"
    elif isinstance(op, ops.AlterColumnOp):
        yield from _alter_column(op, dialect, existing)
    elif isinstance(op, (ops.CreateForeignKeyOp, ops.CreateCheckConstraintOp)):
        if not op.kw.get("postgresql_not_valid"):
            yield "add-constraint"
    elif isinstance(op, ops.CreateUniqueConstraintOp):
        yield "add-constraint"
    elif isinstance(op, ops.DropColumnOp):
        yield "drop-column"
    elif isinstance(op, ops.DropTableOp):
        yield "drop-table"
    elif isinstance(op, ops.RenameTableOp):
        yield "rename-table"


def _alter_column(
    op: ops.AlterColumnOp, dialect: str, existing: Callable[[str, str], Any] | None
) -> Iterator[str]:
    if op.modify_name is not None:
        yield "rename-column"
    if op.modify_type is not None and not _no_rewrite(op, dialect, existing):
        yield "change-column-type"
    if op.modify_nullable is False and op.existing_nullable is not False:
        yield "set-not-null"


def _no_rewrite(
    op: ops.AlterColumnOp, dialect: str, existing: Callable[[str, str], Any] | None
) -> bool:
    # PostgreSQL changes a type without a rewrite where the values are already
    # valid: varchar(n) to a longer varchar or to text (binary coercible), and
    # a type to itself under another name (FLOAT(53) is DOUBLE PRECISION). The
    # type it changes from is the revision's existing_type, else the live one.
    if dialect != _PG:
        return False
    before = op.existing_type
    if (before is None or isinstance(to_instance(before), NullType)) and existing is not None:
        before = existing(table_name(op.table_name, op.schema), op.column_name)
    if before is None:
        return False
    old, new = to_instance(before), to_instance(op.modify_type)
    if _varchar(old) and _varchar(new):
        return new.length is None or (old.length is not None and new.length >= old.length)
    return _pg_type(old) == _pg_type(new) is not None


def _pg_type(kind: Any) -> str | None:
    """PostgreSQL's name of a type (None: it cannot say)."""
    if isinstance(kind, Float) and not isinstance(kind, Double):
        # Float(p): real up to 24 bits, else double precision, as PostgreSQL reads it.
        small = isinstance(kind, REAL) or (kind.precision is not None and kind.precision <= 24)
        return "real" if small else "double precision"
    if isinstance(kind, Double):
        return "double precision"
    try:
        return str(kind.compile(dialect=postgresql.dialect())).lower()  # type: ignore[no-untyped-call]
    except Exception:  # a type PostgreSQL's compiler does not know
        return None


def _varchar(kind: object) -> TypeGuard[String]:
    # varchar or text; CHAR pads and an ENUM is a type of its own: both rewrite.
    return isinstance(kind, String) and not isinstance(kind, (CHAR, Enum))
