"""Configs given as a file: read by automigrator as Alembic reads them."""

from __future__ import annotations

import io
import shutil
from pathlib import Path

import anyio
import pytest
from alembic import command
from alembic.config import Config
from sqlalchemy.engine import URL

from automigrator import AutoMigrator, MigrationState
from tests.conftest import revisions
from tests.project import ALEMBIC, CHAIN, make_project, write_revision


@pytest.mark.skipif(
    ALEMBIC < (1, 16), reason="Alembic's pyproject template and toml configs are new in 1.16"
)
def test_pyproject_toml_config(tmp_path: Path, sqlite_url: URL) -> None:
    # Alembic's own "pyproject" template: script_location in [tool.alembic].
    root = tmp_path / "proj"
    root.mkdir()
    cfg = Config(str(root / "alembic.ini"), toml_file=str(root / "pyproject.toml"))
    cfg.stdout = io.StringIO()
    command.init(cfg, str(root / "migrations"), template="pyproject")
    for rev in CHAIN:
        write_revision(root, rev)

    first = anyio.run(AutoMigrator(root / "pyproject.toml", url=sqlite_url).run)
    again = anyio.run(AutoMigrator(root / "pyproject.toml", url=sqlite_url).run)

    assert [first.state, again.state] == [MigrationState.READY, MigrationState.READY]
    assert len(first.applied) == 3
    assert again.applied == ()
    assert revisions(sqlite_url) == {"r3"}


def test_relative_script_location_is_read_from_the_working_folder(
    ini: Path, sqlite_url: URL, monkeypatch: pytest.MonkeyPatch
) -> None:
    # alembic.ini's usual "script_location = migrations" is relative to the
    # folder Alembic runs in, as in Alembic itself.
    text = ini.read_text()
    location = next(line for line in text.splitlines() if line.startswith("script_location"))
    ini.write_text(text.replace(location, "script_location = migrations"))
    monkeypatch.chdir(ini.parent)

    status = anyio.run(AutoMigrator("alembic.ini", url=sqlite_url).run)

    assert status.state is MigrationState.READY
    assert revisions(sqlite_url) == {"r3"}


def test_a_config_built_in_code_without_an_ini(tmp_path: Path, sqlite_url: URL) -> None:
    project = make_project(tmp_path / "proj", CHAIN).parent
    (project / "alembic.ini").unlink()  # env.py and the scripts only
    cfg = Config()  # no file at all
    cfg.set_main_option("script_location", str(project / "migrations"))

    first = anyio.run(AutoMigrator(cfg, url=sqlite_url).run)
    again = anyio.run(AutoMigrator(cfg, url=sqlite_url).run)

    assert len(first.applied) == 3
    assert again.state is MigrationState.READY
    assert revisions(sqlite_url) == {"r3"}


def test_per_dialect_version_folders_through_a_config_built_in_code(
    tmp_path: Path, db_url: URL
) -> None:
    # A project that keeps one chain of revisions per database kind, chosen
    # at run time (docs/recipes.md): the Config names the folder to use.
    project = make_project(tmp_path / "proj", CHAIN).parent
    versions = project / "migrations" / "versions"
    for kind in ("sqlite", "postgresql", "mysql"):
        shutil.copytree(versions, project / "migrations" / f"versions_{kind}")
    for path in versions.glob("*.py"):
        path.unlink()  # the default folder is empty, as in such projects
    cfg = Config(str(project / "alembic.ini"))
    folder = project / "migrations" / f"versions_{db_url.get_backend_name()}"
    cfg.set_main_option("version_locations", str(folder))

    status = anyio.run(AutoMigrator(cfg, url=db_url).run)

    assert [a.revision for a in status.applied] == ["r1", "r2", "r3"]
    assert revisions(db_url) == {"r3"}


def test_tomli_is_a_dependency_where_python_has_no_tomllib() -> None:
    # Alembic before 1.16 does not bring it, and pytest does (so the suite
    # never noticed): an app on Python 3.10 with Alembic 1.13 did not start.
    from importlib.metadata import requires

    from packaging.requirements import Requirement

    needed = [Requirement(r) for r in requires("automigrator") or ()]
    tomli = [r for r in needed if r.name == "tomli"]
    assert len(tomli) == 1
    assert tomli[0].marker is not None
    assert tomli[0].marker.evaluate({"python_version": "3.10"})
    assert not tomli[0].marker.evaluate({"python_version": "3.11"})
