"""Several databases in one start-up: ``MigratorGroup`` and Alembic's multidb template."""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

import anyio
import pytest
import sqlalchemy as sa
from alembic import command
from alembic.config import Config
from asgi_lifespan import LifespanManager
from fastapi import FastAPI
from sqlalchemy.engine import URL

from automigrator import (
    AutoMigrateMiddleware,
    AutoMigrator,
    ConfigurationError,
    Event,
    HealthApp,
    LogAndContinue,
    MigrationError,
    MigrationState,
    MigratorGroup,
    SchemaAheadError,
    Timeouts,
)
from tests.asgi import get_during_lifespan
from tests.conftest import revisions, tables
from tests.helpers import (
    HANG_GUARD,
    WAITING_USERS,
    Hits,
    client,
    held_lock,
    make_app,
    run_cli,
    shut_down_while_migrating,
    watching,
)
from tests.project import BROKEN, CHAIN, USERS, Rev, make_project

INVOICES = Rev(
    "b1",
    None,
    "create invoices",
    'op.create_table("invoices", sa.Column("id", sa.Integer, primary_key=True))',
)


@pytest.fixture
def billing_url(tmp_path: Path) -> URL:
    """The second database: a SQLite file of its own."""
    folder = tmp_path / "billing"
    folder.mkdir()
    return sa.make_url(f"sqlite:///{folder / 'billing.db'}")


def group_of(tmp_path: Path, users_url: URL, billing_url: URL, **options: Any) -> MigratorGroup:
    users = make_project(tmp_path / "users", CHAIN)
    billing = make_project(tmp_path / "billing_proj", (INVOICES,))
    return MigratorGroup(
        {
            "users": AutoMigrator(users, url=users_url, **options),
            "billing": AutoMigrator(billing, url=billing_url, **options),
        }
    )


def test_each_database_in_the_stated_order(tmp_path: Path, db_url: URL, billing_url: URL) -> None:
    group = group_of(tmp_path, db_url, billing_url)
    applied: list[str] = []
    group.subscribe(
        lambda e: applied.append(e.revision.revision) if e.revision is not None else None
    )

    status = anyio.run(group.run)

    assert status.state is MigrationState.READY
    assert applied == ["r1", "r2", "r3", "b1"]
    assert revisions(db_url) == {"r3"}
    assert revisions(billing_url) == {"b1"}
    assert {n: s.revisions_after for n, s in group.statuses.items()} == {
        "users": ("r3",),
        "billing": ("b1",),
    }
    assert list(status.to_dict()["databases"]) == ["users", "billing"]


