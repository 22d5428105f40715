"""The lint: unsafe pending operations, weighed by the live tables, at start-up and in CI.

Real databases throughout. The corpus below is one revision per case on
top of a base revision that creates the tables; each case is linted on the
live database (at the base revision, every table taken as big with
``Lint(rows=0)``), and the rules that fire are compared with the ones the
docs promise for that dialect.
"""

from __future__ import annotations

import json
import logging
import re
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import anyio
import pytest
import sqlalchemy as sa
from sqlalchemy.engine import URL

from automigrator import (
    AutoMigrator,
    Ddl,
    Event,
    Lint,
    LogAndContinue,
    MigrationState,
    UnsafeMigrationError,
    lint,
)
from automigrator.policies import Chain, Fail, PurgeAndRetry
from automigrator.testing import assert_migrations_are_safe
from tests.conftest import revisions, rows, tables
from tests.helpers import cli
from tests.project import Rev, make_project

BASE = Rev(
    "r1",
    None,
    "items and others",
    """
    op.create_table("others", sa.Column("id", sa.Integer, primary_key=True))
    op.create_table(
        "items",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("name", sa.String(50)),
        sa.Column("qty", sa.Integer),
        sa.Column("other_id", sa.Integer),
    )
    """,
)

ALL = frozenset({"sqlite", "postgresql", "mariadb"})
PG = frozenset({"postgresql"})


def batch(*lines: str) -> str:
    return 'with op.batch_alter_table("items") as b:\n' + "".join(f"    {x}\n" for x in lines)


# (case, r2's body, the rules it must raise, on which dialects)
UNSAFE: list[tuple[str, str, str, frozenset[str]]] = [
    ("plain index", 'op.create_index("ix_name", "items", ["name"])', "index-not-concurrent", PG),
    (
        "not null column, no default",
        'op.add_column("items", sa.Column("code", sa.String(10), nullable=False))',
        "add-not-null-column",
        ALL,
    ),
    (
        "type change",
        batch('b.alter_column("qty", type_=sa.BigInteger, existing_type=sa.Integer)'),
        "change-column-type",
        ALL,
    ),
    (
        "varchar widened",  # no rewrite on PostgreSQL: the values are already valid
        batch('b.alter_column("name", type_=sa.String(100), existing_type=sa.String(50))'),
        "change-column-type",
        ALL - PG,
    ),
    (
        "foreign key",
        batch('b.create_foreign_key("fk_other", "others", ["other_id"], ["id"])'),
        "add-constraint",
        PG,
    ),
    ("check", batch('b.create_check_constraint("ck_qty", "qty >= 0")'), "add-constraint", PG),
    ("unique", batch('b.create_unique_constraint("uq_name", ["name"])'), "add-constraint", PG),
    (
        "set not null",
        batch(
            'b.alter_column("name", nullable=False, existing_type=sa.String(50), '
            "existing_nullable=True)"
        ),
        "set-not-null",
        frozenset({"postgresql", "mariadb"}),
    ),
    ("drop column", batch('b.drop_column("qty")'), "drop-column", ALL),
    ("drop table", 'op.drop_table("others")', "drop-table", ALL),
    (
        "rename column",
        batch('b.alter_column("qty", new_column_name="amount", existing_type=sa.Integer)'),
        "rename-column",
        ALL,
    ),
    ("rename table", 'op.rename_table("others", "partners")', "rename-table", ALL),
]
SAFE: list[tuple[str, str]] = [
    (
        "concurrent index",
        "with op.get_context().autocommit_block():\n"
        '    op.create_index("ix_name", "items", ["name"], postgresql_concurrently=True)',
    ),
    ("nullable column", 'op.add_column("items", sa.Column("code", sa.String(10)))'),
    (
        "not null column with a server default",
        'op.add_column("items", sa.Column("code", sa.String(10), nullable=False, '
        'server_default="x"))',
    ),
    (
        "foreign key not valid",
        batch(
            'b.create_foreign_key("fk_other", "others", ["other_id"], ["id"], '
            "postgresql_not_valid=True)"
        ),
    ),
    (
        "a table made in the same plan",
        """
op.create_table("fresh", sa.Column("id", sa.Integer, primary_key=True))
op.create_index("ix_fresh", "fresh", ["id"])
op.add_column("fresh", sa.Column("code", sa.String(10), nullable=False))
op.drop_table("fresh")
""",
    ),
    (
        # The template's false alarm: a column added, then renamed, retyped
        # and dropped within the plan; no version of the app ever used it.
        "a column made in the same plan",
        """
op.add_column("items", sa.Column("tmp", sa.String(10)))
op.alter_column("items", "tmp", new_column_name="tmp2", existing_type=sa.String(10))
op.alter_column("items", "tmp2", type_=sa.Text(), existing_type=sa.String(10))
op.drop_column("items", "tmp2")
""",
    ),
]


