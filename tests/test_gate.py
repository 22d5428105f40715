"""Start at once, migrate in the background: the readiness gate, in-process."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import anyio
import httpx
import pytest
from asgi_lifespan import LifespanManager
from sqlalchemy.engine import URL
from starlette.applications import Starlette
from starlette.routing import Route

from automigrator import (
    AutoMigrateMiddleware,
    AutoMigrator,
    LogAndContinue,
    MigrationState,
    ReadinessGate,
    Timeouts,
)
from tests.conftest import revisions
from tests.helpers import (
    HANG_GUARD,
    WAITING_USERS,
    Hits,
    client,
    make_app,
    shut_down_while_migrating,
    watching,
)
from tests.project import Rev, make_project


async def websocket_messages(app: Any, path: str) -> list[dict[str, Any]]:
    """Open a WebSocket on the raw ASGI app; what the app sends back."""
    sent: list[dict[str, Any]] = []
    incoming = [{"type": "websocket.connect"}]

    async def receive() -> dict[str, Any]:
        if incoming:
            return incoming.pop()
        await anyio.sleep_forever()
        raise AssertionError

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    scope = {"type": "websocket", "path": path, "headers": [], "query_string": b""}
    with anyio.fail_after(HANG_GUARD):
        await app(scope, receive, send)
    return sent


async def burst(c: httpx.AsyncClient, path: str, count: int = 1000) -> list[int]:
    """The status codes of ``count`` GETs from 50 concurrent clients."""
    codes: list[int] = []
    limit = anyio.CapacityLimiter(50)

    async def one() -> None:
        async with limit:
            codes.append((await c.get(path)).status_code)

    async with anyio.create_task_group() as tg:
        for _ in range(count):
            tg.start_soon(one)
    return codes


def test_requests_wait_behind_the_gate_until_the_schema_is_ready(
    tmp_path: Path, sqlite_url: URL, release: Path
) -> None:
    ini = make_project(tmp_path / "p", (WAITING_USERS, Rev("r2", "r1", "then this", "pass")))
    migrator = AutoMigrator(ini, url=sqlite_url, block_startup=False)
    hits = Hits(migrator)
    app = AutoMigrateMiddleware(make_app(migrator, hits), migrator=migrator, exempt=["/livez"])
    seen: dict[str, Any] = {}

    async def main() -> None:
        async with (
            watching("Migrating from") as log,
            LifespanManager(app),  # start-up completes at once
            client(app) as c,
        ):
            await log.event.wait()
            seen["during"] = await c.get("/items")
            seen["live"] = await c.get("/livez")
            seen["ws"] = await websocket_messages(app, "/items")
            # 1000 requests from 50 clients at a time while migrating: every
            # one is turned away, none reaches the handler.
            seen["burst"] = await burst(c, "/items")
            await anyio.Path(release).touch()
            status = await migrator.wait_ready(timeout=HANG_GUARD)
            seen["state"] = status.state
            seen["after"] = await burst(c, "/items")

    anyio.run(main)

    assert seen["during"].status_code == 503
    assert seen["during"].headers["retry-after"] == "5"
    assert seen["live"].status_code == 200
    assert [m["type"] for m in seen["ws"]] == ["websocket.accept", "websocket.close"]
    assert seen["ws"][1]["code"] == 1013
    assert seen["burst"] == [503] * 1000
    assert seen["state"] is MigrationState.READY
    assert seen["after"] == [200] * 1000
    assert hits.early == 0
    assert hits.total == 1000
    assert revisions(sqlite_url) == {"r2"}


def test_a_failed_background_migration_shuts_the_gate_and_fails_liveness(
    tmp_path: Path, sqlite_url: URL, caplog: pytest.LogCaptureFixture
) -> None:
    # Nothing here handles SIGTERM (no server): the process is not stopped, so
    # the liveness probe must fail for an orchestrator to restart it.
    ini = make_project(tmp_path / "p", (Rev("r1", None, "broken", "raise RuntimeError('no')"),))
    migrator = AutoMigrator(ini, url=sqlite_url, block_startup=False)
    hits = Hits(migrator)
    app = AutoMigrateMiddleware(make_app(migrator, hits), migrator=migrator, exempt=["/livez"])

    async def main() -> tuple[int, int]:
        async with LifespanManager(app), client(app) as c:
            status = await migrator.wait_ready(timeout=HANG_GUARD)
            assert status.state is MigrationState.FAILED
            return (await c.get("/items")).status_code, (await c.get("/livez")).status_code

    assert anyio.run(main) == (503, 503)
    assert hits.total == 0
    assert "Migrations failed in the background" in caplog.text
    assert "the paths the gate exempts (a liveness probe) too" in caplog.text


def test_shutdown_lets_the_running_revision_finish_and_stops_before_the_next(
    tmp_path: Path, sqlite_url: URL, release: Path
) -> None:
    ini = make_project(tmp_path / "p", (WAITING_USERS, Rev("r2", "r1", "the next", "pass")))
    migrator = AutoMigrator(
        ini, url=sqlite_url, block_startup=False, timeouts=Timeouts(shutdown=HANG_GUARD)
    )
    app = AutoMigrateMiddleware(make_app(migrator, Hits(migrator)), migrator=migrator)

    anyio.run(
        shut_down_while_migrating,
        lambda: LifespanManager(app, shutdown_timeout=HANG_GUARD),
        release,
    )

    assert migrator.status.state is MigrationState.FAILED
    assert migrator.status.error_kind == "shutdown"
    assert revisions(sqlite_url) == {"r1"}  # r1 finished, r2 never started


def test_an_app_with_lifespan_gates_with_readiness_gate(
    tmp_path: Path, sqlite_url: URL, release: Path
) -> None:
    ini = make_project(tmp_path / "p", (WAITING_USERS,))
    migrator = AutoMigrator(ini, url=sqlite_url, block_startup=False)
    hits = Hits(migrator)
    starlette_app = Starlette(routes=[Route("/items", hits.items)], lifespan=migrator.lifespan)
    app = ReadinessGate(starlette_app, migrator=migrator)

    async def main() -> list[int]:
        codes = []
        async with watching("Migrating from") as log, LifespanManager(app), client(app) as c:
            await log.event.wait()
            codes.append((await c.get("/items")).status_code)
            await anyio.Path(release).touch()
            await migrator.wait_ready(timeout=HANG_GUARD)
            codes.append((await c.get("/items")).status_code)
        return codes

    assert anyio.run(main) == [503, 200]
    assert hits.early == 0


def test_log_and_continue_opens_the_gate_degraded(tmp_path: Path, sqlite_url: URL) -> None:
    ini = make_project(tmp_path / "p", (Rev("r1", None, "broken", "raise RuntimeError('no')"),))
    migrator = AutoMigrator(ini, url=sqlite_url, block_startup=False, on_failure=LogAndContinue())
    hits = Hits(migrator)
    app = AutoMigrateMiddleware(make_app(migrator, hits), migrator=migrator)

    async def main() -> int:
        async with LifespanManager(app), client(app) as c:
            await migrator.wait_ready(timeout=HANG_GUARD)
            return (await c.get("/items")).status_code

    assert anyio.run(main) == 200
    assert migrator.status.state is MigrationState.DEGRADED
