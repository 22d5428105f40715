"""Live tables: a migration never stalls the application's queries behind a busy table.

A transaction of the application's reads the table and stays open; a reader
runs SELECTs on it in a loop, each allowed to wait 3 s for a lock; the
migration alters the table. Plain Alembic queues its ALTER behind the open
transaction and every SELECT behind the ALTER (the reader's wait runs out);
automigrator gives up on the table lock after ``ddl_lock_timeout``, names
the blocker, and tries again, so no SELECT waits long, and the revision is
applied once the blocker ends.
"""

from __future__ import annotations

import io
import logging
import os
import signal
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import anyio
import pytest
import sqlalchemy as sa
from alembic import command
from alembic.config import Config
from sqlalchemy.engine import URL, Connection
from sqlalchemy.exc import DBAPIError

from automigrator import (
    AutoMigrator,
    Chain,
    ContentionError,
    Ddl,
    Event,
    Failure,
    HealthApp,
    History,
    Lint,
    LintMode,
    MigrationState,
    PartialMigrationError,
    PurgeAndRetry,
    RestoreBackup,
    Retry,
    SchemaAheadError,
)
from automigrator.process._logging import LoggingGuard
from tests.conftest import revisions, rows
from tests.faults import Background, wait_for
from tests.helpers import HANG_GUARD, OLD_ROWS, backups, cli, deployed, user_rows
from tests.project import Rev, make_project, waiting, write_revision

ADD_AGE = Rev("r3", "r2", "add age", 'op.add_column("users", sa.Column("age", sa.Integer))')
# Where DDL is not transactional, the CREATE TABLE stays when the ALTER times out.
HALF = Rev(
    "r3",
    "r2",
    "new table then alter users",
    """
    op.create_table("audit", sa.Column("id", sa.Integer, primary_key=True))
    op.add_column("users", sa.Column("age", sa.Integer))
    """,
)
READER_LIMIT = 3  # seconds a reader's SELECT may wait for a lock before it fails
# The blocker stays open this long after the migration first gave up on it: long
# enough for several tries, were the migration to try again on a timer.
HOLD_AFTER = 3.0


def connect(url: URL, *, limit: float | None = None) -> Connection:
    """A connection of the application's; with ``limit``, its lock waits end after that."""
    args = {"timeout": limit} if limit is not None and url.get_backend_name() == "sqlite" else {}
    conn = sa.create_engine(url, poolclass=sa.NullPool, connect_args=args).connect()
    if limit is not None and url.get_backend_name() == "postgresql":
        conn.execute(sa.text(f"SET lock_timeout = '{limit}s'"))
        conn.commit()
    elif limit is not None and url.get_backend_name() in ("mysql", "mariadb"):
        conn.execute(sa.text(f"SET SESSION lock_wait_timeout = {int(limit)}"))
        conn.commit()
    return conn


def open_reader(url: URL) -> tuple[Connection, int | None]:
    """A transaction that read the users table and stays open; its server id."""
    conn = connect(url)
    backend = url.get_backend_name()
    pid = None
    if backend == "postgresql":
        pid = conn.execute(sa.text("SELECT pg_backend_pid()")).scalar()
    elif backend in ("mysql", "mariadb"):
        pid = conn.execute(sa.text("SELECT CONNECTION_ID()")).scalar()
    conn.commit()
    if backend == "sqlite":
        conn.exec_driver_sql("BEGIN")  # pysqlite opens none for a SELECT by itself
    conn.execute(sa.text("SELECT count(*) FROM users")).scalar()
    return conn, int(pid) if pid is not None else None


@contextmanager
def reader_held(url: URL) -> Iterator[int | None]:
    """``open_reader(url)`` for the block, its transaction ended after; yields its id."""
    blocker, pid = open_reader(url)
    try:
        yield pid
    finally:
        blocker.rollback()
        blocker.close()


def read_until(
    url: URL,
    done: Callable[[], bool],
    seconds: float = 90,
    *,
    first_failure: bool = False,
    limit: float = READER_LIMIT,
) -> list[str]:
    """SELECTs on users, each in its own transaction, until ``done()``; the ones that failed.

    With ``first_failure``, the first SELECT that fails ends it too. Each
    SELECT may wait ``limit`` seconds for a lock.
    """
    failures: list[str] = []
    conn = connect(url, limit=limit)
    deadline = time.monotonic() + seconds
    try:
        while not done() and time.monotonic() < deadline:
            try:
                conn.execute(sa.text("SELECT count(*) FROM users")).scalar()
                conn.commit()
            except DBAPIError as exc:
                failures.append(str(exc.orig))
                conn.rollback()
                if first_failure:
                    break
    finally:
        conn.close()
    assert done() or failures, "the reader ran out of time with nothing to show"
    return failures


