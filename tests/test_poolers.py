"""Replicas through a real PgBouncer: session, transaction and statement pooling.

In transaction mode PgBouncer hands each transaction to any server
connection. A session-level advisory lock (what automigrator took before)
then stays with a server connection that other replicas' statements use:
one of them "takes" the lock it already holds and migrates beside the
holder, or the release lands elsewhere and the lock is stranded. The lock is
now held by an open transaction, which the pooler pins to one server
connection until it ends.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import anyio
import pytest
import sqlalchemy as sa
from sqlalchemy.engine import URL

from automigrator import AutoMigrator, PoolerError, Timeouts
from tests.conftest import revisions
from tests.faults import wait_for
from tests.helpers import R3, kill_lock_session, line_with, locks_left
from tests.poolers import PgBouncer, PoolMode
from tests.processes import start_replicas
from tests.project import EMAIL, USERS, make_project

REPLICAS = 4


@pytest.mark.parametrize("mode", ["transaction", "session"])
def test_replicas_through_pgbouncer_migrate_once(
    tmp_path: Path, pg_url: URL, signals: Path, mode: PoolMode
) -> None:
    ini = make_project(tmp_path / "proj", (USERS, EMAIL, R3))
    with PgBouncer(pg_url, mode, pool_size=10) as bouncer:
        pooled = bouncer.url(pg_url)
        procs = start_replicas(ini, pooled, REPLICAS, env={"AM_LOCK_TIMEOUT": "60"})
        try:
            wait_for(signals / "r3.running")  # one replica holds the lock, r3 under way
            # Every replica has spoken: the holder, and the others either
            # waiting or (the bug) migrating beside it.
            said = [
                line_with(p, "Waiting for the migration lock", "Migrating from") for p in procs
            ]
            (signals / "r3.go").touch()
            results = [proc.communicate(timeout=120) for proc in procs]
            # Asked while PgBouncer still keeps its server connections: one
            # that held a lock or a fence would hold it now.
            left = locks_left(pg_url)
        finally:
            (signals / "r3.go").touch()
            for proc in procs:
                proc.kill()
                proc.wait()

    assert sum("Migrating from" in line for line in said) == 1, said
    assert len((signals / "r3.running").read_text().split()) == 1  # r3 ran once
    assert [p.returncode for p in procs] == [0] * REPLICAS, [err for _, err in results]
    statuses = [json.loads(out.strip().splitlines()[-1]) for out, _ in results]
    assert [s["state"] for s in statuses] == ["ready"] * REPLICAS
    assert revisions(pg_url) == {"r3"}
    assert left == []  # nothing stranded on a pooled server connection


def test_lock_url_keeps_the_lock_out_of_a_pool_too_small_for_it(
    tmp_path: Path, pg_url: URL, signals: Path
) -> None:
    # One server connection in the pool: the lock's open transaction would
    # pin it, and the migration behind it would wait for the pool until
    # PgBouncer's query_wait_timeout. lock_url= takes the lock directly.
    ini = make_project(tmp_path / "proj", (USERS, EMAIL, R3))
    (signals / "r3.go").touch()
    with PgBouncer(pg_url, "transaction", pool_size=1, query_wait_timeout=5) as bouncer:
        procs = start_replicas(
            ini,
            bouncer.url(pg_url),
            2,
            env={"AM_LOCK_URL": pg_url.render_as_string(False), "AM_LOCK_TIMEOUT": "60"},
        )
        results = [proc.communicate(timeout=120) for proc in procs]

    assert [p.returncode for p in procs] == [0, 0], [err for _, err in results]
    statuses = [json.loads(out.strip().splitlines()[-1]) for out, _ in results]
    assert sorted(len(s["applied"]) for s in statuses) == [0, 3]
    assert revisions(pg_url) == {"r3"}


def test_statement_pooling_is_refused_by_name_and_nothing_changes(
    tmp_path: Path, pg_url: URL
) -> None:
    ini = make_project(tmp_path / "proj", (USERS, EMAIL))
    with PgBouncer(pg_url, "statement") as bouncer:
        migrator = AutoMigrator(ini, url=bouncer.url(pg_url), timeouts=Timeouts(connect=30))
        with pytest.raises(PoolerError) as caught:
            anyio.run(migrator.run)

    message = str(caught.value)
    assert "statement pooling" in message
    assert "lock_url" not in message  # a direct lock would not help: migrations need transactions
    assert "session or transaction" in message
    assert migrator.status.attempts == 1  # a configuration error: never retried
    assert revisions(pg_url) == set()
    assert sa.inspect(sa.create_engine(pg_url, poolclass=sa.NullPool)).get_table_names() == []


def test_the_fence_holds_through_transaction_pooling_when_the_lock_is_direct(
    tmp_path: Path, pg_url: URL, signals: Path
) -> None:
    # env.py through PgBouncer, the lock direct (lock_url=, as for a small
    # pool). The holder's lock session is killed while r3 waits in an
    # autocommit block: its fence sits on a pooled server connection, which
    # PgBouncer may hand to the next migrator's env.py. Advisory locks are
    # re-entrant, so that migrator used to pass the fence and run r3 too.
    ini = make_project(tmp_path / "proj", (USERS, EMAIL, R3))
    direct = {"AM_LOCK_URL": pg_url.render_as_string(False), "AM_LOCK_TIMEOUT": "30"}
    with PgBouncer(pg_url, "transaction", pool_size=3) as bouncer:
        pooled = bouncer.url(pg_url)
        [holder] = start_replicas(ini, pooled, 1, env=direct)
        try:
            wait_for(signals / "r3.running")
            kill_lock_session(pg_url)
            [second] = start_replicas(ini, pooled, 1, env=direct)
            running = signals / "r3.running"
            deadline = time.monotonic() + 90
            while second.poll() is None and len(running.read_text().split()) < 2:
                assert time.monotonic() < deadline, "the second replica neither ran nor stopped"
                time.sleep(0.05)
            ran = len(running.read_text().split())
            (signals / "r3.go").touch()
            _, refused = second.communicate(timeout=90)
        finally:
            (signals / "r3.go").touch()
            holder.communicate(timeout=90)

    assert ran == 1  # r3 never ran beside the holder
    assert second.returncode != 0
    assert "guard" in refused, refused[-3000:]
