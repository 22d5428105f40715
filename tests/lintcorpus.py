"""The lint corpus: real histories, a PostgreSQL database at an older revision
with its tables filled, and what an actual upgrade does to them.

The ground truth is observed, not written by hand: the upgrade runs one
revision at a time, and after each the catalogue says which tables were
rewritten (``pg_class.relfilenode`` changed), which indexes were built on a
table that existed, which columns and tables went away, and which NOT NULL
columns without a default came; the statements run say which constraints
were validated by a scan (``SET NOT NULL``, ``CHECK`` or ``FOREIGN KEY``
without ``NOT VALID``, as PostgreSQL's ALTER TABLE page documents).

Run as a program (the revision files import their package, whose warnings
the test process would take for errors):

    python -m tests.lintcorpus prepare NAME INI URL SCALE
    python -m tests.lintcorpus observe NAME INI URL  (prints the events as JSON)
"""

from __future__ import annotations

import io
import json
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import sqlalchemy as sa

THRESHOLD = 100_000
"""Lint(rows=)'s default: the sizes below are real sizes at scale 1."""


@dataclass(frozen=True)
class History:
    """A real history, where its database stands, and how full its tables are."""

    start: str
    """The revision the database stands at: the lint and the upgrade go from it."""
    sizes: dict[str, int]
    """Rows per table at scale 1 (as the issue's measurements had them); the rest
    get SMALL rows."""
    values: dict[str, str] = field(default_factory=dict)
    """table.column: a SQL expression (of g, the row number) where the generic
    value would break a constraint."""
    offline_refused: tuple[str, ...] = ()
    """Revisions that raise in offline mode on purpose (Prefect's concurrent index
    builds check the index online): the lint names them, with the reason."""
    driver: str = "psycopg"
    """The driver env.py runs on; ``asyncpg`` with Alembic's async template."""

    @property
    def template(self) -> str:
        return "async" if self.driver == "asyncpg" else "generic"


SMALL = 20

HISTORIES: dict[str, History] = {
    "optuna": History(
        start="v2.4.0.a",
        sizes={
            "studies": 2_000,
            "trials": 150_000,
            "trial_params": 300_000,
            "trial_values": 150_000,
            "trial_intermediate_values": 300_000,
            "trial_user_attributes": 120_000,
            "trial_system_attributes": 120_000,
            "study_directions": 2_000,
            "version_info": 1,  # one row, by its CHECK
        },
        values={
            # Read back by the data migrations: what Optuna writes there.
            "trial_params.distribution_json": (
                """'{"name": "UniformDistribution", "attributes": {"low": 0.0, "high": 1.0}}'"""
            ),
            **{
                f"{table}.value_json": """'"v' || g || '"'"""
                for table in (
                    "study_user_attributes",
                    "study_system_attributes",
                    "trial_user_attributes",
                    "trial_system_attributes",
                )
            },
        },
    ),
    "prefect": History(
        # Its raw SQL writes format()'s %I, which psycopg reads as a placeholder:
        # asyncpg, as Prefect's own server runs it.
        start="15768c2ec702",
        sizes={
            "flow": 2_000,
            "deployment": 2_000,
            "flow_run": 150_000,
            "flow_run_state": 150_000,
            "task_run": 200_000,
            "task_run_state": 200_000,
            "events": 120_000,
            "event_resources": 120_000,
            "log": 120_000,
            # Transient (a follower lives minutes), and 7495a5013e7e adds a NOT
            # NULL column to it without a default: with rows, Prefect's own
            # upgrade fails (the lint says so: add-not-null-column).
            "automation_event_follower": 0,
        },
        driver="asyncpg",
        offline_refused=("c8d5f2a71b3e", "d4a7e1c93f52"),
    ),
    "mlflow": History(
        start="bda7b8c39065",
        sizes={
            "experiments": 2_000,
            "runs": 150_000,
            "metrics": 300_000,
            "latest_metrics": 150_000,
            "params": 150_000,
            "tags": 150_000,
            "trace_info": 120_000,
            "trace_tags": 120_000,
            "trace_request_metadata": 120_000,
            "inputs": 120_000,
        },
    ),
}