def test_queries_never_queue_behind_a_migration_that_waits_for_a_busy_table(
    tmp_path: Path, db_url: URL, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="automigrator")
    ini = deployed(tmp_path, db_url, broken=ADD_AGE)
    blocker, pid = open_reader(db_url)
    migrator = AutoMigrator(ini, url=db_url, ddl=Ddl(retries=100))
    seen: list[Event] = []
    migrator.subscribe(lambda e: seen.append(e) if e.name in ("blocked", "ddl_retry") else None)
    # A reader whose SELECTs may wait longer than one short try, not longer than two.
    limit = 1 if db_url.get_backend_name() == "postgresql" else READER_LIMIT
    try:
        run = Background(migrator)
        # Read on while the migration meets the busy table, then for as long
        # again as the blocker is held (HOLD_AFTER seconds more).
        failures = read_until(db_url, lambda: migrator.status.ddl_retries >= 1, limit=limit)
        held_until = time.monotonic() + HOLD_AFTER
        failures += read_until(db_url, lambda: time.monotonic() > held_until, limit=limit)
        assert revisions(db_url) == {"r2"}
    finally:
        blocker.rollback()  # the application's transaction ends
        blocker.close()
    assert run.result() is None

    assert failures == []  # no SELECT waited its limit for a lock
    assert revisions(db_url) == {"r3"}
    assert user_rows(db_url) == OLD_ROWS
    assert any("met a busy table" in r.getMessage() for r in caplog.records)
    if pid is not None:  # the servers say who blocks; SQLite cannot
        named = {b.pid for e in seen for b in e.status.blocked_by}
        assert pid in named
        assert any(f"pid {pid}" in r.getMessage() for r in caplog.records), caplog.text
        # It waited for the blocker outside the queue, instead of queueing again
        # and again: one try failed, the next (after the blocker ended) applied it.
        assert migrator.status.ddl_retries == 1
        retried = next(i for i, e in enumerate(seen) if e.name == "ddl_retry")
        # The blocker was dropped from the status as soon as it was gone.
        assert any(e.name == "blocked" and not e.status.blocked_by for e in seen[retried:])


def test_plain_alembic_queues_every_query_behind_the_waiting_alter(
    tmp_path: Path, db_url: URL
) -> None:
    # The same scene without the lock timeout: the stall the test above rules out.
    ini = deployed(tmp_path, db_url, broken=ADD_AGE)
    config = Config(str(ini), stdout=io.StringIO())
    config.set_main_option("sqlalchemy.url", db_url.render_as_string(False).replace("%", "%%"))
    blocker, _ = open_reader(db_url)
    ended = threading.Event()

    def upgrade() -> None:
        try:
            with LoggingGuard():  # env.py's fileConfig() would silence our loggers
                command.upgrade(config, "head")
        except DBAPIError:
            pass  # SQLite's own busy timeout (5 s) ends it
        finally:
            ended.set()

    alembic = threading.Thread(target=upgrade)
    alembic.start()
    try:
        failures = read_until(db_url, ended.is_set, first_failure=True)
    finally:
        blocker.rollback()
        blocker.close()
        alembic.join(60)
    assert failures, "no SELECT waited: the ALTER never queued ahead of them"


def test_contention_that_never_ends_fails_as_its_own_kind_and_purges_nothing(
    tmp_path: Path, db_url: URL
) -> None:
    ini = deployed(tmp_path, db_url, broken=ADD_AGE)
    migrator = AutoMigrator(
        ini,
        url=db_url,
        ddl=Ddl(lock_timeout=0.2, retries=1, budget=1.5),
        on_failure=Chain(PurgeAndRetry(), Retry(times=1, delay=0)),
    )
    with reader_held(db_url) as pid, pytest.raises(ContentionError) as caught:
        anyio.run(migrator.run)

    assert caught.value.kind == "contention"
    assert caught.value.revision == "r3"
    assert "time(s) in a row" in caught.value.message
    if pid is not None:  # the blocker it waited for is named
        assert f"pid {pid}" in caught.value.message
    assert migrator.status.error_kind == "contention"
    assert migrator.status.attempts == 2  # Retry() tried once more; PurgeAndRetry passed
    assert revisions(db_url) == {"r2"}
    assert user_rows(db_url) == OLD_ROWS
    assert backups(db_url) == []


