"""Bounded waits: one loop with a deadline, a log line every so often, and a stop on SIGTERM.

Every wait of a run (for the database to accept connections, for the
migration lock, and in check mode for another process's migration) goes
through :func:`poll`: it says what it waits for in the status, logs while it
waits, gives up at its deadline, and stops at once on SIGTERM/SIGINT
(``_signals.py``) or on cancellation: a replica must never sit out a rolling
update's stop signal. A lock try whose connection froze is cut by a watchdog,
so even a shielded try keeps its deadline.
"""

from __future__ import annotations

import contextlib
import logging
import signal
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Literal, TypeVar

import anyio
import anyio.lowlevel
import anyio.to_thread
from sqlalchemy.engine import URL, Connection
from sqlalchemy.exc import DBAPIError

from .._plan import Plan
from .._settings import Timeouts
from .._status import MigrationState
from ..database._connections import display, translate_error
from ..database._redaction import redact
from ..errors import (
    AutomigratorError,
    ConfigurationError,
    DatabaseUnavailableError,
    LockLostError,
    LockTimeoutError,
    SchemaBehindError,
    ShutdownRequestedError,
    first_line,
)
from ..locking import HeldLock, MigrationLock
from ..process._signals import abandonable, cancelled_by_shutdown
from ._reporting import Reporter

logger = logging.getLogger("automigrator")

T = TypeVar("T")

LOG_EVERY = 5.0
# A lock try that has not answered this long after its own wait is cut.
_TRY_GRACE = 5.0
# The holder's name is given up on after this long (it only feeds a log line).
_HOLDER_LIMIT = 2.0
# Check mode polls the version table this often.
_CHECK_EVERY = 0.5
# How long one blocking lock attempt may keep a worker thread; between slices
# we log, check the deadline and notice cancellation (shutdown).
_LOCK_SLICE = 1.0
# Waiting for the database: 0.25 s, 0.5 s, 1 s, 2 s, then every 4 s. The cap
# keeps a database that comes up late from waiting long for our next try.
_CONNECT_FIRST_DELAY = 0.25
_CAP = 4.0
# With Timeouts(connect=0) (no retry) the one try still has a bound.
_ONE_TRY = 10.0


async def poll(
    attempt: Callable[[float], Awaitable[T | None]],
    *,
    limit: float,
    waiting_for: str,
    pause: Callable[[int], float] = lambda tries: 0.0,
    log: Callable[[int, float], Awaitable[None] | None] | None = None,
    log_every: float = LOG_EVERY,
    log_at_once: bool = True,
) -> T | None:
    """Call ``attempt(seconds_left)`` until it returns a result; None after ``limit`` seconds.

    Each round: ``log(tries, seconds_left)`` if ``log_every`` seconds have
    passed since the last (at once if ``log_at_once``; every round if 0),
    then a sleep of ``pause(tries)``, then the attempt. ``tries`` counts the
    attempts made so far. SIGTERM or SIGINT raises
    :class:`ShutdownRequestedError` naming ``waiting_for``.
    """
    started = time.monotonic()
    deadline = started + limit
    next_log = started if log_at_once else started + log_every
    tries = 0
    with anyio.CancelScope() as scope, cancelled_by_shutdown(scope) as signals:
        while (left := deadline - time.monotonic()) > 0:
            if log is not None and time.monotonic() >= next_log:
                said = log(tries, left)
                if said is not None:
                    await said
                next_log = time.monotonic() + log_every
            wait = min(pause(tries), left)
            if wait > 0:
                await anyio.sleep(wait)
            tries += 1
            result = await attempt(max(deadline - time.monotonic(), 0.0))
            if result is not None:
                return result
    if signals:
        # Only our signal handler cancels the scope, so a signal is recorded.
        number = signals[0]
        raise ShutdownRequestedError(
            f"The server is shutting down ({signal.Signals(number).name}) while automigrator "
            f"waited {time.monotonic() - started:.1f} s for {waiting_for}: stopped waiting. "
            "Nothing was changed.",
            signal=number,
        )
    return None


