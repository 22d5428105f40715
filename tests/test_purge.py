"""Nothing lost: the destructive policies under crash loops, crowds and look-alike names.

Real databases and real processes. Each test injects the fault the guarantee
is about (a restart loop, 16 processes at once, a name that LIKE would match
unescaped, a failure between the PostgreSQL rename and create) and checks
the rows from before the failure are still in a backup.
"""

from __future__ import annotations

import json
import sqlite3
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import anyio
import pytest
import sqlalchemy as sa
from sqlalchemy.engine import URL

from automigrator import (
    AutoMigrator,
    Chain,
    ConfigurationError,
    Ddl,
    Decision,
    LogAndContinue,
    MigrationError,
    MigrationState,
    PurgeAndRetry,
    RestoreBackup,
)
from automigrator.database._purge import quarantine_prefix
from tests.conftest import revisions, rows, server_url
from tests.faults import Background, wait_for
from tests.helpers import ALWAYS_BROKEN, OLD_ROWS, UNIQUE_NAMES, backups, cli, deployed, user_rows
from tests.processes import start_replicas
from tests.project import EMAIL, USERS, Rev, make_project, waiting, write_revision

DROPS_THEN_FAILS = Rev(
    "r3", "r2", "drops the table, then fails", 'op.drop_table("users")\nraise RuntimeError("r3")'
)


def rows_in(url: URL, backup: str) -> list[tuple[object, ...]]:
    """The users in one backup."""
    if url.get_backend_name() == "sqlite":
        with sqlite3.connect(backup) as db:
            found = db.execute("SELECT name, email FROM users ORDER BY email").fetchall()
        db.close()
        return [tuple(r) for r in found]
    return rows(url, f"SELECT name, email FROM {backup}.users ORDER BY email")


@pytest.fixture
def quarantines_dropped(db_url: URL) -> Iterator[URL]:
    """db_url, with MariaDB quarantine databases dropped afterwards (they are databases)."""
    yield db_url
    if db_url.get_backend_name() in ("mysql", "mariadb"):
        engine = sa.create_engine(db_url, poolclass=sa.NullPool)
        with engine.begin() as conn:
            for name in backups(db_url):
                conn.exec_driver_sql(f"DROP DATABASE `{name}`")
        engine.dispose()


def test_a_crash_loop_purges_once_and_the_rows_stay_in_the_backup(
    tmp_path: Path, quarantines_dropped: URL
) -> None:
    url = quarantines_dropped
    ini = deployed(tmp_path, url, broken=ALWAYS_BROKEN)

    # An unattended box restarting its command four times (keep=3 by default).
    runs = [cli(ini, url, "upgrade", "--on-failure", "purge") for _ in range(4)]

    assert [run.returncode for run in runs] == [1, 1, 1, 1]
    [backup] = backups(url)  # one purge in all
    assert rows_in(url, backup) == OLD_ROWS
    for run in runs[1:]:
        assert "Not purging again" in run.stderr
        assert backup.rsplit("/", 1)[-1] in run.stderr  # the message names the backup


@pytest.mark.slow
def test_sixteen_processes_with_a_failing_revision_purge_once(
    tmp_path: Path, quarantines_dropped: URL
) -> None:
    url = quarantines_dropped
    ini = deployed(tmp_path, url, broken=ALWAYS_BROKEN)

    procs = start_replicas(ini, url, 16, env={"AM_POLICY": "appliance"})
    results = [proc.communicate(timeout=240) for proc in procs]

    statuses = [json.loads(out) for out, _ in results]
    assert [proc.returncode for proc in procs] == [0] * 16
    # Every process says what the database holds: r3 is broken, so r2 (or
    # nothing, where PostgreSQL rolled the whole fresh run back).
    at = () if url.get_backend_name() == "postgresql" else ("r2",)
    assert {(s["state"], tuple(s["revisions_after"])) for s in statuses} == {("degraded", at)}
    assert revisions(url) == set(at)
    [backup] = backups(url)
    assert rows_in(url, backup) == OLD_ROWS