def test_a_blocker_that_never_ends_costs_one_try_and_the_budget_then_is_named(
    tmp_path: Path, server_db: URL, caplog: pytest.LogCaptureFixture
) -> None:
    ini = deployed(tmp_path, server_db, broken=ADD_AGE)
    migrator = AutoMigrator(ini, url=server_db, ddl=Ddl(retries=1000, budget=4))
    with reader_held(server_db) as pid, pytest.raises(ContentionError) as caught:
        anyio.run(migrator.run)

    # One try met the blocker; the rest of the budget went on waiting for it to
    # end, outside the queue: no second try stalled the table again.
    tries = [r for r in caplog.records if "met a busy table" in r.getMessage()]
    assert len(tries) == 1, caplog.text
    assert f"pid {pid}" in caught.value.message
    assert "1 time(s) in a row" in caught.value.message
    assert "Ddl(budget=" in caught.value.message
    assert revisions(server_db) == {"r2"}


def test_a_revision_that_met_a_busy_table_runs_at_the_next_start(
    tmp_path: Path, db_url: URL
) -> None:
    # A busy table is not the revision's fault: the failure recorded in the
    # ledger moments ago does not keep the next start from running it.
    ini = deployed(tmp_path, db_url, broken=ADD_AGE)
    busy = AutoMigrator(ini, url=db_url, ddl=Ddl(lock_timeout=0.2, retries=0))
    with reader_held(db_url), pytest.raises(ContentionError):
        anyio.run(busy.run)
    again = AutoMigrator(ini, url=db_url)

    anyio.run(again.run)

    assert again.status.state is MigrationState.READY
    assert revisions(db_url) == {"r3"}


LATER = {
    # What the revision does to each busy table after it altered t1: an ALTER,
    # an UPDATE that waits for a row lock, a new table whose foreign key
    # references it; and an ALTER behind a comment.
    "alter": 'op.add_column("{t}", sa.Column("c", sa.Integer))',
    "update": 'op.execute("UPDATE {t} SET v = v + 1 WHERE id = 1")',
    "foreign-key": 'op.execute("CREATE TABLE fk_{t} (x int REFERENCES {t} (id))")',
    "comment": 'op.execute("/* ours */ ALTER TABLE {t} ADD COLUMN c int")',
}


@pytest.mark.parametrize("later", sorted(LATER))
def test_a_revision_altering_several_busy_tables_stalls_the_first_one_try_at_most(
    tmp_path: Path, pg_url: URL, later: str
) -> None:
    # Each wait alone stays under the lock timeout (the other tables' own
    # transactions last 0.2 s), but the first table, locked first, would wait
    # for all of them together.
    tables = tuple(f"t{i}" for i in range(1, 14))
    create = "\n".join(
        f'op.create_table("{t}", sa.Column("id", sa.Integer, primary_key=True), '
        f'sa.Column("v", sa.Integer))\nop.execute("INSERT INTO {t} VALUES (1, 0)")'
        for t in tables
    )
    first = 'op.add_column("t1", sa.Column("c", sa.Integer))'
    body = "\n".join([first, *(LATER[later].format(t=t) for t in tables[1:])])
    ini = make_project(tmp_path / "p", (Rev("r1", None, "tables", create),))
    anyio.run(AutoMigrator(ini, url=pg_url).run)
    write_revision(ini.parent, Rev("r2", "r1", "then the others", body))
    stop = threading.Event()
    # The application's transactions on each other table, open 0.2 s: reads,
    # or (for the row and foreign-key waits) an UPDATE of the row.
    work = (
        "SELECT count(*) FROM {t}"
        if later in ("alter", "comment")
        else ("UPDATE {t} SET v = v WHERE id = 1")
    )

    def busy(table: str) -> None:
        with connect(pg_url) as conn:
            while not stop.is_set():
                conn.execute(sa.text(work.format(t=table)))
                stop.wait(0.2)
                conn.commit()

    streams = [threading.Thread(target=busy, args=(t,)) for t in tables[1:]]
    for thread in streams:
        thread.start()
    migrator = AutoMigrator(ini, url=pg_url, ddl=Ddl(retries=3, budget=5))
    try:
        run = Background(migrator)
        # t1's queries may wait one try (0.25 s, up to 0.44 s on the fourth)
        # and a little, never twelve waits of up to 0.2 s (1.2 s on average).
        failures: list[str] = []
        with connect(pg_url, limit=0.6) as reader:
            while run.thread.is_alive():
                try:
                    reader.execute(sa.text("SELECT count(*) FROM t1")).scalar()
                    reader.commit()
                except DBAPIError as exc:
                    failures.append(str(exc.orig))
                    reader.rollback()
        outcome = run.result()
    finally:
        stop.set()
        for thread in streams:
            thread.join()

    assert failures == []
    # Applied, or given up as contention: never partly applied.
    assert outcome is None or isinstance(outcome, ContentionError), repr(outcome)
    assert revisions(pg_url) == ({"r2"} if outcome is None else {"r1"})