class Waiter:
    """The waits of a migrator: for the database, for the migration lock, and (check
    mode) for another process's migration."""

    def __init__(self, reporter: Reporter, url: URL, timeouts: Timeouts) -> None:
        self.reporter = reporter
        self.url = url
        self.timeouts = timeouts  # the migrator's own: never copied
        self.held: MigrationLock | None = None  # the lock held now, if any
        self.waited_for = 0.0  # seconds the last taking of the lock took (the ledger's)

    async def once_reachable(self, work: Callable[[], T]) -> T:
        """Run ``work`` (which connects) in a thread; wait while the database is down.

        Every try, the first included, is bounded by the deadline
        (``Timeouts.connect``; one try of at most 10 s when it is 0) and stops
        on SIGTERM: a server that accepts connections and never answers
        cannot hold a start-up. Retries back off (``_CONNECT_FIRST_DELAY`` doubling
        up to ``_CAP``).
        """
        started = time.monotonic()
        connect = self.timeouts.connect
        limit = connect if connect > 0 else _ONE_TRY
        tried = 0
        error: DatabaseUnavailableError | None = None
        state = self.reporter.status.state

        def pause(tries: int) -> float:
            return 0.0 if tries == 0 else min(_CONNECT_FIRST_DELAY * 2.0 ** (tries - 1), _CAP)

        said: list[str] = []  # the error last logged whole

        def log(tries: int, left: float) -> None:
            if error is None:  # nothing to say before the first failure
                return
            # A database down for a minute fails the same way twenty times:
            # the message once, then one short line per try.
            same = said[-1:] == [error.message]
            said[:] = [error.message]
            logger.warning(
                "Database not reachable (attempt %d): %s Retrying in %.2g s; %.0f s left "
                "before the connect timeout",
                tries,
                "the same error." if same else error.message,
                min(pause(tries), left),
                left,
            )

        async def attempt(left: float) -> tuple[T] | None:
            nonlocal error, tried
            tried += 1
            # Abandoned when the deadline or a shutdown comes: a connect to a
            # silent host must hold up neither (the driver's own connect
            # timeout ends the thread later).
            with anyio.move_on_after(left):
                try:
                    return (await abandonable(work),)
                except DatabaseUnavailableError as exc:
                    if connect <= 0:
                        raise
                    error = exc
                    if self.reporter.status.waiting_for != "database":
                        self.reporter.waiting("database")
            return None

        try:
            result = await poll(
                attempt,
                limit=limit,
                waiting_for="the database",
                pause=pause,
                log=log,
                log_every=0.0,
            )
        finally:
            if self.reporter.status.waiting_for == "database":
                self.reporter.done_waiting(state)
        if result is None and error is None:
            raise DatabaseUnavailableError(
                f"The database at {display(self.url)} did not answer within {limit:g} s: it "
                "accepts connections but never replies, or the network drops its answers. "
                "Check the host and port in the URL, or raise Timeouts(connect=)."
            )
        if result is None:
            assert error is not None
            raise DatabaseUnavailableError(
                f"{error.message} Gave up after {tried} attempts in "
                f"{time.monotonic() - started:.1f} s (Timeouts(connect={connect:g})): "
                "start the database first, check the host and port in the URL, or raise "
                "Timeouts(connect=)."
            ) from error
        if tried > 1:
            logger.info(
                "The database accepted connections after %.1f s (attempt %d)",
                time.monotonic() - started,
                tried,
            )
        return result[0]

    @asynccontextmanager
    async def holding(
        self,
        lock: MigrationLock | None,
        *,
        read_ahead: Callable[[], object],
        report: bool = True,
    ) -> AsyncIterator[bool]:
        """Hold ``lock`` (None: no lock) for the block; yields whether we waited for it.

        The release is shielded: it happens whatever ends the block.
        ``report=False`` leaves the status alone (work after the run).
        """
        if lock is None:
            yield False
            return
        started = time.monotonic()
        waited = await self.acquire(lock, read_ahead=read_ahead, report=report)
        self.waited_for = time.monotonic() - started
        self.held = lock
        try:
            yield waited
        finally:
            self.held = None
            with anyio.CancelScope(shield=True):
                await _release(lock)

    @asynccontextmanager
    async def exclusively(self, lock: MigrationLock | None) -> AsyncIterator[None]:
        """``AutoMigrator.exclusively()``: hold ``lock`` for a block of start-up work,
        without touching the status; LockLostError on exit if it was lost."""
        async with self.holding(lock, read_ahead=lambda: None, report=False):
            yield
            if isinstance(lock, HeldLock) and not await anyio.to_thread.run_sync(lock.held):
                raise LockLostError(
                    "The migration lock was lost during an exclusively() block (its "
                    "connection was closed: a server timeout, a pooler, the network, or this "
                    "process paused past its reap time): another replica may have run the "
                    "same block meanwhile. A transaction opened around the block rolls back."
                )

    def fence(self, connection: Connection, doing: str = "the purge") -> None:
        """Take the held lock's fence on ``connection`` (ours, for a purge or the
        ledger's adoption), then check the lock is still ours; LockLostError if
        not. A lock lost once never comes back: held now means held since it
        was taken."""
        lock = self.held
        if not isinstance(lock, HeldLock):
            return
        if lock.guard(connection) is False or not lock.held():
            raise LockLostError(
                f"The migration lock was lost before {doing} (its connection was closed: "
                "a server timeout, the network, or this process paused past its reap time): "
                "another process may have migrated since. Nothing was moved; the next start "
                "plans again."
            )

    async def acquire(
        self, lock: MigrationLock, *, read_ahead: Callable[[], object], report: bool = True
    ) -> bool:
        """Take the lock; True when another process held it and we waited.

        A try that does not block first (most runs never wait); then tries of
        at most 1 s each, up to ``Timeouts.lock``, with ``read_ahead()`` run in
        a thread beside the wait (its failure is only logged).
        """
        if await self._try(lock, 0.0):
            if report:
                self.reporter.locked()
            return False
        started = time.monotonic()

        async def log(tries: int, left: float) -> None:
            if report:
                self.reporter.waiting("lock")
            # Who holds it is only for the log line: asked on a connection of
            # its own, it must not stall the wait if that connection freezes.
            holder = None
            with anyio.move_on_after(_HOLDER_LIMIT):
                holder = await abandonable(lock.holder)
            logger.info(
                "Waiting for the migration lock (%r)%s; %.0f s left before the lock timeout",
                lock,
                f", held by {holder}" if holder else ", held by another process",
                left,
            )

        async def attempt(left: float) -> Literal[True] | None:
            return True if await self._try(lock, min(_LOCK_SLICE, left)) else None

        got: bool | None = None
        failed: Exception | None = None
        try:
            async with anyio.create_task_group() as tg:
                tg.start_soon(_quietly, read_ahead)
                try:
                    got = await poll(
                        attempt,
                        limit=self.timeouts.lock,
                        waiting_for="the migration lock",
                        log=log,
                    )
                except Exception as exc:  # kept out of an ExceptionGroup
                    failed = exc
                if got is None:  # no lock: the reading ahead is of no use
                    tg.cancel_scope.cancel()
        finally:
            if self.reporter.status.waiting_for == "lock":
                self.reporter.done_waiting()
        if failed is not None:
            raise failed
        if got is None:
            raise LockTimeoutError(
                f"Gave up waiting for the migration lock after {self.timeouts.lock:g} s "
                f"({lock!r}). Another process is migrating, or one hung holding it: check "
                "it, or raise Timeouts(lock=) for long migrations.",
                timeout=self.timeouts.lock,
            )
        logger.info("The migration lock was freed after %.1f s", time.monotonic() - started)
        if report:
            self.reporter.done_waiting(MigrationState.PENDING)
        return True

    async def _try(self, lock: MigrationLock, wait: float) -> bool:
        failed: Exception | None = None
        got = False
        # Shielded: a lock won just as we are cancelled must still be released.
        # Bounded all the same: a try whose connection froze (no answer, no
        # reset) is cut by the watchdog, so the wait keeps its deadline.
        with anyio.CancelScope(shield=True):
            async with anyio.create_task_group() as tg:
                tg.start_soon(_watchdog, lock, wait + _TRY_GRACE)
                try:
                    got = await anyio.to_thread.run_sync(lock.acquire, wait)
                except Exception as exc:  # kept out of an ExceptionGroup
                    failed = exc
                tg.cancel_scope.cancel()
        # A cancel that arrived during the shielded slice lands here, at once
        # (before the error of a try a shutdown cut short).
        try:
            await anyio.lowlevel.checkpoint()
        except BaseException:
            if got:
                with anyio.CancelScope(shield=True), contextlib.suppress(Exception):
                    await anyio.to_thread.run_sync(lock.release)
            raise
        if failed is not None:
            raise self._lock_error(failed, lock) from failed
        return got

    def _lock_error(self, error: Exception, lock: MigrationLock) -> AutomigratorError:
        # The lock's own failure, by its real cause: never an ExceptionGroup,
        # and never taken for a revision's.
        if isinstance(error, AutomigratorError):
            return error
        if isinstance(error, DBAPIError):
            return translate_error(error, self.url, doing="taking the migration lock")
        where = (
            " (its file, beside the database: is that folder writable?)"
            if isinstance(error, OSError)
            else ""
        )
        return ConfigurationError(
            f"The migration lock {lock!r} could not be taken{where}: "
            f"{redact(f'{type(error).__name__}: {first_line(error)}', self.url)}. "
            "Nothing was changed."
        )

    async def until_target(
        self,
        plan: Plan,
        replan: Callable[[], Awaitable[Plan]],
        refuse: Callable[[Plan], None],
    ) -> None:
        """Check mode: wait until another process brings the database to the target.

        One plan every ``_CHECK_EVERY``; ``refuse(plan)`` raises for a plan that waiting
        cannot fix. After ``Timeouts.check`` seconds, :class:`SchemaBehindError`.
        """
        limit = self.timeouts.check
        logger.info(
            "Check mode: the database is at %s, not at %s; waiting up to %g s for another "
            "process to migrate it",
            ", ".join(plan.db_revisions) or "base",
            ", ".join(plan.heads),
            limit,
        )
        self.reporter.waiting("migration")

        async def at_target(left: float) -> Plan | None:
            nonlocal plan
            plan = await replan()
            refuse(plan)
            return plan if plan.kind == "at_head" else None

        def still_waiting(tries: int, left: float) -> None:
            logger.info(
                "Check mode: still waiting for %s (the database is at %s)",
                ", ".join(plan.heads),
                ", ".join(plan.db_revisions) or "base",
            )

        reached = await poll(
            at_target,
            limit=limit,
            waiting_for="another process's migration",
            pause=lambda tries: _CHECK_EVERY,
            log=still_waiting,
            log_at_once=False,
        )
        if reached is None:
            raise SchemaBehindError(
                f"Check mode: after {limit:g} s the database is still at "
                f"{', '.join(plan.db_revisions) or 'base'}, not at {', '.join(plan.heads)}. "
                "Nothing here migrates it: run the migration Job (or a replica in migrate "
                "mode), or raise Timeouts(check=) (the CLI's wait --timeout)."
            )
        logger.info("Check mode: the database reached %s", ", ".join(reached.heads))
        self.reporter.done_waiting(MigrationState.PENDING)


