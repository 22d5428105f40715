"""Only a revision's own error is ``migration``: what no purge can fix is configuration.

A missing privilege, an env.py that never runs the migrations, a revision
file without ``upgrade()``: each fails the same way on every try, and none
is the revision's fault. Under ``PurgeAndRetry`` each used to quarantine the
database; each is now a ``ConfigurationError`` naming what to fix, and the
rows stay where they are.
"""

from __future__ import annotations

import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import anyio
import pytest
import sqlalchemy as sa
from sqlalchemy.engine import URL

from automigrator import AutoMigrator, ConfigurationError, MigrationState, PurgeAndRetry
from tests.conftest import revisions, rows, server_url, tables
from tests.helpers import OLD_ROWS, backups, deployed, user_rows
from tests.project import EMAIL, USERS, Rev, make_project


def with_a_user(url: URL) -> None:
    engine = sa.create_engine(url, poolclass=sa.NullPool)
    with engine.begin() as conn:
        conn.exec_driver_sql("INSERT INTO users (name) VALUES ('kept')")


def at_r1_with_a_user(root: Path, url: URL, revs: tuple[Rev, ...] = (USERS, EMAIL)) -> Path:
    """A project whose database is at r1 with a user's row in it; its ini."""
    ini = make_project(root / "p", revs)
    anyio.run(AutoMigrator(ini, url=url, target="r1").run)
    with_a_user(url)
    return ini


def assert_untouched(url: URL, error: ConfigurationError, migrator: AutoMigrator) -> None:
    assert error.kind == "configuration"
    assert migrator.status.state is MigrationState.FAILED
    assert rows(url, "SELECT name FROM users") == [("kept",)]
    assert revisions(url) == {"r1"}
    assert backups(url) == []


@pytest.fixture
def limited_pg(pg_url: URL) -> Iterator[URL]:
    """The test database reached as a role that owns no table (tables made by postgres)."""
    role = f"am_app_{uuid.uuid4().hex[:8]}"
    admin = sa.create_engine(pg_url, isolation_level="AUTOCOMMIT", poolclass=sa.NullPool)
    with admin.connect() as conn:
        conn.exec_driver_sql(f"CREATE ROLE {role} LOGIN")
    try:
        yield pg_url.set(username=role)
    finally:
        with admin.connect() as conn:
            conn.exec_driver_sql(f"DROP OWNED BY {role}")
            conn.exec_driver_sql(f"DROP ROLE {role}")
        admin.dispose()


def test_postgresql_must_be_owner_is_configuration_and_purges_nothing(
    tmp_path: Path, pg_url: URL, limited_pg: URL
) -> None:
    ini = make_project(tmp_path / "p", (USERS, EMAIL))
    anyio.run(AutoMigrator(ini, url=pg_url, target="r1").run)
    with_a_user(pg_url)
    admin = sa.create_engine(pg_url, poolclass=sa.NullPool)
    with admin.begin() as conn:  # it may read and write the version table: no more
        conn.exec_driver_sql(f"GRANT ALL ON alembic_version, users TO {limited_pg.username}")
    migrator = AutoMigrator(ini, url=limited_pg, on_failure=PurgeAndRetry())

    with pytest.raises(ConfigurationError) as caught:
        anyio.run(migrator.run)

    assert "must be owner" in caught.value.message
    assert "privilege" in caught.value.message  # says what to fix
    assert_untouched(pg_url, caught.value, migrator)