def dialect(url: URL) -> str:
    name = url.get_backend_name()
    return "mariadb" if name == "mysql" else name


def project(root: Path, body: str, *more: Rev) -> Path:
    return make_project(root, (BASE, Rev("r2", "r1", "under test", body), *more))


def at_base(ini: Path, url: URL) -> None:
    status = anyio.run(AutoMigrator(ini, url=url, target="r1").run)
    assert status.state is MigrationState.READY


def flagged_rules(ini: Path, url: URL, **options: Any) -> set[str]:
    report = anyio.run(lambda: lint(AutoMigrator(ini, url=url, lint=Lint(rows=0), **options)))
    return {f.rule for f in report.flagged}


def test_each_rule_is_caught_where_it_applies_and_each_safe_form_passes(
    tmp_path: Path, db_url: URL
) -> None:
    at_base(make_project(tmp_path / "base", (BASE,)), db_url)
    found, wanted = {}, {}
    for number, (case, body, rule, dialects) in enumerate(UNSAFE):
        ini = project(tmp_path / f"unsafe{number}", body)
        found[case] = flagged_rules(ini, db_url)
        wanted[case] = {rule} if dialect(db_url) in dialects else set()
    for number, (case, body) in enumerate(SAFE):
        found[case] = flagged_rules(project(tmp_path / f"safe{number}", body), db_url)
        wanted[case] = set()

    assert found == wanted
    assert revisions(db_url) == {"r1"}  # linting ran nothing


def test_a_revision_without_a_lock_timeout_is_flagged_only_when_none_is_set(
    tmp_path: Path, db_url: URL
) -> None:
    at_base(make_project(tmp_path / "base", (BASE,)), db_url)
    add = 'op.add_column("items", sa.Column("code", sa.String(10)))'
    ini = project(tmp_path / "plain", add)
    own = project(tmp_path / "own", f"op.execute(\"SET lock_timeout = '2s'\")\n{add}")

    unset = flagged_rules(ini, db_url, ddl=Ddl(lock_timeout=None))
    kept = flagged_rules(ini, db_url)  # automigrator sets one (2 s) for each revision
    in_revision = flagged_rules(own, db_url, ddl=Ddl(lock_timeout=None))

    takes_table_locks = dialect(db_url) != "sqlite"
    assert unset == ({"no-lock-timeout"} if takes_table_locks else set())
    assert kept == set()
    if dialect(db_url) == "postgresql":
        assert in_revision == set()


def test_an_allow_comment_lets_the_rule_pass_and_the_lint_says_so(
    tmp_path: Path, db_url: URL
) -> None:
    at_base(make_project(tmp_path / "base", (BASE,)), db_url)
    # The batch block first: SQLite cannot render one offline (it rebuilds
    # the table), and the operations after it must still be seen.
    ini = project(
        tmp_path / "p",
        "# automigrator: allow=drop-column, drop-table\n"
        + batch('b.drop_column("qty")')
        + 'op.drop_table("others")\n'
        + 'op.add_column("items", sa.Column("code", sa.String(10), nullable=False))',
    )

    report = anyio.run(lambda: lint(AutoMigrator(ini, url=db_url)))

    verdicts = {f.rule: f.verdict for f in report.findings}
    assert verdicts == {
        "drop-column": "allowed",
        "drop-table": "allowed",
        "add-not-null-column": "flagged",
    }
    assert [f.rule for f in report.flagged] == ["add-not-null-column"]
    assert "allowed by its file" in str(report.findings[0])


# -- live sizes --------------------------------------------------------------------

