"""Waiting for the database and for the lock: backoff, give-up, and stopping on shutdown."""

from __future__ import annotations

import logging
import signal
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from types import FrameType

import anyio
import anyio.abc
import pytest
import sqlalchemy as sa
from sqlalchemy.engine import URL

from automigrator import (
    AutoMigrator,
    ConfigurationError,
    DatabaseUnavailableError,
    MigrationState,
    ShutdownRequestedError,
    Timeouts,
)
from automigrator.locking import MigrationLock, lock_for
from tests.conftest import revisions
from tests.e2e.server import free_port
from tests.helpers import HANG_GUARD, held_lock, watching

# The lock_timeout / connect_timeout of waits that only a stop may end: a
# wait that ignored the stop would last 10 minutes, far past HANG_GUARD.
LONG = 600


async def _pipe(source: anyio.abc.ByteStream, sink: anyio.abc.ByteStream) -> None:
    try:
        async for chunk in source:
            await sink.send(chunk)
    except (anyio.BrokenResourceError, anyio.ClosedResourceError):
        pass


@asynccontextmanager
async def tcp_proxy(port: int, target: URL) -> AsyncIterator[None]:
    """The database "comes up" on port: a real TCP forwarder to the real server."""

    async def handle(client: anyio.abc.SocketStream) -> None:
        async with (
            client,
            await anyio.connect_tcp(str(target.host), int(target.port or 5432)) as upstream,
            anyio.create_task_group() as tg,
        ):

            async def one_way(a: anyio.abc.ByteStream, b: anyio.abc.ByteStream) -> None:
                await _pipe(a, b)
                tg.cancel_scope.cancel()  # one side closed: close both

            tg.start_soon(one_way, client, upstream)
            tg.start_soon(one_way, upstream, client)

    listener = await anyio.create_tcp_listener(local_host="127.0.0.1", local_port=port)
    async with listener, anyio.create_task_group() as tg:
        tg.start_soon(listener.serve, handle)
        yield
        tg.cancel_scope.cancel()


def test_database_that_comes_up_late_is_waited_for(ini: Path, pg_url: URL) -> None:
    port = free_port()  # nothing listens here until the proxy starts
    late_url = pg_url.set(host="127.0.0.1", port=port)
    migrator = AutoMigrator(ini, url=late_url, timeouts=Timeouts(connect=LONG))
    seen: list[MigrationState | str | None] = []

    async def run(done: anyio.Event) -> None:
        await migrator.run()
        done.set()

    async def main() -> None:
        done = anyio.Event()  # made in the loop: anyio 3.7 wants one running
        async with (
            watching("Database not reachable (attempt 2)") as log,
            anyio.create_task_group() as tg,
        ):
            tg.start_soon(run, done)
            await log.event.wait()  # refused twice: it is retrying
            seen.extend([migrator.status.state, migrator.status.waiting_for])
            async with tcp_proxy(port, pg_url):
                with anyio.fail_after(HANG_GUARD):
                    await done.wait()
        assert any("accepted connections after" in m for m in log.messages)

    anyio.run(main)

    assert seen == [MigrationState.WAITING, "database"]
    assert migrator.status.state is MigrationState.READY
    assert migrator.status.waiting_for is None
    assert revisions(pg_url) == {"r3"}


def test_database_never_up_fails_at_connect_timeout(
    ini: Path, caplog: pytest.LogCaptureFixture
) -> None:
    url = sa.make_url(f"postgresql+psycopg://postgres:s3cr3t-pw@127.0.0.1:{free_port()}/test")
    migrator = AutoMigrator(ini, url=url, timeouts=Timeouts(connect=1.5))

    with caplog.at_level(logging.INFO), pytest.raises(DatabaseUnavailableError) as caught:
        anyio.run(migrator.run)

    assert "Gave up after" in str(caught.value)
    assert "Timeouts(connect=1.5)" in str(caught.value)
    retries = [r for r in caplog.records if "Database not reachable" in r.getMessage()]
    assert len(retries) >= 2  # backed off and tried again, with a line per attempt
    assert migrator.status.state is MigrationState.FAILED
    assert migrator.status.error_kind == "transient"
    assert "s3cr3t-pw" not in caplog.text


def test_wrong_credentials_are_not_retried(
    ini: Path, pg_url: URL, caplog: pytest.LogCaptureFixture
) -> None:
    # Port and host are fine, the database name is not: retrying cannot help.
    migrator = AutoMigrator(
        ini, url=pg_url.set(database="no_such_db"), timeouts=Timeouts(connect=LONG)
    )

    with caplog.at_level(logging.INFO), pytest.raises(ConfigurationError):
        anyio.run(migrator.run)

    assert "Database not reachable" not in caplog.text


