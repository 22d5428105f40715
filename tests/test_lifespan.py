"""migrator.lifespan with FastAPI and Starlette, and composing it with the app's own."""

from __future__ import annotations

from collections.abc import AsyncIterator, MutableMapping
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import anyio
import pytest
import sqlalchemy as sa
from fastapi import FastAPI, Request
from sqlalchemy.engine import URL
from starlette.applications import Starlette
from starlette.responses import JSONResponse
from starlette.routing import Route

from automigrator import AutoMigrator, MigrationError
from tests.asgi import get_during_lifespan
from tests.project import BROKEN, EMAIL, USERS, make_project


def test_fastapi_lifespan_migrates_and_publishes_status(ini: Path, db_url: URL) -> None:
    migrator = AutoMigrator(ini, url=db_url)
    app = FastAPI(lifespan=migrator.lifespan)

    @app.get("/status")
    async def status(request: Request) -> dict[str, object]:
        return request.state.automigrator.status.to_dict()  # type: ignore[no-any-return]

    response = anyio.run(get_during_lifespan, app, "/status")

    body = response.json()
    assert body["state"] == "ready"
    assert body["revisions_after"] == ["r3"]
    assert [a["revision"] for a in body["applied"]] == ["r1", "r2", "r3"]


def test_starlette_lifespan(ini: Path, sqlite_url: URL) -> None:
    migrator = AutoMigrator(ini, url=sqlite_url)

    async def home(request: Request) -> JSONResponse:
        return JSONResponse({"heads": list(request.state.automigrator.status.heads)})

    app = Starlette(routes=[Route("/", home)], lifespan=migrator.lifespan)

    assert anyio.run(get_during_lifespan, app, "/").json() == {"heads": ["r3"]}


def test_wrap_lifespan_runs_the_apps_lifespan_after_migrations(ini: Path, sqlite_url: URL) -> None:
    migrator = AutoMigrator(ini, url=sqlite_url)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[dict[str, object]]:
        # The app opens its pool after migrations: the schema is there already.
        engine = sa.create_engine(sqlite_url)
        with engine.connect() as conn:
            admins = conn.exec_driver_sql("SELECT count(*) FROM users").scalar_one()
        yield {"engine": engine, "admins_at_startup": admins}
        engine.dispose()

    app = FastAPI(lifespan=migrator.wrap_lifespan(lifespan))

    @app.get("/")
    async def home(request: Request) -> dict[str, object]:
        return {
            "admins": request.state.admins_at_startup,
            "state": request.state.automigrator.status.state.value,
        }

    assert anyio.run(get_during_lifespan, app, "/").json() == {"admins": 1, "state": "ready"}


def test_failed_migration_fails_the_lifespan_and_skips_the_apps(
    tmp_path: Path, sqlite_url: URL
) -> None:
    ini = make_project(tmp_path / "p", (USERS, EMAIL, BROKEN))
    migrator = AutoMigrator(ini, url=sqlite_url)
    entered: list[bool] = []

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        entered.append(True)
        yield

    app = FastAPI(lifespan=migrator.wrap_lifespan(lifespan))

    with pytest.raises(MigrationError, match="r3"):
        anyio.run(get_during_lifespan, app, "/")
    assert entered == []


def test_a_failed_start_up_is_told_in_a_few_lines_naming_the_revisions_line(
    tmp_path: Path, sqlite_url: URL
) -> None:
    # What uvicorn prints for lifespan=: Starlette's "startup.failed" message,
    # the error's traceback. It was 137-172 lines, the reason at the very end.
    ini = make_project(tmp_path / "p", (USERS, EMAIL, BROKEN))
    app = FastAPI(lifespan=AutoMigrator(ini, url=sqlite_url).lifespan)
    sent: list[dict[str, Any]] = []

    async def main() -> None:
        async def receive() -> dict[str, Any]:
            return {"type": "lifespan.startup"}

        async def send(message: MutableMapping[str, Any]) -> None:
            sent.append(dict(message))

        with pytest.raises(MigrationError):
            await app({"type": "lifespan", "asgi": {"version": "3.0"}}, receive, send)

    anyio.run(main)

    [failed] = [m for m in sent if m["type"] == "lifespan.startup.failed"]
    printed = failed["message"].splitlines()
    assert len(printed) <= 15, failed["message"]
    assert "boom in r3 (r3.py, line" in printed[-1]
    assert "in upgrade)" in printed[-1]
    assert not any("alembic" in line or "anyio" in line for line in printed)
