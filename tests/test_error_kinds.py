"""Truthful kinds: only an error raised by a revision is ``migration``.

A connection cut mid-revision, a lock lost or a release that fails are
``transient``; env.py failing before any revision is ``configuration``. The
destructive policies act on ``migration`` alone, so each fault below is
injected under ``PurgeAndRetry`` and must purge nothing.
"""

from __future__ import annotations

from pathlib import Path

import anyio
import pytest
import sqlalchemy as sa
from sqlalchemy.engine import URL

from automigrator import (
    AutoMigrator,
    AutomigratorError,
    ConfigurationError,
    DatabaseUnavailableError,
    LockLostError,
    PurgeAndRetry,
    Timeouts,
)
from tests.conftest import revisions
from tests.faults import Background, Proxy, wait_for
from tests.helpers import ALWAYS_BROKEN, OLD_ROWS, backups, deployed, user_rows
from tests.project import write_revision


def through(proxy: Proxy, url: URL) -> URL:
    return url.set(host="127.0.0.1", port=proxy.port)


def test_a_connection_cut_mid_revision_is_transient_and_purges_nothing(
    tmp_path: Path, server_db: URL, signals: Path
) -> None:
    from tests.project import waiting

    ini = deployed(tmp_path, server_db, broken=waiting("r3", "r2", 'op.execute("SELECT 1")'))
    with Proxy(server_db.host or "127.0.0.1", server_db.port or 0) as proxy:
        migrator = AutoMigrator(
            ini,
            url=through(proxy, server_db),
            timeouts=Timeouts(connect=0),
            on_failure=PurgeAndRetry(),
        )
        run = Background(migrator)
        wait_for(signals / "r3.running")
        proxy.drop()  # every connection: the migration's and the lock's
        (signals / "r3.go").touch()
        error = run.result()

    # The lock's connection was cut too: where the driver's message for the
    # revision's connection does not read as a disconnect (psycopg sometimes
    # says "another command is already in progress"), the run reports the
    # lost lock instead. Either way transient, and never purged for.
    assert isinstance(error, (DatabaseUnavailableError, LockLostError)), repr(error)
    assert migrator.status.error_kind == "transient"
    assert migrator.status.attempts == 1  # no purge, no retry
    assert backups(server_db) == []
    assert user_rows(server_db) == OLD_ROWS
    assert revisions(server_db) == {"r2"}


ENV_IMPORT_ERROR = "from myapp.models import Base  # the app's models, not importable\n"


def test_env_py_failing_before_any_revision_is_configuration_and_purges_nothing(
    tmp_path: Path, db_url: URL
) -> None:
    ini = deployed(tmp_path, db_url)
    env_py = ini.parent / "migrations" / "env.py"
    env_py.write_text(ENV_IMPORT_ERROR + env_py.read_text())
    migrator = AutoMigrator(ini, url=db_url, on_failure=PurgeAndRetry())

    with pytest.raises(ConfigurationError, match=r"env\.py"):
        anyio.run(migrator.run)

    assert migrator.status.attempts == 1
    assert backups(db_url) == []
    assert user_rows(db_url) == OLD_ROWS


def test_a_revision_that_raises_is_still_migration(tmp_path: Path, sqlite_url: URL) -> None:
    # The other side of the line: the revision's own error keeps its kind.
    ini = deployed(tmp_path, sqlite_url)
    write_revision(ini.parent, ALWAYS_BROKEN)

    with pytest.raises(AutomigratorError) as caught:
        anyio.run(AutoMigrator(ini, url=sqlite_url).run)

    assert caught.value.kind == "migration"


def test_a_server_statement_timeout_in_a_revision_is_transient_and_purges_nothing(
    tmp_path: Path, pg_url: URL
) -> None:
    from tests.project import Rev

    slow = Rev("r3", "r2", "slower than the server allows", 'op.execute("SELECT pg_sleep(2)")')
    ini = deployed(tmp_path, pg_url, broken=slow)
    engine = sa.create_engine(pg_url, isolation_level="AUTOCOMMIT", poolclass=sa.NullPool)
    with engine.connect() as conn:  # a server-side setting on this test's own database
        conn.exec_driver_sql(f"ALTER DATABASE {pg_url.database} SET statement_timeout = '500ms'")
    engine.dispose()
    migrator = AutoMigrator(ini, url=pg_url, on_failure=PurgeAndRetry())

    with pytest.raises(DatabaseUnavailableError, match="statement_timeout"):
        anyio.run(migrator.run)

    assert migrator.status.attempts == 1
    assert backups(pg_url) == []
    assert user_rows(pg_url) == OLD_ROWS