def sync(url: str) -> str:
    """The URL with a driver of its own for this module's reads and writes."""
    return url.replace("+asyncpg", "+psycopg")


def _upgrade(ini: Path, url: str, revision: str) -> None:
    from alembic import command
    from alembic.config import Config

    cfg = Config(str(ini), stdout=io.StringIO())
    cfg.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    command.upgrade(cfg, revision)


def prepare(name: str, ini: Path, url: str, scale: float) -> None:
    """Bring the empty database at ``url`` to the history's start, as the project
    itself would have, then fill its tables."""
    history = HISTORIES[name]
    engine = sa.create_engine(sync(url), poolclass=sa.NullPool)
    if name == "mlflow":
        # MLflow makes its first tables from its initial models, then upgrades.
        from mlflow.store.tracking.dbmodels.initial_models import Base

        Base.metadata.create_all(engine)
    if name == "optuna":
        # Optuna's v2.4.0.a makes the enum type "studydirection" again, which
        # PostgreSQL refuses from a database of v1.3.0.a; it skips a table
        # that is there, so the table is made first, on the type that is.
        _upgrade(ini, url, "v1.3.0.a")
        with engine.begin() as conn:
            conn.exec_driver_sql(
                "CREATE TABLE study_directions (study_direction_id SERIAL PRIMARY KEY, "
                "direction studydirection NOT NULL, study_id INTEGER NOT NULL "
                "REFERENCES studies (study_id), objective INTEGER NOT NULL, "
                "UNIQUE (study_id, objective))"
            )
    _upgrade(ini, url, history.start)
    with engine.begin() as conn:
        fill(conn, {t: n and max(1, int(n * scale)) for t, n in history.sizes.items()}, history)
    with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
        conn.exec_driver_sql("ANALYZE")
    engine.dispose()


def _columns(conn: sa.Connection, table: str) -> list[dict[str, Any]]:
    found = conn.execute(
        sa.text(
            "SELECT a.attname AS name, format_type(a.atttypid, a.atttypmod) AS type, "
            "t.typtype AS kind, a.atttypid AS oid, a.attidentity AS identity, "
            "a.attgenerated AS generated "
            "FROM pg_attribute a JOIN pg_type t ON t.oid = a.atttypid "
            "WHERE a.attrelid = CAST(:t AS regclass) AND a.attnum > 0 AND NOT a.attisdropped "
            "ORDER BY a.attnum"
        ),
        {"t": table},
    )
    return [dict(row._mapping) for row in found]


def _references(conn: sa.Connection, table: str) -> dict[str, str]:
    """column: the table it references (one-column foreign keys and composite ones)."""
    found = conn.execute(
        sa.text(
            "SELECT a.attname, c.confrelid::regclass::text FROM pg_constraint c "
            "JOIN pg_attribute a ON a.attrelid = c.conrelid AND a.attnum = ANY (c.conkey) "
            "WHERE c.contype = 'f' AND c.conrelid = CAST(:t AS regclass)"
        ),
        {"t": table},
    )
    return {column: parent for column, parent in found}


_CHECKED = re.compile(r"\(*\(?(\w+)\)?(?:::\w+(?: \w+)*)?\s*(?:=|IN)\s*.*?('[^']*'|\d+)")


def _checked(conn: sa.Connection, table: str) -> dict[str, str]:
    """column: the first literal its CHECK constraints allow (status IN ('A', ...))."""
    allowed: dict[str, str] = {}
    found = conn.execute(
        sa.text(
            "SELECT pg_get_constraintdef(oid) FROM pg_constraint "
            "WHERE contype = 'c' AND conrelid = CAST(:t AS regclass)"
        ),
        {"t": table},
    )
    for (definition,) in found:
        match = re.search(
            r"\(*\(?(\w+)\)?(?:::\w+(?: \w+)*)?\s*(?:=|IN)\s*.*?('[^']*'|\d+)", definition
        )
        if match:
            allowed.setdefault(match.group(1), match.group(2))
    return allowed


