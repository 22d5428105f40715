"""The plan and the lint show no password: a revision that fails to render names the URL.

An offline render runs the user's env.py and revision code, whose errors
may quote the URL they were given (a connection string in a message, a
driver's repr). Every output of that path redacts: the start-up WARNING of
the lint, ``plan --sql``, ``lint`` and ``lint --json``, and the
``not_renderable`` of ``preview()``.
"""

from __future__ import annotations

import logging
from pathlib import Path
from urllib.parse import quote

import anyio
import pytest
from sqlalchemy.engine import URL

from automigrator import AutoMigrator, MigrationState, preview
from tests.helpers import cli
from tests.project import USERS, Rev, make_project

PASSWORD = "p@ss:w/rd%25x"  # '%25' is a literal part of it, not an escape
FORMS = (PASSWORD, quote(PASSWORD, safe=""), "rd%25x", "w/rd", "%25x")

# In offline mode (plan --sql, the lint) this revision fails quoting the URL
# env.py was given, password and all; online it adds a column.
QUOTES_THE_URL = Rev(
    "r2",
    "r1",
    "quotes its url offline",
    """
    from alembic import context as _context

    if _context.is_offline_mode():
        url = _context.config.get_main_option("sqlalchemy.url")
        raise RuntimeError("cannot plan against " + url)
    op.add_column("users", sa.Column("email", sa.String(100)))
    """,
)


def assert_hidden(text: str) -> None:
    for form in FORMS:
        assert form not in text, f"{form!r} leaked: {text}"


@pytest.fixture
def secret(pg_url: URL) -> URL:
    """The test's PostgreSQL database, reached with a password (trust ignores it)."""
    return pg_url.set(password=PASSWORD)


def test_the_render_error_is_seen_and_redacted_in_the_plan_and_the_lint(
    tmp_path: Path, secret: URL
) -> None:
    ini = make_project(tmp_path / "p", (USERS, QUOTES_THE_URL))
    anyio.run(AutoMigrator(ini, url=secret, target="r1").run)

    plan = cli(ini, secret, "plan", "--sql")
    linted = cli(ini, secret, "lint")
    as_json = cli(ini, secret, "lint", "--json")

    for run in (plan, linted, as_json):
        assert "cannot plan against" in run.stdout + run.stderr  # the reason is shown
        assert_hidden(run.stdout + run.stderr)


def test_preview_and_the_start_up_warning_show_no_password(
    tmp_path: Path, secret: URL, caplog: pytest.LogCaptureFixture
) -> None:
    ini = make_project(tmp_path / "p", (USERS, QUOTES_THE_URL))
    anyio.run(AutoMigrator(ini, url=secret, target="r1").run)
    migrator = AutoMigrator(ini, url=secret)

    shown = anyio.run(lambda: preview(migrator, sql=True))
    with caplog.at_level(logging.INFO, logger="automigrator"):
        status = anyio.run(migrator.run)

    [step] = shown.pending
    assert step.not_renderable is not None
    assert "cannot plan against" in step.not_renderable
    assert_hidden(step.not_renderable)
    assert status.state is MigrationState.READY  # online it runs
    said = "\n".join(record.getMessage() for record in caplog.records)
    assert "cannot plan against" in said
    assert_hidden(said)
