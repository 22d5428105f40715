"""One migrator, even when the lock's connection dies: server timeouts and killed sessions.

The faults are server-side, on each test's own database: an
``idle_session_timeout`` that ends idle sessions, and the lock's session
killed (``pg_terminate_backend``, ``KILL``) while a revision waits for the
test. A lost lock stops the run as ``transient``; nothing is purged.
"""

from __future__ import annotations

import subprocess
import time
from pathlib import Path

import anyio
import pytest
import sqlalchemy as sa
from sqlalchemy.engine import URL

from automigrator import (
    AutoMigrator,
    LockLostError,
    MigrationState,
    MySQLLock,
    PartialMigrationError,
    PostgresAdvisoryLock,
    PurgeAndRetry,
)
from automigrator.locking import lock_for
from tests.conftest import revisions, tables
from tests.faults import Background, wait_for
from tests.helpers import (
    OLD_ROWS,
    R3,
    R4,
    after_a_lost_lock_in_r3,
    backups,
    deployed,
    execute,
    kill_lock_session,
    line_with,
    user_rows,
)
from tests.processes import start_replicas
from tests.project import make_project, waiting, write_revision


def test_an_idle_session_timeout_never_frees_the_lock_mid_migration(
    tmp_path: Path,
    pg_url: URL,
    signals: Path,
) -> None:
    ini = deployed(tmp_path, pg_url, broken=waiting("r3", "r2"))
    execute(pg_url, f"ALTER DATABASE {pg_url.database} SET idle_session_timeout = '1s'")
    appliance = {"AM_POLICY": "appliance"}  # PurgeAndRetry in the chain: must purge nothing
    [first] = start_replicas(ini, pg_url, 1, env=appliance)
    wait_for(signals / "r3.running")
    # Proof that the timeout now fires: a session of ours, idle since after
    # the first process took its lock, is ended by the server.
    canary = sa.create_engine(
        pg_url, isolation_level="AUTOCOMMIT", poolclass=sa.NullPool
    ).connect()
    pid = canary.exec_driver_sql("SELECT pg_backend_pid()").scalar()
    deadline = time.monotonic() + 30
    while execute(pg_url, f"SELECT 1 FROM pg_stat_activity WHERE pid = {pid}"):
        assert time.monotonic() < deadline, "idle_session_timeout never fired"
        time.sleep(0.05)
    canary.invalidate()

    [second] = start_replicas(ini, pg_url, 1, env=appliance)
    said = line_with(second, "Waiting for the migration lock", "Migrating from")
    (signals / "r3.go").touch()
    first.communicate(timeout=60)
    second.communicate(timeout=60)

    assert "Waiting for the migration lock" in said  # not "Migrating from": one migrator
    assert (first.returncode, second.returncode) == (0, 0)
    assert len((signals / "r3.running").read_text().split()) == 1  # r3 ran once
    assert revisions(pg_url) == {"r3"}
    assert backups(pg_url) == []
    assert user_rows(pg_url) == OLD_ROWS


def test_a_lock_lost_mid_run_stops_the_run_and_purges_nothing(
    tmp_path: Path,
    server_db: URL,
    signals: Path,
) -> None:
    ini = deployed(tmp_path, server_db, broken=waiting("r3", "r2"))
    write_revision(ini.parent, R4)
    migrator = AutoMigrator(ini, url=server_db, on_failure=PurgeAndRetry())
    run = Background(migrator)
    wait_for(signals / "r3.running")

    kill_lock_session(server_db)
    (signals / "r3.go").touch()
    error = run.result()

    assert isinstance(error, LockLostError), repr(error)
    assert migrator.status.attempts == 1  # transient: no purge
    assert backups(server_db) == []
    assert user_rows(server_db) == OLD_ROWS
    assert revisions(server_db) == after_a_lost_lock_in_r3(server_db)


def second_start_or_exit(proc: subprocess.Popen[str], running: Path, seconds: float = 60) -> None:
    """Until ``proc`` exits or a second process starts the revision (a line each)."""
    deadline = time.monotonic() + seconds
    while proc.poll() is None and len(running.read_text().split()) < 2:
        assert time.monotonic() < deadline, "the second replica neither ran nor stopped"
        time.sleep(0.05)


def test_the_ddl_connection_fences_a_second_migrator_after_the_lock_is_lost(
    tmp_path: Path,
    server_db: URL,
    signals: Path,
) -> None:
    # r3 is the last revision and waits in autocommit_block() (PostgreSQL's
    # transaction guard used to end there); its lock session is killed.
    ini = deployed(tmp_path, server_db, broken=R3)
    migrator = AutoMigrator(ini, url=server_db)
    first = Background(migrator)
    wait_for(signals / "r3.running")

    kill_lock_session(server_db)
    [second] = start_replicas(ini, server_db, 1)
    second_start_or_exit(second, signals / "r3.running")
    (signals / "r3.go").touch()
    error = first.result()
    _, said = second.communicate(timeout=60)

    assert len((signals / "r3.running").read_text().split()) == 1  # never two at once
    assert second.returncode != 0
    assert "guard" in said
    # Never "ready" after a lost lock. On PostgreSQL r3's autocommit block
    # stays while its version row is rolled back: a partial revision.
    expected = (
        PartialMigrationError if server_db.get_backend_name() == "postgresql" else LockLostError
    )
    assert isinstance(error, expected), repr(error)
    assert "lock was lost" in str(error)
    assert migrator.status.state is MigrationState.FAILED
    assert backups(server_db) == []


def test_an_exclusive_block_whose_lock_was_lost_raises_and_its_transaction_rolls_back(
    tmp_path: Path, server_db: URL
) -> None:
    ini = deployed(tmp_path, server_db)
    migrator = AutoMigrator(ini, url=server_db)
    engine = sa.create_engine(server_db, poolclass=sa.NullPool)

    async def seed_while_the_lock_is_lost() -> None:
        with engine.begin() as conn:  # the transaction around the block: the documented way
            async with migrator.exclusively():
                conn.exec_driver_sql("INSERT INTO users (name, email) VALUES ('admin', 'a@x')")
                kill_lock_session(server_db)  # as a server timeout or a frozen holder would

    with pytest.raises(LockLostError) as caught:
        anyio.run(seed_while_the_lock_is_lost)

    assert "exclusively()" in str(caught.value)
    assert ("admin", "a@x") not in user_rows(server_db)  # rolled back with the block


def test_a_baseline_stamp_is_fenced_like_an_upgrade(tmp_path: Path, server_db: URL) -> None:
    ini = make_project(tmp_path / "p")
    anyio.run(AutoMigrator(ini, url=server_db, target="r1").run)
    execute(server_db, "DROP TABLE alembic_version")  # unversioned: tables, no version table
    # Another migrator's DDL connection holds the fence (its lock was lost).
    holder = sa.create_engine(server_db, poolclass=sa.NullPool).connect()
    fence = lock_for(server_db)
    assert isinstance(fence, PostgresAdvisoryLock | MySQLLock)
    try:
        assert fence.guard(holder)
        with pytest.raises(LockLostError, match="guard"):
            anyio.run(AutoMigrator(ini, url=server_db, baseline="r1").run)
    finally:
        holder.close()

    assert "alembic_version" not in tables(server_db)  # nothing stamped beside it
