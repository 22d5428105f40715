"""Helpers the test files share: deploys, revisions, backups, CLI runs, log watches, ASGI calls.

Each began in one test file and is used by several; the fixtures live in
tests/conftest.py, the project builder in tests/project.py.
"""

from __future__ import annotations

import logging
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from pathlib import Path
from typing import Any

import anyio
import httpx
import sqlalchemy as sa
from sqlalchemy.engine import URL
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse
from starlette.routing import Route

from automigrator import AutoMigrator, MigrationRunner
from automigrator.database._purge import like_prefix, quarantine_prefix
from automigrator.locking import MigrationLock, MySQLLock, PostgresAdvisoryLock, lock_for
from tests.conftest import rows
from tests.project import EMAIL, USERS, Rev, make_project, waiting, write_revision

# A deploy that fails on the rows already there

# The deploy: a revision that fails on the rows already there (two users
# called "ann") with its first statement, so nothing of it stays anywhere: a
# migration failure for the destructive policies. From scratch it works. (A
# revision that fails half way is a partial one: tests/test_partial.py.)
UNIQUE_NAMES = Rev(
    "r3",
    "r2",
    "unique names and audit table",
    """
    op.create_index("ix_users_name", "users", ["name"], unique=True)
    op.create_table("audit", sa.Column("id", sa.Integer, primary_key=True))
    """,
)
# A revision that fails wherever it runs.
ALWAYS_BROKEN = Rev("r3", "r2", "always broken", 'raise RuntimeError("r3 is broken")')


def deployed(tmp_path: Path, url: URL, broken: Rev = UNIQUE_NAMES) -> Path:
    """A database at r2 holding the application's rows, and a deploy adding ``broken``."""
    ini = make_project(tmp_path / "proj", (USERS, EMAIL))
    anyio.run(AutoMigrator(ini, url=url).run)
    engine = sa.create_engine(url, poolclass=sa.NullPool)
    with engine.begin() as conn:
        conn.execute(
            sa.text("INSERT INTO users (name, email) VALUES (:n, :e)"),
            [{"n": "ann", "e": "a@x"}, {"n": "ann", "e": "b@x"}, {"n": "bob", "e": "c@x"}],
        )
    engine.dispose()
    write_revision(ini.parent, broken)
    return ini


def user_rows(url: URL) -> list[tuple[object, ...]]:
    return rows(url, "SELECT name, email FROM users ORDER BY email")


OLD_ROWS = [("ann", "a@x"), ("ann", "b@x"), ("bob", "c@x")]

# The ledger's last word on each revision: (revision, outcome), by revision.
LATEST_OUTCOMES = (
    "SELECT revision, outcome FROM automigrator_history WHERE id IN "
    "(SELECT MAX(id) FROM automigrator_history GROUP BY revision) ORDER BY revision"
)


# The backups the destructive policies make


def backups(url: URL) -> list[str]:
    """Every backup automigrator made of ``url``: files, schemas or databases, oldest first."""
    backend = url.get_backend_name()
    if backend == "sqlite":
        path = Path(str(url.database))
        return sorted(str(p) for p in path.parent.glob(f"{path.name}.backup-*.sqlite"))
    if backend == "postgresql":
        catalog, column, name = "pg_namespace", "nspname", "public"
    else:
        catalog, column, name = "information_schema.schemata", "schema_name", str(url.database)
    pattern = like_prefix(quarantine_prefix(name, backend)).replace("%", "%%")
    found = rows(url, f"SELECT {column} FROM {catalog} WHERE {column} LIKE '{pattern}' ESCAPE '!'")
    return sorted(str(r[0]) for r in found)


# Revisions around a waiting r3, and where a lock lost during it leaves the database

R4 = Rev("r4", "r3", "after the wait", 'op.create_table("r4_done", sa.Column("id", sa.Integer))')
# r3 waits for the test outside any transaction (as a CREATE INDEX
# CONCURRENTLY runs), so the migration pins no server connection meanwhile.
R3 = waiting(
    "r3", "r2", then='op.create_table("r3_done", sa.Column("id", sa.Integer))', autocommit=True
)


def after_a_lost_lock_in_r3(url: URL) -> set[str]:
    """Where the database is when the lock was lost during r3 (of r3, r4)."""
    # PostgreSQL rolled r3 back before its commit; MariaDB kept r3 (its DDL
    # was made) and stopped before r4.
    return {"r2"} if url.get_backend_name() == "postgresql" else {"r3"}


# The command line, as a process

ROOT = Path(__file__).resolve().parents[1]


