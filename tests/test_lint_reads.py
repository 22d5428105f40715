"""The lint (and ``plan --sql``) through a revision that reads the database.

A revision that reads (``op.get_bind().execute(...)``, ``sa.inspect(bind)``)
is rendered with its reads answered by the live database, read-only: what it
does after the read is linted, what it writes through the bind is rendered and
never run, and a read is bounded. Real databases throughout.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import anyio
import pytest
import sqlalchemy as sa
from sqlalchemy.engine import URL

from automigrator import AutoMigrator, Lint, LintReport, MigrationState, UnsafeMigrationError, lint
from tests.conftest import revisions, rows
from tests.helpers import cli
from tests.project import Rev, make_project
from tests.test_lint import BASE, at_base, project

# Reads how many rows there are, and which columns, then drops one: only the
# live database answers the reads; the drop is what the lint must see.
READ_THEN_DROP = """
bind = op.get_bind()
count = bind.execute(sa.text("SELECT COUNT(*) FROM items")).scalar_one()
columns = {c["name"] for c in sa.inspect(bind).get_columns("items")}
if count and "qty" in columns:
    op.drop_column("items", "qty")
"""

# Writes through the bind, every way SQLAlchemy offers, then reads back.
WRITES_THROUGH_THE_BIND = """
bind = op.get_bind()
items = sa.table("items", sa.column("name", sa.String), sa.column("qty", sa.Integer))
bind.execute(items.update().values(name="core update"))
bind.execute(sa.text("UPDATE items SET qty = :q"), {"q": 99})
bind.execute(items.insert(), [{"name": "many 1"}, {"name": "many 2"}])
bind.exec_driver_sql("DELETE FROM items WHERE qty = 1")
bind.execute(sa.text("DROP TABLE others"))
left = bind.execute(sa.text("SELECT COUNT(*) FROM items")).scalar_one()
op.drop_column("items", "other_id")
"""


def linted(ini: Path, url: URL) -> LintReport:
    """The lint's report on the pending revisions, every table judged (no row floor)."""
    return anyio.run(lambda: lint(AutoMigrator(ini, url=url, lint=Lint(rows=0))))


def seeded(ini: Path, url: URL) -> None:
    at_base(ini, url)
    engine = sa.create_engine(url, poolclass=sa.NullPool)
    with engine.begin() as conn:
        conn.exec_driver_sql("INSERT INTO items (id, name, qty) VALUES (1, 'a', 1), (2, 'b', 2)")
    engine.dispose()


def test_what_a_revision_does_after_a_read_is_linted(tmp_path: Path, db_url: URL) -> None:
    ini = project(tmp_path / "p", READ_THEN_DROP)
    seeded(ini, db_url)

    report = linted(ini, db_url)

    assert report.not_linted == ()
    assert [(f.revision, f.rule, f.table, f.target) for f in report.flagged] == [
        ("r2", "drop-column", "items", "qty")
    ]
    # At start-up too: refused before any DDL, on what came after the read.
    migrator = AutoMigrator(ini, url=db_url, lint=Lint(mode="refuse", rows=0))
    with pytest.raises(UnsafeMigrationError, match="drop-column"):
        anyio.run(migrator.run)
    assert revisions(db_url) == {"r1"}
    assert rows(db_url, "SELECT COUNT(*) FROM items") == [(2,)]


def test_writes_through_the_bind_are_rendered_and_never_run(tmp_path: Path, db_url: URL) -> None:
    ini = project(tmp_path / "p", WRITES_THROUGH_THE_BIND)
    seeded(ini, db_url)
    before = rows(db_url, "SELECT id, name, qty FROM items ORDER BY id")

    report = linted(ini, db_url)
    out = cli(ini, db_url, "plan", "--sql")

    assert report.not_linted == ()
    assert ("drop-column", "other_id") in {(f.rule, f.target) for f in report.flagged}
    assert out.returncode == 0, out.stderr
    r2 = out.stdout.split("-- r2")[1]
    assert "core update" in r2
    assert "UPDATE items SET qty = 99" in r2
    assert "many 1" in r2
    assert "many 2" in r2
    assert "DELETE FROM items WHERE qty = 1" in r2
    assert "DROP TABLE others" in r2
    assert "cannot be rendered" not in r2
    # Nothing of it reached the database.
    assert rows(db_url, "SELECT id, name, qty FROM items ORDER BY id") == before
    assert rows(db_url, "SELECT COUNT(*) FROM others") == [(0,)]


