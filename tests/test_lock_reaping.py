"""A lock holder that vanishes from the network loses its lock in about 30 s.

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
import time
from pathlib import Path

import pytest
from sqlalchemy.engine import URL

from automigrator import AutoMigrator, LockLostError, PurgeAndRetry
from tests.conftest import revisions
from tests.faults import Background, Proxy, wait_for
from tests.helpers import OLD_ROWS, R3, R4, after_a_lost_lock_in_r3, backups, deployed, user_rows
from tests.processes import start_replicas
from tests.project import waiting, write_revision

DEFAULT_PORTS = {"postgresql": 5432, "mysql": 3306}


def runs_of_r3(signals: Path) -> int:
    running = signals / "r3.running"
    return len(running.read_text().split()) if running.exists() else 0


@pytest.mark.slow
def test_a_holder_cut_off_without_fin_loses_the_lock_and_the_next_replica_migrates(
    tmp_path: Path,
    server_db: URL,
    signals: Path,
) -> None:
    ini = deployed(tmp_path, server_db, broken=R3)
    port = server_db.port or DEFAULT_PORTS[server_db.get_backend_name()]
    with Proxy(server_db.host or "127.0.0.1", port) as proxy:
        # The holder runs an unattended box's policy: it must purge nothing.
        [holder] = start_replicas(
            ini,
            server_db.set(host="127.0.0.1", port=proxy.port),
            1,
            env={"AM_POLICY": "appliance"},
        )
        wait_for(signals / "r3.running")  # it holds the lock, r3 under way
        proxy.freeze()
        # A successor with the default policy: it fails with LockTimeoutError
        # after 90 s if the vanished holder's lock is never freed.
        [successor] = start_replicas(ini, server_db, 1, env={"AM_LOCK_TIMEOUT": "90"})
        deadline = time.monotonic() + 120
        while runs_of_r3(signals) < 2:  # the successor took the lock and runs r3
            if successor.poll() is not None or time.monotonic() > deadline:
                _, err = successor.communicate(timeout=10)
                raise AssertionError(f"the successor never took the lock:\n{err[-3000:]}")
            time.sleep(0.05)
        (signals / "r3.go").touch()
        out, err = successor.communicate(timeout=60)
        assert successor.returncode == 0, err
        # The holder comes back: its r3 meets the successor's table, and the
        # lock it finds gone says why. Not the revision's fault: no purge.
        proxy.thaw()
        _, holder_err = holder.communicate(timeout=120)

    assert json.loads(out.strip().splitlines()[-1])["state"] == "ready"
    assert revisions(server_db) == {"r3"}
    assert "lock was lost" in holder_err, holder_err[-3000:]
    assert holder.returncode == 0  # Retry, then at head: ready
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
