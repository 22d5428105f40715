"""AutoMigrator against real databases: plan, upgrade, verify, refusals, policies."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import anyio
import pytest
import sqlalchemy as sa
from sqlalchemy.engine import URL

from automigrator import (
    AutoMigrator,
    LogAndContinue,
    MigrationError,
    MigrationState,
    MultipleHeadsError,
    PartialMigrationError,
    SchemaAheadError,
    UnversionedDatabaseError,
)
from tests.conftest import revisions, rows, tables
from tests.project import BROKEN, CHAIN, EMAIL, USERS, Rev, make_project, write_revision


def run(migrator: AutoMigrator) -> Any:
    return anyio.run(migrator.run)


def test_empty_database_is_brought_to_head(ini: Path, db_url: URL) -> None:
    migrator = AutoMigrator(ini, url=db_url)

    status = run(migrator)

    assert status.state is MigrationState.READY
    assert status.revisions_before == ()
    assert status.revisions_after == ("r3",)
    assert status.heads == ("r3",)
    assert [a.revision for a in status.applied] == ["r1", "r2", "r3"]
    assert status.applied[0].message == "create users table"
    assert all(a.duration >= 0 for a in status.applied)
    assert status.duration is not None
    assert {"users", "alembic_version"} <= tables(db_url)
    assert rows(db_url, "SELECT name, email FROM users") == [("admin", "admin@example.com")]


def test_behind_database_gets_only_the_missing_revisions(tmp_path: Path, db_url: URL) -> None:
    ini = make_project(tmp_path / "p", (USERS,))
    run(AutoMigrator(ini, url=db_url))
    for rev in CHAIN[1:]:
        write_revision(tmp_path / "p", rev)

    status = run(AutoMigrator(ini, url=db_url))

    assert status.revisions_before == ("r1",)
    assert [a.revision for a in status.applied] == ["r2", "r3"]
    assert revisions(db_url) == {"r3"}


def test_at_head_costs_two_queries_and_applies_nothing(ini: Path, db_url: URL) -> None:
    # The version table's read, then the ledger's latest rows (checked against
    # the remembered fingerprints): no file read, no lock, no Alembic.
    migrator = AutoMigrator(ini, url=db_url)
    run(migrator)
    statements: list[str] = []

    def count(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        statements.append(statement)

    sa.event.listen(sa.engine.Engine, "before_cursor_execute", count)
    try:
        status = run(migrator)
    finally:
        sa.event.remove(sa.engine.Engine, "before_cursor_execute", count)

    assert status.state is MigrationState.READY
    assert status.applied == ()
    assert len(statements) == 2, statements
    assert "alembic_version" in statements[0]
    assert "automigrator_history" in statements[1]


def test_database_ahead_of_code_is_refused_untouched(ini: Path, db_url: URL) -> None:
    run(AutoMigrator(ini, url=db_url))
    engine = sa.create_engine(db_url, poolclass=sa.NullPool)
    with engine.begin() as conn:
        conn.exec_driver_sql("UPDATE alembic_version SET version_num = 'r9future'")
    before = tables(db_url)
    migrator = AutoMigrator(ini, url=db_url)

    with pytest.raises(SchemaAheadError) as caught:
        run(migrator)

    assert caught.value.revision == "r9future"
    assert "older than the database" in str(caught.value)
    assert tables(db_url) == before
    assert revisions(db_url) == {"r9future"}
    assert migrator.status.state is MigrationState.FAILED
    assert migrator.status.error_kind == "schema_ahead"


BRANCH_A = Rev(
    "r2a", "r1", "branch a", 'op.create_table("a", sa.Column("id", sa.Integer, primary_key=True))'
)
BRANCH_B = Rev(
    "r2b", "r1", "branch b", 'op.create_table("b", sa.Column("id", sa.Integer, primary_key=True))'
)


def test_multiple_heads_are_refused_before_any_ddl(tmp_path: Path, db_url: URL) -> None:
    ini = make_project(tmp_path / "p", (USERS, BRANCH_A, BRANCH_B))

    with pytest.raises(MultipleHeadsError) as caught:
        run(AutoMigrator(ini, url=db_url))

    assert set(caught.value.heads) == {"r2a", "r2b"}
    assert "alembic merge heads" in str(caught.value)
    assert "target='heads'" in str(caught.value)
    assert tables(db_url) == set()


def test_target_heads_applies_deliberate_branches(tmp_path: Path, db_url: URL) -> None:
    ini = make_project(tmp_path / "p", (USERS, BRANCH_A, BRANCH_B))

    status = run(AutoMigrator(ini, url=db_url, target="heads"))

    assert status.state is MigrationState.READY
    assert revisions(db_url) == {"r2a", "r2b"}
    assert {"a", "b", "users"} <= tables(db_url)


def test_pinned_target_stops_there_and_never_downgrades(ini: Path, db_url: URL) -> None:
    status = run(AutoMigrator(ini, url=db_url, target="r2"))
    assert status.revisions_after == ("r2",)

    run(AutoMigrator(ini, url=db_url))
    status = run(AutoMigrator(ini, url=db_url, target="r2"))

    assert status.state is MigrationState.READY
    assert revisions(db_url) == {"r3"}


def _create_users_by_hand(url: URL) -> None:
    engine = sa.create_engine(url, poolclass=sa.NullPool)
    with engine.begin() as conn:
        conn.exec_driver_sql(
            "CREATE TABLE users (id INTEGER PRIMARY KEY, name VARCHAR(50) NOT NULL)"
        )
        conn.exec_driver_sql("INSERT INTO users (id, name) VALUES (7, 'kept')")


def test_unversioned_database_is_refused_untouched(ini: Path, db_url: URL) -> None:
    _create_users_by_hand(db_url)

    with pytest.raises(UnversionedDatabaseError) as caught:
        run(AutoMigrator(ini, url=db_url))

    assert "baseline=" in str(caught.value)
    assert tables(db_url) == {"users"}
    assert rows(db_url, "SELECT id, name FROM users") == [(7, "kept")]


def test_unversioned_database_with_baseline_is_stamped_then_upgraded(
    tmp_path: Path, db_url: URL
) -> None:
    ini = make_project(tmp_path / "p", (USERS, EMAIL))
    _create_users_by_hand(db_url)

    status = run(AutoMigrator(ini, url=db_url, baseline="r1"))

    assert status.state is MigrationState.READY
    assert [a.revision for a in status.applied] == ["r2"]
    assert revisions(db_url) == {"r2"}
    assert rows(db_url, "SELECT id, name, email FROM users") == [(7, "kept", None)]


def test_failing_revision_under_fail_names_it(tmp_path: Path, db_url: URL) -> None:
    ini = make_project(tmp_path / "p", (USERS, EMAIL, BROKEN))
    migrator = AutoMigrator(ini, url=db_url)

    with pytest.raises((MigrationError, PartialMigrationError)) as caught:
        run(migrator)

    # MariaDB keeps r3's first statement (no transactional DDL): a partial
    # revision; elsewhere nothing of r3 stays.
    half = db_url.get_backend_name() in ("mysql", "mariadb")
    assert isinstance(caught.value, PartialMigrationError if half else MigrationError)
    assert caught.value.revision == "r3"
    assert "boom in r3" in str(caught.value)
    assert isinstance(caught.value.__cause__, RuntimeError)
    status = migrator.status
    assert status.state is MigrationState.FAILED
    assert status.error is not None
    assert "r3" in status.error
    assert status.error_kind == ("partial" if half else "migration")
    # Where the database really is: PostgreSQL rolls the whole run back,
    # SQLite and MariaDB keep the revisions applied before r3.
    expected = () if db_url.get_backend_name() == "postgresql" else ("r2",)
    assert status.revisions_after == expected
    assert revisions(db_url) == set(expected)


def test_failing_revision_under_log_and_continue_degrades(
    tmp_path: Path, db_url: URL, caplog: pytest.LogCaptureFixture
) -> None:
    ini = make_project(tmp_path / "p", (USERS, EMAIL, BROKEN))
    migrator = AutoMigrator(ini, url=db_url, on_failure=LogAndContinue())

    with caplog.at_level(logging.INFO, logger="automigrator"):
        status = run(migrator)

    assert status.state is MigrationState.DEGRADED
    assert status.error is not None
    assert "r3" in status.error
    critical = [r for r in caplog.records if r.levelno == logging.CRITICAL]
    assert len(critical) == 1
    assert "LogAndContinue()" in critical[0].getMessage()
    assert "DEGRADED" in critical[0].getMessage()


def test_each_applied_revision_is_logged_with_its_duration(
    ini: Path, sqlite_url: URL, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.INFO, logger="automigrator"):
        run(AutoMigrator(ini, url=sqlite_url))

    lines = [r.getMessage() for r in caplog.records if r.name == "automigrator"]
    applied = [line for line in lines if line.startswith("Applied ")]
    assert applied[0].startswith("Applied 1/3 r1 create users table in ")
    assert applied[2].startswith("Applied 3/3 r3 seed admin user in ")
    assert applied[0].endswith(" s")
    assert any(line.startswith("Schema ready at r3") for line in lines)


def test_a_message_over_several_lines_is_logged_on_one(
    tmp_path: Path, sqlite_url: URL, caplog: pytest.LogCaptureFixture
) -> None:
    # Alembic's doc is the docstring's first paragraph, lines and all.
    long = Rev("r1", None, "create users table\nwith its email index", USERS.body)
    ini = make_project(tmp_path / "p", (long,))

    with caplog.at_level(logging.INFO, logger="automigrator"):
        run(AutoMigrator(ini, url=sqlite_url))

    applied = [r.getMessage() for r in caplog.records if r.getMessage().startswith("Applied ")]
    assert applied[0].startswith("Applied 1/1 r1 create users table with its email index in ")
    assert "\n" not in applied[0]


def test_env_py_that_never_commits_fails_verification(ini: Path, pg_url: URL) -> None:
    # A classic env.py mistake: no context.begin_transaction(), so on a
    # database with transactional DDL the work is rolled back when the
    # connection closes, while Alembic reports success.
    env = ini.parent / "migrations" / "env.py"
    text = env.read_text()
    text = text.replace(
        "        with context.begin_transaction():\n            context.run_migrations()",
        "        context.run_migrations()",
    )
    assert "with context.begin_transaction():\n            context.run_migrations()" not in text
    env.write_text(text)
    migrator = AutoMigrator(ini, url=pg_url)

    with pytest.raises(MigrationError, match="did not record"):
        run(migrator)

    assert migrator.status.state is MigrationState.FAILED


def test_event_loop_keeps_running_during_a_migration(tmp_path: Path, sqlite_url: URL) -> None:
    # The revision blocks until a task on the event loop releases it: if the
    # migration ran on the loop's thread, the task could never run.
    waits = Rev(
        "r1",
        None,
        "waits for the event loop",
        """
        attributes = op.get_context().config.attributes
        attributes["started"].set()
        if not attributes["released"].wait(timeout=30):
            raise RuntimeError("the event loop was blocked")
        """,
    )
    ini = make_project(tmp_path / "p", (waits,))
    migrator = AutoMigrator(ini, url=sqlite_url)
    started, released = threading.Event(), threading.Event()
    migrator.config.attributes.update(started=started, released=released)
    seen: list[MigrationState] = []

    async def main() -> None:
        async with anyio.create_task_group() as tg:
            tg.start_soon(migrator.run)
            assert await anyio.to_thread.run_sync(started.wait, 30)
            seen.append(migrator.status.state)
            released.set()

    anyio.run(main)

    assert seen == [MigrationState.MIGRATING]
    assert migrator.status.state is MigrationState.READY


def test_url_argument_is_the_url_env_py_and_revisions_see(tmp_path: Path) -> None:
    (tmp_path / "data").mkdir()
    ini_url = f"sqlite:///{tmp_path / 'data' / 'from_ini.db'}"
    arg_url = f"sqlite:///{tmp_path / 'data' / 'from_arg.db'}"
    # A revision that opens its own engine from the config, as real ones do.
    own_engine = Rev(
        "r1",
        None,
        "opens its own engine",
        """
        url = op.get_context().config.get_main_option("sqlalchemy.url")
        engine = sa.create_engine(url)
        with engine.begin() as conn:
            conn.exec_driver_sql("CREATE TABLE seen_by_revision (x INTEGER)")
        engine.dispose()
        """,
    )
    ini = make_project(tmp_path / "p", (own_engine,))
    ini.write_text(ini.read_text().replace("driver://user:pass@localhost/dbname", ini_url))
    migrator = AutoMigrator(ini, url=arg_url)

    run(migrator)

    assert not (tmp_path / "data" / "from_ini.db").exists()
    assert tables(sa.make_url(arg_url)) == {
        "alembic_version",
        "automigrator_history",
        "seen_by_revision",
    }


def test_url_from_the_ini_is_used_when_no_url_is_given(tmp_path: Path) -> None:
    (tmp_path / "data").mkdir()
    url = f"sqlite:///{tmp_path / 'data' / 'ini.db'}"
    ini = make_project(tmp_path / "p", CHAIN)
    ini.write_text(ini.read_text().replace("driver://user:pass@localhost/dbname", url))

    status = run(AutoMigrator(ini))

    assert status.revisions_after == ("r3",)


def test_percent_encoded_password_survives_the_ini_interpolation(tmp_path: Path) -> None:
    ini = make_project(tmp_path / "p", CHAIN)
    migrator = AutoMigrator(
        ini, url=URL.create("postgresql+psycopg", "u", "p%40ss:w/rd", "localhost", 5432, "db")
    )
    assert sa.make_url(migrator.config.get_main_option("sqlalchemy.url") or "").password == (
        "p%40ss:w/rd"
    )


@pytest.mark.parametrize("kind", ["sqlite+aiosqlite", "postgresql+asyncpg"])
def test_async_template_runs_unchanged(
    tmp_path: Path, fresh_db: Callable[[str], URL], kind: str
) -> None:
    backend = "sqlite" if kind.startswith("sqlite") else "postgresql"
    url = fresh_db(backend)
    ini = make_project(tmp_path / "p", CHAIN, template="async")
    async_url = url.set(drivername=kind)

    status = run(AutoMigrator(ini, url=async_url))

    assert status.revisions_after == ("r3",)
    assert revisions(url) == {"r3"}


def test_logging_guard_keeps_the_apps_loggers_alive(
    ini: Path, sqlite_url: URL, tmp_path: Path
) -> None:
    # The generic env.py calls fileConfig(alembic.ini), which disables every
    # existing logger and replaces the root handlers.
    app_log = logging.getLogger("myapp.requests")
    records: list[str] = []

    class Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            records.append(record.getMessage())

    handler = Keep()
    app_log.addHandler(handler)
    app_log.setLevel(logging.INFO)
    root = logging.getLogger()
    root_handlers = list(root.handlers)
    try:
        run(AutoMigrator(ini, url=sqlite_url))
        app_log.info("still here")

        assert not app_log.disabled
        assert records == ["still here"]
        assert root.handlers == root_handlers
        assert not logging.getLogger("automigrator").disabled
    finally:
        app_log.removeHandler(handler)


class OnlyOnFridays(AutoMigrator):
    """A subclass deciding whether to run, like the reference design's callback."""

    def should_run(self) -> bool:
        return False