def _value(column: dict[str, Any], key: str, conn: sa.Connection, owner: str) -> str:
    """A SQL value of the column's type made from the integer expression ``key``
    (a UUID from ``owner``'s name too: each table's keys its own, as real ones are)."""
    kind, name = str(column["kind"]), str(column["type"])
    if kind == "e":
        first = conn.execute(
            sa.text("SELECT enumlabel FROM pg_enum WHERE enumtypid = :o ORDER BY enumsortorder"),
            {"o": column["oid"]},
        ).scalar()
        return f"'{first}'::{name}"
    base = name.split("(")[0]
    length = re.search(r"\((\d+)\)", name)
    if base in ("smallint",):
        return f"(({key}) % 30000)::smallint"
    if base in ("integer", "bigint", "numeric", "real", "double precision"):
        return f"({key})::{base}"
    if base == "boolean":
        return f"(({key}) % 2 = 0)"
    if base.startswith(("character", "text")):
        text = f"'v' || ({key})"
        return f"left({text}, {length.group(1)})" if length else text
    if base.startswith(("timestamp", "date")):
        return f"(timestamp '2024-01-01' + ({key}) * interval '1 second')::{base}"
    if base == "uuid":
        return f"md5('{owner}' || ({key})::text)::uuid"
    if base in ("json", "jsonb"):
        return "'{}'::" + base
    if base == "bytea":
        return "'\\x00'::bytea"
    if name.endswith("[]"):
        return "'{}'"
    return f"({key})::text::{name}"


def _ordered(conn: sa.Connection, tables: list[str]) -> list[str]:
    """Parents before children."""
    done: list[str] = []
    pending = list(tables)
    while pending:
        for table in pending:
            parents = set(_references(conn, table).values()) - {table}
            if parents <= set(done) | (parents - set(tables)):
                done.append(table)
                pending.remove(table)
                break
        else:  # a cycle: as they come
            done += pending
            break
    return done


def fill(conn: sa.Connection, sizes: dict[str, int], history: History) -> None:
    """Fill every empty user table: ``sizes`` rows where named, SMALL elsewhere; each
    row's values made from its number, a foreign key pointing at a row of its
    parent (filled first), a CHECKed column given a value its check allows."""
    tables = [
        t
        for (t,) in conn.exec_driver_sql(
            "SELECT relname FROM pg_class WHERE relkind = 'r' "
            "AND relnamespace = 'public'::regnamespace AND relname <> 'alembic_version'"
        )
    ]
    rows = {t: sizes.get(t, SMALL) for t in tables}
    # Foreign keys unchecked while filling (two tables may point at each other:
    # a run and its state); the keys made still point at rows that are there.
    conn.exec_driver_sql("SET LOCAL session_replication_role = replica")
    for table in _ordered(conn, tables):
        made = conn.exec_driver_sql(f'SELECT COUNT(*) FROM "{table}"').scalar_one()
        if made:  # rows the history wrote itself (a version row, a lookup table)
            rows[table] = made
            continue
        references = _references(conn, table)
        checked = _checked(conn, table)
        names, values = [], []
        for column in _columns(conn, table):
            if column["generated"]:
                continue
            name = column["name"]
            parent = references.get(name)
            if f"{table}.{name}" in history.values:
                value = history.values[f"{table}.{name}"]
            elif name in checked:
                value = f"{checked[name]}::{column['type']}"
            elif parent is not None and parent != table and not rows.get(parent, 1):
                value = "NULL"  # an empty parent: nothing to point at
            elif parent is not None and parent != table:
                key = f"1 + (g - 1) % {rows.get(parent, SMALL)}"
                value = _value(column, key, conn, parent)
            else:
                value = _value(column, "g", conn, table)
            names.append(f'"{name}"')
            values.append(value)
        insert = (
            f'INSERT INTO "{table}" ({", ".join(names)}) OVERRIDING SYSTEM VALUE '
            f"SELECT {', '.join(values)} FROM generate_series(1, {rows[table]}) AS g"
        )
        conn.exec_driver_sql(insert.replace("%", "%%"))
    # Sequences past the rows made, for the inserts of data migrations.
    for table, column, sequence in conn.exec_driver_sql(
        "SELECT c.relname, a.attname, pg_get_serial_sequence(c.relname, a.attname) "
        "FROM pg_class c JOIN pg_attribute a ON a.attrelid = c.oid "
        "WHERE c.relkind = 'r' AND c.relnamespace = 'public'::regnamespace AND a.attnum > 0 "
        "AND NOT a.attisdropped AND pg_get_serial_sequence(c.relname, a.attname) IS NOT NULL"
    ).all():
        conn.exec_driver_sql(
            f"SELECT setval('{sequence}', (SELECT COALESCE(MAX(\"{column}\"), 0) + 1 "
            f'FROM "{table}"))'
        )


