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

import pytest
import sqlalchemy as sa
from sqlalchemy.engine import URL

from automigrator import (
    AutoMigrator,
    LockLostError,
    MySQLLock,
    PostgresAdvisoryLock,
    PurgeAndRetry,
)
from automigrator.locking import lock_for
from tests.conftest import revisions
from tests.faults import Background, wait_for
from tests.processes import start_replicas
from tests.project import Rev, waiting, write_revision
from tests.test_policies import OLD_ROWS, deployed, user_rows
from tests.test_purge import backups

R4 = Rev("r4", "r3", "after the wait", 'op.create_table("r4_done", sa.Column("id", sa.Integer))')


def execute(url: URL, sql: str) -> list[tuple[object, ...]]:
    engine = sa.create_engine(url, isolation_level="AUTOCOMMIT", poolclass=sa.NullPool)
    try:
        with engine.connect() as conn:
            result = conn.exec_driver_sql(sql)
            return [tuple(r) for r in result] if result.returns_rows else []
    finally:
        engine.dispose()


def line_with(proc: subprocess.Popen[str], *words: str, seconds: float = 60) -> str:
    """The first line of the process's stderr that holds one of ``words``."""
    assert proc.stderr is not None
    deadline = time.monotonic() + seconds
    for line in proc.stderr:
        if any(word in line for word in words):
            return line
        assert time.monotonic() < deadline, f"none of {words} within {seconds} s"
    raise AssertionError(f"the process ended before saying any of {words}")


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


def kill_lock_session(url: URL) -> None:
    """End the session that holds our advisory lock / named lock, as a server would."""
    if url.get_backend_name() == "postgresql":
        lock = lock_for(url)
        assert isinstance(lock, PostgresAdvisoryLock)
        unsigned = lock.key & 0xFFFFFFFFFFFFFFFF
        [(killed,)] = execute(
            url,
            "SELECT pg_terminate_backend(pid) FROM pg_locks WHERE locktype = 'advisory' "
            f"AND granted AND classid = {unsigned >> 32} AND objid = {unsigned & 0xFFFFFFFF}",
        )
        assert killed
    else:
        lock = lock_for(url)
        assert isinstance(lock, MySQLLock)
        [(pid,)] = execute(url, f"SELECT IS_USED_LOCK('{lock.name}')")
        execute(url, f"KILL {pid}")


@pytest.fixture(params=["postgresql", "mariadb"])
def server_url(request: pytest.FixtureRequest, tmp_path: Path):  # type: ignore[no-untyped-def]
    from tests.conftest import make_db_url

    yield from make_db_url(request.param, tmp_path)


def test_a_lock_lost_mid_run_stops_the_run_and_purges_nothing(
    tmp_path: Path,
    server_url: URL,
    signals: Path,
) -> None:
    ini = deployed(tmp_path, server_url, broken=waiting("r3", "r2"))
    write_revision(ini.parent, R4)
    migrator = AutoMigrator(ini, url=server_url, on_failure=PurgeAndRetry())
    run = Background(migrator)
    wait_for(signals / "r3.running")

    kill_lock_session(server_url)
    (signals / "r3.go").touch()
    error = run.result()

    assert isinstance(error, LockLostError), repr(error)
    assert migrator.status.attempts == 1  # transient: no purge
    assert backups(server_url) == []
    assert user_rows(server_url) == OLD_ROWS
    assert revisions(server_url) == after_a_lost_lock_in_r3(server_url)


def after_a_lost_lock_in_r3(url: URL) -> set[str]:
    """Where the database is when the lock was lost during r3 (of r3, r4)."""
    # PostgreSQL rolled r3 back before its commit; MariaDB kept r3 (its DDL
    # was made) and stopped before r4.
    return {"r2"} if url.get_backend_name() == "postgresql" else {"r3"}
