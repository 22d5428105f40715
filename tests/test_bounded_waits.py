"""Bounded: a server that accepts TCP and never answers cannot hold a start-up.

The fault is a proxy of the tests' own in blackhole mode in front of the real
PostgreSQL and MariaDB: connections are accepted, nothing is ever answered.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import threading
import time
from pathlib import Path

import anyio
import pytest
from sqlalchemy.engine import URL

from automigrator import AutoMigrator, DatabaseUnavailableError, Timeouts
from tests.conftest import server_url
from tests.faults import Background, Proxy
from tests.project import Rev, make_project


@pytest.mark.slow
@pytest.mark.parametrize("server", ["postgresql", "mariadb"])
@pytest.mark.parametrize("connect_timeout", [5.0, 0.0])
def test_a_silent_server_makes_the_start_give_up_at_its_deadline(
    ini: Path, server: str, connect_timeout: float
) -> None:
    real = server_url(server)
    with Proxy(real.host or "127.0.0.1", real.port or 0) as proxy:
        proxy.blackhole()
        url: URL = real.set(host="127.0.0.1", port=proxy.port)
        migrator = AutoMigrator(ini, url=url, timeouts=Timeouts(connect=connect_timeout))
        run = Background(migrator)
        error = run.result()  # joined with a bound: a hang fails the test
        tries = proxy.accepted

    # Given up at the deadline (ours, or the driver's connect timeout), as
    # transient: never a hang.
    assert isinstance(error, DatabaseUnavailableError), repr(error)
    assert migrator.status.error_kind == "transient"
    if connect_timeout == 0:
        # One try, and nothing after it: before, the failed start read the
        # version table once more "to show where the database is", 5 s more
        # against a server that had already not answered.
        assert tries == 1


@pytest.mark.slow
def test_a_waiter_whose_connection_freezes_mid_try_keeps_its_deadline(
    ini: Path, pg_url: URL
) -> None:
    # Another process holds the lock (this test, directly); the waiter's
    # connections go through a proxy that freezes while it waits: the server's
    # lock_timeout answer never reaches it, and no RST comes either.
    from automigrator import LockTimeoutError, MigrationState
    from automigrator.locking import lock_for

    holder = lock_for(pg_url)
    assert holder.acquire(0)
    try:
        with Proxy(pg_url.host or "127.0.0.1", pg_url.port or 0) as proxy:
            url = pg_url.set(host="127.0.0.1", port=proxy.port)
            migrator = AutoMigrator(ini, url=url, timeouts=Timeouts(lock=30))
            run = Background(migrator)
            while migrator.status.waiting_for != "lock":
                assert run.thread.is_alive(), run.error
                time.sleep(0.01)
            proxy.freeze()
            error = run.result()  # joined with a bound: a hang fails the test
    finally:
        holder.release()

    # Cut at the try's deadline and reported as transient: never a hang.
    assert isinstance(error, (DatabaseUnavailableError, LockTimeoutError)), repr(error)
    assert migrator.status.state is MigrationState.FAILED
    assert migrator.status.error_kind == "transient"


# The revision writes down what libpq was told for its own connection.
RECORDS_ITS_CONNECTION = Rev(
    "r1",
    None,
    "records its connection's parameters",
    """
    import json, os
    parameters = op.get_bind().connection.dbapi_connection.info.get_parameters()
    with open(os.environ["AM_PARAMETERS"], "w") as out:
        json.dump(parameters, out)
    """,
)


@pytest.mark.parametrize(
    ("query", "idle"), [({}, "10"), ({"keepalives_idle": "7"}, "7")], ids=["ours", "the-url-s"]
)
def test_env_py_s_connection_gets_our_keepalives_unless_the_url_sets_its_own(
    tmp_path: Path,
    pg_url: URL,
    monkeypatch: pytest.MonkeyPatch,
    query: dict[str, str],
    idle: str,
) -> None:
    # Before, env.py's connection had none: on a silent network a revision's
    # statement waited for the kernel (hours), "Still applying r2" without end.
    recorded = tmp_path / "parameters.json"
    monkeypatch.setenv("AM_PARAMETERS", str(recorded))
    ini = make_project(tmp_path / "p", (RECORDS_ITS_CONNECTION,))

    anyio.run(AutoMigrator(ini, url=pg_url.update_query_dict(query)).run)

    parameters = json.loads(recorded.read_text())
    assert parameters["keepalives_idle"] == idle
    assert (parameters["keepalives"], parameters["tcp_user_timeout"]) == ("1", "30000")
    assert parameters["connect_timeout"] == "10"


@pytest.mark.slow
def test_sigterm_during_a_frozen_lock_try_cuts_the_try_at_once(
    ini: Path, pg_url: URL, caplog: pytest.LogCaptureFixture
) -> None:
    # A try of the lock is shielded (a lock won as we are cancelled must be
    # released), and bounded by a watchdog 5 s past its wait. Before, a
    # SIGTERM that came while the try's connection was frozen waited for
    # that watchdog (10.8 s measured); now the shutdown cuts the try itself.
    from automigrator import ShutdownRequestedError
    from automigrator.locking import lock_for

    holder = lock_for(pg_url)
    assert holder.acquire(0)
    received: list[int] = []
    previous = signal.signal(signal.SIGTERM, lambda signum, frame: received.append(signum))
    try:
        with Proxy(pg_url.host or "127.0.0.1", pg_url.port or 0) as proxy:
            url = pg_url.set(host="127.0.0.1", port=proxy.port)
            migrator = AutoMigrator(ini, url=url, timeouts=Timeouts(lock=120))

            def freeze_then_stop() -> None:
                while migrator.status.waiting_for != "lock":
                    time.sleep(0.01)
                proxy.freeze()  # the try under way now never hears back
                os.kill(os.getpid(), signal.SIGTERM)

            stopper = threading.Thread(target=freeze_then_stop)
            stopper.start()
            with (
                caplog.at_level(logging.WARNING, logger="automigrator"),
                pytest.raises(ShutdownRequestedError),
            ):
                anyio.run(migrator.run)
            stopper.join(30)
    finally:
        signal.signal(signal.SIGTERM, previous)
        holder.release()

    assert received == [signal.SIGTERM]  # the server's handler still got it
    assert "Shutting down: cutting the migration lock's connection mid-try" in caplog.text
    assert "did not answer in" not in caplog.text