FILL = {
    "postgresql": "INSERT INTO items (name, qty) SELECT 'n' || g, g "
    "FROM generate_series(1, {n}) AS g",
    "mariadb": "INSERT INTO items (name, qty) SELECT CONCAT('n', seq), seq FROM seq_1_to_{n}",
    "sqlite": "WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c WHERE x < {n}) "
    "INSERT INTO items (name, qty) SELECT 'n' || x, x FROM c",
}
LOCK = {
    "postgresql": "LOCK TABLE items IN ACCESS EXCLUSIVE MODE",
    "mariadb": "LOCK TABLES items WRITE",
}
# Guards against a hang only: a size query that waited for the lock would
# wait as long as the holder (the test) keeps it.
HANG_GUARD = 60
ANALYZE = {"postgresql": "ANALYZE items", "mariadb": "ANALYZE TABLE items", "sqlite": None}
# The weighed rule each dialect has for an ordinary revision.
WEIGHED = {
    "postgresql": 'op.create_index("ix_name", "items", ["name"])',
    "mariadb": batch('b.alter_column("qty", type_=sa.BigInteger, existing_type=sa.Integer)'),
    "sqlite": batch('b.alter_column("qty", type_=sa.BigInteger, existing_type=sa.Integer)'),
}


def fill(url: URL, count: int) -> None:
    engine = sa.create_engine(url, poolclass=sa.NullPool)
    with engine.begin() as conn:
        conn.exec_driver_sql("DELETE FROM items")
        conn.exec_driver_sql(FILL[dialect(url)].format(n=count))
    analyze = ANALYZE[dialect(url)]
    if analyze:  # a live table has statistics; a table just filled has not yet
        with engine.connect() as conn:
            result = conn.exec_driver_sql(analyze)
            if result.returns_rows:  # MariaDB answers with a table
                result.all()
            conn.commit()
    engine.dispose()


def test_the_same_revision_is_refused_on_a_big_table_and_applied_on_a_small_one(
    tmp_path: Path, db_url: URL
) -> None:
    ini = project(tmp_path / "p", WEIGHED[dialect(db_url)])
    at_base(ini, db_url)
    fill(db_url, 200_000)
    refusing = AutoMigrator(ini, url=db_url, lint="refuse")

    with pytest.raises(UnsafeMigrationError) as caught:
        anyio.run(refusing.run)

    message = str(caught.value)
    figure = re.search(r"\((?:about |more than )?([\d,]+) rows\)", message)
    assert figure is not None, message
    assert int(figure.group(1).replace(",", "")) >= 100_000
    assert "items" in message
    assert "r2" in message
    assert "allow=" in message
    assert str(tmp_path / "p") in message
    assert revisions(db_url) == {"r1"}  # refused before any DDL
    assert refusing.status.error_kind == "unsafe"
    assert refusing.status.lint[0].table == "items"

    fill(db_url, 10)
    status = anyio.run(AutoMigrator(ini, url=db_url, lint="refuse").run)

    assert status.state is MigrationState.READY
    assert revisions(db_url) == {"r2"}
    assert status.lint == ()


def test_a_locked_table_is_not_waited_for_and_counts_as_big(
    tmp_path: Path, server_db: URL
) -> None:
    url, server = server_db, dialect(server_db)
    ini = project(tmp_path / "p", WEIGHED[server])
    at_base(ini, url)
    fill(url, 10)  # small: it would pass, if its size could be read
    holder = sa.create_engine(url, poolclass=sa.NullPool).connect()
    holder.exec_driver_sql(LOCK[server])  # another session holds the table
    reports: list[Any] = []
    linting = threading.Thread(
        target=lambda: reports.append(anyio.run(lambda: lint(AutoMigrator(ini, url=url)))),
        daemon=True,
    )
    try:
        linting.start()
        linting.join(HANG_GUARD)
        finished = not linting.is_alive()
    finally:
        if server == "mariadb":
            holder.exec_driver_sql("UNLOCK TABLES")
        holder.rollback()
        holder.close()
    linting.join()

    assert finished  # it did not wait for the lock
    (finding,) = reports[0].flagged
    assert finding.table == "items"
    assert finding.rows is None
    assert "size unknown: taken as big" in str(finding)