def test_a_database_another_process_just_purged_is_migrated_not_given_up_on(
    tmp_path: Path, quarantines_dropped: URL
) -> None:
    # The crowd's race, made deterministic: this process's attempt fails on the
    # old rows (r3 adds a unique index the duplicates break); before its policy
    # holds the lock, another process purges and dies before migrating again.
    # The database is then empty and marked purged: this process must migrate
    # it (r3 now applies), not start degraded on an empty database.
    url = quarantines_dropped
    ini = deployed(tmp_path, url)

    class PurgeThenDie(PurgeAndRetry):
        async def handle(self, failure):  # type: ignore[no-untyped-def]
            decision = await super().handle(failure)
            assert decision.action == "retry"
            return Decision.fail("killed after the purge, before migrating again")

    class PurgedMeanwhile(PurgeAndRetry):
        async def handle(self, failure):  # type: ignore[no-untyped-def]
            with pytest.raises(MigrationError):
                await AutoMigrator(ini, url=url, on_failure=PurgeThenDie()).run()
            return await super().handle(failure)

    policy = Chain(PurgedMeanwhile(), LogAndContinue())
    status = anyio.run(AutoMigrator(ini, url=url, on_failure=policy).run)

    assert status.state is MigrationState.READY, status.error
    assert revisions(url) == {"r3"}
    [backup] = backups(url)
    assert rows_in(url, backup) == OLD_ROWS


def test_a_purge_after_another_process_migrated_purges_nothing(
    tmp_path: Path, quarantines_dropped: URL
) -> None:
    # This process failed; by the time its policy holds the lock, another
    # process has brought the database to the target (and served on it).
    url = quarantines_dropped
    ini = deployed(tmp_path, url, broken=ALWAYS_BROKEN)
    migrator = AutoMigrator(ini, url=url, on_failure=PurgeAndRetry())

    class MigratedMeanwhile(PurgeAndRetry):
        async def handle(self, failure):  # type: ignore[no-untyped-def]
            fixed = ini.parent / "migrations" / "versions" / "r3.py"
            fixed.write_text(
                fixed.read_text().replace('raise RuntimeError("r3 is broken")', "pass")
            )
            await AutoMigrator(ini, url=url).run()  # the other process
            return await super().handle(failure)

    migrator.on_failure = MigratedMeanwhile()
    status = anyio.run(migrator.run)

    assert status.ready
    assert backups(url) == []
    assert user_rows(url) == OLD_ROWS


def test_rotation_never_touches_a_look_alike_database(tmp_path: Path) -> None:
    # 'am_x' and 'amXx' match the same unescaped LIKE 'am_x%'.
    admin = sa.create_engine(server_url("mariadb"), isolation_level="AUTOCOMMIT")
    name = f"am_{uuid.uuid4().hex[:8]}"
    look_alike = f"{name.replace('_', 'X')}_quarantine_20000101t000000000000"
    with admin.connect() as conn:
        conn.exec_driver_sql(f"CREATE DATABASE {name}")
        conn.exec_driver_sql(f"CREATE DATABASE {look_alike}")
        conn.exec_driver_sql(f"CREATE TABLE {look_alike}.precious (id INT)")
    url = server_url("mariadb").set(database=name)
    try:
        ini = deployed(tmp_path, url)  # r3 fails on the rows, works from scratch
        anyio.run(AutoMigrator(ini, url=url, on_failure=PurgeAndRetry(keep=1)).run)

        assert len(backups(url)) == 1
        assert rows(url, f"SELECT count(*) FROM {look_alike}.precious") == [(0,)]
    finally:
        with admin.connect() as conn:
            for each in [name, look_alike, *backups(url)]:
                conn.exec_driver_sql(f"DROP DATABASE IF EXISTS {each}")
        admin.dispose()