# A write that reads as a read to the lint (it starts with WITH): the
# session's own read-only mode refuses it.
HIDDEN_WRITES = {
    "postgresql": (
        "WITH x AS (UPDATE items SET name = 'hidden' RETURNING 1) SELECT COUNT(*) FROM x"
    ),
    "sqlite": "WITH x AS (SELECT 1) UPDATE items SET name = 'hidden'",
}


@pytest.mark.parametrize("kind", sorted(HIDDEN_WRITES))
def test_a_write_that_looks_like_a_read_is_refused_by_the_session(
    tmp_path: Path, kind: str, fresh_db: Callable[[str], URL]
) -> None:
    url = fresh_db(kind)
    body = f'op.get_bind().execute(sa.text("{HIDDEN_WRITES[kind]}"))\n' + READ_THEN_DROP
    ini = project(tmp_path / "p", body)
    seeded(ini, url)

    report = linted(ini, url)

    [(revision, why)] = report.not_linted
    assert revision == "r2"
    assert "read" in why.lower()
    assert rows(url, "SELECT name FROM items ORDER BY id") == [("a",), ("b",)]


# r2 creates "tags"; r3 reads it, which the live database has not yet.
READS_A_NEW_TABLE = (
    'op.create_table("tags", sa.Column("id", sa.Integer, primary_key=True))',
    Rev(
        "r3",
        "r2",
        "reads the new table",
        'op.get_bind().execute(sa.text("SELECT COUNT(*) FROM tags")).scalar_one()\n'
        'op.drop_column("items", "qty")',
    ),
)


@pytest.mark.parametrize("kind", ["sqlite", "mariadb"])
def test_a_read_of_a_table_the_plan_creates_is_named_and_not_refused(
    tmp_path: Path, kind: str, fresh_db: Callable[[str], URL], caplog: pytest.LogCaptureFixture
) -> None:
    url = fresh_db(kind)
    ini = project(tmp_path / "p", *READS_A_NEW_TABLE)
    at_base(ini, url)

    report = linted(ini, url)

    [(revision, why)] = report.not_linted
    assert revision == "r3"
    assert "tags" in why
    # At start-up: named in the log, and not refused (see docs/lint.md).
    with caplog.at_level(logging.WARNING, logger="automigrator"):
        status = anyio.run(AutoMigrator(ini, url=url, lint=Lint(mode="refuse", rows=0)).run)
    assert status.state is MigrationState.READY
    assert any("r3 cannot be rendered offline" in r.getMessage() for r in caplog.records)


def test_postgresql_answers_reads_of_what_the_plan_makes(tmp_path: Path, pg_url: URL) -> None:
    # A table made by an earlier revision, and a column the same revision adds
    # before it reads it (MLflow's 75868b020152): empty temporary tables.
    adds_then_reads = Rev(
        "r4",
        "r3",
        "adds a column, reads it, indexes",
        'op.add_column("items", sa.Column("code", sa.String(10)))\n'
        'op.get_bind().execute(sa.text("SELECT code FROM items WHERE code IS NULL")).all()\n'
        'op.create_index("ix_items_name", "items", ["name"])',
    )
    ini = project(tmp_path / "p", *READS_A_NEW_TABLE, adds_then_reads)
    seeded(ini, pg_url)

    report = linted(ini, pg_url)

    assert report.not_linted == ()
    assert {(f.revision, f.rule) for f in report.flagged} >= {
        ("r3", "drop-column"),
        ("r4", "index-not-concurrent"),
    }
    # Nothing of it outlived the lint: no table, no column, the rows as they were.
    assert rows(pg_url, "SELECT to_regclass('tags') IS NULL") == [(True,)]
    assert rows(pg_url, "SELECT id, name, qty FROM items ORDER BY id") == [
        (1, "a", 1),
        (2, "b", 2),
    ]


@contextmanager
def table_locked(url: URL) -> Iterator[None]:
    """items locked against readers by another session, as a long DDL would."""
    engine = sa.create_engine(url, poolclass=sa.NullPool)
    postgres = url.get_backend_name() == "postgresql"
    with engine.connect() as conn:
        conn.exec_driver_sql(
            "LOCK TABLE items IN ACCESS EXCLUSIVE MODE" if postgres else "LOCK TABLES items WRITE"
        )
        try:
            yield
        finally:
            conn.rollback()
            if not postgres:
                conn.exec_driver_sql("UNLOCK TABLES")
    engine.dispose()


def test_a_read_that_waits_for_a_lock_gives_up_and_is_named(
    tmp_path: Path, server_db: URL
) -> None:
    # (SQLite locks the whole file: the plan's own read would wait first.)
    ini = project(tmp_path / "p", READ_THEN_DROP)
    seeded(ini, server_db)

    with table_locked(server_db):
        out = cli(ini, server_db, "lint")

    assert out.returncode == 0, out.stderr
    assert "not linted past its failure: revision r2" in out.stdout, out.stdout


