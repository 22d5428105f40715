"""Bounded: a server that accepts TCP and never answers cannot hold a start-up.

The fault is a proxy of the tests' own in blackhole mode in front of the real
PostgreSQL and MariaDB: connections are accepted, nothing is ever answered.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from sqlalchemy.engine import URL

from automigrator import AutoMigrator, DatabaseUnavailableError
from tests.conftest import server_url
from tests.faults import Background, Proxy


@pytest.mark.parametrize("server", ["postgresql", "mariadb"])
@pytest.mark.parametrize("connect_timeout", [5.0, 0.0])
def test_a_silent_server_makes_the_start_give_up_at_its_deadline(
    ini: Path, server: str, connect_timeout: float
) -> None:
    real = server_url(server)
    with Proxy(real.host or "127.0.0.1", real.port or 0) as proxy:
        proxy.blackhole()
        url: URL = real.set(host="127.0.0.1", port=proxy.port)
        migrator = AutoMigrator(ini, url=url, connect_timeout=connect_timeout)
        run = Background(migrator)
        error = run.result()  # joined with a bound: a hang fails the test

    # Given up at the deadline (ours, or the driver's connect timeout), as
    # transient: never a hang.
    assert isinstance(error, DatabaseUnavailableError), repr(error)
    assert migrator.status.error_kind == "transient"
