"""Failure policies against real faults on real databases."""

from __future__ import annotations

import logging
import sqlite3
import time
from pathlib import Path

import anyio
import pytest
import sqlalchemy as sa
from sqlalchemy.engine import URL

from automigrator import (
    AutoMigrator,
    AutomigratorError,
    Chain,
    ConfigurationError,
    DatabaseUnavailableError,
    Decision,
    Failure,
    LockTimeoutError,
    LogAndContinue,
    MigrationError,
    MigrationState,
    MultipleHeadsError,
    PurgeAndRetry,
    RestoreBackup,
    Retry,
    SchemaAheadError,
    Timeouts,
    UnsafeMigrationError,
    UnversionedDatabaseError,
)
from automigrator.locking import lock_for
from tests.conftest import revisions, rows, server_url
from tests.helpers import ALWAYS_BROKEN, OLD_ROWS, UNIQUE_NAMES, deployed, user_rows
from tests.processes import start_replicas
from tests.project import EMAIL, USERS, Rev, make_project, write_revision


def test_fail_leaves_the_database_as_the_database_left_it(tmp_path: Path, db_url: URL) -> None:
    ini = deployed(tmp_path, db_url)
    migrator = AutoMigrator(ini, url=db_url)

    with pytest.raises(MigrationError) as caught:
        anyio.run(migrator.run)

    assert caught.value.revision == "r3"
    assert migrator.status.error is not None
    assert "r3" in migrator.status.error
    assert migrator.status.state is MigrationState.FAILED
    assert revisions(db_url) == {"r2"}
    assert user_rows(db_url) == OLD_ROWS


def test_log_and_continue_starts_degraded_with_the_rows(tmp_path: Path, db_url: URL) -> None:
    ini = deployed(tmp_path, db_url)
    status = anyio.run(AutoMigrator(ini, url=db_url, on_failure=LogAndContinue()).run)

    assert status.state is MigrationState.DEGRADED
    assert status.revisions_after == ("r2",)
    assert user_rows(db_url) == OLD_ROWS


def backup_rows(url: URL) -> list[tuple[object, ...]]:
    """The rows of ``users`` in the newest backup PurgeAndRetry made of ``url``."""
    backend = url.get_backend_name()
    if backend == "sqlite":
        path = Path(str(url.database))
        [copy] = sorted(path.parent.glob(f"{path.name}.backup-*.sqlite"))
        with sqlite3.connect(copy) as db:
            found = db.execute("SELECT name, email FROM users ORDER BY email").fetchall()
        db.close()
        return [tuple(r) for r in found]
    if backend == "postgresql":
        [(schema,)] = rows(
            url,
            "SELECT nspname FROM pg_namespace WHERE nspname LIKE 'public\\_quarantine\\_%%'",
        )
        return rows(url, f"SELECT name, email FROM {schema}.users ORDER BY email")
    [(database,)] = rows(
        url,
        "SELECT schema_name FROM information_schema.schemata "
        f"WHERE schema_name LIKE '{url.database}\\_quarantine\\_%%'",
    )
    try:
        return rows(url, f"SELECT name, email FROM {database}.users ORDER BY email")
    finally:
        engine = sa.create_engine(url, poolclass=sa.NullPool)
        with engine.begin() as conn:
            conn.exec_driver_sql(f"DROP DATABASE {database}")
        engine.dispose()


def test_purge_and_retry_backs_up_then_migrates_from_scratch(
    tmp_path: Path, db_url: URL, caplog: pytest.LogCaptureFixture
) -> None:
    ini = deployed(tmp_path, db_url)
    migrator = AutoMigrator(ini, url=db_url, on_failure=PurgeAndRetry())

    with caplog.at_level(logging.INFO, logger="automigrator"):
        status = anyio.run(migrator.run)

    assert status.state is MigrationState.READY
    assert status.attempts == 2
    assert revisions(db_url) == {"r3"}
    assert user_rows(db_url) == []  # a fresh database
    assert backup_rows(db_url) == OLD_ROWS  # and the old rows are kept aside
    critical = [r.getMessage() for r in caplog.records if r.levelno == logging.CRITICAL]
    assert len(critical) == 1
    assert "PURGED" in critical[0]
    assert "backup: " in critical[0]