# -- the doors around op.get_bind()'s reads (an adversary's, closed) ------------

# Each writes to items by a route a migration might take; the lint (and
# plan --sql) must leave items as it was.
DOORS = {
    "several statements in one string": (
        'op.get_bind().exec_driver_sql("SELECT 1; COMMIT; BEGIN READ WRITE; '
        "UPDATE items SET name = 'x'; COMMIT\")",
        {"postgresql", "mariadb", "sqlite"},
    ),
    "a connection of the revision's own, from the bind's engine": (
        "with op.get_bind().engine.begin() as own:\n"
        "    own.execute(sa.text(\"UPDATE items SET name = 'x'\"))",
        {"postgresql", "mariadb", "sqlite"},
    ),
    "the session made writable by set_config": (
        "bind = op.get_bind()\n"
        "bind.execute(sa.text(\"SELECT set_config('default_transaction_read_only', 'off', "
        'false)"))\n'
        "bind.commit()\n"
        "bind.execute(sa.text(\"WITH x AS (UPDATE items SET name = 'x' RETURNING 1) "
        'SELECT COUNT(*) FROM x")).all()\n'
        "bind.commit()",
        {"postgresql"},
    ),
    "SQLite's query_only turned off": (
        "bind = op.get_bind()\n"
        'bind.exec_driver_sql("PRAGMA query_only(0)")\n'
        "bind.exec_driver_sql(\"WITH c AS (SELECT 1) UPDATE items SET name = 'x'\")\n"
        "bind.commit()",
        {"sqlite"},
    ),
}


@pytest.mark.parametrize(
    ("door", "kind"),
    [(door, kind) for door, (_, kinds) in DOORS.items() for kind in sorted(kinds)],
)
def test_no_door_around_the_reads_changes_the_database(
    tmp_path: Path, door: str, kind: str, fresh_db: Callable[[str], URL]
) -> None:
    db_url = fresh_db(kind)
    ini = project(tmp_path / "p", DOORS[door][0] + "\n" + READ_THEN_DROP)
    seeded(ini, db_url)

    linted(ini, db_url)
    out = cli(ini, db_url, "plan", "--sql")

    assert out.returncode == 0, out.stderr
    assert rows(db_url, "SELECT name FROM items ORDER BY id") == [("a",), ("b",)]


def test_a_read_that_would_end_another_session_does_not(tmp_path: Path, pg_url: URL) -> None:
    body = (
        'op.get_bind().execute(sa.text("SELECT pg_terminate_backend(pid) FROM pg_stat_activity '
        "WHERE application_name = 'victim'\")).all()"
    )
    ini = project(tmp_path / "p", body)
    seeded(ini, pg_url)
    victim = sa.create_engine(
        pg_url, poolclass=sa.NullPool, connect_args={"application_name": "victim"}
    )
    with victim.connect() as conn:
        conn.exec_driver_sql("SELECT 1")

        linted(ini, pg_url)

        assert conn.exec_driver_sql("SELECT 1").scalar() == 1  # still alive
    victim.dispose()


def test_a_connection_the_revision_keeps_does_not_hold_the_upgrade(
    tmp_path: Path, pg_url: URL
) -> None:
    # The lint renders it with its reads answered; the connection it keeps
    # (with a lock on items) is closed with the render, so the start-up's
    # upgrade right after takes its lock on items at once.
    body = (
        "from alembic import context as _context\n"
        "if _context.is_offline_mode():\n"
        "    kept = op.get_bind().engine.connect()\n"
        '    kept.execute(sa.text("SELECT COUNT(*) FROM items")).scalar()\n'
        "    KEPT.append(kept)\n"
        'op.add_column("items", sa.Column("code", sa.String(10)))'
    )
    ini = project(tmp_path / "p", body)
    versions = ini.parent / "migrations" / "versions"
    r2 = next(versions.glob("*r2*.py"))
    r2.write_text(r2.read_text().replace("def upgrade()", "KEPT = []\n\n\ndef upgrade()"))
    seeded(ini, pg_url)

    status = anyio.run(AutoMigrator(ini, url=pg_url, lint=Lint(rows=0)).run)

    assert status.state is MigrationState.READY
    assert revisions(pg_url) == {"r2"}


