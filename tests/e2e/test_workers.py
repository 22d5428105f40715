"""A failing migration under each multi-process server: it stops, says why, and never loops.

Each server's own supervisor decides what happens to a worker whose start-up
failed: restart it (a loop that retries the migration for ever), or stop.
Each is started as a real process with two workers on a broken revision.
The exit status is the supervisor's: gunicorn and granian exit non-zero;
uvicorn (0.50 and later: earlier ones restart the worker for ever) and
hypercorn stop but exit 0, which docs/compatibility.md says, with the ways
to a truthful status (the CLI as a prestart step, or gunicorn).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
from sqlalchemy.engine import URL

from automigrator.database._connections import sync_url
from tests.conftest import revisions
from tests.e2e.conftest import uvicorn
from tests.e2e.helpers import BROKEN_0005, granian, gunicorn, hypercorn
from tests.e2e.server import serve

pytestmark = pytest.mark.e2e

WORKERS = 2
SERVERS: dict[str, Callable[[Path], list[str]]] = {
    "uvicorn": lambda app_dir: [*uvicorn(app_dir), "--workers", str(WORKERS)],
    "gunicorn": lambda app_dir: gunicorn(app_dir, WORKERS),
    "hypercorn": lambda app_dir: hypercorn("--workers", str(WORKERS)),
    "granian": lambda app_dir: granian(app_dir, "--workers", str(WORKERS)),
}
# What each supervisor makes of a worker that failed to start (pinned, so
# that the compatibility page stays true when a server changes it).
EXITS_NON_ZERO = {"uvicorn": False, "gunicorn": True, "hypercorn": False, "granian": True}


def broken_deploy(app_dir: Path, url: URL) -> dict[str, str]:
    """The example with a revision that fails (BROKEN_0005); its environment."""
    (app_dir / "migrations" / "versions" / "0005_broken.py").write_text(BROKEN_0005)
    return {"DATABASE_URL": url.render_as_string(hide_password=False)}


@pytest.mark.parametrize("server_name", sorted(SERVERS))
def test_a_failing_migration_stops_every_server_without_a_restart_loop(
    example: tuple[Path, URL], server_name: str
) -> None:
    app_dir, url = example
    env = broken_deploy(app_dir, url)

    with serve(SERVERS[server_name](app_dir), env=env, cwd=app_dir) as server:
        code = server.wait_exit()  # by itself: a restart loop would outlast the deadline

    # Each worker tried once at most: no worker was started again to retry.
    attempts = server.count("Running upgrade 0004 -> 0005")
    assert 1 <= attempts <= WORKERS, server.log
    assert "Migration 0005 (add a column, then break) failed" in server.log
    assert "0005 is broken on purpose" in server.log
    assert "Schema ready" not in server.log
    assert (code != 0) is EXITS_NON_ZERO[server_name], (code, server.log[-3000:])
    # SQLite commits revision by revision; PostgreSQL rolled the fresh run
    # back whole (one transaction).
    at = set() if url.get_backend_name() == "postgresql" else {"0004"}
    assert revisions(sync_url(url)) == at


# In the background, a worker that its server would start again is not
# stopped (a restart loop): its liveness fails instead; the others stop.
STOPS_IN_THE_BACKGROUND = {
    "uvicorn": False,
    "gunicorn": False,
    "hypercorn": False,
    "granian": True,
}


@pytest.mark.parametrize("server_name", sorted(SERVERS))
def test_a_migration_that_fails_in_the_background_never_leaves_a_live_zombie(
    example: tuple[Path, URL], server_name: str
) -> None:
    app_dir, url = example
    env = {**broken_deploy(app_dir, url), "BLOCK_STARTUP": "0"}

    with serve(SERVERS[server_name](app_dir), env=env, cwd=app_dir) as server:
        if STOPS_IN_THE_BACKGROUND[server_name]:
            server.wait_exit()  # by itself
        else:
            # Every worker failed (one ran 0005, the other was refused by the
            # ledger), and each fails the liveness probe the app exempts.
            assert server.wait_for("Migrations failed in the background", times=WORKERS)
            live = [server.get("/livez").status_code for _ in range(4 * WORKERS)]
            assert set(live) == {503}, server.log[-3000:]
            assert server.process.poll() is None  # alive: for the orchestrator to restart

    attempts = server.count("Running upgrade 0004 -> 0005")
    assert attempts == 1, server.log  # never run again: no worker restarted to retry it
    assert server.count("Migrations failed in the background") <= WORKERS, server.log