def test_mariadb_tries_again_once_the_blocker_ends_among_older_unrelated_transactions(
    tmp_path: Path, fresh_db: Callable[[str], URL]
) -> None:
    # MariaDB names candidates, oldest first: here the five oldest touch
    # another table and stay open; the real blocker is the sixth.
    url = fresh_db("mariadb")
    ini = deployed(tmp_path, url, broken=ADD_AGE)
    with sa.create_engine(url, poolclass=sa.NullPool).begin() as conn:
        conn.execute(sa.text("CREATE TABLE other (id INT PRIMARY KEY)"))
    unrelated = [connect(url) for _ in range(5)]
    for conn in unrelated:
        conn.execute(sa.text("SELECT count(*) FROM other")).scalar()  # open, and stays
    blocker, _ = open_reader(url)
    migrator = AutoMigrator(ini, url=url, ddl=Ddl(budget=60))
    retried = threading.Event()
    migrator.subscribe(lambda e: retried.set() if e.name == "ddl_retry" else None)
    try:
        run = Background(migrator)
        assert retried.wait(30)  # the first try met the blocker
        blocker.rollback()  # the real blocker ends; the unrelated ones stay
        assert run.result() is None
        assert revisions(url) == {"r3"}
        assert migrator.status.ddl_retries == 1  # the next try, once it ended
    finally:
        blocker.close()
        for conn in unrelated:
            conn.rollback()
            conn.close()


@pytest.mark.slow
def test_sigterm_while_waiting_for_a_blocker_between_tries_stops_at_once(
    tmp_path: Path, pg_url: URL
) -> None:
    # The wait outside the queue is a wait like any other: a shutdown ends it,
    # long before the budget, with nothing of the revision applied.
    from automigrator import ShutdownRequestedError

    ini = deployed(tmp_path, pg_url, broken=ADD_AGE)
    blocker, _ = open_reader(pg_url)
    migrator = AutoMigrator(ini, url=pg_url, ddl=Ddl(budget=3600))
    retried, ended = threading.Event(), threading.Event()
    migrator.subscribe(lambda e: retried.set() if e.name == "ddl_retry" else None)
    received: list[int] = []
    previous = signal.signal(signal.SIGTERM, lambda signum, frame: received.append(signum))

    def stop_while_waiting() -> None:
        if retried.wait(30):  # the first try met the blocker: now it waits for it
            os.kill(os.getpid(), signal.SIGTERM)
        # A wait deaf to the shutdown would go on until the blocker ends: end it
        # then, and the revision gets applied (which the test rules out).
        if not ended.wait(HANG_GUARD):
            blocker.rollback()

    async def run() -> None:
        try:
            await migrator.run()
        finally:
            ended.set()

    stopper = threading.Thread(target=stop_while_waiting)
    stopper.start()
    try:
        with pytest.raises(ShutdownRequestedError) as caught:
            anyio.run(run)
    finally:
        stopper.join(60)
        signal.signal(signal.SIGTERM, previous)
        blocker.rollback()
        blocker.close()

    assert "stopped before trying revision r3 again" in caught.value.message
    assert received == [signal.SIGTERM]  # the server's handler still got it
    assert revisions(pg_url) == {"r2"}


