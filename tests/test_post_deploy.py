"""Post-deploy revisions: a start leaves them pending, ``upgrade --post-deploy`` runs them.

A revision file that says ``post_deploy = True`` holds what the old version,
still serving during a rollout, breaks on (a dropped or renamed column). The
new version's start applies everything else and is ready; the Job after the
rollout applies the rest. Real databases, the real command line.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import anyio
import pytest
import sqlalchemy as sa
from sqlalchemy.engine import URL

from automigrator import (
    AutoMigrator,
    Baseline,
    ConfigurationError,
    Lint,
    Switch,
    UnsafeMigrationError,
    lint,
    preview,
)

from .conftest import revisions, rows
from .helpers import cli
from .project import EMAIL, USERS, Rev, make_project, write_revision

NICKNAME = Rev(
    "r3", "r2", "add nickname", 'op.add_column("users", sa.Column("nick", sa.String(20)))'
)
DROP_EMAIL = Rev("r4", "r3", "drop email", 'op.drop_column("users", "email")', post_deploy=True)


def columns(url: URL) -> set[str]:
    engine = sa.create_engine(url, poolclass=sa.NullPool)
    try:
        with engine.connect() as conn:
            return {c["name"] for c in sa.inspect(conn).get_columns("users")}
    finally:
        engine.dispose()


def at_r2(tmp_path: Path, url: URL, *new: Rev) -> Path:
    """A database at r2 (users with email) with a row; the scripts gain ``new``."""
    ini = make_project(tmp_path / "proj", (USERS, EMAIL))
    anyio.run(AutoMigrator(ini, url=url).run)
    with sa.create_engine(url, poolclass=sa.NullPool).begin() as conn:
        conn.execute(sa.text("INSERT INTO users (name, email) VALUES ('ann', 'a@x')"))
    for rev in new:
        write_revision(ini.parent, rev)
    return ini


def test_a_start_leaves_post_deploy_revisions_and_the_cli_runs_them(
    tmp_path: Path, db_url: URL
) -> None:
    ini = at_r2(tmp_path, db_url, NICKNAME, DROP_EMAIL)

    migrator = AutoMigrator(ini, url=db_url)
    status = anyio.run(migrator.run)
    assert status.ready
    assert [a.revision for a in status.applied] == ["r3"]
    assert status.post_deploy == ("r4",)
    assert status.to_dict()["post_deploy"] == ["r4"]
    assert revisions(db_url) == {"r3"}
    assert "email" in columns(db_url)  # the old version still reads it

    again = anyio.run(AutoMigrator(ini, url=db_url).run)  # another replica of the new version
    assert again.ready
    assert again.applied == ()
    assert again.post_deploy == ("r4",)
    assert revisions(db_url) == {"r3"}

    checked = cli(ini, db_url, "check")
    assert checked.returncode == 0, checked.stderr
    assert "post-deploy, left for --post-deploy: r4" in checked.stderr
    assert cli(ini, db_url, "check", "--post-deploy").returncode != 0
    shown = json.loads(cli(ini, db_url, "status", "--json").stdout)
    assert shown["post_deploy"] == ["r4"]
    assert shown["pending"] == []
    planned = json.loads(cli(ini, db_url, "plan", "--post-deploy", "--json").stdout)
    assert [p["revision"] for p in planned["pending"]] == ["r4"]

    plain = cli(ini, db_url, "upgrade")  # a pre-deploy Job leaves it too
    assert plain.returncode == 0, plain.stderr
    assert revisions(db_url) == {"r3"}

    done = cli(ini, db_url, "upgrade", "--post-deploy")  # the Job after the rollout
    assert done.returncode == 0, done.stderr
    assert revisions(db_url) == {"r4"}
    assert "email" not in columns(db_url)
    assert rows(db_url, "SELECT name FROM users") == [("ann",)]

    after = anyio.run(AutoMigrator(ini, url=db_url).run)
    assert after.ready
    assert after.post_deploy == ()
    assert after.applied == ()


def test_a_post_deploy_revision_a_later_one_follows_runs_at_start_up(
    tmp_path: Path, server_db: URL
) -> None:
    # The previous release's post-deploy Job never ran: the version serving
    # now was written without the column, so the next start applies it.
    earlier = Rev("r3", "r2", "drop email", 'op.drop_column("users", "email")', post_deploy=True)
    later = Rev(
        "r4", "r3", "add nickname", 'op.add_column("users", sa.Column("nick", sa.Integer))'
    )
    ini = at_r2(tmp_path, server_db, earlier, later)

    status = anyio.run(AutoMigrator(ini, url=server_db).run)
    assert status.ready
    assert [a.revision for a in status.applied] == ["r3", "r4"]
    assert status.post_deploy == ()
    assert columns(server_db) == {"id", "name", "nick"}


def test_an_empty_database_gets_every_revision_post_deploy_included(
    tmp_path: Path, db_url: URL
) -> None:
    # Nothing old serves from an empty database.
    ini = make_project(tmp_path / "proj", (USERS, EMAIL, NICKNAME, DROP_EMAIL))
    status = anyio.run(AutoMigrator(ini, url=db_url).run)
    assert status.ready
    assert status.post_deploy == ()
    assert revisions(db_url) == {"r4"}


def test_switch_post_deploy_runs_them_at_start_up(tmp_path: Path, sqlite_url: URL) -> None:
    ini = at_r2(tmp_path, sqlite_url, NICKNAME, DROP_EMAIL)
    status = anyio.run(AutoMigrator(ini, url=sqlite_url, enabled=Switch(post_deploy=True)).run)
    assert [a.revision for a in status.applied] == ["r3", "r4"]
    assert "email" not in columns(sqlite_url)


def test_lint_refuse_admits_a_breaking_change_only_in_a_post_deploy_revision(
    tmp_path: Path, server_db: URL
) -> None:
    regular = Rev("r3", "r2", "drop email", 'op.drop_column("users", "email")')
    ini = at_r2(tmp_path, server_db, regular)
    with pytest.raises(UnsafeMigrationError) as refused:
        anyio.run(AutoMigrator(ini, url=server_db, lint="refuse").run)
    assert "drop-column" in refused.value.message
    assert "post_deploy = True" in refused.value.message
    assert revisions(server_db) == {"r2"}

    write_revision(ini.parent, dataclasses.replace(regular, post_deploy=True))
    status = anyio.run(AutoMigrator(ini, url=server_db, lint="refuse").run)
    assert status.ready
    assert status.post_deploy == ("r3",)
    assert status.lint == ()

    report = anyio.run(lint, AutoMigrator(ini, url=server_db, enabled=Switch(post_deploy=True)))
    assert [f.verdict for f in report.findings] == ["post_deploy"]
    assert report.flagged == ()
    done = cli(ini, server_db, "upgrade", "--post-deploy", "--lint", "refuse")
    assert done.returncode == 0, done.stderr
    assert revisions(server_db) == {"r3"}


def test_a_lock_on_a_big_table_stays_flagged_in_a_post_deploy_revision(
    tmp_path: Path, pg_url: URL
) -> None:
    # Post-deploy is for what the old version breaks on; the new one still
    # serves while a post-deploy revision runs, and waits behind its locks.
    index = Rev(
        "r3",
        "r2",
        "index names",
        'op.create_index("ix_users_name", "users", ["name"])',
        post_deploy=True,
    )
    ini = at_r2(tmp_path, pg_url, index)
    every = Lint(mode="refuse", rows=0)  # every table counts as big
    migrator = AutoMigrator(ini, url=pg_url, lint=every, enabled=Switch(post_deploy=True))
    with pytest.raises(UnsafeMigrationError) as refused:
        anyio.run(migrator.run)
    assert [f.rule for f in refused.value.findings] == ["index-not-concurrent"]
    assert "post_deploy = True" not in refused.value.message  # it would not help
    assert revisions(pg_url) == {"r2"}


def test_a_post_deploy_value_that_is_not_a_bool_is_named_and_nothing_changes(
    tmp_path: Path, sqlite_url: URL
) -> None:
    ini = at_r2(tmp_path, sqlite_url, NICKNAME)
    path = ini.parent / "migrations" / "versions" / "r3.py"
    path.write_text(
        path.read_text().replace("depends_on = None", 'depends_on = None\npost_deploy = "yes"')
    )
    with pytest.raises(ConfigurationError) as caught:
        anyio.run(AutoMigrator(ini, url=sqlite_url).run)
    assert str(path) in caught.value.message
    assert "post_deploy = True" in caught.value.message
    assert revisions(sqlite_url) == {"r2"}


def test_a_computed_post_deploy_is_read_by_importing_the_file(
    tmp_path: Path, sqlite_url: URL
) -> None:
    # The plan reads revision files as text; a value it cannot read plainly
    # means importing the file, never taking it for False.
    ini = at_r2(tmp_path, sqlite_url, NICKNAME, DROP_EMAIL)
    path = ini.parent / "migrations" / "versions" / "r4.py"
    path.write_text(path.read_text().replace("post_deploy = True", "post_deploy = 1 == 1"))
    status = anyio.run(AutoMigrator(ini, url=sqlite_url).run)
    assert status.post_deploy == ("r4",)
    assert revisions(sqlite_url) == {"r3"}


def test_one_branch_left_the_other_applied(tmp_path: Path, sqlite_url: URL) -> None:
    # target="heads": two branches from r2; one ends in a post-deploy revision.
    a = Rev(
        "a1",
        "r2",
        "branch a",
        'op.create_table("a", sa.Column("id", sa.Integer, primary_key=True))',
    )
    a2 = Rev("a2", "a1", "drop email", 'op.drop_column("users", "email")', post_deploy=True)
    b = Rev(
        "b1",
        "r2",
        "branch b",
        'op.create_table("b", sa.Column("id", sa.Integer, primary_key=True))',
    )
    ini = at_r2(tmp_path, sqlite_url, a, a2, b)
    for rev in (a, b):
        path = ini.parent / "migrations" / "versions" / f"{rev.id}.py"
        label = "'a'" if rev is a else "'b'"
        path.write_text(
            path.read_text().replace("branch_labels = None", f"branch_labels = ({label},)")
        )
    migrator = AutoMigrator(ini, url=sqlite_url, target="heads")
    status = anyio.run(migrator.run)
    assert status.ready
    assert status.post_deploy == ("a2",)
    assert revisions(sqlite_url) == {"a1", "b1"}
    shown = anyio.run(preview, AutoMigrator(ini, url=sqlite_url, target="heads"))
    assert shown.plan == "at_head"
    assert shown.post_deploy == ("a2",)


# The expand / contract recipe of docs/live.md, as written there.
EXPAND = Rev(
    "r2",
    "r1",
    "users.name becomes full_name: expand",
    '''
    op.add_column("users", sa.Column("full_name", sa.String(50)))
    # Until the contract, each version writes its own column and the trigger
    # copies it into the other one.
    op.execute(
        """
        CREATE FUNCTION users_name_sync() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN
          IF TG_OP = 'INSERT' THEN
            NEW.full_name := COALESCE(NEW.full_name, NEW.name);
            NEW.name := COALESCE(NEW.name, NEW.full_name);
          ELSIF NEW.name IS DISTINCT FROM OLD.name THEN
            NEW.full_name := NEW.name;
          ELSIF NEW.full_name IS DISTINCT FROM OLD.full_name THEN
            NEW.name := NEW.full_name;
          END IF;
          RETURN NEW;
        END $$
        """
    )
    op.execute(
        "CREATE TRIGGER users_name_sync BEFORE INSERT OR UPDATE ON users "
        "FOR EACH ROW EXECUTE FUNCTION users_name_sync()"
    )
    op.execute("UPDATE users SET full_name = name WHERE full_name IS NULL")
    ''',
)
CONTRACT = Rev(
    "r3",
    "r2",
    "users.name becomes full_name: contract",
    """
    op.execute("DROP TRIGGER users_name_sync ON users")
    op.execute("DROP FUNCTION users_name_sync()")
    op.drop_column("users", "name")
    """,
    post_deploy=True,
)


def test_the_rename_recipe_serves_both_versions_through_the_rollout(
    tmp_path: Path, pg_url: URL
) -> None:
    old_ini = make_project(tmp_path / "old", (USERS,))
    anyio.run(AutoMigrator(old_ini, url=pg_url).run)
    engine = sa.create_engine(pg_url, poolclass=sa.NullPool)
    with engine.begin() as conn:
        conn.execute(sa.text("INSERT INTO users (name) VALUES ('ann')"))
    new_ini = make_project(tmp_path / "new", (USERS, EXPAND, CONTRACT))

    status = anyio.run(AutoMigrator(new_ini, url=pg_url, lint="refuse").run)
    assert [a.revision for a in status.applied] == ["r2"]
    assert status.post_deploy == ("r3",)

    # The rollout: old and new replicas write at once, each its own column.
    with engine.begin() as conn:
        conn.execute(sa.text("INSERT INTO users (name) VALUES ('bob')"))  # old
        conn.execute(sa.text("INSERT INTO users (full_name) VALUES ('cid')"))  # new
        conn.execute(sa.text("UPDATE users SET name = 'ann2' WHERE name = 'ann'"))  # old
        conn.execute(sa.text("UPDATE users SET full_name = 'bob2' WHERE full_name = 'bob'"))
    assert rows(pg_url, "SELECT name FROM users ORDER BY id") == [("ann2",), ("bob2",), ("cid",)]
    # An old replica restarted mid-rollout serves: the expand is compatible.
    assert anyio.run(AutoMigrator(old_ini, url=pg_url).run).ready

    done = cli(new_ini, pg_url, "upgrade", "--post-deploy", "--lint", "refuse")
    assert done.returncode == 0, done.stderr
    assert columns(pg_url) == {"id", "full_name"}
    assert rows(pg_url, "SELECT full_name FROM users ORDER BY id") == [
        ("ann2",),
        ("bob2",),
        ("cid",),
    ]
    with engine.begin() as conn:
        conn.execute(
            sa.text("INSERT INTO users (full_name) VALUES ('dee')")
        )  # the trigger is gone
    engine.dispose()


def test_an_empty_database_made_by_a_baseline_gets_its_post_deploy_revisions_too(
    tmp_path: Path, sqlite_url: URL
) -> None:
    # Baseline.create makes the tables and stamps r1 first: the database then
    # has a revision, but nothing old ever served from it.
    initial = sa.MetaData()
    sa.Table(
        "users",
        initial,
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("name", sa.String(50)),
    )
    ini = make_project(tmp_path / "proj", (USERS, EMAIL, NICKNAME, DROP_EMAIL))
    migrator = AutoMigrator(ini, url=sqlite_url, baseline=Baseline("r1", create=initial))
    status = anyio.run(migrator.run)
    assert [a.revision for a in status.applied] == ["r2", "r3", "r4"]
    assert status.post_deploy == ()
    assert columns(sqlite_url) == {"id", "name", "nick"}


def test_a_post_deploy_drop_a_start_must_apply_is_judged_as_during_the_rollout(
    tmp_path: Path, server_db: URL
) -> None:
    # r4 (post-deploy) is followed by an ordinary r5: a start applies it now,
    # with the old version serving; the lint must not pass it as "after".
    later = Rev("r5", "r4", "add age", 'op.add_column("users", sa.Column("age", sa.Integer))')
    ini = at_r2(tmp_path, server_db, NICKNAME, DROP_EMAIL, later)
    with pytest.raises(UnsafeMigrationError) as refused:
        anyio.run(AutoMigrator(ini, url=server_db, lint="refuse").run)
    assert refused.value.findings[0].revision == "r4"
    assert "--post-deploy --target r4" in refused.value.message
    assert "mark it post-deploy" not in refused.value.message  # it is already
    assert revisions(server_db) == {"r2"}
    assert "email" in columns(server_db)

    first = cli(ini, server_db, "upgrade", "--post-deploy", "--target", "r4", "--lint", "refuse")
    assert first.returncode == 0, first.stderr  # the way out the refusal names
    status = anyio.run(AutoMigrator(ini, url=server_db, lint="refuse").run)
    assert [a.revision for a in status.applied] == ["r5"]


def test_the_lint_command_prints_post_deploy_findings(tmp_path: Path, sqlite_url: URL) -> None:
    ini = at_r2(tmp_path, sqlite_url, NICKNAME, DROP_EMAIL)
    for args in (("--post-deploy",), ("--since", "base")):
        done = cli(ini, sqlite_url, "lint", *args)
        assert done.returncode == 0, done.stderr
        assert "post-deploy: revision r4: drop-column on users" in done.stdout


@pytest.mark.parametrize(
    ("lines", "left"),
    [
        # A string showing the line, after a triple quote inside a raw string.
        ('QUOTE = r\'"""\'\nNOTES = """\npost_deploy = True\n"""', False),
        ('globals()["post_deploy"] = True', True),
        ("vars().update(post_deploy=True)", True),
        ("post_deploy: bool = True", True),
        ("# post_deploy = True", False),
    ],
    ids=["in-a-string", "globals", "vars-update", "annotated", "comment"],
)
def test_post_deploy_is_what_python_says_the_file_says(
    tmp_path: Path, sqlite_url: URL, lines: str, left: bool
) -> None:
    # The plan outside the lock (status, check mode, wait) reads files as
    # text; it must agree with the start's, which imports them.
    ini = at_r2(tmp_path, sqlite_url, NICKNAME)
    path = ini.parent / "migrations" / "versions" / "r3.py"
    path.write_text(path.read_text().replace("depends_on = None", f"depends_on = None\n{lines}"))
    shown = json.loads(cli(ini, sqlite_url, "status", "--json").stdout)
    assert shown["post_deploy"] == (["r3"] if left else [])
    assert shown["pending"] == ([] if left else ["r3"])
    status = anyio.run(AutoMigrator(ini, url=sqlite_url).run)
    assert status.post_deploy == (("r3",) if left else ())
