"""The recipe for an app that made its tables with create_all() and adopts migrations.

Its databases in the field have the tables and no version table; new ones
are empty. One migrator serves both: ``baseline=`` names the revision the
create_all() tables match (stamped there, nothing run, rows kept), and an
empty database runs every revision. docs/recipes.md shows it.
"""

from __future__ import annotations

from types import ModuleType

import anyio
import sqlalchemy as sa

from automigrator import AutoMigrator, MigrationState
from automigrator.database._connections import sync_url
from automigrator.testing import assert_models_match
from tests.conftest import EXAMPLE, revisions


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