def test_a_busy_table_after_a_kept_statement_says_what_stayed(
    tmp_path: Path, server_db: URL
) -> None:
    url = server_db
    ini = deployed(tmp_path, url, broken=HALF)
    migrator = AutoMigrator(ini, url=url, ddl=Ddl(lock_timeout=0.2, retries=1, budget=2))
    with reader_held(url), pytest.raises((ContentionError, PartialMigrationError)) as caught:
        anyio.run(migrator.run)

    # PostgreSQL's transactional DDL took the CREATE TABLE back with the rollback.
    if url.get_backend_name() == "postgresql":
        assert isinstance(caught.value, ContentionError)
        assert "Nothing of the revision stayed" in caught.value.message
    else:  # MariaDB: the CREATE TABLE stays, so trying again would meet it
        assert isinstance(caught.value, PartialMigrationError)
        assert "CREATE TABLE audit" in caught.value.message
        assert "1 of its statement(s) took effect" in caught.value.message
        assert migrator.status.ddl_retries == 0
    assert revisions(url) == {"r2"}


def test_retry_retries_contention_by_default() -> None:
    error = ContentionError("busy", revision="r3")
    decision = anyio.run(
        Retry().handle,
        Failure(error=error, attempt=1, history=(), migrator=None),  # type: ignore[arg-type]
    )
    assert decision.action == "retry"
    assert (
        anyio.run(
            PurgeAndRetry().handle,
            Failure(error=error, attempt=1, history=(), migrator=None),  # type: ignore[arg-type]
        ).action
        == "pass"
    )


def test_a_long_revision_logs_a_heartbeat_and_shows_itself_in_the_status(
    tmp_path: Path, sqlite_url: URL, signals: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="automigrator")
    url = sqlite_url
    ini = make_project(tmp_path / "proj", (waiting("r1", None),))
    migrator = AutoMigrator(ini, url=url, ddl=Ddl(progress_interval=0.5))
    run = Background(migrator)
    wait_for(signals / "r1.running")
    deadline = time.monotonic() + 30
    while not any("Still applying r1" in r.getMessage() for r in caplog.records):
        assert time.monotonic() < deadline, caplog.text
        time.sleep(0.05)
    running = migrator.status.to_dict()["running"]
    (signals / "r1.go").touch()
    assert run.result() is None

    assert running["revision"] == "r1"
    assert running["message"] == "r1 waits for the test"
    assert running["elapsed"] >= 0.5
    assert migrator.status.running is None  # done: nothing running


def test_a_rollback_deploy_serves_on_a_database_ahead_when_told(
    tmp_path: Path, db_url: URL, caplog: pytest.LogCaptureFixture
) -> None:
    newer = make_project(tmp_path / "new")
    anyio.run(AutoMigrator(newer, url=db_url).run)  # the new version migrated to r3
    older = make_project(tmp_path / "old")
    (older.parent / "migrations" / "versions" / "r3.py").unlink()  # the old code: up to r2

    with pytest.raises(SchemaAheadError):
        anyio.run(AutoMigrator(older, url=db_url).run)  # the default still refuses

    migrator = AutoMigrator(older, url=db_url, history=History(when_ahead="serve"))
    status = anyio.run(migrator.run)
    code, body = HealthApp(migrator).body()

    assert status.ready
    assert status.ahead == ("r3",)
    assert (code, body["state"], body["ahead"]) == (200, "ready", ["r3"])
    assert revisions(db_url) == {"r3"}  # never downgraded
    assert any("ahead of the code" in r.getMessage() for r in caplog.records)


DROP_EMAIL = Rev("r3", "r2", "drop email", 'op.drop_column("users", "email")')


@pytest.mark.parametrize(
    ("third", "lint", "breaking"),
    [
        (ADD_AGE, "warn", None),
        (DROP_EMAIL, "warn", "the lint found that it breaks the version before it"),
        (ADD_AGE, "off", "the ledger records no lint verdict of it"),
    ],
    ids=["compatible", "breaking", "not-linted"],
)
def test_an_old_replica_restarted_mid_rollout_serves_only_past_compatible_revisions(
    tmp_path: Path,
    server_db: URL,
    third: Rev,
    lint: LintMode,
    breaking: str | None,
    caplog: pytest.LogCaptureFixture,
) -> None:
    ini = deployed(tmp_path, server_db, broken=third)
    anyio.run(AutoMigrator(ini, url=server_db, lint=lint).run)  # the new version's replica
    (ini.parent / "migrations" / "versions" / "r3.py").unlink()  # an old one restarts

    old = AutoMigrator(ini, url=server_db)  # the default: when_ahead="compatible"
    if breaking is None:
        status = anyio.run(old.run)
        assert status.ready
        assert status.ahead == ("r3",)
    else:
        with pytest.raises(SchemaAheadError) as caught:
            anyio.run(old.run)
        assert caught.value.breaking is not None
        assert caught.value.breaking[0] == "r3"
        assert breaking in caught.value.message
        assert old.status.error_kind == "schema_ahead"
        assert "Revision r3 failed" not in caplog.text  # nothing ran: the database's own
    assert revisions(server_db) == {"r3"}  # never downgraded


