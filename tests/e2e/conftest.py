"""The example app, copied per test, with a fresh database on each backend. All slow."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy.engine import URL

from tests.conftest import make_db_url

HERE = Path(__file__).resolve().parent
EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "fastapi_app"
ASYNC_DRIVER = {"sqlite": "sqlite+aiosqlite", "postgresql": "postgresql+psycopg"}


@pytest.hookimpl(tryfirst=True)  # before ``-m`` deselects
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Every test here starts real server processes: slow, out of ``nox -s quick``."""
    for item in items:
        if item.path.is_relative_to(HERE):
            item.add_marker(pytest.mark.slow)


@pytest.fixture(params=["sqlite", "postgresql"])
def example(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[tuple[Path, URL]]:
    """A copy of the example app, and an async URL to a fresh database for it."""
    app_dir = tmp_path / "example"
    shutil.copytree(EXAMPLE, app_dir, ignore=shutil.ignore_patterns("data", "__pycache__"))
    for url in make_db_url(request.param, tmp_path):
        yield app_dir, url.set(drivername=ASYNC_DRIVER[request.param])


def uvicorn(app_dir: Path, target: str = "app:app") -> list[str]:
    return ["uvicorn", target, "--app-dir", str(app_dir)]