def test_warn_logs_reports_and_announces_then_migrates(
    tmp_path: Path, db_url: URL, caplog: pytest.LogCaptureFixture
) -> None:
    ini = project(tmp_path / "p", batch('b.drop_column("qty")'))
    at_base(ini, db_url)
    migrator = AutoMigrator(ini, url=db_url)  # lint="warn", the default
    events: list[Event] = []
    migrator.subscribe(events.append)

    with caplog.at_level(logging.WARNING, logger="automigrator"):
        status = anyio.run(migrator.run)

    assert status.state is MigrationState.READY
    assert revisions(db_url) == {"r2"}
    assert [(f.revision, f.rule, f.table) for f in status.lint] == [("r2", "drop-column", "items")]
    assert status.to_dict()["lint"] == [
        {"revision": "r2", "rule": "drop-column", "table": "items", "rows": None, "rows_are": None}
    ]
    lint_events = [e for e in events if e.name == "lint"]
    assert len(lint_events) == 1
    assert lint_events[0].status.lint == status.lint
    assert any("Lint: revision r2: drop-column on items" in r.getMessage() for r in caplog.records)


def test_lint_off_says_nothing(tmp_path: Path, sqlite_url: URL, caplog: Any) -> None:
    ini = project(tmp_path / "p", batch('b.drop_column("qty")'))
    at_base(ini, sqlite_url)

    with caplog.at_level(logging.INFO, logger="automigrator"):
        status = anyio.run(AutoMigrator(ini, url=sqlite_url, lint="off").run)

    assert status.state is MigrationState.READY
    assert status.lint == ()
    assert not [r for r in caplog.records if "Lint" in r.getMessage()]


def test_a_refusal_goes_through_the_policy_and_is_never_purged_for(
    tmp_path: Path, sqlite_url: URL
) -> None:
    ini = project(tmp_path / "p", batch('b.drop_column("qty")'))
    at_base(ini, sqlite_url)
    fill(sqlite_url, 3)

    degraded = anyio.run(
        AutoMigrator(ini, url=sqlite_url, lint="refuse", on_failure=LogAndContinue()).run
    )
    purging = AutoMigrator(
        ini, url=sqlite_url, lint="refuse", on_failure=Chain(PurgeAndRetry(), Fail())
    )
    with pytest.raises(UnsafeMigrationError):
        anyio.run(purging.run)

    assert degraded.state is MigrationState.DEGRADED
    assert degraded.error_kind == "unsafe"
    assert revisions(sqlite_url) == {"r1"}
    assert rows(sqlite_url, "SELECT COUNT(*) FROM items") == [(3,)]  # nothing purged
    assert not list(Path(sqlite_url.database or "").parent.glob("*backup*"))


def test_an_unversioned_database_is_refused_before_its_baseline_is_stamped(
    tmp_path: Path, sqlite_url: URL
) -> None:
    ini = project(tmp_path / "p", 'op.drop_table("others")')
    at_base(ini, sqlite_url)
    engine = sa.create_engine(sqlite_url, poolclass=sa.NullPool)
    with engine.begin() as conn:
        conn.exec_driver_sql("DROP TABLE alembic_version")

    with pytest.raises(UnsafeMigrationError):
        anyio.run(AutoMigrator(ini, url=sqlite_url, baseline="r1", lint="refuse").run)

    # No version table was made (the ledger is the earlier run's, at r1).
    assert tables(sqlite_url) == {"items", "others", "automigrator_history"}


AT_HEAD = """
import sys, anyio, sqlalchemy as sa
from automigrator import AutoMigrator, Lint
statements = []
sa.event.listen(sa.engine.Engine, "before_cursor_execute", lambda *a: statements.append(a[2]))
migrator = AutoMigrator(sys.argv[1], url=sys.argv[2], lint=Lint(mode="refuse", rows=0))
status = anyio.run(migrator.run)
print(status.state.value, len(statements), "alembic" in sys.modules)
"""


def test_an_at_head_start_with_the_strictest_lint_is_two_queries_without_alembic(
    tmp_path: Path, db_url: URL
) -> None:
    ini = project(tmp_path / "p", batch('b.drop_column("qty")'))
    anyio.run(AutoMigrator(ini, url=db_url).run)  # to head (warned, applied)
    argv = [sys.executable, "-c", AT_HEAD, str(ini), db_url.render_as_string(False)]

    # A new process at head: the lint has nothing to look at, so it looks at
    # nothing (the version table's read and the ledger's, as any start at head).
    out = subprocess.run(argv, capture_output=True, text=True, check=True).stdout.split()

    assert out == ["ready", "2", "False"]


# -- squawk (PostgreSQL) -------------------------------------------------------------

