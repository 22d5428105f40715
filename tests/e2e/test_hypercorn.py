"""End to end under hypercorn: the example app serves; a failing migration stops it."""

from __future__ import annotations

from pathlib import Path

import pytest
from sqlalchemy.engine import URL

from tests.e2e.helpers import BROKEN_0005, hypercorn
from tests.e2e.server import serve

pytestmark = pytest.mark.e2e


def test_example_migrates_then_serves(example: tuple[Path, URL]) -> None:
    app_dir, url = example
    env = {"DATABASE_URL": url.render_as_string(hide_password=False)}
    with serve(hypercorn(), env=env, cwd=app_dir) as server:
        assert server.wait_for("Running on"), server.log
        books = server.get("/books")

    assert books.status_code == 200
    assert len(books.json()) == 2
    assert "Schema ready at 0004" in server.log


def test_broken_migration_exits_non_zero_with_the_reason(example: tuple[Path, URL]) -> None:
    # "-w 0" runs the app in hypercorn's own process. With its default
    # supervisor (hypercorn 0.18) a worker that fails to start leaves the
    # server exiting 0: the reason is in the output, the status is not.
    app_dir, url = example
    (app_dir / "migrations" / "versions" / "0005_broken.py").write_text(BROKEN_0005)
    env = {"DATABASE_URL": url.render_as_string(hide_password=False)}
    with serve(hypercorn("-w", "0"), env=env, cwd=app_dir) as server:
        code = server.wait_exit()

    assert code != 0
    assert "Migration 0005 (add a column, then break) failed" in server.log
    assert "Running on" not in server.log
