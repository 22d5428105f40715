"""A lock holder that vanishes from the network loses its lock in about 30 s,
and its fence keeps every other replica out while its DDL connection lives.

The holder's connections go through a proxy of the tests' own, which is then
frozen: nothing is forwarded any more and nothing is closed, so the server
sees a peer that fell silent without FIN or RST (a node cut off, a frozen
process). Before, the server kept the lock until its TCP keepalives gave up
(hours by default) and every other replica waited out ``lock_timeout``. Now
the lock's session asks the server to end it after 30 s without a statement
(PostgreSQL ``idle_in_transaction_session_timeout`` on the lock's
transaction, MySQL/MariaDB ``wait_timeout``) and a live holder sends one
every 5 s.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from sqlalchemy.engine import URL

from automigrator import AutoMigrator, LockLostError, PurgeAndRetry
from tests.conftest import revisions
from tests.faults import Background, Proxy, wait_for
from tests.helpers import OLD_ROWS, R4, after_a_lost_lock_in_r3, backups, deployed, user_rows
from tests.processes import start_replicas
from tests.project import waiting, write_revision

DEFAULT_PORTS = {"postgresql": 5432, "mysql": 3306}


def runs_of_r3(signals: Path) -> int:
    running = signals / "r3.running"
    return len(running.read_text().split()) if running.exists() else 0


# r3 waits inside its transaction: on PostgreSQL, a run stopped before its
# commit leaves nothing of it (an autocommit block's DDL would stay).
R3_IN_A_TRANSACTION = waiting(
    "r3", "r2", then='op.create_table("r3_done", sa.Column("id", sa.Integer))'
)


@pytest.mark.slow
def test_a_holder_cut_off_loses_its_lock_but_its_fence_keeps_the_next_replica_out(
    tmp_path: Path,
    server_db: URL,
    signals: Path,
) -> None:
    ini = deployed(tmp_path, server_db, broken=R3_IN_A_TRANSACTION)
    port = server_db.port or DEFAULT_PORTS[server_db.get_backend_name()]
    with Proxy(server_db.host or "127.0.0.1", port) as proxy:
        [holder] = start_replicas(ini, server_db.set(host="127.0.0.1", port=proxy.port), 1)
        wait_for(signals / "r3.running")  # it holds the lock, r3 under way
        proxy.freeze()
        # The holder's lock is reaped (its heartbeat stopped); the successor
        # takes it, but the holder's DDL connection still lives on the server
        # and holds the fence: the successor stops before any revision.
        [successor] = start_replicas(ini, server_db, 1, env={"AM_LOCK_TIMEOUT": "90"})
        _, refused = successor.communicate(timeout=150)
        assert runs_of_r3(signals) == 1, "the successor ran r3 beside the holder"
        # The holder comes back: its lock is gone, so its run stops there.
        proxy.thaw()
        (signals / "r3.go").touch()
        _, holder_err = holder.communicate(timeout=120)
    [third] = start_replicas(ini, server_db, 1)
    out, err = third.communicate(timeout=120)

    assert successor.returncode != 0
    assert "guard" in refused, refused[-3000:]
    assert "lock was lost" in holder_err, holder_err[-3000:]
    assert third.returncode == 0, err[-3000:]
    assert json.loads(out.strip().splitlines()[-1])["state"] == "ready"
    assert revisions(server_db) == {"r3"}
    assert backups(server_db) == []
    assert user_rows(server_db) == OLD_ROWS


@pytest.mark.slow
def test_a_lock_connection_that_freezes_mid_run_stops_the_run_within_its_reap_time(
    tmp_path: Path,
    server_db: URL,
    signals: Path,
) -> None:
    # Only the lock's connection goes through the proxy (lock_url=), so the
    # migration itself runs on: its look at the lock before r4 meets a
    # connection that never answers. It must not wait for ever.
    ini = deployed(tmp_path, server_db, broken=waiting("r3", "r2"))
    write_revision(ini.parent, R4)
    port = server_db.port or DEFAULT_PORTS[server_db.get_backend_name()]
    with Proxy(server_db.host or "127.0.0.1", port) as proxy:
        migrator = AutoMigrator(
            ini,
            url=server_db,
            lock_url=server_db.set(host="127.0.0.1", port=proxy.port),
            on_failure=PurgeAndRetry(),
        )
        run = Background(migrator)
        wait_for(signals / "r3.running")
        proxy.freeze()
        (signals / "r3.go").touch()
        error = run.result()  # joined with a bound: a hang fails here

    assert isinstance(error, LockLostError), repr(error)
    assert migrator.status.attempts == 1  # transient: no purge
    assert backups(server_db) == []
    assert user_rows(server_db) == OLD_ROWS
    assert revisions(server_db) == after_a_lost_lock_in_r3(server_db)
