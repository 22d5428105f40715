"""Per-test databases on real servers: SQLite files, PostgreSQL and MariaDB.

Server URLs come from AUTOMIGRATOR_TEST_POSTGRES_URL and
AUTOMIGRATOR_TEST_MARIADB_URL (an admin URL; each test gets its own fresh
database on that server). Without them the server tests skip, unless
AUTOMIGRATOR_TEST_REQUIRE_SERVERS=1 (as in CI), where they fail instead.
"""

from __future__ import annotations

import importlib.util
import os
import sys
import uuid
from collections.abc import Callable, Generator, Iterator
from contextlib import ExitStack, contextmanager
from importlib.metadata import version
from pathlib import Path
from types import ModuleType

import pytest
import sqlalchemy as sa
from sqlalchemy.engine import URL

from tests.project import CHAIN, make_project

# The shared helpers' asserts report as the tests' own do (registered here,
# before any test file imports tests/helpers.py).
pytest.register_assert_rewrite("tests.helpers")


def pytest_configure(config: pytest.Config) -> None:
    # Starlette's TestClient before 0.38.6 (the floors cell, `nox -s floors`,
    # runs 0.37.2) leaves anyio memory streams unclosed, and anyio warns when
    # they are collected, in whichever test runs then. Not ours: nothing in
    # automigrator makes a memory stream. Measured: 0.38.6 leaves none.
    starlette = tuple(int(p) for p in version("starlette").split(".")[:3] if p.isdigit())
    if starlette < (0, 38, 6):
        config.addinivalue_line(
            "filterwarnings",
            "ignore:Exception ignored in.*MemoryObject(Send|Receive)Stream.__del__"
            ":pytest.PytestUnraisableExceptionWarning",
        )


SERVERS = {
    "postgresql": "AUTOMIGRATOR_TEST_POSTGRES_URL",
    "mariadb": "AUTOMIGRATOR_TEST_MARIADB_URL",
}
REQUIRE = os.environ.get("AUTOMIGRATOR_TEST_REQUIRE_SERVERS", "") == "1"


def server_url(kind: str) -> URL:
    raw = os.environ.get(SERVERS[kind])
    if not raw:
        message = f"{SERVERS[kind]} is not set: no {kind} server to test against"
        if REQUIRE:
            pytest.fail(message + " (AUTOMIGRATOR_TEST_REQUIRE_SERVERS=1)")
        pytest.skip(reason=message)
    return sa.make_url(raw)


def fresh_database(kind: str) -> Generator[URL, None, None]:
    """Create a database of its own on the server; drop it afterwards."""
    admin_url = server_url(kind)
    name = f"am_{uuid.uuid4().hex[:12]}"
    admin = sa.create_engine(admin_url, isolation_level="AUTOCOMMIT", poolclass=sa.NullPool)
    with admin.connect() as conn:
        conn.exec_driver_sql(f"CREATE DATABASE {name}")
    try:
        yield admin_url.set(database=name)
    finally:
        with admin.connect() as conn:
            force = " WITH (FORCE)" if kind == "postgresql" else ""
            conn.exec_driver_sql(f"DROP DATABASE {name}{force}")
        admin.dispose()


def make_db_url(kind: str, tmp_path: Path) -> Generator[URL, None, None]:
    if kind == "sqlite":
        data = tmp_path / "data"
        data.mkdir()
        yield sa.make_url(f"sqlite:///{data / 'app.db'}")
    else:
        yield from fresh_database(kind)


@pytest.fixture(params=["sqlite", "postgresql", "mariadb"])
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[URL]:
    """A fresh, empty database on each backend."""
    yield from make_db_url(request.param, tmp_path)


@pytest.fixture
def sqlite_url(tmp_path: Path) -> Iterator[URL]:
    yield from make_db_url("sqlite", tmp_path)


@pytest.fixture
def pg_url(tmp_path: Path) -> Iterator[URL]:
    yield from make_db_url("postgresql", tmp_path)


@pytest.fixture(params=["postgresql", "mariadb"])
def server_db(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[URL]:
    """A fresh, empty database on each server backend (PostgreSQL, MariaDB)."""
    yield from make_db_url(request.param, tmp_path)


@pytest.fixture
def fresh_db(tmp_path: Path) -> Iterator[Callable[[str], URL]]:
    """``fresh_db(kind)``: a fresh database of that kind, for tests that pick it themselves.

    ``kind`` is "sqlite", "postgresql" or "mariadb" (one SQLite database a
    test); every database made is dropped when the test ends.
    """
    with ExitStack() as made:
        yield lambda kind: made.enter_context(contextmanager(make_db_url)(kind, tmp_path))


@pytest.fixture
def release(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A file whose creation lets a waiting revision (tests/helpers.py's WAITING_USERS) finish."""
    path = tmp_path / "release"
    monkeypatch.setenv("AM_RELEASE", str(path))
    return path


@pytest.fixture
def ini(tmp_path: Path) -> Path:
    """An Alembic project from the generic template with the r1-r3 chain."""
    return make_project(tmp_path / "proj", CHAIN)


def tables(url: URL) -> set[str]:
    engine = sa.create_engine(url, poolclass=sa.NullPool)
    try:
        with engine.connect() as conn:
            return set(sa.inspect(conn).get_table_names())
    finally:
        engine.dispose()


def revisions(url: URL) -> set[str]:
    engine = sa.create_engine(url, poolclass=sa.NullPool)
    try:
        with engine.connect() as conn:
            if not sa.inspect(conn).has_table("alembic_version"):
                return set()
            return set(conn.exec_driver_sql("SELECT version_num FROM alembic_version").scalars())
    finally:
        engine.dispose()


def rows(url: URL, sql: str) -> list[tuple[object, ...]]:
    engine = sa.create_engine(url, poolclass=sa.NullPool)
    try:
        with engine.connect() as conn:
            return [tuple(r) for r in conn.exec_driver_sql(sql)]
    finally:
        engine.dispose()


@pytest.fixture
def signals(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The folder where waiting revisions and the test signal each other."""
    folder = tmp_path / "signals"
    folder.mkdir()
    monkeypatch.setenv("AM_SIGNALS", str(folder))
    return folder


EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "fastapi_app"


def async_url(url: URL) -> str:
    drivers = {"sqlite": "sqlite+aiosqlite", "postgresql": "postgresql+asyncpg"}
    return url.set(drivername=drivers[url.get_backend_name()]).render_as_string(
        hide_password=False
    )


@pytest.fixture(params=["sqlite", "postgresql"])
def example_app(
    request: pytest.FixtureRequest,
    fresh_db: Callable[[str], URL],
    monkeypatch: pytest.MonkeyPatch,
) -> ModuleType:
    """The example app's module, imported with a fresh test database in DATABASE_URL."""
    url = fresh_db(request.param)  # dropped after the test
    monkeypatch.setenv("DATABASE_URL", async_url(url))
    monkeypatch.syspath_prepend(str(EXAMPLE))
    monkeypatch.delitem(sys.modules, "models", raising=False)
    spec = importlib.util.spec_from_file_location("example_app", EXAMPLE / "app.py")
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
