"""Waiting, for ``AutoMigrator``: for the database to accept connections, and for the lock.

Both waits are bounded (``connect_timeout``, ``lock_timeout``), say what they
wait for in the status and in a log line every few seconds, and stop at once
on SIGTERM/SIGINT (``_shutdown.py``) or on cancellation: a replica must
never sit out a rolling update's stop signal.
"""

from __future__ import annotations

import logging
import signal
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Literal, TypeVar

import anyio
import anyio.lowlevel
import anyio.to_thread
from sqlalchemy.engine import URL, Engine
from sqlalchemy.exc import DBAPIError

from ._database import VersionTable, translate_error
from ._shutdown import cancelled_by_shutdown
from ._state import MigrationState, MigrationStatus
from .errors import DatabaseUnavailableError, LockTimeoutError, ShutdownRequestedError
from .locking import MigrationLock, lock_for

if TYPE_CHECKING:
    from alembic.script import ScriptDirectory

logger = logging.getLogger("automigrator")

T = TypeVar("T")
LockOption = MigrationLock | Literal["auto"] | None

# How long one blocking lock attempt may keep a worker thread; between slices
# we log, check the deadline and notice cancellation (shutdown).
_LOCK_SLICE = 1.0
LOG_EVERY = 5.0
# Waiting for the database: 0.25 s, 0.5 s, 1 s, 2 s, then every 4 s. The cap
# keeps a database that comes up late from waiting long for our next try.
_CONNECT_FIRST_DELAY = 0.25
_CONNECT_DELAY_CAP = 4.0