async def _quietly(work: Callable[[], object]) -> None:
    try:
        await anyio.to_thread.run_sync(work)
    except Exception:
        logger.debug("Reading the scripts while waiting failed", exc_info=True)


async def _release(lock: MigrationLock) -> None:
    # A release that fails (its connection died) must not replace the error
    # that ended the block, nor fail a run that succeeded: a session lock
    # dies with its connection, so nothing is left held.
    try:
        await anyio.to_thread.run_sync(lock.release)
    except Exception as exc:
        logger.warning(
            "Releasing the migration lock %r failed (%s: %s); it went with its connection",
            lock,
            type(exc).__name__,
            first_line(exc),
        )
    else:
        logger.debug("Released the migration lock %r", lock)


async def _watchdog(lock: MigrationLock, seconds: float) -> None:
    # A shutdown cuts the try at once: the shielded try would otherwise keep
    # SIGTERM waiting for a frozen connection until the grace ran out.
    with anyio.CancelScope() as early, cancelled_by_shutdown(early):
        await anyio.sleep(seconds)
    abort = getattr(lock, "abort", None)  # only our server locks can cut their connection
    if abort is None:
        return
    if early.cancel_called:
        logger.warning("Shutting down: cutting the migration lock's connection mid-try")
    else:
        logger.warning(
            "The migration lock's connection did not answer in %.0f s: cutting it", seconds
        )
    await anyio.to_thread.run_sync(abort)
