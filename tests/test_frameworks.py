"""Other frameworks: Litestar (its lifespan list) and Quart (the middleware)."""

from __future__ import annotations

from pathlib import Path

import anyio
import httpx
from asgi_lifespan import LifespanManager
from litestar import Litestar, get
from quart import Quart
from sqlalchemy.engine import URL

from automigrator import AutoMigrateMiddleware, AutoMigrator
from tests.conftest import revisions


async def fetch(app: object, path: str) -> httpx.Response:
    async with LifespanManager(app) as manager:  # type: ignore[arg-type]
        transport = httpx.ASGITransport(app=manager.app)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
            return await client.get(path)


def test_litestar_lifespan(ini: Path, sqlite_url: URL) -> None:
    migrator = AutoMigrator(ini, url=sqlite_url)

    @get("/state", sync_to_thread=False)
    def state() -> dict[str, str]:
        return {"state": migrator.status.state.value}

    app = Litestar(route_handlers=[state], lifespan=[migrator.lifespan])

    response = anyio.run(fetch, app, "/state")

    assert response.json() == {"state": "ready"}
    assert revisions(sqlite_url) == {"r3"}


def test_quart_with_the_middleware(ini: Path, sqlite_url: URL) -> None:
    migrator = AutoMigrator(ini, url=sqlite_url)
    app = Quart(__name__)

    @app.get("/state")
    async def state() -> dict[str, str]:
        return {"state": migrator.status.state.value}

    wrapped = AutoMigrateMiddleware(app.asgi_app, migrator=migrator)  # type: ignore[arg-type]
    app.asgi_app = wrapped  # type: ignore[method-assign,assignment]

    response = anyio.run(fetch, app, "/state")

    assert response.json() == {"state": "ready"}
    assert revisions(sqlite_url) == {"r3"}