RAW = """
op.execute("ALTER TABLE items ADD COLUMN code char(10) NOT NULL")
op.execute("CREATE TABLE fresh (id integer)")
op.execute("CREATE INDEX ix_fresh ON fresh (id)")
"""


def test_squawk_judges_raw_sql_on_postgresql_and_the_operation_rules_work_without_it(
    tmp_path: Path, pg_url: URL, monkeypatch: pytest.MonkeyPatch
) -> None:
    ini = project(tmp_path / "p", RAW)
    at_base(ini, pg_url)

    big = Lint(rows=0)  # every table counts as big
    with_squawk = anyio.run(lambda: lint(AutoMigrator(ini, url=pg_url, lint=big)))
    small = anyio.run(lambda: lint(AutoMigrator(ini, url=pg_url)))
    monkeypatch.setenv("AUTOMIGRATOR_SQUAWK", "off")
    without = anyio.run(lambda: lint(AutoMigrator(ini, url=pg_url)))

    assert with_squawk.squawk is not None
    found = {(f.rule, f.table, f.source) for f in with_squawk.flagged}
    assert ("add-not-null-column", "items", "squawk") in found
    assert ("squawk:ban-char-field", "items", "squawk") in found
    # squawk's own rules are weighed by the live size, as ours are.
    verdicts = {f.rule: f.verdict for f in small.findings}
    assert verdicts["squawk:ban-char-field"] == "small"
    assert verdicts["add-not-null-column"] == "flagged"  # about the old version: any size
    assert not [f for f in with_squawk.findings if f.table == "fresh"]  # made in the plan
    assert without.squawk is None
    assert without.findings == ()


def test_squawk_and_the_operation_rules_report_one_problem_once(
    tmp_path: Path, pg_url: URL
) -> None:
    ini = project(tmp_path / "p", 'op.create_index("ix_name", "items", ["name"])')
    at_base(ini, pg_url)

    report = anyio.run(lambda: lint(AutoMigrator(ini, url=pg_url, lint=Lint(rows=0))))

    assert report.squawk is not None
    assert [(f.rule, f.source) for f in report.flagged] == [
        ("index-not-concurrent", "automigrator")
    ]


def test_the_status_says_a_count_that_stopped_at_the_threshold_is_a_floor(
    tmp_path: Path, sqlite_url: URL
) -> None:
    # SQLite keeps no estimate: the count stops at Lint(rows=), and a bigger
    # table's "rows" is that floor (it read as the table's size).
    ini = project(tmp_path / "p", WEIGHED["sqlite"])
    at_base(ini, sqlite_url)
    fill(sqlite_url, 30)
    migrator = AutoMigrator(ini, url=sqlite_url, lint=Lint(rows=10))

    status = anyio.run(migrator.run)

    [finding] = status.to_dict()["lint"]
    assert finding["rule"] == "change-column-type"
    assert (finding["rows"], finding["rows_are"]) == (10, "more_than")


def test_a_squawk_that_cannot_run_is_said_and_the_operation_rules_still_apply(
    tmp_path: Path, pg_url: URL, monkeypatch: pytest.MonkeyPatch, caplog: Any
) -> None:
    ini = project(tmp_path / "p", 'op.create_index("ix_name", "items", ["name"])')
    at_base(ini, pg_url)
    monkeypatch.setenv("AUTOMIGRATOR_SQUAWK", str(tmp_path / "no-such-squawk"))

    with caplog.at_level(logging.WARNING, logger="automigrator"):
        report = anyio.run(lambda: lint(AutoMigrator(ini, url=pg_url, lint=Lint(rows=0))))

    assert report.squawk is None
    assert [f.rule for f in report.flagged] == ["index-not-concurrent"]
    assert any("squawk was not used" in r.getMessage() for r in caplog.records)


# -- CI: the command line and the pytest helper ---------------------------------------------


