"""The migration lock: real OS processes against one database, and the timeout."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import anyio
import pytest
from sqlalchemy.engine import URL

from automigrator import AutoMigrator, LockTimeoutError, MigrationState, Timeouts, VersionTable
from automigrator.locking import lock_for
from tests.conftest import revisions, rows, server_url
from tests.processes import ConnectionPeak, start_replicas
from tests.project import EMAIL, SEED, Rev, make_project

REPLICAS = 64
# What each server allows by default (PostgreSQL max_connections, MariaDB
# max_connections): 64 replicas must fit, whatever this server is set to.
DEFAULT_MAX_CONNECTIONS = {"postgresql": 100, "mysql": 151}


@pytest.mark.slow
def test_sixty_four_processes_one_migrates_the_others_wait(ini: Path, db_url: URL) -> None:
    procs = start_replicas(ini, db_url, REPLICAS)
    kind = {"postgresql": "postgresql", "mysql": "mariadb"}.get(db_url.get_backend_name())
    admin = server_url(kind) if kind else None
    connections = ConnectionPeak(db_url, admin)
    results = []
    try:
        for proc in procs:
            out, err = proc.communicate(timeout=300)
            assert proc.returncode == 0, err
            results.append((json.loads(out.splitlines()[-1]), err))
    finally:
        peak = connections.stop()
        for proc in procs:
            proc.kill()

    applied = [len(status["applied"]) for status, _ in results]
    assert sorted(applied) == [0] * (REPLICAS - 1) + [3]
    assert all(status["state"] == "ready" for status, _ in results)
    assert revisions(db_url) == {"r3"}
    assert rows(db_url, "SELECT count(*) FROM users") == [(1,)]
    # The others found the schema at head after the winner released the lock
    # (or before they even needed it).
    for (_, err), count in zip(results, applied, strict=True):
        if count == 0:
            assert "Migrating from" not in err
    # A waiter holds one connection (its lock's) and names the holder on it:
    # at most one per replica, and a few more for the one that migrates.
    if admin is not None:
        assert 0 < peak <= REPLICAS + 3 < DEFAULT_MAX_CONNECTIONS[db_url.get_backend_name()]


def test_lock_timeout_raises_after_waiting(
    ini: Path, db_url: URL, caplog: pytest.LogCaptureFixture
) -> None:
    migrator = AutoMigrator(ini, url=db_url, timeouts=Timeouts(lock=2))
    held = lock_for(db_url)
    assert held.acquire(0)
    try:
        with (
            caplog.at_level(logging.INFO, logger="automigrator"),
            pytest.raises(LockTimeoutError) as caught,
        ):
            anyio.run(migrator.run)
    finally:
        held.release()

    assert caught.value.timeout == 2
    assert "Timeouts(lock=)" in str(caught.value)
    assert any("Waiting for the migration lock" in r.getMessage() for r in caplog.records)
    assert migrator.status.state is MigrationState.FAILED
    assert migrator.status.error_kind == "transient"
    assert revisions(db_url) == set()

    # Once the holder is gone, the next start gets the lock at once.
    assert anyio.run(AutoMigrator(ini, url=db_url).run).revisions_after == ("r3",)


def test_lock_is_free_after_a_run(ini: Path, db_url: URL) -> None:
    anyio.run(AutoMigrator(ini, url=db_url).run)
    lock = lock_for(db_url)
    assert lock.acquire(0)
    lock.release()


def test_two_version_tables_do_not_share_a_lock(db_url: URL) -> None:
    first = lock_for(db_url, VersionTable("app_one_version"))
    second = lock_for(db_url, VersionTable("app_two_version"))
    assert first.acquire(0)
    try:
        if db_url.get_backend_name() != "sqlite":  # SQLite: one file, one lock per database
            assert second.acquire(0)
            second.release()
    finally:
        first.release()


# r1 stops in the middle of the upgrade (lock held, migration connection open)
# when AM_HANG is set, and says so on stderr.
HANGING_USERS = Rev(
    "r1",
    None,
    "create users table",
    """
    import os
    import sys
    import time

    if os.environ.get("AM_HANG"):
        print("r1 is running", file=sys.stderr, flush=True)
        time.sleep(3600)
    op.create_table(
        "users",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("name", sa.String(50), nullable=False),
    )
    """,
)


def test_holder_killed_mid_migration_frees_the_lock(tmp_path: Path, db_url: URL) -> None:
    ini = make_project(tmp_path / "proj", (HANGING_USERS, EMAIL, SEED))
    [proc] = start_replicas(ini, db_url, 1, env={"AM_HANG": "1"})
    assert proc.stderr is not None
    for line in proc.stderr:
        if "r1 is running" in line:
            break
    proc.kill()  # SIGKILL: no cleanup code of ours runs
    proc.communicate()

    # A lock that outlived its process would make this wait, then time out.
    status = anyio.run(AutoMigrator(ini, url=db_url, timeouts=Timeouts(lock=30)).run)

    assert status.state is MigrationState.READY
    assert [a.revision for a in status.applied] == ["r1", "r2", "r3"]
    assert revisions(db_url) == {"r3"}