def test_subclass_can_decide_not_to_run(ini: Path, sqlite_url: URL) -> None:
    status = run(OnlyOnFridays(ini, url=sqlite_url))

    assert status.state is MigrationState.DISABLED
    assert not Path(str(sqlite_url.database)).exists()


class PurgeOnFailure(AutoMigrator):
    """The reference design's recovery, written as a migrate() override:
    on a failed migration, delete the SQLite file and migrate from scratch."""

    async def migrate(self) -> None:
        try:
            await super().migrate()
        except MigrationError:
            await anyio.Path(str(self.url.database)).unlink()
            await super().migrate()


PHONE = Rev("r4", "r3", "add phone", 'op.add_column("users", sa.Column("phone", sa.String(20)))')


def test_subclass_can_override_the_migrate_step(tmp_path: Path, sqlite_url: URL) -> None:
    project = tmp_path / "p"
    ini = make_project(project, CHAIN)
    run(AutoMigrator(ini, url=sqlite_url))
    # An appliance's database damaged by hand: r4 cannot apply to it.
    engine = sa.create_engine(sqlite_url, poolclass=sa.NullPool)
    with engine.begin() as conn:
        conn.exec_driver_sql("DROP TABLE users")
    write_revision(project, PHONE)

    status = run(PurgeOnFailure(ini, url=sqlite_url))

    assert status.state is MigrationState.READY
    assert revisions(sqlite_url) == {"r4"}
    assert rows(sqlite_url, "SELECT name, phone FROM users") == [("admin", None)]


def test_a_failure_says_which_revisions_stay_as_the_transactions_made_them(
    tmp_path: Path, db_url: URL, caplog: pytest.LogCaptureFixture
) -> None:
    broken = Rev("r3", "r2", "broken", 'raise RuntimeError("r3 is broken")')
    ini = make_project(tmp_path / "p", (USERS, EMAIL, broken))

    with (
        caplog.at_level(logging.INFO, logger="automigrator"),
        pytest.raises(MigrationError) as caught,
    ):
        run(AutoMigrator(ini, url=db_url))

    applied = [r.getMessage() for r in caplog.records if r.getMessage().startswith("Applied")]
    if db_url.get_backend_name() == "postgresql":
        # Alembic's template runs all three in one transaction: nothing stays.
        assert "0 were committed and stay; 2 were rolled back" in caught.value.message
        assert all("kept when its transaction commits" in line for line in applied)
        assert revisions(db_url) == set()
    else:
        assert "failed after 2 of 3 revision(s) were applied" in caught.value.message
        assert not any("kept when" in line for line in applied)
        assert revisions(db_url) == {"r2"}