# ------------------------------------------------------------------ judging

LOCKS = {"rewrite", "index", "validate"}
"""What a finding about a lock or a scan is borne out by."""
OLD_VERSION = {"drop-column", "drop-table", "not-null-column", "drop-not-null"}
"""What a finding about the old version is borne out by."""


@dataclass(frozen=True)
class Judged:
    """A lint report against the events of the upgrade."""

    flagged: list[dict[str, Any]]
    true: list[dict[str, Any]]
    """The findings an event of their kind, on their table and revision, bears out."""
    false: list[dict[str, Any]]
    big: list[dict[str, Any]]
    """The rewrites and index builds on tables of ``rows`` rows or more."""
    missed: list[dict[str, Any]]
    """Those of ``big`` that no finding names."""


def judge(report: dict[str, Any], events: list[dict[str, Any]], rows: int) -> Judged:
    """``report`` (``lint --json``) against ``events`` (:func:`observe`)."""
    flagged = [f for f in report["findings"] if f["verdict"] == "flagged"]

    def borne_out(finding: dict[str, Any]) -> bool:
        kinds = OLD_VERSION if finding["old_version"] else LOCKS
        return any(
            e["revision"] == finding["revision"]
            and e["table"] == finding["table"]
            and e["kind"] in kinds
            for e in events
        )

    true = [f for f in flagged if borne_out(f)]
    big = [e for e in events if e["kind"] in ("rewrite", "index") and e["rows"] >= rows]
    missed = [
        e
        for e in big
        if not any(f["revision"] == e["revision"] and f["table"] == e["table"] for f in flagged)
    ]
    false = [f for f in flagged if f not in true]
    return Judged(flagged, true, false, big, missed)


# ------------------------------------------------------------------ observing


def _snapshot(conn: sa.Connection) -> dict[str, Any]:
    tables: dict[str, Any] = {}
    for relname, filenode in conn.exec_driver_sql(
        "SELECT relname, relfilenode FROM pg_class "
        "WHERE relkind IN ('r', 'p') AND relnamespace = 'public'::regnamespace"
    ).all():
        rows = conn.exec_driver_sql(f'SELECT COUNT(*) FROM "{relname}"').scalar_one()
        tables[relname] = {"filenode": filenode, "rows": rows, "columns": {}, "indexes": set()}
    for relname, column, notnull, hasdef in conn.exec_driver_sql(
        "SELECT c.relname, a.attname, a.attnotnull, a.atthasdef FROM pg_attribute a "
        "JOIN pg_class c ON c.oid = a.attrelid WHERE c.relkind IN ('r', 'p') "
        "AND c.relnamespace = 'public'::regnamespace AND a.attnum > 0 AND NOT a.attisdropped"
    ):
        tables[relname]["columns"][column] = (notnull, hasdef)
    for relname, index in conn.exec_driver_sql(
        "SELECT t.relname, i.relname FROM pg_index x JOIN pg_class t ON t.oid = x.indrelid "
        "JOIN pg_class i ON i.oid = x.indexrelid WHERE t.relnamespace = 'public'::regnamespace"
    ):
        tables[relname]["indexes"].add(index)
    return tables


