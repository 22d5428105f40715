"""Check mode (replicas that must not migrate) and the health endpoint."""

from __future__ import annotations

import json
from pathlib import Path

import anyio
import pytest
import sqlalchemy as sa
from sqlalchemy.engine import URL

from automigrator import (
    AutoMigrateMiddleware,
    AutoMigrator,
    HealthApp,
    LogAndContinue,
    MigrationError,
    MigrationState,
    SchemaAheadError,
    SchemaBehindError,
    Switch,
    Timeouts,
)
from tests.conftest import revisions
from tests.helpers import HANG_GUARD, get, watching
from tests.processes import start_replicas
from tests.project import BROKEN, EMAIL, USERS, Rev, make_project, write_revision


def test_check_mode_at_head_starts_without_migrating(ini: Path, db_url: URL) -> None:
    anyio.run(AutoMigrator(ini, url=db_url).run)
    status = anyio.run(AutoMigrator(ini, url=db_url, mode="check").run)
    assert status.state is MigrationState.READY
    assert status.applied == ()


def test_check_mode_waits_for_another_process_to_migrate(ini: Path, db_url: URL) -> None:
    checker = AutoMigrator(ini, url=db_url, mode="check", timeouts=Timeouts(check=120))
    seen: list[object] = []

    async def main() -> None:
        async with watching("Check mode: the database is at") as log:
            with anyio.fail_after(HANG_GUARD):
                async with anyio.create_task_group() as tg:
                    tg.start_soon(checker.run)
                    await log.event.wait()
                    seen.extend([checker.status.state, checker.status.waiting_for])
                    assert revisions(db_url) == set()  # it did not migrate
                    [proc] = start_replicas(ini, db_url, 1)  # another process does
                    await anyio.to_thread.run_sync(proc.communicate)
                    assert proc.returncode == 0

    anyio.run(main)

    assert seen == [MigrationState.WAITING, "migration"]
    assert checker.status.state is MigrationState.READY
    assert checker.status.applied == ()
    assert revisions(db_url) == {"r3"}


def test_check_mode_gives_up_through_the_policy(ini: Path, sqlite_url: URL) -> None:
    migrator = AutoMigrator(ini, url=sqlite_url, mode="check", timeouts=Timeouts(check=1))
    with pytest.raises(SchemaBehindError, match="still at base"):
        anyio.run(migrator.run)
    assert migrator.status.error_kind == "transient"

    degraded = AutoMigrator(
        ini,
        url=sqlite_url,
        mode="check",
        timeouts=Timeouts(check=0.5),
        on_failure=LogAndContinue(),
    )
    assert anyio.run(degraded.run).state is MigrationState.DEGRADED
    assert revisions(sqlite_url) == set()


def test_check_mode_refuses_a_database_ahead_at_once(tmp_path: Path, sqlite_url: URL) -> None:
    ini = make_project(tmp_path / "p", (USERS, EMAIL))
    anyio.run(AutoMigrator(ini, url=sqlite_url).run)
    (ini.parent / "migrations" / "versions" / "r2.py").unlink()
    with pytest.raises(SchemaAheadError):
        anyio.run(
            AutoMigrator(ini, url=sqlite_url, mode="check", timeouts=Timeouts(check=600)).run
        )


def test_switch_off_can_mean_check(ini: Path, sqlite_url: URL) -> None:
    anyio.run(AutoMigrator(ini, url=sqlite_url).run)
    write_revision(ini.parent, Rev("r4", "r3", "new", "pass"))

    skip = anyio.run(AutoMigrator(ini, url=sqlite_url, enabled=False).run)
    check = AutoMigrator(
        ini,
        url=sqlite_url,
        enabled=Switch(when_disabled="check", enabled=False),
        timeouts=Timeouts(check=0.5),
    )
    with pytest.raises(SchemaBehindError):
        anyio.run(check.run)

    assert skip.state is MigrationState.DISABLED
    assert revisions(sqlite_url) == {"r3"}


def health(migrator: AutoMigrator, **options: bool) -> tuple[int, dict[str, object]]:
    response = anyio.run(get, HealthApp(migrator, **options))
    return response.status_code, response.json()


