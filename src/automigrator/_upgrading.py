"""One upgrade under the lock: tried again on a busy table, and watched while it runs.

The upgrade runs in a worker thread (``Scripts.upgrade``). Beside it, on the
event loop, a watcher logs a heartbeat for a long revision and asks the
server, while a revision has been running a second or more, who keeps it
waiting for a table lock; both reach the status. A revision that gave up on
a table lock (``ContentionError``: lock timeout, deadlock, serialization
failure, with nothing of it kept) is tried again after a pause with jitter,
with a slightly longer lock timeout, still under the migration lock.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable

import anyio
import anyio.to_thread
from sqlalchemy.engine import Engine
from sqlalchemy.exc import DBAPIError

from ._contention import DdlTimeouts, LiveRun, blockers
from ._database import VersionTable
from ._reporting import Reporter
from ._scripts import Scripts
from ._status import AppliedRevision, Blocker, RunningRevision
from ._threads import abandonable
from ._waits import poll
from .errors import ContentionError, ShutdownRequestedError
from .events import Event

logger = logging.getLogger("automigrator")

# The watcher looks this often, and asks for blockers once a revision has run
# this long; both shorter with a short lock timeout, so a wait is seen before it ends.
_TICK = 1.0
_BLOCKERS_AFTER = 1.0
# A blocker lookup that has not answered by then is given up (it only informs).
_LOOKUP_LIMIT = 2.0


class Upgrader:
    """Runs ``Scripts.upgrade`` with the DDL lock timeout, its retries and the watcher."""

    def __init__(
        self,
        scripts: Scripts,
        reporter: Reporter,
        engine: Engine,
        *,
        timeouts: DdlTimeouts,
        progress_interval: float,
    ) -> None:
        self.scripts = scripts
        self.reporter = reporter
        self.engine = engine
        self.timeouts = timeouts
        self.progress_interval = progress_interval

    async def run(
        self,
        target: str,
        *,
        version_table: VersionTable,
        on_applied: Callable[[AppliedRevision], None],
        should_stop: Callable[[], bool],
        lock: object,
    ) -> None:
        """Upgrade to ``target``; a revision that met a busy table is tried again."""
        tried = 0
        while True:
            live = LiveRun(timeout=self.timeouts.for_try(tried))

            def work(live: LiveRun = live) -> None:
                self.scripts.upgrade(
                    target,
                    version_table=version_table,
                    on_applied=on_applied,
                    should_stop=should_stop,
                    lock=lock,
                    live=live,
                    on_step=self._started,
                )

            try:
                await self._watched(live, work)
                return
            except ContentionError as exc:
                tried += 1
                if tried > self.timeouts.retries:
                    raise self._exhausted(exc, tried) from exc
                await self._pause(exc, tried)
            finally:
                self.reporter.set(running=None, blocked_by=())

    async def _watched(self, live: LiveRun, work: Callable[[], None]) -> None:
        failed: Exception | None = None
        async with anyio.create_task_group() as tg:
            tg.start_soon(self._watch, live)
            try:
                await anyio.to_thread.run_sync(work)
            except Exception as exc:  # kept out of an ExceptionGroup
                failed = exc
            tg.cancel_scope.cancel()
        if failed is not None:
            raise failed

    def _started(self, revision: str, message: str) -> None:
        # Called from the worker thread as each revision begins.
        running = RunningRevision(revision=revision, message=message, started=time.time())
        self.reporter.set(running=running, blocked_by=())

    async def _watch(self, live: LiveRun) -> None:
        beats: tuple[str, int] = ("", 0)
        timeout = live.timeout or 4 * _TICK
        tick, after = min(_TICK, timeout / 4), min(_BLOCKERS_AFTER, timeout / 2)
        while True:
            await anyio.sleep(tick)
            running = self.reporter.status.running
            if running is None:
                continue
            elapsed = running.elapsed
            if live.session is not None and elapsed >= after:
                await self._look_for_blockers(running, live.session)
            due = int(elapsed // self.progress_interval)
            if beats[0] != running.revision:
                beats = (running.revision, 0)
            if due > beats[1]:
                beats = (running.revision, due)
                logger.info(
                    "Still applying %s %s: %.0f s", running.revision, running.message, elapsed
                )

    async def _look_for_blockers(self, running: RunningRevision, session: int) -> None:
        found: tuple[Blocker, ...] | None = None
        with anyio.move_on_after(_LOOKUP_LIMIT):
            try:
                found = await abandonable(lambda: blockers(self.engine, session))
            except DBAPIError as exc:  # it only informs: the migration goes on
                logger.debug("Could not ask who blocks the migration: %s", exc)
        if found is None or found == self.reporter.status.blocked_by:
            return
        if self.reporter.status.running != running:
            return  # the revision finished meanwhile
        self.reporter.set(blocked_by=found)
        self.reporter.emit(Event("blocked", self.reporter.status))
        if found:
            table = next((b.table for b in found if b.table), None)
            logger.warning(
                "Revision %s waits for a lock%s held by %s: the lock timeout (%s) ends the "
                "wait, and the revision is tried again later",
                running.revision,
                f" on {table}" if table else "",
                "; ".join(str(b) for b in found),
                _seconds(self.timeouts.timeout),
            )

    async def _pause(self, error: ContentionError, tried: int) -> None:
        pause = self.timeouts.pause(tried)
        blocked = self.reporter.status.blocked_by
        self.reporter.set(ddl_retries=self.reporter.status.ddl_retries + 1)
        self.reporter.emit(Event("ddl_retry", self.reporter.status))
        logger.warning(
            "%s%s; trying again in %.1f s (%d of %d), with a lock timeout of %s",
            error.message.split(". ")[0],
            f" (held by {'; '.join(str(b) for b in blocked)})" if blocked else "",
            pause,
            tried,
            self.timeouts.retries,
            _seconds(self.timeouts.for_try(tried)),
        )

        async def nothing(left: float) -> None:
            return None

        try:
            await poll(nothing, limit=pause, waiting_for="a busy table", pause=lambda _: math.inf)
        except ShutdownRequestedError as exc:
            applied = len(self.reporter.status.applied)
            raise _stopped(
                exc,
                f"The server is shutting down: stopped before trying revision "
                f"{error.revision} again ({applied} revision(s) were applied before it). "
                "The next start continues from there.",
            ) from exc

    def _exhausted(self, error: ContentionError, tried: int) -> ContentionError:
        blocked = self.reporter.status.blocked_by
        who = f" Last seen holding it: {'; '.join(str(b) for b in blocked)}." if blocked else ""
        return ContentionError(
            f"{error.message.split('. ')[0]}, {tried} time(s) in a row: the table stayed "
            f"busy.{who} Nothing of the revision stayed. End the blocking transaction or "
            "migrate at a quieter time; raise ddl_lock_timeout / ddl_lock_retries to wait "
            "longer (every query on the table waits as long).",
            revision=error.revision,
        )


def _stopped(error: ShutdownRequestedError, message: str) -> ShutdownRequestedError:
    # The same shutdown, said for where it stopped us.
    return ShutdownRequestedError(message, signal=error.signal)


def _seconds(value: float | None) -> str:
    return "none" if value is None else f"{value:g} s"