def test_lint_command_exits_15_on_findings_and_0_without(tmp_path: Path, db_url: URL) -> None:
    unsafe = project(tmp_path / "unsafe", batch('b.drop_column("qty")'))
    safe = project(tmp_path / "safe", 'op.add_column("items", sa.Column("code", sa.Text))')
    at_base(unsafe, db_url)

    flagged = cli(unsafe, db_url, "lint")
    as_json = cli(unsafe, db_url, "lint", "--json")
    clean = cli(safe, db_url, "lint")

    assert flagged.returncode == 15, flagged.stderr
    assert "UNSAFE: revision r2: drop-column on items" in flagged.stdout
    assert str(tmp_path / "unsafe") in flagged.stdout
    data = json.loads(as_json.stdout)
    assert data["flagged"] == 1
    assert data["findings"][0]["rule"] == "drop-column"
    assert clean.returncode == 0, clean.stderr
    assert "0 finding(s)" in clean.stdout
    assert revisions(db_url) == {"r1"}


def test_upgrade_with_lint_refuse_exits_15_and_changes_nothing(
    tmp_path: Path, db_url: URL
) -> None:
    ini = project(tmp_path / "p", batch('b.drop_column("qty")'))
    at_base(ini, db_url)

    refused = cli(ini, db_url, "upgrade", "--lint", "refuse")
    after_refusal = revisions(db_url)
    warned = cli(ini, db_url, "upgrade")

    assert refused.returncode == 15, refused.stderr
    assert "allow=drop-column" in refused.stderr
    assert after_refusal == {"r1"}
    assert warned.returncode == 0, warned.stderr
    assert "Lint: revision r2: drop-column on items" in warned.stderr
    assert revisions(db_url) == {"r2"}


def test_lint_since_needs_no_database(tmp_path: Path) -> None:
    ini = project(tmp_path / "p", batch('b.drop_column("qty")'))
    nowhere = sa.make_url("postgresql+psycopg://app:s3cret@127.0.0.1:9/app")

    out = cli(ini, nowhere, "lint", "--since", "base")

    assert out.returncode == 15, out.stderr
    assert "drop-column on items" in out.stdout
    assert "s3cret" not in out.stdout + out.stderr


def test_the_pytest_helper_fails_on_an_unsafe_revision_and_passes_the_rest(
    tmp_path: Path, sqlite_url: URL
) -> None:
    safe_next = Rev("r3", "r2", "safe", 'op.add_column("items", sa.Column("code", sa.Text))')
    ini = project(tmp_path / "p", 'op.drop_table("others")', safe_next)
    migrator = AutoMigrator(ini, url=sqlite_url)

    with pytest.raises(AssertionError) as caught:
        assert_migrations_are_safe(migrator)
    report = assert_migrations_are_safe(migrator, since="r2")

    assert "revision r2: drop-table on others" in str(caught.value)
    assert report.revisions == ("r3",)
    assert report.findings == ()
    assert tables(sqlite_url) == set()  # no database needed, none touched


def test_a_new_install_is_not_linted_as_a_start_is_not(tmp_path: Path, sqlite_url: URL) -> None:
    # MLflow's shape: the first revision alters a table that create_all()
    # made. On an empty database nothing old serves and no table is big.
    first = Rev("r1", None, "alter an app table", 'op.drop_column("users", "email")')
    ini = make_project(tmp_path / "p", (first,))
    report = anyio.run(lambda: lint(AutoMigrator(ini, url=sqlite_url)))
    assert report.findings == ()
    assert report.revisions == ()
    done = cli(ini, sqlite_url, "lint")
    assert done.returncode == 0, done.stdout


def test_a_finding_names_the_column_and_the_line_that_did_it(
    tmp_path: Path, sqlite_url: URL
) -> None:
    # Three findings on one table must not read alike: each names what it
    # acts on and where in the file.
    body = """
op.drop_column("items", "qty")
op.drop_column("items", "name")
"""
    ini = project(tmp_path / "p", body)
    at_base(ini, sqlite_url)
    path = ini.parent / "migrations" / "versions" / "r2.py"
    lines = path.read_text().splitlines()
    where = {c: lines.index(f'    op.drop_column("items", "{c}")') + 1 for c in ("qty", "name")}

    report = anyio.run(lambda: lint(AutoMigrator(ini, url=sqlite_url)))
    assert [(f.target, f.line) for f in report.flagged] == [
        ("qty", where["qty"]),
        ("name", where["name"]),
    ]
    out = cli(ini, sqlite_url, "lint")
    assert "drop-column on items (qty)" in out.stdout
    assert f"[{path}:{where['name']}]" in out.stdout