# Findings that are about the table's lock, not the old version's code.
CHAR_CODE = Rev("r3", "r2", "add code", 'op.execute("ALTER TABLE users ADD COLUMN code char(3)")')


@pytest.mark.parametrize(
    ("third", "ddl"),
    [(CHAR_CODE, Ddl()), (ADD_AGE, Ddl(lock_timeout=None))],
    ids=["squawk-char-field", "no-lock-timeout"],
)
def test_an_old_replica_serves_past_a_revision_flagged_for_something_else_than_its_code(
    tmp_path: Path, pg_url: URL, third: Rev, ddl: Ddl
) -> None:
    # squawk's ban-char-field, or no lock timeout: flagged, and still
    # harmless to the version before it, so recorded compatible.
    ini = deployed(tmp_path, pg_url, broken=third)
    big = Lint(rows=0)  # squawk's rule is weighed: every table counts as big
    status = anyio.run(AutoMigrator(ini, url=pg_url, ddl=ddl, lint=big).run)
    assert status.lint  # flagged all the same
    (ini.parent / "migrations" / "versions" / "r3.py").unlink()
    old = anyio.run(AutoMigrator(ini, url=pg_url).run)
    assert old.ready
    assert old.ahead == ("r3",)


@pytest.mark.parametrize(
    ("ledger", "why"),
    [
        ("DELETE FROM automigrator_history WHERE revision = 'r3'", "holds no row of it"),
        ("UPDATE automigrator_history SET outcome = 'failed' WHERE revision = 'r3'", "failed"),
        ("DROP TABLE automigrator_history", "the ledger could not be read"),
    ],
    ids=["no-row", "failed-row", "no-ledger"],
)
def test_an_old_replica_refused_ahead_says_why_the_ledger_cannot_vouch(
    tmp_path: Path, server_db: URL, ledger: str, why: str
) -> None:
    ini = deployed(tmp_path, server_db, broken=ADD_AGE)
    anyio.run(AutoMigrator(ini, url=server_db).run)  # compatible, as recorded
    (ini.parent / "migrations" / "versions" / "r3.py").unlink()
    with sa.create_engine(server_db, poolclass=sa.NullPool).begin() as conn:
        conn.execute(sa.text(ledger))

    with pytest.raises(SchemaAheadError) as caught:
        anyio.run(AutoMigrator(ini, url=server_db).run)
    assert caught.value.breaking is not None
    assert caught.value.breaking[0] == "r3"
    assert why in caught.value.message


def test_an_old_replica_is_never_served_on_a_database_that_lacks_one_of_its_revisions(
    tmp_path: Path, server_db: URL
) -> None:
    # The database went r2 -> r3 (compatible); this code went r2 -> r3x: the
    # version table holds r3 alone, so only the ledger says it branched at r2.
    ini = deployed(tmp_path, server_db, broken=ADD_AGE)
    anyio.run(AutoMigrator(ini, url=server_db).run)
    (ini.parent / "migrations" / "versions" / "r3.py").unlink()
    write_revision(ini.parent, Rev("r3x", "r2", "another branch", "pass"))

    with pytest.raises(SchemaAheadError) as caught:
        anyio.run(AutoMigrator(ini, url=server_db).run)
    assert caught.value.missing == ("r3x",)
    assert "It also lacks r3x" in caught.value.message
    assert revisions(server_db) == {"r3"}


def test_the_health_endpoint_names_no_blocker_application() -> None:
    from automigrator import Blocker, MigrationRunner, MigrationStatus

    class Fixed(MigrationRunner):
        status = MigrationStatus(blocked_by=(Blocker(7, "idle in transaction", 3.0, "billing"),))

        def __init__(self) -> None:
            super().__init__(block_startup=True, shutdown_timeout=1.0)

        async def run(self) -> MigrationStatus:
            return self.status

        def request_stop(self) -> None:
            pass

    _, body = HealthApp(Fixed()).body()
    assert body["blocked_by"] == [
        {"pid": 7, "state": "idle in transaction", "seconds": 3.0, "table": None}
    ]