def test_mariadb_quarantine_names_fit_64_characters_and_stay_unique(tmp_path: Path) -> None:
    admin = sa.create_engine(server_url("mariadb"), isolation_level="AUTOCOMMIT")
    name = f"am_{uuid.uuid4().hex}_" + "x" * 26  # 62 characters
    with admin.connect() as conn:
        conn.exec_driver_sql(f"CREATE DATABASE {name}")
    url = server_url("mariadb").set(database=name)
    try:
        ini = deployed(tmp_path, url)
        for _ in range(2):  # two purges the same day, each followed by a success
            migrator = AutoMigrator(ini, url=url, on_failure=PurgeAndRetry())
            assert anyio.run(migrator.run).ready
            engine = sa.create_engine(url, poolclass=sa.NullPool)
            with engine.begin() as conn:  # back to a database r3 fails on
                conn.exec_driver_sql("DROP TABLE audit")
                conn.exec_driver_sql("DROP INDEX ix_users_name ON users")
                conn.exec_driver_sql("UPDATE alembic_version SET version_num = 'r2'")
                conn.exec_driver_sql(
                    "INSERT INTO users (name, email) VALUES ('ann', 'a@x'), ('ann', 'b@x')"
                )
            engine.dispose()

        found = backups(url)
        assert len(found) == 2
        assert all(len(each) <= 64 for each in found)
    finally:
        with admin.connect() as conn:
            for each in [name, *backups(url)]:
                conn.exec_driver_sql(f"DROP DATABASE IF EXISTS `{each}`")
        admin.dispose()


def test_a_failure_between_the_postgresql_rename_and_create_keeps_the_schema(
    tmp_path: Path, pg_url: URL
) -> None:
    ini = deployed(tmp_path, pg_url, broken=UNIQUE_NAMES)
    # The fault: CREATE SCHEMA fails (an event trigger on this test's own
    # database), right after the schema was renamed away.
    engine = sa.create_engine(pg_url, poolclass=sa.NullPool)
    with engine.begin() as conn:
        conn.exec_driver_sql(
            "CREATE FUNCTION no_new_schema() RETURNS event_trigger LANGUAGE plpgsql AS "
            "$$ BEGIN RAISE EXCEPTION 'injected: no CREATE SCHEMA'; END $$"
        )
        conn.exec_driver_sql(
            "CREATE EVENT TRIGGER no_new_schema ON ddl_command_start "
            "WHEN TAG IN ('CREATE SCHEMA') EXECUTE FUNCTION no_new_schema()"
        )
    engine.dispose()

    with pytest.raises(MigrationError):
        anyio.run(AutoMigrator(ini, url=pg_url, on_failure=PurgeAndRetry()).run)

    assert backups(pg_url) == []  # the rename was rolled back with the create
    assert user_rows(pg_url) == OLD_ROWS
    assert revisions(pg_url) == {"r2"}


def test_restore_backup_keeps_the_rows_after_a_sigkill_mid_revision(
    tmp_path: Path,
    sqlite_url: URL,
    signals: Path,
) -> None:
    # r3 drops the table (SQLite commits that at once), then the process is
    # killed: the next start must not take the damaged file for the good copy.
    r3 = waiting(
        "r3", "r2", then='raise RuntimeError("r3 fails")', before='op.drop_table("users")'
    )
    ini = deployed(tmp_path, sqlite_url, broken=r3)
    [first] = start_replicas(ini, sqlite_url, 1, env={"AM_POLICY": "restore"})
    wait_for(signals / "r3.running")
    first.kill()  # SIGKILL, mid-revision, the table already gone
    first.communicate()
    (signals / "r3.go").touch()

    with pytest.raises(MigrationError):
        anyio.run(AutoMigrator(ini, url=sqlite_url, on_failure=RestoreBackup()).run)

    assert user_rows(sqlite_url) == OLD_ROWS
    assert revisions(sqlite_url) == {"r2"}


def test_restore_backup_keeps_the_rows_after_a_sigkill_mid_restore(
    tmp_path: Path, sqlite_url: URL
) -> None:
    ini = deployed(tmp_path, sqlite_url, broken=DROPS_THEN_FAILS)
    with sqlite3.connect(str(sqlite_url.database)) as db:  # a copy that takes a while
        db.execute("CREATE TABLE bulk (data BLOB)")
        db.executemany("INSERT INTO bulk VALUES (randomblob(1048576))", [()] * 48)
    db.close()
    [first] = start_replicas(ini, sqlite_url, 1, env={"AM_POLICY": "restore"})
    database = Path(str(sqlite_url.database))
    partial = database.with_name(f".{database.name}.partial")  # the restore's copy, under way
    while not partial.exists():
        assert first.poll() is None, first.communicate()
        time.sleep(0.001)
    first.kill()  # SIGKILL in the middle of putting the database back
    first.communicate()

    with pytest.raises(MigrationError):
        anyio.run(AutoMigrator(ini, url=sqlite_url, on_failure=RestoreBackup()).run)

    assert user_rows(sqlite_url) == OLD_ROWS
    assert rows(sqlite_url, "SELECT count(*) FROM bulk") == [(48,)]