class RecordingLock:
    """The real lock for the database, noting when each attempt to take it began."""

    def __init__(self, url: URL) -> None:
        self.inner = lock_for(url)
        self.attempts: list[float] = []

    def acquire(self, timeout: float) -> bool:
        self.attempts.append(time.monotonic())
        return self.inner.acquire(timeout)

    def release(self) -> None:
        self.inner.release()

    def holder(self) -> str | None:
        return self.inner.holder()


def test_cancelled_while_waiting_for_the_lock_stops_at_once(ini: Path, db_url: URL) -> None:
    lock = RecordingLock(db_url)
    migrator = AutoMigrator(ini, url=db_url, lock=lock, timeouts=Timeouts(lock=LONG))
    holder = held_lock(db_url)
    seen: list[object] = []
    cancelled_at = 0.0

    async def main() -> None:
        nonlocal cancelled_at
        async with watching("Waiting for the migration lock") as log:
            with anyio.fail_after(HANG_GUARD):
                async with anyio.create_task_group() as tg:
                    tg.start_soon(migrator.run)
                    await log.event.wait()
                    seen.extend([migrator.status.state, migrator.status.waiting_for])
                    cancelled_at = time.monotonic()
                    tg.cancel_scope.cancel()  # what a server's shutdown does to its tasks

    try:
        anyio.run(main)
    finally:
        holder.release()

    assert seen == [MigrationState.WAITING, "lock"]
    # The attempt in flight (its thread may start just after the cancel) may
    # finish; no further one starts.
    assert lock.attempts
    assert len([t for t in lock.attempts if t >= cancelled_at]) <= 1
    assert migrator.status.state is MigrationState.FAILED
    assert migrator.status.error_kind == "shutdown"
    assert revisions(db_url) == set()


def server_like_handler(calls: list[int]) -> Callable[[int, FrameType | None], None]:
    # uvicorn's handler only records the signal and sets a flag.
    def handle_exit(signum: int, frame: FrameType | None) -> None:
        calls.append(signum)

    return handle_exit


@pytest.mark.parametrize("waiting_for", ["lock", "database"])
def test_sigterm_while_waiting_stops_waiting_and_reaches_the_servers_handler(
    ini: Path, pg_url: URL, waiting_for: str
) -> None:
    if waiting_for == "lock":
        url, text = pg_url, "Waiting for the migration lock"
        holder: MigrationLock | None = held_lock(pg_url)
    else:
        url, text = pg_url.set(port=free_port()), "Database not reachable"
        holder = None
    migrator = AutoMigrator(ini, url=url, timeouts=Timeouts(lock=LONG, connect=LONG))
    calls: list[int] = []
    handler = server_like_handler(calls)
    previous = signal.signal(signal.SIGTERM, handler)

    errors: list[ShutdownRequestedError] = []

    async def run() -> None:
        try:
            await migrator.run()
        except ShutdownRequestedError as exc:
            errors.append(exc)

    async def main() -> None:
        async with watching(text) as log:
            with anyio.fail_after(HANG_GUARD):
                async with anyio.create_task_group() as tg:
                    tg.start_soon(run)
                    await log.event.wait()
                    signal.raise_signal(signal.SIGTERM)

    try:
        anyio.run(main)
        restored = signal.getsignal(signal.SIGTERM)
    finally:
        signal.signal(signal.SIGTERM, previous)
        if holder is not None:
            holder.release()

    [error] = errors
    assert error.signal == signal.SIGTERM
    assert "SIGTERM" in str(error)
    assert "stopped waiting" in str(error)
    assert calls == [signal.SIGTERM]  # the server still heard it
    assert restored is handler  # and its handler is back in place
    assert migrator.status.state is MigrationState.FAILED
    assert migrator.status.error_kind == "shutdown"


def test_waiter_migrates_itself_when_the_holder_let_go_without_migrating(
    ini: Path, db_url: URL
) -> None:
    # The holder "failed": it releases the lock with the schema still empty.
    migrator = AutoMigrator(ini, url=db_url, timeouts=Timeouts(lock=LONG))
    holder = held_lock(db_url)

    async def main() -> None:
        async with watching("Waiting for the migration lock") as log:
            with anyio.fail_after(HANG_GUARD):
                async with anyio.create_task_group() as tg:
                    tg.start_soon(migrator.run)
                    await log.event.wait()
                    holder.release()
        assert any("The migration lock was freed" in m for m in log.messages)

    anyio.run(main)

    assert migrator.status.state is MigrationState.READY
    assert [a.revision for a in migrator.status.applied] == ["r1", "r2", "r3"]
    assert revisions(db_url) == {"r3"}