@pytest.fixture
def limited_mariadb(tmp_path: Path) -> Iterator[tuple[URL, URL]]:
    """A MariaDB database, and a user there without the ALTER privilege."""
    admin_url = server_url("mariadb")
    name = f"am_{uuid.uuid4().hex[:12]}"
    user = f"am_u{uuid.uuid4().hex[:8]}"
    admin = sa.create_engine(admin_url, isolation_level="AUTOCOMMIT", poolclass=sa.NullPool)
    with admin.connect() as conn:
        conn.exec_driver_sql(f"CREATE DATABASE {name}")
        conn.exec_driver_sql(f"CREATE USER '{user}'@'%%'")
        conn.exec_driver_sql(
            f"GRANT SELECT, INSERT, UPDATE, DELETE, CREATE, DROP ON {name}.* TO '{user}'@'%%'"
        )
    try:
        yield admin_url.set(database=name), admin_url.set(database=name, username=user)
    finally:
        with admin.connect() as conn:
            conn.exec_driver_sql(f"DROP USER '{user}'@'%%'")
            conn.exec_driver_sql(f"DROP DATABASE {name}")
        admin.dispose()


def test_mariadb_command_denied_is_configuration_and_purges_nothing(
    tmp_path: Path, limited_mariadb: tuple[URL, URL]
) -> None:
    owner, limited = limited_mariadb
    ini = make_project(tmp_path / "p", (USERS, EMAIL))
    anyio.run(AutoMigrator(ini, url=owner, target="r1").run)
    with_a_user(owner)
    migrator = AutoMigrator(ini, url=limited, on_failure=PurgeAndRetry())

    with pytest.raises(ConfigurationError) as caught:
        anyio.run(migrator.run)

    assert "denied" in caught.value.message
    assert_untouched(owner, caught.value, migrator)


def test_a_read_only_sqlite_file_is_configuration_and_purges_nothing(
    tmp_path: Path, sqlite_url: URL
) -> None:
    ini = at_r1_with_a_user(tmp_path, sqlite_url)
    # Opened read-only (as a file the app's user may not write would be; the
    # tests run as root, whom file modes do not stop).
    # Written as a user writes it: SQLAlchemy 2.0 does not round-trip a "?"
    # inside URL.create(database=...).
    read_only = sa.make_url(f"sqlite:///file:{sqlite_url.database}?mode=ro&uri=true")
    migrator = AutoMigrator(ini, url=read_only, on_failure=PurgeAndRetry())

    with pytest.raises(ConfigurationError) as caught:
        anyio.run(migrator.run)

    assert "readonly" in caught.value.message
    assert_untouched(sqlite_url, caught.value, migrator)


NO_RUN_ENV = """
from alembic import context

context.configure(url=context.config.get_main_option("sqlalchemy.url"))
# run_migrations() is never called: a template cut too short.
"""


def test_an_env_py_that_never_runs_the_migrations_is_configuration(
    tmp_path: Path, sqlite_url: URL
) -> None:
    ini = at_r1_with_a_user(tmp_path, sqlite_url)
    (tmp_path / "p" / "migrations" / "env.py").write_text(NO_RUN_ENV)
    migrator = AutoMigrator(ini, url=sqlite_url, on_failure=PurgeAndRetry())

    with pytest.raises(ConfigurationError) as caught:
        anyio.run(migrator.run)

    assert "run_migrations()" in caught.value.message
    assert "env.py" in caught.value.message
    assert_untouched(sqlite_url, caught.value, migrator)


def test_a_revision_without_upgrade_is_configuration(tmp_path: Path, sqlite_url: URL) -> None:
    ini = at_r1_with_a_user(tmp_path, sqlite_url, (USERS, Rev("r2", "r1", "no upgrade", "pass")))
    path = tmp_path / "p" / "migrations" / "versions" / "r2.py"
    path.write_text(path.read_text().replace("def upgrade()", "def upgrad()"))
    migrator = AutoMigrator(ini, url=sqlite_url, on_failure=PurgeAndRetry())

    with pytest.raises(ConfigurationError) as caught:
        anyio.run(migrator.run)

    assert "r2.py" in caught.value.message
    assert "upgrade()" in caught.value.message
    assert_untouched(sqlite_url, caught.value, migrator)
    assert tables(sqlite_url) >= {"users"}


