"""The lint in CI: what a change adds (``--changed-from``), for the kind of database said.

A real git repository holding a real Alembic project; no database: the
command line renders offline and judges each revision as if its tables
were big.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import anyio
import pytest

from automigrator import AutoMigrator, ConfigurationError, lint
from automigrator.testing import assert_migrations_are_safe

from .helpers import run_cli
from .project import EMAIL, USERS, Rev, make_project, write_revision

INDEX = Rev("r3", "r2", "index names", 'op.create_index("ix_users_name", "users", ["name"])')
DROP = Rev("r4", "r3", "drop email", 'op.drop_column("users", "email")')


def git(root: Path, *args: str) -> None:
    subprocess.run(
        ["git", "-c", "user.name=ci", "-c", "user.email=ci@example.com", *args],
        cwd=root,
        check=True,
        capture_output=True,
    )


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    """A project whose branch main holds r1 and r2; branch feature adds r3 (committed)
    and r4 (not yet: untracked)."""
    ini = make_project(tmp_path / "app", (USERS, EMAIL))
    git(ini.parent, "init", "-q", "-b", "main")
    git(ini.parent, "add", ".")
    git(ini.parent, "commit", "-q", "-m", "r1 r2")
    git(ini.parent, "checkout", "-q", "-b", "feature")
    write_revision(ini.parent, INDEX)
    git(ini.parent, "add", ".")
    git(ini.parent, "commit", "-q", "-m", "r3")
    write_revision(ini.parent, DROP)  # untracked yet
    return ini


def test_changed_from_lints_only_the_revisions_the_change_adds(repo: Path) -> None:
    done = run_cli(
        "-c", str(repo), "lint", "--changed-from", "main", "--dialect", "postgresql", "--json"
    )
    assert done.returncode == 15, done.stderr
    assert '"revisions": ["r3", "r4"]' in done.stdout
    assert '"rule": "index-not-concurrent"' in done.stdout
    assert '"rule": "drop-column"' in done.stdout

    since_feature = run_cli(
        "-c", str(repo), "lint", "--changed-from", "feature", "--dialect", "postgresql", "--json"
    )
    assert since_feature.returncode == 15, since_feature.stderr
    assert '"revisions": ["r4"]' in since_feature.stdout  # untracked, still new
    assert "index-not-concurrent" not in since_feature.stdout


def test_the_dialect_decides_the_rules_not_a_placeholder_url(repo: Path) -> None:
    # The ini's URL is Alembic's placeholder (driver://...). A plain index is
    # flagged for PostgreSQL, passed for SQLite (no concurrent build there).
    pg = run_cli("-c", str(repo), "lint", "--changed-from", "main", "--dialect", "postgresql")
    lite = run_cli("-c", str(repo), "lint", "--changed-from", "main", "--dialect", "sqlite")
    assert "index-not-concurrent" in pg.stdout, pg.stderr
    assert "index-not-concurrent" not in lite.stdout
    assert "drop-column" in lite.stdout, lite.stderr


def test_a_dialect_against_a_url_of_another_kind_is_named(repo: Path) -> None:
    done = run_cli(
        "-c",
        str(repo),
        "--url",
        "sqlite:///x.db",
        "lint",
        "--since",
        "base",
        "--dialect",
        "postgresql",
    )
    assert done.returncode == 2
    assert "--dialect postgresql, but --url is a sqlite URL" in done.stderr
    online = run_cli("-c", str(repo), "lint", "--dialect", "postgresql")
    assert online.returncode == 2
    assert "--dialect is for a lint without a database" in online.stderr


def test_an_env_py_that_renders_for_another_database_is_refused(repo: Path) -> None:
    env = repo.parent / "migrations" / "env.py"
    text = env.read_text()
    offline = 'url = config.get_main_option("sqlalchemy.url")'
    assert offline in text
    env.write_text(text.replace(offline, 'url = "sqlite:///elsewhere.db"', 1))
    done = run_cli("-c", str(repo), "lint", "--since", "base", "--dialect", "postgresql")
    assert done.returncode == 2
    assert "env.py rendered the revisions' SQL for sqlite, but the URL is a postgresql" in (
        done.stderr
    )


def test_changed_from_in_code_and_a_ref_git_does_not_know(repo: Path) -> None:
    migrator = AutoMigrator(repo, url="sqlite://")
    with pytest.raises(AssertionError, match="added since main"):
        assert_migrations_are_safe(migrator, changed_from="main")
    report = anyio.run(lambda: lint(migrator, changed_from="main"))
    assert report.revisions == ("r3", "r4")
    with pytest.raises(ConfigurationError, match="no-such-ref"):
        anyio.run(lambda: lint(migrator, changed_from="no-such-ref"))
    with pytest.raises(ConfigurationError, match="not both"):
        anyio.run(lambda: lint(migrator, since="base", changed_from="main"))
