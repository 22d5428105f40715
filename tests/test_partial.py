"""A revision that stopped half way is its own kind, remembered, and never purged or retried.

Where DDL is not transactional (MariaDB; PostgreSQL's autocommit blocks) a
revision that fails after some of its statements took effect leaves the
schema between two revisions. Before, that was kind ``migration``: the next
start ran the revision again into its own half ("Duplicate column"), and
``PurgeAndRetry`` quarantined the whole database for it.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import anyio
import pytest
import sqlalchemy as sa
from sqlalchemy.engine import URL

from automigrator import (
    AutoMigrator,
    MigrationError,
    MigrationState,
    PartialMigrationError,
    PurgeAndRetry,
)
from tests.conftest import revisions, rows
from tests.helpers import (
    LATEST_OUTCOMES,
    OLD_ROWS,
    backups,
    cli,
    deployed,
    execute,
    user_rows,
)
from tests.project import Rev, write_revision

ADD_THEN_FAIL = Rev(
    "r3",
    "r2",
    "adds a column, then fails",
    'op.add_column("users", sa.Column("age", sa.Integer))\nraise RuntimeError("r3 fails")',
)
# PostgreSQL: what runs in an autocommit block stays when the revision fails.
AUTOCOMMIT_THEN_FAIL = Rev(
    "r3",
    "r2",
    "indexes outside the transaction, then fails",
    """
    with op.get_context().autocommit_block():
        op.create_index("ix_users_email", "users", ["email"], postgresql_concurrently=True)
    raise RuntimeError("r3 fails")
    """,
)


def start(ini: Path, url: URL) -> tuple[AutoMigrator, BaseException | None]:
    migrator = AutoMigrator(ini, url=url, on_failure=PurgeAndRetry())
    try:
        anyio.run(migrator.run)
    except Exception as exc:
        return migrator, exc
    return migrator, None


@pytest.mark.parametrize("server", ["mariadb", "postgresql"])
def test_a_half_applied_revision_is_partial_remembered_and_never_purged(
    tmp_path: Path, fresh_db: Callable[[str], URL], server: str
) -> None:
    url = fresh_db(server)
    half = ADD_THEN_FAIL if server == "mariadb" else AUTOCOMMIT_THEN_FAIL
    ini = deployed(tmp_path, url, broken=half)

    first, failed = start(ini, url)
    again, refused = start(ini, url)

    assert isinstance(failed, PartialMigrationError), repr(failed)
    assert failed.kind == "partial"
    assert failed.revision == "r3"
    assert "ALTER TABLE users ADD" in failed.message or "CREATE INDEX" in failed.message
    assert "automigrator resolve r3" in failed.message
    assert first.status.state is MigrationState.FAILED
    # The next start does not run r3 into its own half: it is refused, by name.
    assert isinstance(refused, PartialMigrationError), repr(refused)
    assert "left partly applied" in refused.message
    assert again.status.attempts == 1
    assert backups(url) == []  # nothing purged, either time
    assert user_rows(url) == OLD_ROWS
    assert revisions(url) == {"r2"}
    assert rows(
        url, "SELECT revision, outcome FROM automigrator_history WHERE revision = 'r3'"
    ) == [("r3", "partial")]


def test_resolve_after_undoing_by_hand_lets_the_fixed_revision_run(
    tmp_path: Path, fresh_db: Callable[[str], URL]
) -> None:
    url = fresh_db("mariadb")
    ini = deployed(tmp_path, url, broken=ADD_THEN_FAIL)
    _, failed = start(ini, url)
    assert isinstance(failed, PartialMigrationError)

    engine = sa.create_engine(url, poolclass=sa.NullPool)
    with engine.begin() as conn:  # the operator undoes what stayed
        conn.exec_driver_sql("ALTER TABLE users DROP COLUMN age")
    (ini.parent / "migrations" / "versions" / "r3.py").unlink()
    write_revision(ini.parent, Rev("r3", "r2", "fixed", ADD_THEN_FAIL.body.split("\n")[0]))
    resolved = cli(ini, url, "resolve", "r3", "--not-applied", "--reason", "dropped age")
    unknown = cli(ini, url, "resolve", "r9", "--not-applied", "--reason", "dropped age")
    status = anyio.run(AutoMigrator(ini, url=url).run)

    assert resolved.returncode == 0, resolved.stderr
    assert unknown.returncode == 2
    assert "r9" in unknown.stderr
    assert status.state is MigrationState.READY
    assert revisions(url) == {"r3"}
    r3 = rows(url, "SELECT outcome FROM automigrator_history WHERE revision = 'r3' ORDER BY id")
    assert r3 == [("partial",), ("undone",), ("applied",)]


@contextmanager
def without_create(url: URL) -> Iterator[URL]:
    """``url`` as a MariaDB user who may alter tables but not create ours."""
    user = f"am_p{uuid.uuid4().hex[:8]}"
    admin = sa.create_engine(url, isolation_level="AUTOCOMMIT", poolclass=sa.NullPool)
    with admin.connect() as conn:
        conn.exec_driver_sql(f"CREATE USER '{user}'@'%%'")
        conn.exec_driver_sql(
            f"GRANT SELECT, INSERT, UPDATE, DELETE, ALTER ON {url.database}.* TO '{user}'@'%%'"
        )
    try:
        yield url.set(username=user)
    finally:
        with admin.connect() as conn:
            conn.exec_driver_sql(f"DROP USER '{user}'@'%%'")
        admin.dispose()


def test_a_partial_revision_that_cannot_be_remembered_still_fails_as_partial(
    tmp_path: Path, fresh_db: Callable[[str], URL], caplog: pytest.LogCaptureFixture
) -> None:
    # The migrating user may alter tables but not create ours.
    url = fresh_db("mariadb")
    ini = deployed(tmp_path, url, broken=ADD_THEN_FAIL)
    execute(url, "DROP TABLE automigrator_history")  # as if r1 and r2 ran before the ledger
    with without_create(url) as limited:
        _, failed = start(ini, limited)

    assert isinstance(failed, PartialMigrationError), repr(failed)
    assert any("Could not create the ledger" in r.getMessage() for r in caplog.records)
    assert backups(url) == []


def test_a_user_who_cannot_create_our_table_still_migrates_unmarked(
    tmp_path: Path, fresh_db: Callable[[str], URL], caplog: pytest.LogCaptureFixture
) -> None:
    # The migrating user may alter tables but not create ours: the revisions
    # run without their running marks, and say so.
    url = fresh_db("mariadb")
    ini = deployed(
        tmp_path, url, broken=Rev("r3", "r2", "add age", ADD_THEN_FAIL.body.split("\n")[0])
    )
    execute(url, "DROP TABLE automigrator_history")  # as if r1 and r2 ran before the ledger
    with without_create(url) as limited:
        migrator, failed = start(ini, limited)

    assert failed is None, repr(failed)
    assert migrator.status.state is MigrationState.READY
    assert revisions(url) == {"r3"}
    assert any("Could not create the ledger" in r.getMessage() for r in caplog.records)


# A commit inside a run (an autocommit block, a revision's own COMMIT) keeps
# the revisions before it: their ledger rows must go with them, whoever
# commits (tests/test_drivers.py tries each driver and the driver's commit).
AGE = Rev("r3", "r2", "adds a column", 'op.add_column("users", sa.Column("age", sa.Integer))')
COMMITS_THEN_FAILS = {
    "autocommit-block": Rev(
        "r4",
        "r3",
        "indexes outside the transaction, then fails",
        AUTOCOMMIT_THEN_FAIL.body.replace("r3 fails", "r4 fails"),
    ),
    "own-commit": Rev(
        "r4", "r3", "commits, then fails", 'op.execute("COMMIT")\nraise RuntimeError("r4 fails")'
    ),
}


@pytest.mark.parametrize("how", sorted(COMMITS_THEN_FAILS))
def test_a_commit_inside_a_run_keeps_the_rows_of_the_revisions_it_keeps(
    tmp_path: Path, fresh_db: Callable[[str], URL], how: str
) -> None:
    url = fresh_db("postgresql")
    ini = deployed(tmp_path, url, broken=AGE)
    write_revision(ini.parent, COMMITS_THEN_FAILS[how])

    with pytest.raises((MigrationError, PartialMigrationError), match="r4 fails"):
        anyio.run(AutoMigrator(ini, url=url).run)

    assert revisions(url) == {"r3"}  # the commit in r4 kept r3
    kept = "partial" if how == "autocommit-block" else "failed"
    assert rows(url, LATEST_OUTCOMES) == [
        ("r1", "applied"),
        ("r2", "applied"),
        ("r3", "applied"),
        ("r4", kept),
    ]


# Killed online only: the lint renders each revision offline first.
KILL = "if not op.get_context().as_sql: import os, signal; os.kill(os.getpid(), signal.SIGKILL)"


@pytest.mark.parametrize("where", ["before", "after"])
def test_a_run_killed_in_an_autocommit_block_leaves_its_revision_refused_by_name(
    tmp_path: Path, fresh_db: Callable[[str], URL], where: str
) -> None:
    # The process dies inside the block, before or after its statement: no
    # failure of ours is recorded. Only the rows the block's commit kept say
    # that r3 is applied and r4 was running.
    url = fresh_db("postgresql")
    ini = deployed(tmp_path, url, broken=AGE)
    index = 'op.create_index("ix_users_email", "users", ["email"], postgresql_concurrently=True)'
    inside = f"{KILL}\n    {index}" if where == "before" else f"{index}\n    {KILL}"
    body = f"with op.get_context().autocommit_block():\n    {inside}"
    write_revision(ini.parent, Rev("r4", "r3", "indexes outside the transaction, dies", body))

    killed = cli(ini, url, "upgrade")
    assert killed.returncode == -9, killed.stderr[-2000:]
    assert revisions(url) == {"r3"}
    assert rows(url, LATEST_OUTCOMES)[2:] == [("r3", "applied"), ("r4", "running")]

    again, refused = start(ini, url)
    assert isinstance(refused, PartialMigrationError), repr(refused)
    assert "r4 was being applied when its process stopped" in refused.message
    assert again.status.attempts == 1