def test_at_head_costs_two_queries_per_database(
    tmp_path: Path, db_url: URL, billing_url: URL
) -> None:
    group = group_of(tmp_path, db_url, billing_url)
    anyio.run(group.run)
    statements: list[str] = []

    def count(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        statements.append(statement)

    sa.event.listen(sa.engine.Engine, "before_cursor_execute", count)
    try:
        status = anyio.run(group.run)
    finally:
        sa.event.remove(sa.engine.Engine, "before_cursor_execute", count)

    assert status.state is MigrationState.READY
    # Each database: its version table, then its ledger.
    assert len(statements) == 4, statements
    assert sum("automigrator_history" in s for s in statements) == 2


def test_a_failure_stops_start_up_and_leaves_later_databases_alone(
    tmp_path: Path, db_url: URL, billing_url: URL
) -> None:
    users = make_project(tmp_path / "users", (USERS,))
    broken = make_project(tmp_path / "broken", (*CHAIN[:2], BROKEN))
    billing = make_project(tmp_path / "billing_proj", (INVOICES,))
    group = MigratorGroup(
        {
            "users": AutoMigrator(users, url=db_url),
            "audit": AutoMigrator(
                broken, url=billing_url.set(database=f"{billing_url.database}.audit")
            ),
            "billing": AutoMigrator(billing, url=billing_url),
        }
    )
    app = FastAPI(lifespan=group.lifespan)

    with pytest.raises(MigrationError, match="r3"):
        anyio.run(get_during_lifespan, app, "/")

    states = {name: s.state for name, s in group.statuses.items()}
    assert states == {
        "users": MigrationState.READY,
        "audit": MigrationState.FAILED,
        "billing": MigrationState.PENDING,
    }
    assert group.status.state is MigrationState.FAILED
    assert group.status.error is not None
    assert group.status.error.startswith("audit: MigrationError")
    assert revisions(db_url) == {"r1"}  # no transaction across databases
    assert tables(billing_url) == set()


def test_a_database_ahead_of_the_code_is_refused_before_any_changes(
    tmp_path: Path, db_url: URL, billing_url: URL
) -> None:
    group = group_of(tmp_path, db_url, billing_url)
    engine = sa.create_engine(billing_url)
    with engine.begin() as conn:
        conn.exec_driver_sql("CREATE TABLE alembic_version (version_num VARCHAR(32) PRIMARY KEY)")
        conn.exec_driver_sql("INSERT INTO alembic_version VALUES ('zzz_from_newer_code')")
    engine.dispose()

    with pytest.raises(SchemaAheadError):
        anyio.run(group.run)

    assert tables(db_url) == set()  # users, first in order, was not touched
    assert group.statuses["users"].state is MigrationState.PENDING
    assert group.statuses["billing"].error_kind == "schema_ahead"


def test_a_degraded_member_lets_the_others_migrate(
    tmp_path: Path, sqlite_url: URL, billing_url: URL
) -> None:
    broken = make_project(tmp_path / "broken", (*CHAIN[:2], BROKEN))
    billing = make_project(tmp_path / "billing_proj", (INVOICES,))
    group = MigratorGroup(
        {
            "users": AutoMigrator(broken, url=sqlite_url, on_failure=LogAndContinue()),
            "billing": AutoMigrator(billing, url=billing_url),
        }
    )

    status = anyio.run(group.run)

    assert status.state is MigrationState.DEGRADED
    assert revisions(billing_url) == {"b1"}
    code, body = HealthApp(group, degraded_ok=False).body()
    assert code == 503
    assert body["databases"]["users"]["state"] == "degraded"
    assert body["databases"]["billing"]["state"] == "ready"


def test_one_lock_each_taken_in_turn(tmp_path: Path, db_url: URL, billing_url: URL) -> None:
    """The second database's lock is held elsewhere: the first is migrated meanwhile."""
    group = group_of(tmp_path, db_url, billing_url, timeouts=Timeouts(lock=HANG_GUARD))
    holder = held_lock(billing_url)
    seen: dict[str, Any] = {}

    async def main() -> None:
        async with watching("Waiting for the migration lock") as log:
            with anyio.fail_after(HANG_GUARD):
                async with anyio.create_task_group() as tg:
                    tg.start_soon(group.run)
                    await log.event.wait()
                    seen["status"] = group.status
                    seen["users"] = revisions(db_url)
                    await anyio.to_thread.run_sync(holder.release)
                    await group.wait_ready()

    anyio.run(main)

    assert seen["status"].state is MigrationState.WAITING
    assert seen["status"].waiting_for == "lock"
    assert seen["users"] == {"r3"}
    assert group.status.state is MigrationState.READY
    assert revisions(billing_url) == {"b1"}


def background_group(tmp_path: Path, users_url: URL, billing_url: URL) -> MigratorGroup:
    """In the background: users' r1 runs until the test creates the release file."""
    users = make_project(tmp_path / "users", (WAITING_USERS, Rev("r2", "r1", "then this", "pass")))
    billing = make_project(tmp_path / "billing_proj", (INVOICES,))
    return MigratorGroup(
        {
            "users": AutoMigrator(users, url=users_url),
            "billing": AutoMigrator(billing, url=billing_url),
        },
        block_startup=False,
        shutdown_timeout=HANG_GUARD,
    )


def test_in_the_background_behind_the_gate_with_health_per_database(
    tmp_path: Path, sqlite_url: URL, billing_url: URL, release: Path
) -> None:
    group = background_group(tmp_path, sqlite_url, billing_url)
    hits = Hits(group)
    app = AutoMigrateMiddleware(make_app(group, hits), migrator=group, health_path="/health")
    seen: dict[str, Any] = {}

    async def main() -> None:
        async with watching("Migrating from") as log, LifespanManager(app), client(app) as c:
            await log.event.wait()
            seen["during"] = await c.get("/items")
            seen["health"] = await c.get("/health")
            await anyio.Path(release).touch()
            await group.wait_ready(timeout=HANG_GUARD)
            seen["after"] = await c.get("/items")
            seen["health_after"] = await c.get("/health")

    anyio.run(main)

    assert seen["during"].status_code == 503
    assert seen["health"].status_code == 503
    during = seen["health"].json()
    assert during["state"] == "migrating"
    assert during["databases"]["users"]["state"] == "migrating"
    assert during["databases"]["billing"]["state"] == "pending"
    assert seen["after"].status_code == 200
    assert seen["health_after"].json()["databases"]["billing"]["state"] == "ready"
    assert hits.early == 0
    assert revisions(billing_url) == {"b1"}


def test_shutdown_during_the_first_database_leaves_the_next_alone(
    tmp_path: Path, sqlite_url: URL, billing_url: URL, release: Path
) -> None:
    group = background_group(tmp_path, sqlite_url, billing_url)

    anyio.run(shut_down_while_migrating, group.running, release)

    assert revisions(sqlite_url) == {"r1"}
    assert tables(billing_url) == set()
    assert group.status.state is MigrationState.FAILED
    assert group.statuses["users"].error_kind == "shutdown"


def test_bad_groups_are_refused(tmp_path: Path, sqlite_url: URL) -> None:
    ini = make_project(tmp_path / "p", CHAIN)
    with pytest.raises(ConfigurationError, match="mapping"):
        MigratorGroup({})
    with pytest.raises(ConfigurationError, match="not an AutoMigrator"):
        MigratorGroup({"users": "alembic.ini"})  # type: ignore[dict-item]
    with pytest.raises(ConfigurationError, match="both migrate"):
        MigratorGroup(
            {"a": AutoMigrator(ini, url=sqlite_url), "b": AutoMigrator(ini, url=sqlite_url)}
        )


# -- Alembic's multidb template, unchanged ------------------------------------

MULTIDB_REVISION = '''"""two tables, one per database

Revision ID: m1
Revises:
"""
import sqlalchemy as sa
from alembic import op

revision = "m1"
down_revision = None
branch_labels = None
depends_on = None


def upgrade(engine_name: str) -> None:
    globals()["upgrade_%s" % engine_name]()


def downgrade(engine_name: str) -> None:
    globals()["downgrade_%s" % engine_name]()


def upgrade_engine1() -> None:
    op.create_table("accounts", sa.Column("id", sa.Integer, primary_key=True))


def downgrade_engine1() -> None:
    op.drop_table("accounts")


def upgrade_engine2() -> None:
    op.create_table("events", sa.Column("id", sa.Integer, primary_key=True))


def downgrade_engine2() -> None:
    op.drop_table("events")
'''


def multidb_project(root: Path, urls: dict[str, URL]) -> Path:
    ini = root / "alembic.ini"
    command.init(Config(str(ini), stdout=io.StringIO()), str(root / "migrations"), "multidb")
    text = ini.read_text()
    for name, url in urls.items():
        placeholder = "driver://user:pass@localhost/dbname" + ("2" if name == "engine2" else "")
        rendered = url.render_as_string(hide_password=False).replace("%", "%%")
        text = text.replace(
            f"[{name}]\nsqlalchemy.url = {placeholder}\n",
            f"[{name}]\nsqlalchemy.url = {rendered}\n",
        )
    ini.write_text(text)
    (root / "migrations" / "versions" / "m1.py").write_text(MULTIDB_REVISION)
    return ini


def test_multidb_template_each_database_planned_locked_and_migrated(
    tmp_path: Path, server_db: URL, billing_url: URL
) -> None:
    ini = multidb_project(tmp_path / "proj", {"engine1": server_db, "engine2": billing_url})
    group = MigratorGroup.from_multidb(ini)
    events: list[Event] = []
    group.subscribe(events.append)

    status = anyio.run(group.run)
    again = anyio.run(MigratorGroup.from_multidb(ini).run)

    assert status.state is MigrationState.READY
    assert list(group.migrators) == ["engine1", "engine2"]
    assert "accounts" in tables(server_db)
    assert "events" not in tables(server_db)
    assert "events" in tables(billing_url)
    assert "accounts" not in tables(billing_url)
    assert revisions(server_db) == revisions(billing_url) == {"m1"}
    assert [e.revision.revision for e in events if e.revision] == ["m1", "m1"]
    assert again.state is MigrationState.READY
    assert again.applied == ()


def test_multidb_urls_from_code_and_bad_configs(tmp_path: Path, billing_url: URL) -> None:
    other = billing_url.set(database=f"{billing_url.database}.2")
    ini = multidb_project(tmp_path / "proj", {})  # the template's placeholder URLs

    group = MigratorGroup.from_multidb(ini, urls={"engine1": other, "engine2": billing_url})
    status = anyio.run(group.run)

    assert status.state is MigrationState.READY
    assert "accounts" in tables(other)
    with pytest.raises(ConfigurationError, match="does not list"):
        MigratorGroup.from_multidb(ini, urls={"engine3": billing_url})
    plain = make_project(tmp_path / "plain", CHAIN)
    with pytest.raises(ConfigurationError, match="not from the multidb template"):
        MigratorGroup.from_multidb(plain)


def test_the_command_on_a_multidb_config(
    tmp_path: Path, sqlite_url: URL, billing_url: URL
) -> None:
    ini = multidb_project(tmp_path / "proj", {"engine1": sqlite_url, "engine2": billing_url})

    behind = run_cli("-c", str(ini), "check")
    upgrade = run_cli("-c", str(ini), "upgrade")
    status = run_cli("-c", str(ini), "status", "--json")
    at_head = run_cli("-c", str(ini), "check")

    assert behind.returncode == 10
    assert "engine1: the database is at base" in behind.stderr
    assert "engine2: the database is at base" in behind.stderr
    assert upgrade.returncode == 0, upgrade.stderr
    report = json.loads(status.stdout)["databases"]
    assert {name: r["revisions"] for name, r in report.items()} == {
        "engine1": ["m1"],
        "engine2": ["m1"],
    }
    assert at_head.returncode == 0, at_head.stderr