def test_a_reflection_during_the_lint_does_not_reach_the_upgrade(
    tmp_path: Path, pg_url: URL
) -> None:
    # r3 reflects a table r2 makes into a module-level MetaData: during the
    # lint that is the empty temporary copy (its enum as text); the upgrade
    # must reflect the real one.
    jobs = Rev(
        "r2",
        "r1",
        "jobs",
        'op.create_table("jobs", sa.Column("id", sa.Integer, primary_key=True), '
        'sa.Column("status", sa.Enum("new", "done", name="jobstatus"), nullable=False))',
    )
    reflects = Rev(
        "r3",
        "r2",
        "first job",
        "bind = op.get_bind()\n"
        'table = sa.Table("jobs", META, autoload_with=bind)\n'
        'bind.execute(table.insert().values(status="new"))',
    )
    ini = make_project(tmp_path / "p", (BASE, jobs, reflects))
    versions = ini.parent / "migrations" / "versions"
    r3 = next(versions.glob("*r3*.py"))
    r3.write_text(
        r3.read_text().replace("def upgrade()", "META = sa.MetaData()\n\n\ndef upgrade()")
    )
    at_base(ini, pg_url)

    status = anyio.run(AutoMigrator(ini, url=pg_url, lint=Lint(rows=0)).run)

    assert status.state is MigrationState.READY
    assert rows(pg_url, "SELECT status::text FROM jobs") == [("new",)]


def test_a_read_cannot_lift_its_own_bound(tmp_path: Path, pg_url: URL) -> None:
    # set_config() would lift the statement timeout: it is no read, and the
    # sleep after it is cut at the bound (the revision named, not linted).
    body = (
        "bind = op.get_bind()\n"
        "bind.execute(sa.text(\"SELECT set_config('statement_timeout', '0', false)\")).all()\n"
        'bind.execute(sa.text("SELECT pg_sleep(30)")).all()'
    )
    ini = project(tmp_path / "p", body)
    seeded(ini, pg_url)

    report = linted(ini, pg_url)

    [(revision, why)] = report.not_linted
    assert revision == "r2"
    assert "statement timeout" in why


def test_no_password_in_what_a_revision_renders_or_names(tmp_path: Path, pg_url: URL) -> None:
    # The live reads hand the revision a real engine, URL and password included
    # (the server trusts this client: any password connects). What it renders
    # (a SQL literal doubles the quote) and names (an index) shows none.
    password = "Pa'ss9w0rd"
    url = pg_url.set(password=password)
    body = (
        "bind = op.get_bind()\n"
        "secret = bind.engine.url.password\n"
        'bind.execute(sa.text("UPDATE items SET name = :p"), {"p": secret})\n'
        'op.create_index(secret, "items", ["qty"])'
    )
    ini = project(tmp_path / "p", body)
    seeded(ini, url)

    found = cli(ini, url, "lint", "--lint-rows", "0", "--json")
    plan = cli(ini, url, "plan", "--sql")

    assert "UPDATE items SET name = '***'" in plan.stdout
    for out in (found, plan):
        for form in (password, password.replace("'", "''")):
            assert form not in out.stdout + out.stderr


def test_the_reads_leave_no_setting_on_a_pooled_server_connection(
    tmp_path: Path, pg_url: URL
) -> None:
    # Through PgBouncer in transaction mode, a server connection goes from
    # client to client: the lint's read-only mode and timeouts must end with
    # its transactions, or the app's next transaction there is read-only.
    from tests.poolers import PgBouncer

    ini = project(tmp_path / "p", READ_THEN_DROP)
    seeded(ini, pg_url)
    with PgBouncer(pg_url, "transaction", pool_size=1) as bouncer:
        pooled = bouncer.url(pg_url)

        report = linted(ini, pooled)

        app = sa.create_engine(pooled, poolclass=sa.NullPool)
        with app.connect() as conn:
            assert conn.exec_driver_sql("SHOW transaction_read_only").scalar() == "off"
            assert conn.exec_driver_sql("SHOW statement_timeout").scalar() == "0"
            assert conn.exec_driver_sql("SHOW lock_timeout").scalar() == "0"
        app.dispose()
    assert [f.rule for f in report.flagged] == ["drop-column"]


def test_a_revision_s_reads_have_a_time_of_their_own(
    tmp_path: Path, pg_url: URL, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A backfill that reads in batches: each read is short, all of them are not.
    from automigrator.scripts import _alembic_reads

    monkeypatch.setattr(_alembic_reads, "BUDGET", 1)
    body = (
        "for _ in range(100):\n"
        '    op.get_bind().execute(sa.text("SELECT pg_sleep(0.1)")).all()\n' + READ_THEN_DROP
    )
    ini = project(tmp_path / "p", body)
    seeded(ini, pg_url)

    report = linted(ini, pg_url)

    [(revision, why)] = report.not_linted
    assert revision == "r2"
    assert "took over 1 s" in why
