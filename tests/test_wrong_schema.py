"""Never ready on a wrong schema: a database behind *and* ahead, or an empty version table.

``history=SERVE`` is for a rollback deploy: the database holds every
revision this code needs, and more. A database that also lacks one of the
code's revisions (version rows ``{r1, zz}``: ``zz`` from newer code, ``r2``
never applied) is not that, under any mode or option. And an empty version
table beside the application's tables (left by a failed ``baseline=``) is
an unversioned database, not an empty one: running r1 there would meet its
own tables.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import anyio
import pytest
import sqlalchemy as sa
from sqlalchemy.engine import URL

from automigrator import (
    AutoMigrator,
    History,
    MigrationState,
    MigratorGroup,
    SchemaAheadError,
    Switch,
    Timeouts,
    UnversionedDatabaseError,
)
from tests.conftest import revisions, rows, tables
from tests.project import EMAIL, USERS, make_project

OLD_CODE = (USERS,)  # what wrote the database: r1
NEW_CODE = (USERS, EMAIL)  # the code starting now: r1 -> r2


def behind_and_ahead(tmp_path: Path, url: URL) -> Path:
    """The database at r1 plus ``zz`` (a revision of other code); returns the new code's ini."""
    anyio.run(AutoMigrator(make_project(tmp_path / "old", OLD_CODE), url=url).run)
    engine = sa.create_engine(url, poolclass=sa.NullPool)
    with engine.begin() as conn:
        conn.exec_driver_sql("INSERT INTO alembic_version (version_num) VALUES ('zz')")
    return make_project(tmp_path / "new", NEW_CODE)


def columns(url: URL, table: str) -> set[str]:
    engine = sa.create_engine(url, poolclass=sa.NullPool)
    try:
        with engine.connect() as conn:
            return {column["name"] for column in sa.inspect(conn).get_columns(table)}
    finally:
        engine.dispose()


SERVE = History(when_ahead="serve")
WAYS: dict[str, Callable[[Path, URL], AutoMigrator | MigratorGroup]] = {
    "migrate": lambda ini, url: AutoMigrator(ini, url=url, history=SERVE),
    "pinned target": lambda ini, url: AutoMigrator(ini, url=url, target="r2", history=SERVE),
    "heads": lambda ini, url: AutoMigrator(ini, url=url, target="heads", history=SERVE),
    "check mode": lambda ini, url: AutoMigrator(
        ini,
        url=url,
        mode="check",
        history=SERVE,
        timeouts=Timeouts(check=0.5),
    ),
    "switched off, checking": lambda ini, url: AutoMigrator(
        ini,
        url=url,
        history=SERVE,
        enabled=Switch(enabled=False, when_disabled="check"),
        timeouts=Timeouts(check=0.5),
    ),
    "group member": lambda ini, url: MigratorGroup(
        {"app": AutoMigrator(ini, url=url, history=SERVE)}
    ),
}


@pytest.mark.parametrize("way", list(WAYS))
def test_behind_and_ahead_is_refused_even_when_serving_ahead(
    tmp_path: Path, db_url: URL, way: str
) -> None:
    ini = behind_and_ahead(tmp_path, db_url)
    runner = WAYS[way](ini, db_url)

    with pytest.raises(SchemaAheadError) as caught:
        anyio.run(runner.run)

    assert "r2" in str(caught.value)  # names what the database lacks
    assert runner.status.state is MigrationState.FAILED
    assert revisions(db_url) == {"r1", "zz"}
    assert "email" not in columns(db_url, "users")


def test_a_database_only_ahead_is_still_served(tmp_path: Path, db_url: URL) -> None:
    anyio.run(AutoMigrator(make_project(tmp_path / "newer", NEW_CODE), url=db_url).run)
    engine = sa.create_engine(db_url, poolclass=sa.NullPool)
    with engine.begin() as conn:
        conn.exec_driver_sql("UPDATE alembic_version SET version_num = 'zz'")
    migrator = AutoMigrator(make_project(tmp_path / "older", OLD_CODE), url=db_url, history=SERVE)

    status = anyio.run(migrator.run)

    assert status.state is MigrationState.READY
    assert status.ahead == ("zz",)


def test_an_empty_version_table_beside_tables_is_refused_untouched(
    tmp_path: Path, db_url: URL
) -> None:
    ini = make_project(tmp_path / "p", NEW_CODE)
    anyio.run(AutoMigrator(ini, url=db_url, target="r1").run)
    engine = sa.create_engine(db_url, poolclass=sa.NullPool)
    with engine.begin() as conn:
        conn.exec_driver_sql("INSERT INTO users (name) VALUES ('kept')")
        conn.exec_driver_sql("DELETE FROM alembic_version")
    before = tables(db_url)
    migrator = AutoMigrator(ini, url=db_url)

    with pytest.raises(UnversionedDatabaseError):
        anyio.run(migrator.run)

    assert tables(db_url) == before
    assert rows(db_url, "SELECT name FROM users") == [("kept",)]
    assert revisions(db_url) == set()


def test_an_empty_version_table_beside_tables_takes_the_baseline(
    tmp_path: Path, db_url: URL
) -> None:
    ini = make_project(tmp_path / "p", NEW_CODE)
    anyio.run(AutoMigrator(ini, url=db_url, target="r1").run)
    engine = sa.create_engine(db_url, poolclass=sa.NullPool)
    with engine.begin() as conn:
        conn.exec_driver_sql("DELETE FROM alembic_version")

    status = anyio.run(AutoMigrator(ini, url=db_url, baseline="r1").run)

    assert status.state is MigrationState.READY
    assert revisions(db_url) == {"r2"}
