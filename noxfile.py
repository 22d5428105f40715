"""Every developer task, one runner: ``nox -s tests lint typecheck``, ``nox -s demo``."""

from __future__ import annotations

import sys
from pathlib import Path

import nox

nox.options.sessions = ["tests", "lint", "typecheck"]
nox.options.reuse_venv = "yes"
nox.options.error_on_missing_interpreters = True


@nox.session
def tests(session: nox.Session) -> None:
    """Run the test suite (server tests need the URLs in tests/conftest.py's docstring)."""
    session.install("-e", ".[test]")
    session.run("pytest", *session.posargs)


@nox.session
def quick(session: nox.Session) -> None:
    """The tests without the slow ones (the ``slow`` marker: real servers started, long waits)."""
    session.install("-e", ".[test]")
    session.run("pytest", "-m", "not slow", *session.posargs)


# The version matrix, on demand (CI runs the tests session: the latest set).
# ``nox -s matrix`` runs all of it; one cell:
# ``nox -s "matrix-3.10(sqlalchemy='2.0', alembic='oldest')"``; pytest
# arguments after ``--`` (e.g. ``-- -m "not e2e"``).
MATRIX_PYTHONS = ["3.10", "3.11", "3.12", "3.13"]
SQLALCHEMY = {"2.0": "sqlalchemy[asyncio]>=2.0,<2.1", "latest": "sqlalchemy[asyncio]"}
# The oldest Alembic that pyproject.toml's dependencies admit.
ALEMBIC = {"oldest": "alembic==1.13.2", "latest": "alembic"}


@nox.session(python=MATRIX_PYTHONS, default=False)
@nox.parametrize("alembic", list(ALEMBIC))
@nox.parametrize("sqlalchemy", list(SQLALCHEMY))
def matrix(session: nox.Session, sqlalchemy: str, alembic: str) -> None:
    """The tests on one Python with SQLAlchemy 2.0 or latest, Alembic oldest or latest."""
    session.install("-e", ".[test]")
    session.install("--upgrade", SQLALCHEMY[sqlalchemy], ALEMBIC[alembic])
    session.run("python", "-c", _VERSIONS)
    session.run("pytest", *session.posargs)


# The floors pyproject.toml states, all at once, on the oldest Python: the
# proof that they are floors (``nox -s floors``; pytest arguments after --).
CORE_FLOORS = [
    "alembic==1.13.2",
    "sqlalchemy[asyncio]==2.0.24",
    "anyio==3.7.1",
    "starlette==0.37.2",
    "filelock==3.12.0",
]
# FastAPI is held back to one that takes Starlette's floor.
FLOORS = [*CORE_FLOORS, "fastapi==0.112.4"]


@nox.session(python=MATRIX_PYTHONS[0], default=False)
def floors(session: nox.Session) -> None:
    """Every module imported with the floors and nothing else; then the tests at the floors."""
    # A clean environment of its own: the test extras (and a reused venv)
    # bring packages that the core may need without declaring them (tomli).
    clean = Path(session.create_tmp()) / "floors-only"
    session.run("python", "-m", "venv", "--clear", str(clean))
    python = str(clean / ("Scripts" if sys.platform == "win32" else "bin") / "python")
    session.run(python, "-m", "pip", "install", "-q", ".", *CORE_FLOORS, external=True)
    session.run(python, "-m", "pip", "freeze", "--exclude-editable", external=True)
    session.run(python, "-c", _IMPORT_ALL, external=True)
    session.install("-e", ".[test]")
    session.install(*FLOORS)
    session.run("python", "-c", _VERSIONS)
    session.run("pytest", *session.posargs)


_IMPORT_ALL = (
    # otel is an extra (opentelemetry-api); __main__ would run the CLI.
    "import importlib, pkgutil, sys, automigrator; "
    "names = [m.name for m in pkgutil.walk_packages(automigrator.__path__, 'automigrator.')]; "
    "skip = ('__main__', 'otel'); "
    "[importlib.import_module(n) for n in names if n.rsplit('.', 1)[-1] not in skip]; "
    "print('floors: imported', len(names) + 1, 'modules on Python', sys.version.split()[0])"
)
_VERSIONS = (
    "import sys, alembic, sqlalchemy; "
    "print('matrix: Python', sys.version.split()[0], '| SQLAlchemy', sqlalchemy.__version__, "
    "'| Alembic', alembic.__version__)"
)


@nox.session
def lint(session: nox.Session) -> None:
    """ruff: lint and format check."""
    session.install("ruff>=0.6")
    session.run("ruff", "check", ".")
    session.run("ruff", "format", "--check", ".")


@nox.session
def typecheck(session: nox.Session) -> None:
    """mypy --strict over the library, the tests and the example."""
    session.install("-e", ".[test]", "mypy>=1.10", "nox")
    session.run("mypy")


@nox.session
def bench(session: nox.Session) -> None:
    """Benchmarks: print figures, assert nothing. All, or one: ``nox -s bench -- lag``."""
    session.install("-e", ".[test]")  # with the corpus of real histories
    if session.posargs:
        name, *rest = session.posargs
        session.run("python", "-m", f"benchmarks.{name}", *rest)
        return
    for name in ("startup", "lag", "replicas", "live", "reaping", "lint", "rolling"):
        session.run("python", "-m", f"benchmarks.{name}")


@nox.session
def docs(session: nox.Session) -> None:
    """Build the documentation site (mkdocs-material + mkdocstrings), warnings as errors."""
    session.install("-e", ".[docs]")
    session.run("mkdocs", "build", "--strict", "-d", "site", env={"NO_MKDOCS_2_WARNING": "1"})


@nox.session
def demo(session: nox.Session) -> None:
    """Run the example app: migrations applied to SQLite at start-up, served by uvicorn."""
    session.install("-e", ".[example]")
    session.run(
        "uvicorn", "app:app", "--app-dir", "examples/fastapi_app", *(session.posargs or [])
    )
