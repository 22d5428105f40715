"""The recipe for an app that made its tables with create_all() and adopts migrations.

Its databases in the field have the tables and no version table; new ones
are empty. One migrator serves both: ``baseline=`` names the revision the
create_all() tables match (stamped there, nothing run, rows kept), and an
empty database runs every revision. docs/recipes.md shows it.
"""

from __future__ import annotations

from pathlib import Path
from types import ModuleType

import anyio
import pytest
import sqlalchemy as sa
from sqlalchemy.engine import URL, Connection

from automigrator import (
    AutoMigrator,
    Baseline,
    Chain,
    ConfigurationError,
    MigrationState,
    PurgeAndRetry,
    Retry,
)
from automigrator.database._connections import sync_url
from automigrator.testing import assert_models_match
from tests.conftest import EXAMPLE, revisions, rows
from tests.helpers import backups
from tests.project import EMAIL, Rev, make_project


def test_a_create_all_database_is_adopted_at_its_baseline_with_its_rows(
    example_app: ModuleType,
) -> None:
    from models import Author, Base  # the example's models

    url = example_app.migrator.url
    engine = sa.create_engine(sync_url(url), poolclass=sa.NullPool)
    Base.metadata.create_all(engine)  # what the app did at start before migrations
    with engine.begin() as conn:
        conn.execute(sa.insert(Author).values(name="Ursula K. Le Guin"))

    migrator = AutoMigrator(EXAMPLE / "alembic.ini", url=url, baseline="0004")
    status = anyio.run(migrator.run)

    assert status.state is MigrationState.READY
    assert status.applied == ()  # stamped at the baseline: no revision ran
    assert revisions(sync_url(url)) == {"0004"}
    with engine.connect() as conn:
        assert conn.execute(sa.select(Author.name)).scalars().all() == ["Ursula K. Le Guin"]
    assert_models_match(migrator, Base.metadata)
    engine.dispose()


def test_the_same_migrator_builds_an_empty_database_from_its_revisions(
    example_app: ModuleType,
) -> None:
    from models import Base

    url = example_app.migrator.url
    migrator = AutoMigrator(EXAMPLE / "alembic.ini", url=url, baseline="0004")
    status = anyio.run(migrator.run)

    assert [a.revision for a in status.applied] == ["0001", "0002", "0003", "0004"]
    assert_models_match(migrator, Base.metadata)


def test_a_create_all_first_app_makes_its_tables_under_the_lock_in_one_line(
    example_app: ModuleType,
) -> None:
    # An app that always made its tables with create_all(): its first revision
    # is where those tables are. On an empty database the baseline makes them,
    # on env.py's fenced connection, and stamps; no revision runs.
    from models import Base, Book

    url = example_app.migrator.url
    migrator = AutoMigrator(
        EXAMPLE / "alembic.ini", url=url, baseline=Baseline("0004", create=Base.metadata)
    )

    status = anyio.run(migrator.run)
    again = anyio.run(AutoMigrator(EXAMPLE / "alembic.ini", url=url, baseline="0004").run)

    assert status.state is MigrationState.READY
    assert status.applied == ()
    assert revisions(sync_url(url)) == {"0004"}
    assert rows(sync_url(url), f"SELECT count(*) FROM {Book.__tablename__}") == [(0,)]
    assert_models_match(migrator, Base.metadata)
    assert again.applied == ()


def test_a_first_revision_that_alters_create_all_tables_runs_after_them(
    tmp_path: Path, db_url: URL
) -> None:
    # MLflow's shape: its first revision (down_revision None) alters tables
    # its initial models make. Baseline("base") makes them, then every
    # revision runs.
    initial = sa.MetaData()
    sa.Table("users", initial, sa.Column("id", sa.Integer, primary_key=True))
    first = Rev("r1", None, "alter the initial table", EMAIL.body)
    ini = make_project(tmp_path / "p", (first,))
    migrator = AutoMigrator(ini, url=db_url, baseline=Baseline("base", create=initial))

    status = anyio.run(migrator.run)

    assert status.state is MigrationState.READY
    assert [a.revision for a in status.applied] == ["r1"]
    assert revisions(db_url) == {"r1"}
    engine = sa.create_engine(db_url)
    assert {c["name"] for c in sa.inspect(engine).get_columns("users")} == {"id", "email"}
    engine.dispose()


def test_a_baseline_that_cannot_make_its_tables_is_named() -> None:
    with pytest.raises(ConfigurationError, match=r"Baseline\(create='tables'\)"):
        Baseline("0001", create="tables")  # type: ignore[arg-type]
    with pytest.raises(ConfigurationError, match=r"Baseline\(revision=''\)"):
        Baseline("")


def test_a_baseline_stopped_between_its_tables_and_its_stamp_finishes_at_the_next_start(
    example_app: ModuleType,
) -> None:
    # Without transactional DDL (MariaDB, SQLite) a start killed after some of
    # the baseline's tables were made leaves them and no version table: the
    # next start makes only the missing ones, then stamps.
    from models import Author, Base

    url = example_app.migrator.url
    engine = sa.create_engine(sync_url(url), poolclass=sa.NullPool)
    Base.metadata.create_all(engine, tables=[Base.metadata.tables[Author.__tablename__]])
    engine.dispose()
    migrator = AutoMigrator(
        EXAMPLE / "alembic.ini", url=url, baseline=Baseline("0004", create=Base.metadata)
    )

    status = anyio.run(migrator.run)

    assert status.state is MigrationState.READY
    assert revisions(sync_url(url)) == {"0004"}
    assert_models_match(migrator, Base.metadata)


def test_a_baseline_whose_create_fails_is_its_fault_and_is_never_purged(
    tmp_path: Path, db_url: URL
) -> None:
    def create(connection: Connection) -> None:
        connection.exec_driver_sql("CREATE TABLE users (id INTEGER PRIMARY KEY)")
        connection.exec_driver_sql("CREATE TABLE users (id INTEGER PRIMARY KEY)")  # twice

    ini = make_project(tmp_path / "p", (Rev("r1", None, "after the tables", "pass"),))
    migrator = AutoMigrator(
        ini,
        url=db_url,
        baseline=Baseline("base", create=create),
        on_failure=Chain(Retry(times=2, delay=0), PurgeAndRetry()),
    )

    with pytest.raises(ConfigurationError) as caught:
        anyio.run(migrator.run)

    assert "Baseline(create=...) failed making the baseline's tables" in caught.value.message
    assert "env.py" not in caught.value.message
    assert migrator.status.attempts == 1  # neither retried nor purged
    assert backups(db_url) == []
    assert revisions(db_url) == set()
