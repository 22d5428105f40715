"""Bad input to the lint is named, never ignored or thrown back raw.

A misspelled rule in an allow comment used to be ignored (the finding it
meant to allow stayed flagged, or a later rule was silently allowed); a
``--since`` naming no revision printed Alembic's traceback.
"""

from __future__ import annotations

from pathlib import Path

import anyio
import pytest
from sqlalchemy.engine import URL

from automigrator import AutoMigrator, ConfigurationError, lint
from tests.helpers import cli
from tests.project import USERS, Rev, make_project

DROPS = 'op.drop_column("users", "name")'


def allowing(tmp_path: Path, names: str) -> Path:
    body = f"# automigrator: allow={names}\n{DROPS}"
    return make_project(tmp_path / "p", (USERS, Rev("r2", "r1", "drops a column", body)))


@pytest.mark.parametrize("squawk", ["installed", "off"])
def test_an_allow_comment_naming_no_rule_is_a_named_error(
    tmp_path: Path, sqlite_url: URL, squawk: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    if squawk == "off":
        monkeypatch.setenv("AUTOMIGRATOR_SQUAWK", "off")
    ini = allowing(tmp_path, "drop-colum")

    with pytest.raises(ConfigurationError) as caught:
        anyio.run(lambda: lint(AutoMigrator(ini, url=sqlite_url), since="base"))

    assert "allow=drop-colum'" in caught.value.message
    assert "r2.py" in caught.value.message  # the file to fix
    assert "drop-column" in caught.value.message  # and the rules there are


@pytest.mark.parametrize("names", ["drop-column", "squawk:ban-drop-column", "ban-drop-column"])
def test_our_rules_and_squawks_are_taken(tmp_path: Path, sqlite_url: URL, names: str) -> None:
    ini = allowing(tmp_path, names)

    report = anyio.run(lambda: lint(AutoMigrator(ini, url=sqlite_url), since="base"))

    assert report.revisions == ("r1", "r2")


def test_lint_since_an_unknown_revision_is_a_named_error(tmp_path: Path, sqlite_url: URL) -> None:
    ini = allowing(tmp_path, "drop-column")

    run = cli(ini, sqlite_url, "lint", "--since", "nope")

    assert run.returncode == 2
    assert "'nope'" in run.stderr
    assert "Traceback" not in run.stderr