def sqlite_content(url: URL) -> list[str]:
    with sqlite3.connect(str(url.database)) as conn:
        dump = list(conn.iterdump())
    conn.close()
    return dump


def test_restore_backup_puts_the_sqlite_file_back(tmp_path: Path, sqlite_url: URL) -> None:
    ini = deployed(tmp_path, sqlite_url)
    before = sqlite_content(sqlite_url)
    policy = Chain(RestoreBackup(), LogAndContinue())

    status = anyio.run(AutoMigrator(ini, url=sqlite_url, on_failure=policy).run)

    assert status.state is MigrationState.DEGRADED
    # Nothing of r3 stays: same tables, same rows.
    assert sqlite_content(sqlite_url) == before


def test_restore_backup_alone_fails_after_restoring(tmp_path: Path, sqlite_url: URL) -> None:
    ini = deployed(tmp_path, sqlite_url)
    before = sqlite_content(sqlite_url)

    with pytest.raises(MigrationError):
        anyio.run(AutoMigrator(ini, url=sqlite_url, on_failure=RestoreBackup()).run)

    assert sqlite_content(sqlite_url) == before


def test_restore_backup_refuses_a_server_before_any_ddl(tmp_path: Path, pg_url: URL) -> None:
    ini = deployed(tmp_path, pg_url)

    with pytest.raises(ConfigurationError, match="RestoreBackup works on SQLite"):
        anyio.run(AutoMigrator(ini, url=pg_url, on_failure=RestoreBackup()).run)

    assert revisions(pg_url) == {"r2"}
    assert "audit" not in {r[0] for r in rows(pg_url, "SELECT tablename FROM pg_tables")}


def not_the_migrations_fault(kind: str, ini: Path, url: URL) -> AutoMigrator:
    """A migrator whose run fails with an error of ``kind`` that is not a migration's."""
    policy = PurgeAndRetry()
    if kind == "schema_ahead":
        (ini.parent / "migrations" / "versions" / "r3.py").unlink()
        write_revision(ini.parent, Rev("r3", "r2", "ok", "pass"))
        # The database at r3, applied without the lint: no verdict says the
        # code at r2 works on it, so the default (when_ahead="compatible") refuses.
        anyio.run(AutoMigrator(ini, url=url, lint="off").run)
        (ini.parent / "migrations" / "versions" / "r3.py").unlink()  # ... the code at r2
    elif kind == "multiple_heads":
        write_revision(ini.parent, Rev("r4", "r2", "a second head", "pass"))
    elif kind == "configuration":
        return AutoMigrator(ini, url=url, target="no_such_revision", on_failure=policy)
    elif kind == "lock_timeout":
        return AutoMigrator(ini, url=url, timeouts=Timeouts(lock=0.5), on_failure=policy)
    elif kind == "unsafe":  # lint="refuse": the old version still reads the column
        (ini.parent / "migrations" / "versions" / "r3.py").unlink()
        body = 'with op.batch_alter_table("users") as b:\n    b.drop_column("email")'
        write_revision(ini.parent, Rev("r3", "r2", "drop email", body))
        return AutoMigrator(ini, url=url, lint="refuse", on_failure=policy)
    elif kind == "unversioned":
        engine = sa.create_engine(url, poolclass=sa.NullPool)
        with engine.begin() as conn:
            conn.execute(sa.text("DROP TABLE alembic_version"))
        engine.dispose()
    return AutoMigrator(ini, url=url, on_failure=policy)


KINDS = {
    "schema_ahead": SchemaAheadError,
    "multiple_heads": MultipleHeadsError,
    "configuration": ConfigurationError,
    "lock_timeout": LockTimeoutError,
    "unversioned": UnversionedDatabaseError,
    "unsafe": UnsafeMigrationError,
}


