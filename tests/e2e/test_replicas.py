"""Several workers of a real server start together on one fresh database."""

from __future__ import annotations

import signal
from pathlib import Path

import pytest
from sqlalchemy.engine import URL

from automigrator.database._connections import sync_url
from automigrator.locking import lock_for
from tests.conftest import revisions
from tests.e2e.conftest import uvicorn
from tests.e2e.helpers import BROKEN_0005, gunicorn
from tests.e2e.server import serve

pytestmark = pytest.mark.e2e

WORKERS = 4
STARTED = "Application startup complete."


SERVERS = {
    "uvicorn": lambda app_dir: [*uvicorn(app_dir), "--workers", str(WORKERS)],
    "gunicorn": lambda app_dir: gunicorn(app_dir, WORKERS),
}


@pytest.mark.parametrize("server_name", sorted(SERVERS))
def test_every_worker_starts_and_one_migrates(example: tuple[Path, URL], server_name: str) -> None:
    app_dir, url = example
    env = {"DATABASE_URL": url.render_as_string(hide_password=False)}
    with serve(SERVERS[server_name](app_dir), env=env) as server:
        assert server.wait_for(STARTED, times=WORKERS), server.log
        statuses = [server.get("/status").json() for _ in range(WORKERS * 2)]

    assert server.count(STARTED) == WORKERS
    assert server.count("Migrating from an empty database") == 1
    assert server.count("Applied 4/4 0004") == 1
    assert server.count("Schema ready at 0004") == WORKERS
    assert "Traceback" not in server.log
    assert "restarts a worker whose start-up failed" not in server.log  # uvicorn >= 0.50
    assert {s["state"] for s in statuses} == {"ready"}
    assert revisions(sync_url(url)) == {"0004"}


@pytest.mark.parametrize("server_name", ["uvicorn", "gunicorn"])
def test_sigterm_while_waiting_for_the_lock_stops_the_server(
    example: tuple[Path, URL], server_name: str
) -> None:
    # Another replica "migrates" (this test holds the lock); a rolling update
    # then stops this one. Without the stop it would wait lock_timeout (300 s).
    app_dir, url = example
    holder = lock_for(url)
    assert holder.acquire(0)
    args = uvicorn(app_dir) if server_name == "uvicorn" else gunicorn(app_dir, 1)
    env = {"DATABASE_URL": url.render_as_string(hide_password=False)}
    try:
        with serve(args, env=env) as server:
            assert server.wait_for("Waiting for the migration lock"), server.log
            server.process.send_signal(signal.SIGTERM)
            code = server.wait_exit()
    finally:
        holder.release()

    assert code != 0
    assert "ShutdownRequestedError" in server.log
    assert "(SIGTERM) while automigrator waited" in server.log
    assert STARTED not in server.log
    assert revisions(sync_url(url)) == set()


def test_gunicorn_exits_non_zero_when_a_migration_fails(example: tuple[Path, URL]) -> None:
    app_dir, url = example
    (app_dir / "migrations" / "versions" / "0005_broken.py").write_text(BROKEN_0005)
    env = {"DATABASE_URL": url.render_as_string(hide_password=False)}
    with serve(gunicorn(app_dir, 2), env=env) as server:
        code = server.wait_exit()

    assert code != 0
    assert "Migration 0005 (add a column, then break) failed" in server.log
    assert STARTED not in server.log