class Waits:
    """The waits of a run, mixed into :class:`~automigrator.AutoMigrator` (its settings)."""

    url: URL
    lock_option: LockOption
    lock_timeout: float
    connect_timeout: float
    version_table: VersionTable
    _engine: Engine
    _status: MigrationStatus

    def _set(self, **changes: Any) -> None:
        raise NotImplementedError

    def _graph_(self) -> ScriptDirectory:
        raise NotImplementedError

    def _make_lock(self) -> MigrationLock | None:
        if self.lock_option is None:
            return None
        if self.lock_option == "auto":
            return lock_for(self._engine, self.version_table)
        return self.lock_option

    async def _acquire(self, lock: MigrationLock) -> bool:
        """Take the lock; True when another process held it and we waited."""
        # First a try that does not block: most runs never wait.
        if await self._try_acquire(lock, 0.0):
            self._set(state=MigrationState.MIGRATING)
            return False
        started = time.monotonic()
        with anyio.CancelScope() as scope, cancelled_by_shutdown(scope) as signals:
            try:
                failed: Exception | None = None
                async with anyio.create_task_group() as tg:
                    tg.start_soon(self._prepare_while_waiting)
                    try:
                        await self._wait_for_lock(lock, started)
                    except Exception as exc:  # kept out of an ExceptionGroup
                        failed = exc
                        tg.cancel_scope.cancel()
                if failed is not None:
                    raise failed
                waited = time.monotonic() - started
                logger.info("The migration lock was freed after %.1f s", waited)
                self._set(state=MigrationState.PENDING, waiting_for=None)
                return True
            finally:
                if self._status.waiting_for == "lock":
                    self._set(waiting_for=None)
        raise self._shutdown_error(signals, "the migration lock", started)

    async def _prepare_while_waiting(self) -> None:
        # After the wait we check the schema against the scripts' graph:
        # read it now, while another process migrates, not after.
        try:
            await anyio.to_thread.run_sync(self._graph_)
        except Exception:
            logger.debug("Reading the scripts while waiting failed", exc_info=True)

    async def _wait_for_lock(self, lock: MigrationLock, started: float) -> None:
        deadline = started + self.lock_timeout
        next_log = started
        while True:
            now = time.monotonic()
            if now >= deadline:
                raise LockTimeoutError(
                    f"Gave up waiting for the migration lock after {self.lock_timeout:g} s "
                    f"({lock!r}). Another process is migrating, or one hung holding it: check "
                    "it, or raise lock_timeout for long migrations.",
                    timeout=self.lock_timeout,
                )
            if now >= next_log:
                self._set(state=MigrationState.WAITING, waiting_for="lock")
                holder = await anyio.to_thread.run_sync(lock.holder)
                logger.info(
                    "Waiting for the migration lock (%r)%s; %.0f s left before lock_timeout",
                    lock,
                    f", held by {holder}" if holder else ", held by another process",
                    deadline - now,
                )
                next_log = now + LOG_EVERY
            if await self._try_acquire(lock, min(_LOCK_SLICE, deadline - now)):
                return

    async def _try_acquire(self, lock: MigrationLock, wait: float) -> bool:
        try:
            # Shielded: a lock won just as we are cancelled must still be released.
            with anyio.CancelScope(shield=True):
                got = await anyio.to_thread.run_sync(lock.acquire, wait)
        except DBAPIError as exc:
            raise translate_error(exc, self.url, doing="taking the migration lock") from exc
        # A cancel that arrived during the shielded slice lands here, at once.
        try:
            await anyio.lowlevel.checkpoint()
        except BaseException:
            if got:
                with anyio.CancelScope(shield=True):
                    await anyio.to_thread.run_sync(lock.release)
            raise
        return got

    async def _reachable(self, work: Callable[[], T]) -> T:
        """Run ``work`` (which connects) in a thread; wait while the database is down."""
        # Abandoned on cancel: a connect to a silent host must not hold up a shutdown.
        try:
            return await anyio.to_thread.run_sync(work, abandon_on_cancel=True)
        except DatabaseUnavailableError as exc:
            if self.connect_timeout <= 0:
                raise
            error = exc
        started = time.monotonic()
        deadline = started + self.connect_timeout
        delay = _CONNECT_FIRST_DELAY
        attempt = 1
        state = self._status.state
        self._set(state=MigrationState.WAITING, waiting_for="database")
        try:
            with anyio.CancelScope() as scope, cancelled_by_shutdown(scope) as signals:
                while (left := deadline - time.monotonic()) > 0:
                    pause = min(delay, left)
                    logger.warning(
                        "Database not reachable (attempt %d): %s Retrying in %.2g s; %.0f s "
                        "left before connect_timeout",
                        attempt,
                        error.message,
                        pause,
                        left,
                    )
                    await anyio.sleep(pause)
                    delay = min(delay * 2, _CONNECT_DELAY_CAP)
                    attempt += 1
                    # A connect that hangs is bounded by the deadline too.
                    with anyio.move_on_after(max(deadline - time.monotonic(), 0.0)):
                        try:
                            result = await anyio.to_thread.run_sync(work, abandon_on_cancel=True)
                        except DatabaseUnavailableError as exc:
                            error = exc
                            continue
                        logger.info(
                            "The database accepted connections after %.1f s (attempt %d)",
                            time.monotonic() - started,
                            attempt,
                        )
                        return result
            if signals:
                raise self._shutdown_error(signals, "the database", started)
        finally:
            if self._status.waiting_for == "database":
                self._set(state=state, waiting_for=None)
        raise DatabaseUnavailableError(
            f"{error.message} Gave up after {attempt} attempts in "
            f"{time.monotonic() - started:.1f} s (connect_timeout={self.connect_timeout:g}): "
            "start the database first, check the host and port in the URL, or raise "
            "connect_timeout."
        ) from error

    def _shutdown_error(
        self, signals: list[int], waited_for: str, started: float
    ) -> ShutdownRequestedError:
        # Only our signal handler cancels a wait's scope, so a signal is recorded.
        number = signals[0]
        return ShutdownRequestedError(
            f"The server is shutting down ({signal.Signals(number).name}) while automigrator "
            f"waited {time.monotonic() - started:.1f} s for {waited_for}: stopped waiting. "
            "Nothing was changed.",
            signal=number,
        )