@pytest.mark.parametrize("kind", sorted(KINDS))
def test_purge_and_retry_touches_nothing_when_it_is_not_the_migrations_fault(
    tmp_path: Path, db_url: URL, kind: str
) -> None:
    ini = deployed(tmp_path, db_url)
    migrator = not_the_migrations_fault(kind, ini, db_url)
    holder = lock_for(db_url)
    if kind == "lock_timeout":
        assert holder.acquire(0)
    before = revisions(db_url)
    try:
        with pytest.raises(KINDS[kind]):
            anyio.run(migrator.run)
    finally:
        if kind == "lock_timeout":
            holder.release()

    assert user_rows(db_url) == OLD_ROWS
    assert revisions(db_url) == before
    assert migrator.status.attempts == 1  # no purge, no retry


@pytest.mark.parametrize("server", ["postgresql", "mariadb"])
def test_purge_and_retry_touches_nothing_on_bad_credentials_or_no_server(
    tmp_path: Path, server: str
) -> None:
    ini = make_project(tmp_path / "proj", (USERS,))
    good = server_url(server)
    for url, error in [
        (good.set(password="wrong-password", username="nobody_here"), ConfigurationError),
        (good.set(port=1), DatabaseUnavailableError),
    ]:
        migrator = AutoMigrator(
            ini, url=url, timeouts=Timeouts(connect=0), on_failure=PurgeAndRetry()
        )
        with pytest.raises(error):
            anyio.run(migrator.run)
        assert migrator.status.attempts == 1


class FailingLock:
    """A real lock for the database that says "held elsewhere" the first ``busy`` times."""

    def __init__(self, url: URL, busy: int) -> None:
        self.inner = lock_for(url)
        self.busy = busy

    def acquire(self, timeout: float) -> bool:
        if self.busy > 0:
            self.busy -= 1
            time.sleep(timeout)  # what a held lock does: block up to timeout, then say no
            return False
        return self.inner.acquire(timeout)

    def release(self) -> None:
        self.inner.release()

    def holder(self) -> str | None:
        return "a test"


def test_retry_gets_past_a_transient_failure(tmp_path: Path, db_url: URL) -> None:
    ini = make_project(tmp_path / "proj", (USERS, EMAIL))
    # The first attempt times out on the lock (its first try and one slice).
    lock = FailingLock(db_url, busy=2)
    migrator = AutoMigrator(
        ini, url=db_url, lock=lock, timeouts=Timeouts(lock=0.2), on_failure=Retry(delay=0.01)
    )

    status = anyio.run(migrator.run)

    assert status.state is MigrationState.READY
    assert status.attempts == 2
    assert revisions(db_url) == {"r2"}


def test_retry_gives_up_after_its_times(tmp_path: Path, db_url: URL) -> None:
    ini = make_project(tmp_path / "proj", (USERS,))
    lock = FailingLock(db_url, busy=1000)
    migrator = AutoMigrator(
        ini,
        url=db_url,
        lock=lock,
        timeouts=Timeouts(lock=0.1),
        on_failure=Retry(times=2, delay=0.01),
    )

    with pytest.raises(LockTimeoutError):
        anyio.run(migrator.run)

    assert migrator.status.attempts == 3


def test_chain_purges_once_then_continues_degraded(
    tmp_path: Path, sqlite_url: URL, caplog: pytest.LogCaptureFixture
) -> None:
    # The reference design: retry, then purge and retry, then log and continue.
    ini = deployed(tmp_path, sqlite_url, broken=ALWAYS_BROKEN)
    policy = Chain(Retry(), PurgeAndRetry(), LogAndContinue())

    with caplog.at_level(logging.INFO, logger="automigrator"):
        status = anyio.run(AutoMigrator(ini, url=sqlite_url, on_failure=policy).run)

    assert status.state is MigrationState.DEGRADED
    assert status.attempts == 2  # one purge, then the same failure from scratch
    decisions = [r.getMessage() for r in caplog.records if "decided" in r.getMessage()]
    assert "PurgeAndRetry(" in decisions[0]
    assert "decided to retry" in decisions[0]
    assert "LogAndContinue()" in decisions[1]
    assert "DEGRADED" in decisions[1]
    assert backup_rows(sqlite_url) == OLD_ROWS