def test_a_schema_lost_to_an_old_purge_is_named_with_its_quarantine(
    tmp_path: Path, pg_url: URL
) -> None:
    # What a kill between the two statements of the old, non-atomic purge left.
    ini = deployed(tmp_path, pg_url)
    engine = sa.create_engine(pg_url, poolclass=sa.NullPool)
    with engine.begin() as conn:
        conn.exec_driver_sql(
            "ALTER SCHEMA public RENAME TO public_quarantine_20250101t000000000000"
        )
    engine.dispose()

    with pytest.raises(ConfigurationError, match="public_quarantine_20250101t000000000000"):
        anyio.run(AutoMigrator(ini, url=pg_url).run)


def test_a_purge_behind_a_reader_gives_up_at_the_ddl_lock_timeout_and_moves_nothing(
    tmp_path: Path, fresh_db: Callable[[str], URL]
) -> None:
    url = fresh_db("mariadb")
    ini = deployed(tmp_path, url)  # r3 fails on its first statement: a purge is due
    with sa.create_engine(url, poolclass=sa.NullPool).begin() as conn:
        conn.exec_driver_sql("CREATE VIEW user_names AS SELECT name FROM users")
    reader = sa.create_engine(url, poolclass=sa.NullPool).connect()
    reader.begin()
    reader.exec_driver_sql("SELECT * FROM alembic_version").all()  # its table stays open
    try:
        migrator = AutoMigrator(ini, url=url, on_failure=PurgeAndRetry(), ddl=Ddl(lock_timeout=1))
        error = Background(migrator).result()
        reading = reader.in_transaction()  # the run ended while the reader still reads
    finally:
        reader.rollback()
        reader.close()

    assert reading
    assert isinstance(error, MigrationError), repr(error)  # the revision's: nothing purged
    assert backups(url) == []  # the quarantine made for the intent is gone again
    assert user_rows(url) == OLD_ROWS
    assert len(rows(url, "SELECT name FROM user_names")) == len(OLD_ROWS)  # the view stays
    assert revisions(url) == {"r2"}
    # With the reader gone, the purge is not refused as "already purged":
    # nothing was. It backs up, purges, and r1-r3 run on the empty database.
    status = anyio.run(AutoMigrator(ini, url=url, on_failure=PurgeAndRetry()).run)
    assert status.state is MigrationState.READY
    assert len(backups(url)) == 1


@pytest.mark.parametrize("then", ["degraded serving", "the old version serving"])
def test_restore_backup_never_goes_back_over_rows_written_after_a_failed_update(
    tmp_path: Path, sqlite_url: URL, then: str
) -> None:
    # The update fails and is put back; then the documented appliance recipe
    # serves degraded, or (RestoreBackup alone: start-up fails) the old
    # version is rolled back to and serves.
    ini = deployed(tmp_path, sqlite_url, broken=DROPS_THEN_FAILS)
    degraded = then == "degraded serving"
    policy = Chain(RestoreBackup(), LogAndContinue()) if degraded else RestoreBackup()
    failed = AutoMigrator(ini, url=sqlite_url, on_failure=policy)
    if degraded:
        assert anyio.run(failed.run).state is MigrationState.DEGRADED
    else:
        with pytest.raises(MigrationError):
            anyio.run(failed.run)
    # Meanwhile the application writes: 25 rows the next update must keep.
    with sa.create_engine(sqlite_url, poolclass=sa.NullPool).begin() as conn:
        for number in range(25):
            conn.exec_driver_sql(f"INSERT INTO users (name) VALUES ('new{number}')")
    fixed = Rev("r3", "r2", "fixed", 'op.create_table("audit", sa.Column("id", sa.Integer))')
    (ini.parent / "migrations" / "versions" / "r3.py").unlink()
    write_revision(ini.parent, fixed)

    status = anyio.run(AutoMigrator(ini, url=sqlite_url, on_failure=policy).run)

    assert status.state is MigrationState.READY
    assert rows(sqlite_url, "SELECT count(*) FROM users WHERE name LIKE 'new%'") == [(25,)]
    assert set(OLD_ROWS) <= set(user_rows(sqlite_url))