def test_health_in_each_state(tmp_path: Path, sqlite_url: URL) -> None:
    ini = make_project(tmp_path / "p", (USERS, EMAIL))
    fresh = AutoMigrator(ini, url=sqlite_url)
    assert health(fresh)[0] == 503  # pending: not migrated yet

    anyio.run(fresh.run)
    code, body = health(fresh)
    assert code == 200
    assert body["state"] == "ready"
    assert body["database_revisions"] == ["r2"]
    assert body["heads"] == ["r2"]
    assert body["applied"] == 2

    write_revision(ini.parent, BROKEN)  # r3, failing half way
    degraded = AutoMigrator(ini, url=sqlite_url, on_failure=LogAndContinue())
    anyio.run(degraded.run)
    assert health(degraded)[0] == 200
    assert health(degraded, degraded_ok=False)[0] == 503
    assert health(degraded)[1]["state"] == "degraded"

    failed = AutoMigrator(ini, url=sqlite_url)
    with pytest.raises(MigrationError):
        anyio.run(failed.run)
    code, body = health(failed)
    assert code == 503
    assert body["state"] == "failed"
    assert body["error_kind"] == "migration"
    assert "error" not in body  # anonymous endpoint: the kind, not the text, by default
    assert "r3" in str(health(failed, show_error=True)[1]["error"])

    disabled = AutoMigrator(ini, url=sqlite_url, enabled=False)
    anyio.run(disabled.run)
    code, body = health(disabled)
    assert code == 200  # migrations are not this process's job
    assert body["state"] == "disabled"


def test_health_retry_after_is_the_apps_own(ini: Path, sqlite_url: URL) -> None:
    pending = AutoMigrator(ini, url=sqlite_url)  # not run: 503

    default = anyio.run(get, HealthApp(pending))
    chosen = anyio.run(get, HealthApp(pending, retry_after=30))

    assert (default.status_code, default.headers["retry-after"]) == (503, "5")
    assert (chosen.status_code, chosen.headers["retry-after"]) == (503, "30")


def test_health_never_shows_a_secret(ini: Path) -> None:
    url = sa.make_url("postgresql+psycopg://app:s3cr3t-pw@127.0.0.1:1/app")
    migrator = AutoMigrator(
        ini, url=url, timeouts=Timeouts(connect=0), on_failure=LogAndContinue()
    )
    anyio.run(migrator.run)

    response = anyio.run(get, HealthApp(migrator))

    assert response.json()["state"] == "degraded"
    assert "s3cr3t-pw" not in response.text
    assert "Traceback" not in response.text
    assert "SELECT" not in response.text


def test_the_middleware_answers_its_health_path(ini: Path, sqlite_url: URL) -> None:
    async def app(scope: dict[str, object], receive: object, send: object) -> None:
        assert scope["type"] == "http"
        await send({"type": "http.response.start", "status": 200, "headers": []})  # type: ignore[operator]
        await send({"type": "http.response.body", "body": b"app"})  # type: ignore[operator]

    migrator = AutoMigrator(ini, url=sqlite_url)
    anyio.run(migrator.run)
    wrapped = AutoMigrateMiddleware(app, migrator=migrator, health_path="/healthz")  # type: ignore[arg-type]

    status = anyio.run(get, wrapped, "/healthz")
    other = anyio.run(get, wrapped, "/books")

    assert json.loads(status.text)["state"] == "ready"
    assert other.text == "app"


def test_health_as_a_route_answers_its_own_path_without_a_redirect(
    ini: Path, sqlite_url: URL
) -> None:
    # As docs/kubernetes.md and the example app add it. A mount would answer
    # /readyz with a 307 to /readyz/ and an empty body, which some probes
    # count as up.
    from fastapi import FastAPI

    migrator = AutoMigrator(ini, url=sqlite_url, block_startup=False)
    app = FastAPI()
    app.add_route("/readyz", HealthApp(migrator).endpoint)

    before = anyio.run(get, app, "/readyz")
    anyio.run(migrator.run)
    after = anyio.run(get, app, "/readyz")

    assert (before.status_code, before.json()["state"]) == (503, "pending")
    assert (after.status_code, after.json()["state"]) == (200, "ready")
