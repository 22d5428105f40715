"""End to end under granian: the example app serves; workers share one migration;
a failing migration stops the server with a non-zero exit."""

from __future__ import annotations

import signal
from pathlib import Path

import httpx
import pytest
from sqlalchemy.engine import URL

from automigrator.database._connections import sync_url
from automigrator.locking import lock_for
from tests.conftest import revisions
from tests.e2e.helpers import BROKEN_0005, SLOW_0005, granian
from tests.e2e.server import serve

pytestmark = pytest.mark.e2e

READY = "Schema ready at 0004"


def test_example_migrates_then_serves(example: tuple[Path, URL]) -> None:
    app_dir, url = example
    env = {"DATABASE_URL": url.render_as_string(hide_password=False)}
    with serve(granian(app_dir), env=env) as server:
        assert server.wait_for(READY), server.log
        books = server.get("/books")

    assert books.status_code == 200
    assert len(books.json()) == 2


def test_two_workers_start_and_one_migrates(example: tuple[Path, URL]) -> None:
    app_dir, url = example
    env = {"DATABASE_URL": url.render_as_string(hide_password=False)}
    with serve(granian(app_dir, "--workers", "2"), env=env) as server:
        assert server.wait_for(READY, times=2), server.log
        statuses = [server.get("/status").json() for _ in range(4)]

    assert server.count("Migrating from an empty database") == 1
    assert server.count("Applied 4/4 0004") == 1
    assert {s["state"] for s in statuses} == {"ready"}
    assert revisions(sync_url(url)) == {"0004"}


def test_broken_migration_exits_non_zero_with_the_reason(example: tuple[Path, URL]) -> None:
    app_dir, url = example
    (app_dir / "migrations" / "versions" / "0005_broken.py").write_text(BROKEN_0005)
    env = {"DATABASE_URL": url.render_as_string(hide_password=False)}
    with serve(granian(app_dir), env=env) as server:
        code = server.wait_exit()

    assert code != 0
    assert "Migration 0005 (add a column, then break) failed" in server.log
    assert server.count(READY) == 0


def test_sigterm_while_waiting_for_the_lock_stops_the_server(example: tuple[Path, URL]) -> None:
    # Another replica holds the lock; a rolling update stops this one, which
    # would otherwise wait lock_timeout (300 s).
    app_dir, url = example
    holder = lock_for(url)
    assert holder.acquire(0)
    env = {"DATABASE_URL": url.render_as_string(hide_password=False)}
    try:
        with serve(granian(app_dir), env=env) as server:
            assert server.wait_for("Waiting for the migration lock"), server.log
            server.process.send_signal(signal.SIGTERM)
            server.wait_exit()
    finally:
        holder.release()

    assert "ShutdownRequestedError: The server is shutting down (SIGTERM)" in server.log
    assert revisions(sync_url(url)) == set()


def test_no_request_is_served_before_the_migration_ends(
    example: tuple[Path, URL], release: Path
) -> None:
    # granian prints "Listening at" before the worker's lifespan has run: a
    # request during the migration must still not reach the app.
    app_dir, url = example
    (app_dir / "migrations" / "versions" / "0005_slow.py").write_text(SLOW_0005)
    env = {"DATABASE_URL": url.render_as_string(hide_password=False), "AM_RELEASE": str(release)}
    with serve(granian(app_dir), env=env) as server:
        assert server.wait_for("Migrating from"), server.log
        try:
            early: httpx.Response | None = httpx.get(server.url + "/books", timeout=2)
        except httpx.TransportError:
            early = None  # refused or unanswered: not served
        release.touch()
        assert server.wait_for("Schema ready at 0005"), server.log
        books = server.get("/books")

    assert early is None
    assert books.status_code == 200
