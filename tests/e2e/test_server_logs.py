"""Our lines in the output of a real server, for an app that set up no logging.

``tests/e2e/raw_app.py`` configures no logging, as many apps do: before, its
server showed none of automigrator's phase and per-revision lines.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from sqlalchemy.engine import URL

from tests.conftest import revisions
from tests.e2e.server import serve

pytestmark = pytest.mark.e2e

APP = "tests.e2e.raw_app:app"
SERVERS = {
    "uvicorn": ["uvicorn", APP],
    "hypercorn": ["hypercorn", APP, "--bind", "127.0.0.1:{port}"],
    "granian": ["granian", "--interface", "asgi", "--port", "{port}", APP],
    "gunicorn": ["gunicorn", APP, "-k", "uvicorn_worker.UvicornWorker", "-b", "127.0.0.1:{port}"],
}
ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("server_name", sorted(SERVERS))
def test_a_server_shows_our_lines_for_an_app_without_logging(
    ini: Path, sqlite_url: URL, server_name: str
) -> None:
    env = {"AM_INI": str(ini), "DATABASE_URL": str(sqlite_url)}
    with serve(SERVERS[server_name], env=env, cwd=ROOT) as server:
        assert server.wait_for("automigrator: Schema ready at r3"), server.log
        assert server.get("/").text == "served"

    assert "automigrator: Migrating from an empty database to r3" in server.log
    assert "automigrator: Applied 3/3 r3" in server.log
    assert "setup plugin" not in server.log
    assert revisions(sqlite_url) == {"r3"}