def test_restore_backup_drops_its_copy_after_a_failure_that_is_not_the_revisions(
    tmp_path: Path, sqlite_url: URL
) -> None:
    # The attempt meets a writer's lock (contention): RestoreBackup passes it
    # on and puts nothing back. The copy used to stay, and the next start put
    # it back over what the degraded app wrote meanwhile.
    ini = make_project(tmp_path / "p", (USERS, EMAIL))
    anyio.run(AutoMigrator(ini, url=sqlite_url).run)
    write_revision(
        ini.parent, Rev("r3", "r2", "age", 'op.add_column("users", sa.Column("age", sa.Integer))')
    )
    policy = Chain(RestoreBackup(), LogAndContinue())
    writer = sqlite3.connect(str(sqlite_url.database), isolation_level=None)
    writer.execute("BEGIN IMMEDIATE")  # the application holds the write lock
    try:
        busy = AutoMigrator(
            ini, url=sqlite_url, on_failure=policy, ddl=Ddl(lock_timeout=0.3, retries=0)
        )
        assert anyio.run(busy.run).state is MigrationState.DEGRADED
        assert busy.status.error_kind == "contention"
        writer.execute("INSERT INTO users (name) VALUES ('written while degraded')")
        writer.execute("COMMIT")
    finally:
        writer.close()

    status = anyio.run(AutoMigrator(ini, url=sqlite_url, on_failure=policy).run)

    assert status.state is MigrationState.READY
    assert rows(
        sqlite_url, "SELECT count(*) FROM users WHERE name = 'written while degraded'"
    ) == [(1,)]


def _quarantine(url: URL, stamp: str, settled: bool | None) -> str:
    """A quarantine database as a purge leaves it; ``settled=None``: its marker has no row."""
    name = quarantine_prefix(str(url.database), "mysql") + stamp
    with sa.create_engine(
        url, isolation_level="AUTOCOMMIT", poolclass=sa.NullPool
    ).connect() as conn:
        conn.exec_driver_sql(f"CREATE DATABASE `{name}`")
        conn.exec_driver_sql(f"CREATE TABLE `{name}`.automigrator_purge (settled BOOL NOT NULL)")
        if settled is not None:
            conn.exec_driver_sql(
                f"INSERT INTO `{name}`.automigrator_purge VALUES ({int(settled)})"
            )
    return name


def test_a_marker_without_its_row_recorded_no_purge_and_blocks_none(
    tmp_path: Path, fresh_db: Callable[[str], URL]
) -> None:
    # A kill between the marker's CREATE and its INSERT: nothing was moved yet.
    url = fresh_db("mariadb")
    ini = deployed(tmp_path, url)
    empty = _quarantine(url, "20250101t000000000000", settled=None)

    status = anyio.run(AutoMigrator(ini, url=url, on_failure=PurgeAndRetry()).run)

    assert status.state is MigrationState.READY  # purged, then migrated from scratch
    assert [b for b in backups(url) if b != empty] != []


def test_an_unsettled_purge_blocks_the_next_whatever_the_clocks_said(
    tmp_path: Path, fresh_db: Callable[[str], URL]
) -> None:
    # The unsettled quarantine holds the rows; a settled one made by a host
    # whose clock ran ahead sorts after it by name.
    url = fresh_db("mariadb")
    ini = deployed(tmp_path, url)
    holding = _quarantine(url, "20250101t000000000000", settled=False)
    _quarantine(url, "20991231t000000000000", settled=True)

    with pytest.raises(MigrationError):
        anyio.run(AutoMigrator(ini, url=url, on_failure=PurgeAndRetry()).run)

    assert len(backups(url)) == 2  # no third: not purged again
    assert holding in backups(url)
    assert user_rows(url) == OLD_ROWS
