"""End to end: the example app and a raw ASGI app under a real uvicorn process."""

from __future__ import annotations

import signal
from pathlib import Path

import pytest
import websockets.exceptions
import websockets.sync.client
from sqlalchemy.engine import URL

from automigrator.database._connections import sync_url
from tests.conftest import revisions
from tests.e2e.conftest import uvicorn
from tests.e2e.helpers import BROKEN_0005, SLOW_0005
from tests.e2e.server import serve
from tests.project import BROKEN, CHAIN, EMAIL, USERS, make_project

pytestmark = pytest.mark.e2e


def test_example_migrates_then_serves(example: tuple[Path, URL]) -> None:
    app_dir, url = example
    env = {"DATABASE_URL": url.render_as_string(hide_password=False)}
    with serve(uvicorn(app_dir), env=env) as server:
        assert server.wait_for("Application startup complete."), server.log
        books = server.get("/books")
        status = server.get("/status")

    assert books.status_code == 200
    assert [b["title"] for b in books.json()] == ["A Wizard of Earthsea", "Invisible Cities"]
    assert status.json()["state"] == "ready"
    assert status.json()["revisions_after"] == ["0004"]
    assert "Applied 4/4 0004 seed the catalogue" in server.log
    # uvicorn's own loggers survived env.py's fileConfig():
    assert '"GET /books HTTP/1.1" 200' in server.log


def test_broken_migration_exits_non_zero_naming_the_revision(example: tuple[Path, URL]) -> None:
    app_dir, url = example
    (app_dir / "migrations" / "versions" / "0005_broken.py").write_text(BROKEN_0005)
    env = {"DATABASE_URL": url.render_as_string(hide_password=False)}
    with serve(uvicorn(app_dir), env=env) as server:
        code = server.wait_exit()

    assert code != 0
    assert "Migration 0005 (add a column, then break) failed" in server.log
    assert "0005 is broken on purpose (0005_broken.py, line" in server.log
    assert server.log.count('  File "') <= 6  # not the 140-line traceback of old
    assert "Application startup failed. Exiting." in server.log
    assert "Uvicorn running" not in server.log


def test_log_and_continue_serves_degraded(example: tuple[Path, URL]) -> None:
    # A deploy adds a broken revision to a database at 0004: the service keeps
    # serving on the 0004 schema and says it is degraded.
    app_dir, url = example
    env = {
        "DATABASE_URL": url.render_as_string(hide_password=False),
        "ON_MIGRATION_FAILURE": "continue",
    }
    with serve(uvicorn(app_dir), env=env) as server:
        assert server.wait_for("Application startup complete."), server.log
    (app_dir / "migrations" / "versions" / "0005_broken.py").write_text(BROKEN_0005)
    with serve(uvicorn(app_dir), env=env) as server:
        assert server.wait_for("Application startup complete."), server.log
        status = server.get("/status")
        books = server.get("/books")

    assert status.status_code == 503
    assert status.json()["state"] == "degraded"
    assert "0005" in status.json()["error"]
    assert status.json()["revisions_after"] == ["0004"]
    assert books.status_code == 200
    assert "CRITICAL" in server.log


@pytest.mark.parametrize("lifespan_flag", ["auto", "on"])
def test_middleware_failure_stops_uvicorn_even_with_lifespan_auto(
    tmp_path: Path, sqlite_url: URL, lifespan_flag: str
) -> None:
    # With --lifespan auto, an exception before lifespan.startup.failed makes
    # uvicorn log "lifespan unsupported" and serve the old schema anyway.
    ini = make_project(tmp_path / "p", (USERS, EMAIL, BROKEN))
    env = {"AM_INI": str(ini), "DATABASE_URL": str(sqlite_url)}
    args = ["uvicorn", "tests.e2e.raw_app:app", "--lifespan", lifespan_flag]
    with serve(args, env=env, cwd=Path(__file__).resolve().parents[2]) as server:
        code = server.wait_exit()

    assert code != 0
    assert "Migration r3" in server.log
    assert "appears unsupported" not in server.log
    assert "Uvicorn running" not in server.log


def test_middleware_completes_lifespan_for_an_app_without_it(ini: Path, sqlite_url: URL) -> None:
    env = {"AM_INI": str(ini), "DATABASE_URL": str(sqlite_url), "AM_LIFESPAN": "none"}
    args = ["uvicorn", "tests.e2e.raw_app:app", "--lifespan", "on"]
    with serve(args, env=env, cwd=Path(__file__).resolve().parents[2]) as server:
        assert server.wait_for("Application startup complete."), server.log
        response = server.get("/")

    assert response.text == "served"
    assert revisions(sqlite_url) == {"r3"}


@pytest.mark.parametrize("lifespan", ["auto", "on"])
def test_django_asgi_handler_behind_the_middleware(
    ini: Path, sqlite_url: URL, lifespan: str
) -> None:
    env = {"AM_INI": str(ini), "DATABASE_URL": str(sqlite_url)}
    args = ["uvicorn", "tests.e2e.django_app:app", "--lifespan", lifespan]
    with serve(args, env=env, cwd=Path(__file__).resolve().parents[2]) as server:
        assert server.wait_for("Application startup complete."), server.log
        status = server.get("/status")
        health = server.get("/health")

    assert status.json()["state"] == "ready"  # served by a Django view
    assert [a["revision"] for a in status.json()["applied"]] == ["r1", "r2", "r3"]
    assert health.status_code == 200
    assert revisions(sqlite_url) == {"r3"}