class AlertThenFail:
    """The documented example of a policy of one's own."""

    def __init__(self) -> None:
        self.sent: list[str] = []

    async def handle(self, failure: Failure) -> Decision:
        self.sent.append(f"{failure.kind}: {failure.error}")  # e.g. post to a pager
        return Decision.fail("alert sent")


def test_a_policy_of_ones_own(tmp_path: Path, sqlite_url: URL) -> None:
    ini = deployed(tmp_path, sqlite_url)
    policy = AlertThenFail()

    with pytest.raises(AutomigratorError):
        anyio.run(AutoMigrator(ini, url=sqlite_url, on_failure=policy).run)

    assert len(policy.sent) == 1
    assert policy.sent[0].startswith("migration: ")


HANGING_EMAIL = Rev(
    "r2",
    "r1",
    "add email, slowly",
    """
    import os
    import sys
    import time

    if os.environ.get("AM_HANG"):
        print("r2 is running", file=sys.stderr, flush=True)
        time.sleep(3600)
    op.add_column("users", sa.Column("email", sa.String(100)))
    """,
)


def test_killed_mid_migration_the_next_start_completes_with_the_rows(
    tmp_path: Path, db_url: URL
) -> None:
    ini = make_project(tmp_path / "proj", (USERS,))
    anyio.run(AutoMigrator(ini, url=db_url).run)
    engine = sa.create_engine(db_url, poolclass=sa.NullPool)
    with engine.begin() as conn:
        conn.execute(sa.text("INSERT INTO users (name) VALUES ('ann'), ('bob')"))
    engine.dispose()
    write_revision(ini.parent, HANGING_EMAIL)
    [proc] = start_replicas(ini, db_url, 1, env={"AM_HANG": "1"})
    assert proc.stderr is not None
    for line in proc.stderr:
        if "r2 is running" in line:
            break
    proc.kill()  # SIGKILL, holding the lock, in the middle of the upgrade
    proc.communicate()

    status = anyio.run(AutoMigrator(ini, url=db_url, timeouts=Timeouts(lock=30)).run)

    assert status.state is MigrationState.READY
    assert revisions(db_url) == {"r2"}
    assert rows(db_url, "SELECT name FROM users ORDER BY name") == [("ann",), ("bob",)]


class PurgingMigrator(AutoMigrator):
    """The docs' example of the reference design's style (docs/policies.md)."""

    async def migrate(self) -> None:
        try:
            await super().migrate()
        except MigrationError:
            logging.getLogger("app").exception("Migration failed: purging, from scratch")
            async with self.locked():
                await self.purge(backup=True)
            await super().migrate()


@pytest.mark.parametrize(
    ("broken", "state"),
    [(UNIQUE_NAMES, MigrationState.READY), (ALWAYS_BROKEN, MigrationState.DEGRADED)],
)
def test_the_reference_designs_override_style(
    tmp_path: Path, sqlite_url: URL, broken: Rev, state: MigrationState
) -> None:
    ini = deployed(tmp_path, sqlite_url, broken=broken)
    migrator = PurgingMigrator(ini, url=sqlite_url, on_failure=LogAndContinue())

    status = anyio.run(migrator.run)

    assert status.state is state
    assert backup_rows(sqlite_url) == OLD_ROWS


def test_a_second_purge_before_any_success_is_refused_and_keeps_the_rows(
    tmp_path: Path, sqlite_url: URL
) -> None:
    # Purging the fresh database again could only throw away the one backup
    # that matters (keep=1): the second purge is refused, naming it.
    ini = deployed(tmp_path, sqlite_url, broken=ALWAYS_BROKEN)
    policy = Chain(PurgeAndRetry(max_attempts=2, keep=1), LogAndContinue())
    migrator = AutoMigrator(ini, url=sqlite_url, on_failure=policy)

    status = anyio.run(migrator.run)

    assert status.attempts == 2  # one purge, then the refusal
    assert backup_rows(sqlite_url) == OLD_ROWS
    assert migrator.status.state is MigrationState.DEGRADED