def run_cli(
    *args: str, env: dict[str, str] | None = None, cwd: Path = ROOT
) -> subprocess.CompletedProcess[str]:
    """``python -m automigrator ARGS`` as a process; its exit code, stdout and stderr."""
    return subprocess.run(
        [sys.executable, "-m", "automigrator", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
        check=False,
    )


def cli(ini: Path, url: URL | str, *args: str) -> subprocess.CompletedProcess[str]:
    target = url if isinstance(url, str) else url.render_as_string(hide_password=False)
    return run_cli("-c", str(ini), "--url", target, *args)


# A process's output


def line_with(proc: subprocess.Popen[str], *words: str, seconds: float = 60) -> str:
    """The first line of the process's stderr that holds one of ``words``."""
    assert proc.stderr is not None
    deadline = time.monotonic() + seconds
    for line in proc.stderr:
        if any(word in line for word in words):
            return line
        assert time.monotonic() < deadline, f"none of {words} within {seconds} s"
    raise AssertionError(f"the process ended before saying any of {words}")


# Log watches and a held lock

# Guards against a hang only: a wait that ignored the stop would last
# lock_timeout / connect_timeout (10 minutes in tests/test_waiting.py).
HANG_GUARD = 60


class LogEvent(logging.Handler):
    """Sets an event when a record's message holds the text (logged on the event loop)."""

    def __init__(self, text: str) -> None:
        super().__init__()
        self.text = text
        self.event = anyio.Event()
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        message = record.getMessage()
        self.messages.append(message)
        if self.text in message:
            self.event.set()


@asynccontextmanager
async def watching(text: str) -> AsyncIterator[LogEvent]:
    handler = LogEvent(text)
    logger = logging.getLogger("automigrator")
    logger.addHandler(handler)
    level = logger.level
    logger.setLevel(logging.INFO)
    try:
        yield handler
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)


def held_lock(url: URL) -> MigrationLock:
    lock = lock_for(url)
    assert lock.acquire(0)
    return lock


# ASGI apps and calls, in-process

# A migration that runs until the test lets it finish (a file appears): the
# test decides when it ends, nothing depends on timing.
WAITING_USERS = Rev(
    "r1",
    None,
    "create users, when released",
    """
    import os
    import time

    release = os.environ["AM_RELEASE"]
    while not os.path.exists(release):
        time.sleep(0.01)
    op.create_table("users", sa.Column("id", sa.Integer, primary_key=True),
                    sa.Column("name", sa.String(50)), sa.Column("email", sa.String(100)))
    """,
)


class Hits:
    """Counts the requests that reach a handler, and those that came too early."""

    def __init__(self, migrator: MigrationRunner) -> None:
        self.migrator = migrator
        self.total = 0
        self.early = 0

    async def items(self, request: Request) -> PlainTextResponse:
        self.total += 1
        if not self.migrator.status.ready:
            self.early += 1
        return PlainTextResponse("items")


def make_app(migrator: MigrationRunner, hits: Hits) -> Starlette:
    async def live(request: Request) -> PlainTextResponse:
        return PlainTextResponse("alive")

    return Starlette(routes=[Route("/items", hits.items), Route("/livez", live)])


@asynccontextmanager
async def client(app: Any) -> AsyncIterator[httpx.AsyncClient]:
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as c:
        yield c


async def shut_down_while_migrating(
    running: Callable[[], AbstractAsyncContextManager[object]], release: Path
) -> None:
    """Enter ``running()``; once a migration runs, leave it (the server's shutdown).

    The waiting revision is let finish only once the shutdown has begun.
    """
    async with (
        watching("Shutting down during a migration") as stopping,
        watching("Migrating from") as migrating,
        anyio.create_task_group() as tg,
    ):

        async def release_when_stopping() -> None:
            await stopping.event.wait()
            await anyio.Path(release).touch()  # the revision may now finish

        tg.start_soon(release_when_stopping)
        async with running():
            await migrating.event.wait()


async def get(app: object, path: str = "/") -> httpx.Response:
    transport = httpx.ASGITransport(app=app)  # type: ignore[arg-type]
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
        return await client.get(path)


# Locks left behind


def locks_left(url: URL) -> list[tuple[object, ...]]:
    """Sessions still holding a lock of ours on ``url``'s database: the lock or its fence.

    PostgreSQL: any granted advisory lock on the database (past any pooler);
    MySQL/MariaDB: the lock's and the fence's names in use; SQLite: none (its
    file lock goes with the process).
    """
    if url.get_backend_name() == "sqlite":
        return []
    if url.get_backend_name() == "postgresql":
        return rows(
            url,
            "SELECT pid, objid FROM pg_locks WHERE locktype = 'advisory' AND granted AND "
            "database = (SELECT oid FROM pg_database WHERE datname = current_database())",
        )
    lock = lock_for(url)
    assert isinstance(lock, MySQLLock)
    used = rows(url, f"SELECT IS_USED_LOCK('{lock.name}'), IS_USED_LOCK('{lock.name}:guard')")
    return [row for row in used if any(value is not None for value in row)]


def kill_lock_session(url: URL) -> None:
    """End the session that holds our advisory lock / named lock, as a server would."""
    if url.get_backend_name() == "postgresql":
        lock = lock_for(url)
        assert isinstance(lock, PostgresAdvisoryLock)
        unsigned = lock.key & 0xFFFFFFFFFFFFFFFF
        [(killed,)] = execute(
            url,
            "SELECT pg_terminate_backend(pid) FROM pg_locks WHERE locktype = 'advisory' "
            f"AND granted AND classid = {unsigned >> 32} AND objid = {unsigned & 0xFFFFFFFF}",
        )
        assert killed
    else:
        lock = lock_for(url)
        assert isinstance(lock, MySQLLock)
        [(pid,)] = execute(url, f"SELECT IS_USED_LOCK('{lock.name}')")
        execute(url, f"KILL {pid}")


def execute(url: URL, sql: str) -> list[tuple[object, ...]]:
    """``sql`` on ``url`` in autocommit, from a connection of its own; its rows."""
    engine = sa.create_engine(url, isolation_level="AUTOCOMMIT", poolclass=sa.NullPool)
    try:
        with engine.connect() as conn:
            result = conn.exec_driver_sql(sql)
            return [tuple(r) for r in result] if result.returns_rows else []
    finally:
        engine.dispose()