def test_django_with_a_failing_migration_stops_uvicorn(tmp_path: Path, sqlite_url: URL) -> None:
    ini = make_project(tmp_path / "p", (*CHAIN[:2], BROKEN))
    env = {"AM_INI": str(ini), "DATABASE_URL": str(sqlite_url)}
    args = ["uvicorn", "tests.e2e.django_app:app"]
    with serve(args, env=env, cwd=Path(__file__).resolve().parents[2]) as server:
        code = server.wait_exit()

    assert code != 0
    assert "Migration r3 (half done then broken) failed" in server.log
    assert "Application startup complete." not in server.log


def test_serving_at_once_with_503_until_the_schema_is_ready(
    example: tuple[Path, URL], tmp_path: Path
) -> None:
    app_dir, url = example
    (app_dir / "migrations" / "versions" / "0005_slow.py").write_text(SLOW_0005)
    release = tmp_path / "release"
    env = {
        "DATABASE_URL": url.render_as_string(hide_password=False),
        "BLOCK_STARTUP": "0",
        "AM_RELEASE": str(release),
    }
    with serve(uvicorn(app_dir), env=env) as server:
        assert server.wait_for("Application startup complete."), server.log
        assert server.wait_for("Applied 4/5"), server.log  # now inside 0005
        during = server.get("/books")
        live = server.get("/livez")
        ws_url = server.url.replace("http://", "ws://") + "/books/feed"
        with (
            websockets.sync.client.connect(ws_url, open_timeout=10) as ws,
            pytest.raises(websockets.exceptions.ConnectionClosed) as closed,
        ):
            ws.recv(timeout=10)
        release.touch()
        assert server.wait_for("Schema ready at 0005"), server.log
        after = server.get("/books")

    assert during.status_code == 503
    assert during.headers["retry-after"] == "5"
    assert live.status_code == 200
    assert closed.value.rcvd is not None
    assert closed.value.rcvd.code == 1013  # try again later
    assert after.status_code == 200
    assert len(after.json()) == 2


def test_a_migration_that_fails_in_the_background_stops_the_server(
    example: tuple[Path, URL],
) -> None:
    # Alive and never ready would be a zombie: /livez answers 200 for ever.
    app_dir, url = example
    (app_dir / "migrations" / "versions" / "0005_broken.py").write_text(BROKEN_0005)
    env = {"DATABASE_URL": url.render_as_string(hide_password=False), "BLOCK_STARTUP": "0"}
    with serve(uvicorn(app_dir), env=env) as server:
        assert server.wait_for("Application startup complete."), server.log
        server.wait_exit(deadline=60)

    assert "Migrations failed in the background" in server.log
    assert "stopping the server" in server.log
    assert "Application shutdown complete." in server.log  # a graceful shutdown


def test_sigterm_stops_a_start_stuck_connecting_to_a_silent_server(tmp_path: Path) -> None:
    # The first connect goes to a server that accepts TCP and never answers:
    # uvicorn ignores SIGTERM until its lifespan start-up ends, so the wait
    # itself must stop on it.
    import shutil

    from tests.conftest import server_url
    from tests.e2e.conftest import EXAMPLE
    from tests.faults import Proxy

    app_dir = tmp_path / "example"
    shutil.copytree(EXAMPLE, app_dir, ignore=shutil.ignore_patterns("data", "__pycache__"))
    real = server_url("postgresql")
    with Proxy(real.host or "127.0.0.1", real.port or 0) as proxy:
        proxy.blackhole()
        silent = real.set(host="127.0.0.1", port=proxy.port, database="app")
        env = {"DATABASE_URL": silent.render_as_string(hide_password=False)}
        with serve(uvicorn(app_dir), env=env) as server:
            assert server.wait_for("Checking the schema of"), server.log
            server.process.send_signal(signal.SIGTERM)
            code = server.wait_exit(deadline=30)

    assert code != 0
    assert "(SIGTERM) while automigrator waited" in server.log


def test_a_rollback_deploy_serves_on_a_database_ahead(example: tuple[Path, URL]) -> None:
    # The new version migrated to 0005; the rollback's code knows only 0004.
    app_dir, url = example
    env = {"DATABASE_URL": url.render_as_string(hide_password=False)}
    newer = app_dir / "migrations" / "versions" / "0005_born.py"
    newer.write_text(
        BROKEN_0005.replace('    raise RuntimeError("0005 is broken on purpose")\n', "")
    )
    with serve(uvicorn(app_dir), env=env) as server:
        assert server.wait_for("Application startup complete."), server.log
    newer.unlink()
    with serve(uvicorn(app_dir), env={**env, "WHEN_AHEAD": "serve"}) as server:
        assert server.wait_for("Application startup complete."), server.log
        status = server.get("/status")
        books = server.get("/books")

    assert status.status_code == 200
    assert status.json()["state"] == "ready"
    assert status.json()["ahead"] == ["0005"]
    assert books.status_code == 200
    assert "which this code does not know" in server.log
    assert revisions(sync_url(url)) == {"0005"}
