"""``automigrator.testing``, used as the docs' Testing page shows (its snippets come from here).

The app under test is the example app, loaded as a user's test suite loads
its own: with its settings (``DATABASE_URL``) in the environment.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from types import ModuleType

import httpx
import pytest
import sqlalchemy as sa
from asgi_lifespan import LifespanManager
from fastapi.testclient import TestClient
from sqlalchemy.engine import URL
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from automigrator import AutoMigrator, MigrationState, MigratorGroup
from automigrator.testing import assert_at_head, assert_models_match, upgrade
from tests.project import CHAIN, USERS, make_project


# --8<-- [start:testclient]
@pytest.fixture
def client(example_app: ModuleType) -> Iterator[TestClient]:
    # Entering TestClient runs the app's lifespan: the migrations run, as in
    # production, before the first request.
    with TestClient(example_app.app) as client:
        yield client


def test_books_after_migrations(client: TestClient, example_app: ModuleType) -> None:
    assert_at_head(example_app.migrator)
    response = client.get("/books")
    assert response.status_code == 200
    assert response.json()  # the seed revision's rows


# --8<-- [end:testclient]


# --8<-- [start:lifespanmanager]
@pytest.fixture
async def async_client(example_app: ModuleType) -> AsyncIterator[httpx.AsyncClient]:
    async with LifespanManager(example_app.app) as manager:  # migrations run here
        transport = httpx.ASGITransport(app=manager.app)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
            yield client


@pytest.mark.anyio
async def test_status_after_migrations(
    async_client: httpx.AsyncClient, example_app: ModuleType
) -> None:
    response = await async_client.get("/status")
    assert response.json()["state"] == "ready"
    assert_at_head(example_app.migrator)  # works inside an event loop too


# --8<-- [end:lifespanmanager]


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


# --8<-- [start:models]
def test_migrations_match_the_models(example_app: ModuleType) -> None:
    from models import Base  # the example's SQLAlchemy models

    upgrade(example_app.migrator)  # no app needed: migrate the test database now
    assert_models_match(example_app.migrator, Base.metadata)


# --8<-- [end:models]


def test_a_model_change_without_its_revision_is_caught(example_app: ModuleType) -> None:
    class Base(DeclarativeBase):
        pass

    class Author(Base):
        __tablename__ = "authors"
        id: Mapped[int] = mapped_column(primary_key=True)
        name: Mapped[str] = mapped_column(sa.String(100), unique=True)
        country: Mapped[str] = mapped_column(sa.String(2))  # no revision adds it

    upgrade(example_app.migrator)

    with pytest.raises(AssertionError, match="country"):
        assert_models_match(example_app.migrator, Base.metadata)


def test_assert_at_head_says_what_is_missing(tmp_path: Path, sqlite_url: URL) -> None:
    ini = make_project(tmp_path / "p", CHAIN)
    migrator = AutoMigrator(ini, url=sqlite_url)

    with pytest.raises(
        AssertionError, match="at base, the scripts' head is r3, pending r1, r2, r3"
    ):
        assert_at_head(migrator)
    status = upgrade(migrator)
    assert status.state is MigrationState.READY
    assert_at_head(migrator)


def test_assert_at_head_on_a_group_names_the_database(tmp_path: Path, sqlite_url: URL) -> None:
    other = sqlite_url.set(database=f"{sqlite_url.database}.other")
    group = MigratorGroup(
        {
            "users": AutoMigrator(make_project(tmp_path / "a", CHAIN), url=sqlite_url),
            "audit": AutoMigrator(make_project(tmp_path / "b", (USERS,)), url=other),
        }
    )
    upgrade(group.migrators["users"])

    with pytest.raises(AssertionError, match=r"^audit: the database is empty"):
        assert_at_head(group)
