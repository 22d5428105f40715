"""Other frameworks: Litestar (its lifespan list) and Quart (the middleware)."""

from __future__ import annotations

from pathlib import Path

import anyio
from litestar import Litestar, get
from quart import Quart
from sqlalchemy.engine import URL

from automigrator import AutoMigrateMiddleware, AutoMigrator
from tests.asgi import get_during_lifespan
from tests.conftest import revisions


def test_litestar_lifespan(ini: Path, sqlite_url: URL) -> None:
    migrator = AutoMigrator(ini, url=sqlite_url)

    @get("/state", sync_to_thread=False)
    def state() -> dict[str, str]:
        return {"state": migrator.status.state.value}

    app = Litestar(route_handlers=[state], lifespan=[migrator.lifespan])

    response = anyio.run(get_during_lifespan, app, "/state")

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

    response = anyio.run(get_during_lifespan, app, "/state")

    assert response.json() == {"state": "ready"}
    assert revisions(sqlite_url) == {"r3"}
