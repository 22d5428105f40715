"""``automigrator plan`` and ``preview()``: what an upgrade would run, and nothing run.

Real databases. Each preview is checked against the database afterwards (no
table, no version row) and taken while this test holds the migration lock
(a preview that waited for it would hang: it must not take it).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import anyio
import pytest
from sqlalchemy.engine import URL

from automigrator import AutoMigrator, SchemaAheadError, Timeouts, preview
from automigrator.locking import lock_for
from tests.conftest import revisions, tables
from tests.helpers import cli
from tests.project import EMAIL, USERS, Rev, make_project

SEED = Rev(
    "r3",
    "r2",
    "seed admin user",
    """
    users = sa.table("users", sa.column("name", sa.String), sa.column("email", sa.String))
    op.bulk_insert(users, [{"name": "admin", "email": "admin@example.com"}])
    """,
)
CHAIN = (USERS, EMAIL, SEED)
# Reads data to decide what to write: only a live database can answer.
READS_DATA = Rev(
    "r4",
    "r3",
    "copy the admin's email",
    """
    email = op.get_bind().execute(sa.text("SELECT email FROM users")).scalar_one()
    op.execute(sa.text("UPDATE users SET name = :e").bindparams(e=email))
    """,
)
NOTES = Rev("r5", "r4", "add notes", 'op.add_column("users", sa.Column("notes", sa.Text))')


@pytest.fixture
def lock_held(db_url: URL) -> Iterator[None]:
    """The migration lock, held by this test as another replica would."""
    holder = lock_for(db_url)
    assert holder.acquire(0)
    yield
    holder.release()


def test_plan_sql_renders_each_revision_and_runs_nothing(
    tmp_path: Path, db_url: URL, lock_held: None
) -> None:
    ini = make_project(tmp_path / "p", (*CHAIN, READS_DATA, NOTES))

    # A preview that tried the lock would time out in 1 s (exit 13).
    out = cli(ini, db_url, "plan", "--sql", "--lock-timeout", "1")

    assert out.returncode == 0, out.stderr
    text = out.stdout
    # Grouped by revision, in order, each under its own header.
    headers = [line.split()[1] for line in text.splitlines() if line.startswith("-- r")]
    assert headers == ["r1", "r2", "r3", "r4", "r5"]
    assert "CREATE TABLE users" in text
    assert "ALTER TABLE users ADD COLUMN email" in text
    assert "admin@example.com" in text  # r3's bulk insert, with its values
    assert "-- r4 copy the admin's email" in text
    assert "cannot be rendered offline" in text.split("-- r4")[1].split("-- r5")[0]
    assert "ADD COLUMN notes" in text  # the revision after it still rendered
    assert tables(db_url) == set()  # no DDL, not even a version table


def test_preview_starts_from_where_the_database_is(tmp_path: Path, db_url: URL) -> None:
    ini = make_project(tmp_path / "p", CHAIN)
    anyio.run(AutoMigrator(ini, url=db_url, target="r1").run)
    holder = lock_for(db_url)
    assert holder.acquire(0)  # another replica holds the lock meanwhile
    try:
        migrator = AutoMigrator(ini, url=db_url, timeouts=Timeouts(lock=1))  # no wait for the lock
        found = anyio.run(lambda: preview(migrator, sql=True))
    finally:
        holder.release()

    assert (found.plan, found.revisions, found.heads) == ("behind", ("r1",), ("r3",))
    assert [p.revision for p in found.pending] == ["r2", "r3"]
    assert found.pending[0].down_revisions == ("r1",)
    assert found.pending[0].path.endswith("r2.py")
    assert all(p.sql and p.not_renderable is None for p in found.pending)
    assert "CREATE TABLE alembic_version" not in (found.pending[0].sql or "")
    assert revisions(db_url) == {"r1"}
    assert found.to_dict()["pending"][1]["revision"] == "r3"


def test_plan_json_on_a_branched_history_lists_the_merge(tmp_path: Path, sqlite_url: URL) -> None:
    left = Rev("a1", "r1", "left branch", 'op.add_column("users", sa.Column("a", sa.Integer))')
    right = Rev("b1", "r1", "right branch", 'op.add_column("users", sa.Column("b", sa.Integer))')
    merge = Rev("m1", ("a1", "b1"), "merge", "pass")
    ini = make_project(tmp_path / "p", (USERS, left, right, merge))

    out = cli(ini, sqlite_url, "plan", "--sql", "--json")

    assert out.returncode == 0, out.stderr
    data = json.loads(out.stdout)
    order = [p["revision"] for p in data["pending"]]
    assert order[0] == "r1"
    assert set(order[1:3]) == {"a1", "b1"}
    assert order[3] == "m1"
    assert data["pending"][3]["down_revisions"] == ["a1", "b1"]
    assert all(p["sql"] for p in data["pending"])
    # The merge joins the two branch rows into one.
    assert "DELETE FROM alembic_version" in data["pending"][3]["sql"]
    assert tables(sqlite_url) == set()


def test_a_bulk_insert_of_untyped_columns_is_reported_not_renderable(
    tmp_path: Path, sqlite_url: URL
) -> None:
    # Alembic cannot write literal values for columns without a type: the
    # revision runs fine online, and the preview says why it shows no SQL.
    ini = make_project(tmp_path / "p")  # the tests' own r3 seeds untyped columns

    found = anyio.run(lambda: preview(AutoMigrator(ini, url=sqlite_url), sql=True))

    assert [p.not_renderable is None for p in found.pending] == [True, True, False]
    assert "CompileError" in (found.pending[2].not_renderable or "")


def test_an_update_of_untyped_columns_renders_with_its_values(
    tmp_path: Path, sqlite_url: URL
) -> None:
    # MLflow's dc11669786a5: op.execute() of an update through sa.table() columns
    # of no type. Each value is written with its Python type, as the driver
    # takes it online.
    untyped = Rev(
        "r2",
        "r1",
        "untyped update",
        """
    users = sa.table("users", sa.column("name"), sa.column("id"))
    op.execute(users.update().where(users.c.id.in_([1, 2])).values(name="x", id=5))
    """,
    )
    ini = make_project(tmp_path / "p", (USERS, untyped))

    found = anyio.run(lambda: preview(AutoMigrator(ini, url=sqlite_url), sql=True))

    assert found.pending[1].not_renderable is None
    assert "UPDATE users SET name='x', id=5 WHERE users.id IN (1, 2)" in (
        found.pending[1].sql or ""
    )


def test_plan_refuses_what_a_start_would_refuse(tmp_path: Path, sqlite_url: URL) -> None:
    ini = make_project(tmp_path / "p", CHAIN)
    anyio.run(AutoMigrator(ini, url=sqlite_url).run)
    older = make_project(tmp_path / "old", (USERS,))

    out = cli(older, sqlite_url, "plan", "--sql")
    with pytest.raises(SchemaAheadError):
        anyio.run(lambda: preview(AutoMigrator(older, url=sqlite_url), sql=True))

    assert out.returncode == 11  # as `check`: the database is ahead of the code
    assert "which these migration scripts do not know" in out.stderr


def test_plan_shows_no_password(tmp_path: Path, pg_url: URL) -> None:
    ini = make_project(tmp_path / "p", CHAIN)
    with_password = pg_url.set(password="s3cret-Pw")  # trust auth: any password is taken

    text = cli(ini, with_password, "plan", "--sql")
    data = cli(ini, with_password, "plan", "--json")

    assert text.returncode == data.returncode == 0, text.stderr
    assert json.loads(data.stdout)["database"].startswith("postgresql+psycopg://postgres:***@")
    for out in (text, data):
        assert "s3cret-Pw" not in out.stdout + out.stderr


@pytest.mark.parametrize("per_revision", [False, True], ids=["one-transaction", "per-revision"])
def test_plan_sql_has_the_transactions_env_py_runs(
    tmp_path: Path, pg_url: URL, per_revision: bool
) -> None:
    # Alembic's template runs the whole upgrade in one transaction; with
    # transaction_per_migration=True, one per revision. The script says so,
    # as 'alembic upgrade --sql' does.
    ini = make_project(tmp_path / "p", CHAIN)
    if per_revision:
        env = ini.parent / "migrations" / "env.py"
        text = env.read_text()
        env.write_text(
            text.replace(
                "target_metadata=target_metadata,",
                "target_metadata=target_metadata, transaction_per_migration=True,",
            )
        )
    out = cli(ini, pg_url, "plan", "--sql")
    assert out.returncode == 0, out.stderr
    statements = [line for line in out.stdout.splitlines() if line in ("BEGIN;", "COMMIT;")]
    expected = ["BEGIN;", "COMMIT;"] * 3 if per_revision else ["BEGIN;", "COMMIT;"]
    assert statements == expected
