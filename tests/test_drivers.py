"""Every driver users pick first, sync and async, with Alembic's own templates.

The migration runs through the driver in the URL (env.py's engine); our own
reads and the lock use the synchronous sibling of an async driver (see
``automigrator.database._connections.sync_url``).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import anyio
import pytest
from sqlalchemy.engine import URL

from automigrator import AutoMigrator, MigrationError, PartialMigrationError
from automigrator.database._connections import sync_url
from tests.conftest import revisions, rows
from tests.helpers import LATEST_OUTCOMES, locks_left
from tests.project import CHAIN, Rev, make_project

DRIVERS = [
    # (backend, driver, Alembic template)
    ("sqlite", "pysqlite", "generic"),
    ("sqlite", "aiosqlite", "async"),
    ("postgresql", "psycopg", "generic"),
    ("postgresql", "psycopg2", "generic"),
    ("postgresql", "psycopg_async", "async"),
    ("postgresql", "asyncpg", "async"),
    ("mariadb", "pymysql", "generic"),
    ("mariadb", "asyncmy", "async"),
]


@pytest.mark.parametrize(("backend", "driver", "template"), DRIVERS)
def test_driver_migrates_and_locks(
    tmp_path: Path, fresh_db: Callable[[str], URL], backend: str, driver: str, template: str
) -> None:
    plain = fresh_db(backend)
    dialect = "mysql" if backend == "mariadb" else backend
    url: URL = plain.set(drivername=f"{dialect}+{driver}")
    ini = make_project(tmp_path / "p", CHAIN, template=template)
    migrator = AutoMigrator(ini, url=url)

    status = anyio.run(migrator.run)
    again = anyio.run(AutoMigrator(ini, url=url).run)

    assert status.revisions_after == ("r3",)
    assert again.applied == ()
    assert revisions(sync_url(url)) == {"r3"}
    assert locks_left(plain) == []  # the fence went with env.py's connection, async or not
    lock = migrator.migration_lock()
    assert lock is not None
    assert lock.acquire(0)  # the lock works through this driver's sibling
    lock.release()


# A revision that commits part of the run, each way a PostgreSQL driver
# allows, then fails: what the commit kept (r3) has its ledger row, the
# failing revision says whether anything of it stayed.
COMMITS = {
    "autocommit-block": (
        'with op.get_context().autocommit_block():\n    op.execute("CREATE TABLE t4 (id int)")',
        "partial",
    ),
    "own-commit": ('op.execute("COMMIT")', "failed"),
    "driver-commit": ("op.get_bind().connection.dbapi_connection.commit()", "failed"),
}


@pytest.mark.parametrize("how", sorted(COMMITS))
@pytest.mark.parametrize(
    ("driver", "template"), [(d, t) for b, d, t in DRIVERS if b == "postgresql"]
)
def test_a_commit_inside_a_run_keeps_the_ledger_with_what_it_keeps_through_each_driver(
    tmp_path: Path, fresh_db: Callable[[str], URL], driver: str, template: str, how: str
) -> None:
    url = fresh_db("postgresql").set(drivername=f"postgresql+{driver}")
    commit, outcome = COMMITS[how]
    fails = Rev("r4", "r3", "commits, then fails", f'{commit}\nraise RuntimeError("r4 fails")')
    ini = make_project(tmp_path / "p", (*CHAIN, fails), template=template)

    with pytest.raises((MigrationError, PartialMigrationError), match="r4 fails"):
        anyio.run(AutoMigrator(ini, url=url).run)

    plain = sync_url(url)
    assert revisions(plain) == {"r3"}
    assert rows(plain, LATEST_OUTCOMES) == [
        ("r1", "applied"),
        ("r2", "applied"),
        ("r3", "applied"),
        ("r4", outcome),
    ]