def test_bad_live_table_settings_are_named(tmp_path: Path) -> None:
    from automigrator import ConfigurationError

    ini = make_project(tmp_path / "proj")
    for bad, name in (
        ({"ddl": lambda: Ddl(lock_timeout=0)}, "lock_timeout"),
        ({"ddl": lambda: Ddl(retries=-1)}, "retries"),
        ({"ddl": lambda: Ddl(progress_interval=0)}, "progress_interval"),
        ({"history": lambda: "maybe"}, "history"),
    ):
        with pytest.raises(ConfigurationError, match=name):
            AutoMigrator(ini, url="sqlite://", **{k: make() for k, make in bad.items()})  # type: ignore[arg-type]


def test_the_cli_takes_the_lock_timeout_and_exits_13_on_a_busy_table(
    tmp_path: Path, sqlite_url: URL
) -> None:

    ini = deployed(tmp_path, sqlite_url, broken=ADD_AGE)
    bad = cli(ini, sqlite_url, "upgrade", "--ddl-lock-timeout", "soon")
    with reader_held(sqlite_url):
        busy = cli(
            ini, sqlite_url, "upgrade", "--ddl-lock-timeout", "0.2", "--ddl-lock-retries", "0"
        )

    assert bad.returncode == 2
    assert "--ddl-lock-timeout: 'soon' is not seconds" in bad.stderr
    assert busy.returncode == 13, busy.stderr
    assert "Revision r3 met a busy table" in busy.stderr
    assert revisions(sqlite_url) == {"r2"}


def test_restore_backup_puts_nothing_back_for_a_busy_table(
    tmp_path: Path, sqlite_url: URL, caplog: pytest.LogCaptureFixture
) -> None:
    ini = deployed(tmp_path, sqlite_url, broken=ADD_AGE)
    migrator = AutoMigrator(
        ini, url=sqlite_url, ddl=Ddl(lock_timeout=0.2, retries=0), on_failure=RestoreBackup()
    )
    with reader_held(sqlite_url), pytest.raises(ContentionError):
        anyio.run(migrator.run)

    assert migrator.status.error_kind == "contention"
    assert not any("put back" in r.getMessage() for r in caplog.records)
    assert revisions(sqlite_url) == {"r2"}
    assert user_rows(sqlite_url) == OLD_ROWS


CONCURRENT_INDEX = Rev(
    "r3",
    "r2",
    "index the emails concurrently",
    """
    with op.get_context().autocommit_block():
        op.create_index("ix_users_email", "users", ["email"], postgresql_concurrently=True)
    """,
)


def test_a_concurrent_index_that_timed_out_leaves_no_invalid_index_and_purges_nothing(
    tmp_path: Path, pg_url: URL
) -> None:
    # The database's own lock_timeout ends the build while an old reader's
    # transaction is open: PostgreSQL leaves an INVALID index behind, which
    # the next try met as "already exists" (a 'migration' failure: purged).
    ini = deployed(tmp_path, pg_url, broken=CONCURRENT_INDEX)
    with connect(pg_url) as conn:
        conn.execute(sa.text(f"ALTER DATABASE {pg_url.database} SET lock_timeout = '300ms'"))
        conn.commit()
    # A report's transaction: it keeps its snapshot, which the build waits out.
    reader = connect(pg_url).execution_options(isolation_level="REPEATABLE READ")
    reader.execute(sa.text("SELECT count(*) FROM users")).scalar()
    migrator = AutoMigrator(
        ini, url=pg_url, on_failure=PurgeAndRetry(), ddl=Ddl(lock_timeout=0.3, retries=1, budget=2)
    )
    try:
        with pytest.raises(ContentionError):
            anyio.run(migrator.run)
    finally:
        reader.rollback()
        reader.close()

    assert migrator.status.ddl_retries == 1
    assert backups(pg_url) == []  # a busy table, never purged for
    assert user_rows(pg_url) == OLD_ROWS
    # With the reader gone, the next start drops what is left and builds it.
    assert anyio.run(AutoMigrator(ini, url=pg_url).run).state is MigrationState.READY
    invalid = "SELECT count(*) FROM pg_index WHERE NOT indisvalid"
    assert rows(pg_url, invalid) == [(0,)]