def test_a_type_change_without_a_rewrite_is_judged_on_the_live_type(
    tmp_path: Path, pg_url: URL
) -> None:
    # Optuna's v2.6.0.a and v3.0.0.b: no existing_type in the revision. The
    # live types say varchar(50) to text, and Float to FLOAT(53) (both double
    # precision) rewrite nothing on PostgreSQL; integer to bigint does.
    body = batch(
        'b.alter_column("name", type_=sa.Text)',
        'b.alter_column("qty", type_=sa.BigInteger)',
        'b.alter_column("ratio", type_=sa.Float(precision=53))',
    )
    ratio = Rev("r0", "r1", "ratio", 'op.add_column("items", sa.Column("ratio", sa.Float))')
    ini = make_project(tmp_path / "p", (BASE, ratio, Rev("r2", "r0", "retype", body)))
    anyio.run(AutoMigrator(ini, url=pg_url, target="r0").run)

    report = anyio.run(lambda: lint(AutoMigrator(ini, url=pg_url, lint=Lint(rows=0))))

    assert [(f.rule, f.target) for f in report.flagged] == [("change-column-type", "qty")]


INDEXED = Rev(
    "r1",
    None,
    "items, indexed, with a foreign key",
    """
    op.create_table("others", sa.Column("id", sa.Integer, primary_key=True))
    op.create_table(
        "items",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("name", sa.String(50), index=True),
        sa.Column("qty", sa.Integer, index=True),
        sa.Column("other_id", sa.Integer, sa.ForeignKey("others.id", name="fk_other")),
    )
    """,
)


def test_squawk_s_drop_index_is_weighed_by_the_index_s_table(tmp_path: Path, pg_url: URL) -> None:
    # DROP INDEX names no table: the plan says it (op.drop_index, an index it
    # made), else the live database (raw SQL); an index of a table the plan
    # made is exempt, one of a small table passes.
    body = """
op.drop_index("ix_items_name", table_name="items")
op.execute("DROP INDEX ix_items_qty")
op.create_table("fresh", sa.Column("id", sa.Integer, primary_key=True))
op.create_index("ix_fresh", "fresh", ["id"])
op.drop_index("ix_fresh")
"""
    ini = make_project(tmp_path / "p", (INDEXED, Rev("r2", "r1", "drops", body)))
    anyio.run(AutoMigrator(ini, url=pg_url, target="r1").run)

    # Its one cost is a brief lock: weighed where no lock timeout bounds it.
    unbounded = Ddl(lock_timeout=None)
    big = anyio.run(lambda: lint(AutoMigrator(ini, url=pg_url, lint=Lint(rows=0), ddl=unbounded)))
    small = anyio.run(
        lambda: lint(AutoMigrator(ini, url=pg_url, lint=Lint(rows=10), ddl=unbounded))
    )
    bounded = anyio.run(lambda: lint(AutoMigrator(ini, url=pg_url, lint=Lint(rows=0))))

    rule = "squawk:require-concurrent-index-deletion"
    drops = [f for f in big.findings if f.rule == rule]
    assert [(f.table, f.verdict) for f in drops] == [("items", "flagged"), ("items", "flagged")]
    assert {f.verdict for f in small.findings if f.rule == rule} == {"small"}
    assert not [f for f in bounded.findings if f.rule == rule]


def test_a_constraint_dropped_and_made_again_in_one_revision_is_judged_once(
    tmp_path: Path, pg_url: URL
) -> None:
    # MLflow's 6f8d9c3b2a1e: a foreign key made again with ON DELETE CASCADE.
    # Its new form scans the table (add-constraint); the drop before it, in
    # the same transaction, is no finding of its own.
    body = batch(
        'b.drop_constraint("fk_other", type_="foreignkey")',
        'b.create_foreign_key("fk_other", "others", ["other_id"], ["id"], ondelete="CASCADE")',
    )
    ini = make_project(tmp_path / "p", (INDEXED, Rev("r2", "r1", "cascade", body)))
    anyio.run(AutoMigrator(ini, url=pg_url, target="r1").run)
    unbounded = Ddl(lock_timeout=None)  # where squawk's ban-drop-constraint counts

    report = anyio.run(
        lambda: lint(AutoMigrator(ini, url=pg_url, lint=Lint(rows=0), ddl=unbounded))
    )

    assert report.squawk is not None
    assert [(f.rule, f.table) for f in report.flagged] == [
        ("add-constraint", "items"),
        ("no-lock-timeout", "items"),
    ]