_ALTERED = re.compile(
    r'^\s*ALTER TABLE\s+(?:ONLY\s+)?(?:"?\w+"?\.)?"?(\w+)"?\s+(.*)$', re.I | re.S
)


def _validated(statement: str) -> str | None:
    """The table a statement validates by a scan under its lock, or None."""
    match = _ALTERED.match(statement)
    if match is None:
        return None
    table, rest = match.group(1), match.group(2).upper()
    if "NOT VALID" in rest:
        return None
    if "SET NOT NULL" in rest or re.search(
        r"ADD\s+(CONSTRAINT\s+\S+\s+)?(CHECK|FOREIGN KEY)", rest
    ):
        return table
    return None


def _events(
    revision: str, before: dict[str, Any], after: dict[str, Any], statements: list[str]
) -> list[dict[str, Any]]:
    found: list[dict[str, Any]] = []

    def event(kind: str, table: str, target: str | None = None) -> None:
        found.append(
            {
                "revision": revision,
                "kind": kind,
                "table": table,
                "target": target,
                "rows": before[table]["rows"],
            }
        )

    for table, was in sorted(before.items()):
        now = after.get(table)
        if now is None:
            event("drop-table", table)
            continue
        if now["filenode"] != was["filenode"]:
            event("rewrite", table)
        for index in sorted(now["indexes"] - was["indexes"]):
            # Built CONCURRENTLY: no lock that stops writes, no finding due.
            concurrently = any("CONCURRENTLY" in s.upper() and index in s for s in statements)
            event("index-concurrently" if concurrently else "index", table, index)
        for column in sorted(set(was["columns"]) - set(now["columns"])):
            event("drop-column", table, column)
        for column in sorted(set(now["columns"]) - set(was["columns"])):
            notnull, hasdef = now["columns"][column]
            if notnull and not hasdef:
                event("not-null-column", table, column)
        for column in sorted(set(now["columns"]) & set(was["columns"])):
            if was["columns"][column][0] and not now["columns"][column][0]:
                event("drop-not-null", table, column)  # the old version reads no NULL
    for table in sorted({t for s in statements if (t := _validated(s)) in before}):
        event("validate", table)
    return found


def observe(ini: Path, url: str) -> list[dict[str, Any]]:
    """Upgrade to head one revision at a time; the events of each."""
    import io as _io

    from alembic.config import Config
    from alembic.script import ScriptDirectory

    cfg = Config(str(ini), stdout=_io.StringIO())
    script = ScriptDirectory.from_config(cfg)
    engine = sa.create_engine(sync(url), poolclass=sa.NullPool)
    with engine.connect() as conn:
        current = conn.exec_driver_sql("SELECT version_num FROM alembic_version").scalar_one()
    steps = [r.revision for r in reversed(list(script.iterate_revisions("heads", current)))]
    statements: list[str] = []

    def record(conn: Any, cursor: Any, statement: str, *rest: Any) -> None:
        statements.append(statement)

    sa.event.listen(sa.engine.Engine, "before_cursor_execute", record)
    events: list[dict[str, Any]] = []
    for revision in steps:
        with engine.connect() as conn:
            before = _snapshot(conn)
        del statements[:]
        _upgrade(ini, url, revision)
        with engine.connect() as conn:
            after = _snapshot(conn)
        events += _events(revision, before, after, list(statements))
    engine.dispose()
    return events


if __name__ == "__main__":
    command, name, ini_path, database = sys.argv[1:5]
    if command == "prepare":
        prepare(name, Path(ini_path), database, float(sys.argv[5]))
    else:
        print(json.dumps(observe(Path(ini_path), database)))