def test_a_sqlite_uri_locks_beside_its_file_and_makes_no_folder(
    tmp_path: Path, sqlite_url: URL, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)  # a relative "file:" folder would land here
    uri = URL.create("sqlite", database=f"file:{sqlite_url.database}", query={"uri": "true"})
    ini = make_project(tmp_path / "p", (USERS,))

    status = anyio.run(AutoMigrator(ini, url=uri).run)

    assert status.state is MigrationState.READY
    assert not (tmp_path / "file:").exists()
    assert Path(f"{sqlite_url.database}.automigrator.lock").exists()


def test_a_lock_file_that_cannot_be_made_is_configuration_by_its_cause(
    tmp_path: Path, sqlite_url: URL
) -> None:
    # Where the lock file goes stands a folder (as an unwritable one would
    # fail; the tests run as root, whom file modes do not stop).
    Path(f"{sqlite_url.database}.automigrator.lock").mkdir()
    migrator = AutoMigrator(make_project(tmp_path / "p", (USERS,)), url=sqlite_url)

    with pytest.raises(ConfigurationError) as caught:
        anyio.run(migrator.run)

    assert "IsADirectoryError" in caught.value.message
    assert "ExceptionGroup" not in caught.value.message
    assert "writable" in caught.value.message


FULL_DISK = """
import resource, signal, sys
import anyio
from automigrator import AutoMigrator, PurgeAndRetry

# Files may grow to 12 KiB, no more: as a full disk answers a write.
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
resource.setrlimit(resource.RLIMIT_FSIZE, (12 * 1024, resource.RLIM_INFINITY))
migrator = AutoMigrator(sys.argv[1], url=sys.argv[2], on_failure=PurgeAndRetry())
try:
    anyio.run(migrator.run)
except Exception as exc:
    print(type(exc).__name__)
print(migrator.status.error_kind)
"""


def test_a_backup_that_cannot_be_written_purges_nothing_and_leaves_no_partial_copy(
    tmp_path: Path, sqlite_url: URL
) -> None:
    ini = deployed(tmp_path, sqlite_url)  # r3 fails on its first statement: a purge is due
    with sa.create_engine(sqlite_url, poolclass=sa.NullPool).begin() as conn:
        conn.exec_driver_sql("CREATE TABLE ballast (data TEXT)")
        conn.exec_driver_sql("INSERT INTO ballast VALUES (printf('%.40000c', 'x'))")
    database = Path(str(sqlite_url.database))
    assert database.stat().st_size > 12 * 1024  # its copy cannot be written whole

    run = subprocess.run(
        [sys.executable, "-c", FULL_DISK, str(ini), str(sqlite_url)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )

    assert "BackupError" in run.stderr  # the purge's failure, named
    assert "Traceback" not in run.stderr
    assert run.stdout.split()[-1] == "migration"  # the run's own failure, not purged for
    assert user_rows(sqlite_url) == OLD_ROWS
    assert backups(sqlite_url) == []
    assert list(database.parent.glob("*.partial")) == []


@pytest.mark.parametrize("hook", ["revision_begins", "applied"])
def test_an_error_of_automigrators_own_code_mid_run_is_not_the_revisions(
    tmp_path: Path, sqlite_url: URL, monkeypatch: pytest.MonkeyPatch, hook: str
) -> None:
    # Our code that Alembic's run loop calls before and after each revision
    # fails as a module of ours replaced under the running process would.
    # The revision did nothing wrong: no purge, and the run says whose it is.
    from automigrator.run._reporting import Reporter

    ini = at_r1_with_a_user(tmp_path, sqlite_url)

    def broken(*args: object, **kwargs: object) -> None:
        raise ImportError("cannot import name 'x' from partially initialized module")

    monkeypatch.setattr(Reporter, hook, broken)
    migrator = AutoMigrator(ini, url=sqlite_url, on_failure=PurgeAndRetry())

    with pytest.raises(ConfigurationError) as caught:
        anyio.run(migrator.run)

    assert "automigrator's own code failed while revision r2 ran" in caught.value.message
    assert "ImportError" in caught.value.message
    assert_untouched(sqlite_url, caught.value, migrator)
