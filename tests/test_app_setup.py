"""``before_scripts``: revision files that need the application set up first.

Two real cases: revisions that read the app's settings at import time, and
revisions that use Flask's ``current_app`` (a Flask app context).
"""

from __future__ import annotations

import os
import sys
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path

import anyio
import flask
import pytest
from sqlalchemy.engine import URL

from automigrator import AutoMigrator, ConfigurationError, MigrationError, MigrationState
from tests.conftest import revisions, tables
from tests.helpers import run_cli
from tests.project import make_project

# A revision whose module reads the app's settings when imported, as files
# that import the app's models do.
SETTINGS_REVISION = '''"""create the settings' table

Revision ID: s1
Revises:
"""
import sqlalchemy as sa
from alembic import op

from {module} import settings

revision = "s1"
down_revision = None
branch_labels = None
depends_on = None

TABLE = settings()["table"]


def upgrade() -> None:
    op.create_table(TABLE, sa.Column("id", sa.Integer, primary_key=True))


def downgrade() -> None:
    pass
'''

SETTINGS_MODULE = """
import threading

LOADED = {}
THREADS = []


def load():
    THREADS.append(threading.current_thread().name)
    LOADED["table"] = "from_settings"


def settings():
    if not LOADED:
        raise RuntimeError("settings not loaded: call load() first")
    return LOADED
"""

FLASK_REVISION = '''"""create the audit table named in the Flask config

Revision ID: f1
Revises:
"""
import sqlalchemy as sa
from alembic import op
from flask import current_app

revision = "f1"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        current_app.config["AUDIT_TABLE"], sa.Column("id", sa.Integer, primary_key=True)
    )


def downgrade() -> None:
    pass
'''


@pytest.fixture
def settings_app(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[Path, str]]:
    """A project whose revision imports a settings module; (ini, module name)."""
    module = f"appsettings_{uuid.uuid4().hex[:8]}"
    code = tmp_path / "code"
    code.mkdir()
    (code / f"{module}.py").write_text(SETTINGS_MODULE)
    monkeypatch.syspath_prepend(str(code))
    ini = make_project(tmp_path / "proj", ())
    versions = ini.parent / "migrations" / "versions"
    (versions / "s1.py").write_text(SETTINGS_REVISION.format(module=module))
    yield ini, module
    sys.modules.pop(module, None)


def test_settings_loaded_by_the_hook_in_the_worker_thread(
    settings_app: tuple[Path, str], db_url: URL
) -> None:
    ini, name = settings_app
    module = __import__(name)
    migrator = AutoMigrator(ini, url=db_url, before_scripts=module.load)

    status = anyio.run(migrator.run)

    assert status.state is MigrationState.READY
    assert "from_settings" in tables(db_url)
    assert module.THREADS, "the hook was not called"
    assert threading.main_thread().name not in module.THREADS


def test_without_the_hook_the_revision_cannot_load(
    settings_app: tuple[Path, str], sqlite_url: URL
) -> None:
    ini, _ = settings_app
    migrator = AutoMigrator(ini, url=sqlite_url)

    with pytest.raises(ConfigurationError, match="settings not loaded"):
        anyio.run(migrator.run)
    assert revisions(sqlite_url) == set()


def test_the_hook_is_not_called_at_head(settings_app: tuple[Path, str], sqlite_url: URL) -> None:
    ini, name = settings_app
    module = __import__(name)
    anyio.run(AutoMigrator(ini, url=sqlite_url, before_scripts=module.load).run)
    calls = len(module.THREADS)

    def must_not_run() -> None:
        raise AssertionError("called at head")

    status = anyio.run(AutoMigrator(ini, url=sqlite_url, before_scripts=must_not_run).run)

    assert calls >= 1
    assert status.state is MigrationState.READY


def test_a_failing_hook_is_a_configuration_error_and_changes_nothing(
    settings_app: tuple[Path, str], sqlite_url: URL
) -> None:
    ini, _ = settings_app

    def broken() -> None:
        raise KeyError("DATABASE_SECRET")

    migrator = AutoMigrator(ini, url=sqlite_url, before_scripts=broken)

    with pytest.raises(ConfigurationError, match=r"before_scripts .* failed: KeyError"):
        anyio.run(migrator.run)
    assert migrator.status.error_kind == "configuration"
    assert tables(sqlite_url) == set()


def test_a_non_callable_hook_is_refused(ini: Path, sqlite_url: URL) -> None:
    with pytest.raises(ConfigurationError, match="not callable"):
        AutoMigrator(ini, url=sqlite_url, before_scripts="myapp:setup")  # type: ignore[arg-type]


@pytest.fixture
def flask_project(tmp_path: Path) -> Path:
    ini = make_project(tmp_path / "proj", ())
    (ini.parent / "migrations" / "versions" / "f1.py").write_text(FLASK_REVISION)
    return ini


def test_flask_app_context_around_the_run(flask_project: Path, db_url: URL) -> None:
    app = flask.Flask("shop")
    app.config["AUDIT_TABLE"] = "shop_audit"
    migrator = AutoMigrator(flask_project, url=db_url, before_scripts=app.app_context)

    status = anyio.run(migrator.run)

    assert status.state is MigrationState.READY
    assert "shop_audit" in tables(db_url)
    assert not flask.has_app_context()  # entered in the worker thread, and left


def test_flask_revision_fails_outside_an_app_context(flask_project: Path, sqlite_url: URL) -> None:
    migrator = AutoMigrator(flask_project, url=sqlite_url)

    with pytest.raises(MigrationError, match="Working outside of application context"):
        anyio.run(migrator.run)
    assert revisions(sqlite_url) == set()


def test_cli_before_scripts(settings_app: tuple[Path, str], sqlite_url: URL) -> None:
    ini, module = settings_app
    code = next(p for p in sys.path if Path(p, f"{module}.py").is_file())
    env = {**os.environ, "PYTHONPATH": code}
    url = sqlite_url.render_as_string(hide_password=False)
    base = ("-c", str(ini), "--url", url)

    missing = run_cli(*base, "upgrade", env=env)
    bad_name = run_cli(*base, "--before-scripts", f"{module}:nope", "upgrade", env=env)
    done = run_cli(*base, "--before-scripts", f"{module}:load", "upgrade", env=env)

    assert missing.returncode == 2
    assert "settings not loaded" in missing.stderr
    assert bad_name.returncode == 2
    assert "--before-scripts" in bad_name.stderr
    assert "nope" in bad_name.stderr
    assert done.returncode == 0, done.stderr
    assert "from_settings" in tables(sqlite_url)
