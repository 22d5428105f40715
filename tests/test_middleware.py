"""AutoMigrateMiddleware, driven directly through the ASGI lifespan protocol."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import anyio
import httpx
import pytest
from asgi_lifespan import LifespanManager
from sqlalchemy.engine import URL
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from automigrator import AutoMigrateMiddleware, AutoMigrator, LogAndContinue, MigrationState
from automigrator._types import Message, Receive, Scope, Send
from tests.conftest import revisions
from tests.project import BROKEN, EMAIL, USERS, make_project


class Server:
    """Plays the server's side of the lifespan protocol and records what it is sent."""

    def __init__(self) -> None:
        self.sent: list[Message] = []
        self.to_app = [{"type": "lifespan.startup"}, {"type": "lifespan.shutdown"}]
        self.scope: Scope = {"type": "lifespan", "asgi": {"version": "3.0"}, "state": {}}

    async def receive(self) -> Message:
        return self.to_app.pop(0)

    async def send(self, message: Message) -> None:
        self.sent.append(message)

    def types(self) -> list[str]:
        return [m["type"] for m in self.sent]

    def drive(self, app: Any) -> BaseException | None:
        async def main() -> BaseException | None:
            try:
                await app(self.scope, self.receive, self.send)
            except Exception as exc:
                return exc
            return None

        return anyio.run(main)


class LifespanApp:
    """A raw ASGI app that speaks lifespan and notes the migrator's state at startup."""

    def __init__(self, migrator: AutoMigrator | None = None) -> None:
        self.migrator = migrator
        self.state_at_startup: MigrationState | None = None
        self.calls = 0

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        self.calls += 1
        assert scope["type"] == "lifespan"
        message = await receive()
        assert message["type"] == "lifespan.startup"
        if self.migrator is not None:
            self.state_at_startup = self.migrator.status.state
        await send({"type": "lifespan.startup.complete"})
        message = await receive()
        assert message["type"] == "lifespan.shutdown"
        await send({"type": "lifespan.shutdown.complete"})


def test_migrates_before_the_app_starts(ini: Path, sqlite_url: URL) -> None:
    migrator = AutoMigrator(ini, url=sqlite_url)
    inner = LifespanApp(migrator)
    server = Server()

    assert server.drive(AutoMigrateMiddleware(inner, migrator=migrator)) is None

    assert inner.state_at_startup is MigrationState.READY
    assert server.types() == ["lifespan.startup.complete", "lifespan.shutdown.complete"]
    assert server.scope["state"]["automigrator"] is migrator
    assert revisions(sqlite_url) == {"r3"}


def test_failure_sends_startup_failed_and_never_starts_the_app(
    tmp_path: Path, sqlite_url: URL
) -> None:
    ini = make_project(tmp_path / "p", (USERS, EMAIL, BROKEN))
    migrator = AutoMigrator(ini, url=sqlite_url)
    inner = LifespanApp(migrator)
    server = Server()

    error = server.drive(AutoMigrateMiddleware(inner, migrator=migrator))

    assert inner.calls == 0
    assert server.types() == ["lifespan.startup.failed"]
    message = server.sent[0]["message"]
    assert "Migration r3" in message
    assert "boom in r3" in message
    assert "\n" not in message
    assert error is not None  # re-raised after the message, as Starlette's router does


def test_log_and_continue_starts_the_app_degraded(tmp_path: Path, sqlite_url: URL) -> None:
    ini = make_project(tmp_path / "p", (USERS, EMAIL, BROKEN))
    migrator = AutoMigrator(ini, url=sqlite_url, on_failure=LogAndContinue())
    inner = LifespanApp(migrator)
    server = Server()

    assert server.drive(AutoMigrateMiddleware(inner, migrator=migrator)) is None

    assert inner.state_at_startup is MigrationState.DEGRADED
    assert server.types() == ["lifespan.startup.complete", "lifespan.shutdown.complete"]


async def raises_on_lifespan(scope: Scope, receive: Receive, send: Send) -> None:
    # Django's ASGIHandler does this on a lifespan scope.
    raise ValueError("Django can only handle ASGI/HTTP connections, not lifespan.")


async def ignores_lifespan(scope: Scope, receive: Receive, send: Send) -> None:
    return None


@pytest.mark.parametrize("app", [raises_on_lifespan, ignores_lifespan])
def test_app_without_lifespan_support_is_completed_for(
    ini: Path, sqlite_url: URL, app: Any
) -> None:
    migrator = AutoMigrator(ini, url=sqlite_url)
    server = Server()

    assert server.drive(AutoMigrateMiddleware(app, migrator=migrator)) is None

    assert server.types() == ["lifespan.startup.complete", "lifespan.shutdown.complete"]
    assert revisions(sqlite_url) == {"r3"}


async def crashes_in_its_startup(scope: Scope, receive: Receive, send: Send) -> None:
    await receive()
    raise RuntimeError("the app's own start-up broke")


def test_app_crashing_in_its_own_startup_is_reported_not_served(
    ini: Path, sqlite_url: URL
) -> None:
    server = Server()
    middleware = AutoMigrateMiddleware(
        crashes_in_its_startup, migrator=AutoMigrator(ini, url=sqlite_url)
    )

    error = server.drive(middleware)

    assert isinstance(error, RuntimeError)
    assert server.types() == ["lifespan.startup.failed"]
    assert "the app's own start-up broke" in server.sent[0]["message"]


def test_other_scopes_pass_through_untouched(ini: Path, sqlite_url: URL) -> None:
    seen: list[Scope] = []

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        seen.append(scope)

    migrator = AutoMigrator(ini, url=sqlite_url)
    scope: Scope = {"type": "http", "path": "/"}

    async def noop_receive() -> Message:
        return {}

    async def noop_send(message: Message) -> None:
        return None

    anyio.run(AutoMigrateMiddleware(app, migrator=migrator), scope, noop_receive, noop_send)

    assert seen == [scope]
    assert seen[0] is scope
    assert migrator.status.state is MigrationState.PENDING


def test_as_starlette_middleware(ini: Path, sqlite_url: URL) -> None:
    migrator = AutoMigrator(ini, url=sqlite_url)

    async def home(request: Request) -> JSONResponse:
        return JSONResponse({"state": request.state.automigrator.status.state.value})

    app = Starlette(
        routes=[Route("/", home)],
        middleware=[Middleware(AutoMigrateMiddleware, migrator=migrator)],
    )

    async def main() -> httpx.Response:
        async with LifespanManager(app) as manager:
            transport = httpx.ASGITransport(app=manager.app)
            async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
                return await client.get("/")

    response = anyio.run(main)

    assert response.json() == {"state": "ready"}
    assert revisions(sqlite_url) == {"r3"}


def test_middleware_refuses_a_non_migrator(ini: Path) -> None:
    with pytest.raises(TypeError, match="must be an AutoMigrator"):
        AutoMigrateMiddleware(ignores_lifespan, migrator="alembic.ini")  # type: ignore[arg-type]
