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

import datetime
import logging
import math
import random
from collections.abc import Callable
from functools import partial

import anyio
import anyio.to_thread
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.exc import DBAPIError

from .._plan import Plan
from .._settings import Ddl, MigratorSettings
from .._status import Blocker, RunningRevision
from ..database._connections import VersionTable
from ..database._contention import StatementLog, UpgradeTry, blockers
from ..database._ledger import Ledger
from ..errors import ContentionError, MigrationError, ShutdownRequestedError, first_line
from ..locking import MigrationLock
from ..process._signals import abandonable
from ..scripts._hooks import RunHooks
from ..scripts._scripts import Scripts
from ._reporting import Reporter
from ._waits import poll

logger = logging.getLogger("automigrator")

# The watcher looks this often, and asks for blockers once a revision has run
# this long; both shorter with a short lock timeout, so a wait is seen before it ends.
_TICK = 1.0
_BLOCKERS_AFTER = 1.0
# A blocker lookup that has not answered by then is given up (it only informs).
_LOOKUP_LIMIT = 2.0


# The timeout grows by a quarter of the first one per try, up to twice it:
# a table kept busy by a stream of short transactions gets a longer window,
# and the stall a try can cause stays bounded.
_GROWTH_STEPS = 4
# Pauses between tries: the timeout, doubled each time, up to this, with jitter.
_MAX_PAUSE = 20.0


def try_timeout(ddl: Ddl, tried: int) -> float | None:
    """The DDL lock timeout of the try after ``tried`` failed ones."""
    if ddl.lock_timeout is None:
        return None
    return ddl.lock_timeout * (1 + min(tried, _GROWTH_STEPS) / _GROWTH_STEPS)


def retry_pause(ddl: Ddl, tried: int) -> float:
    """Seconds to wait before the try after ``tried`` (>= 1) failed ones, with jitter."""
    base = min((ddl.lock_timeout or 1.0) * 2 ** (tried - 1), _MAX_PAUSE)
    return float(base * random.uniform(0.5, 1.5))


class Upgrader:
    """Runs ``Scripts.upgrade`` with the DDL lock timeout, its retries and the watcher."""

    def __init__(
        self,
        scripts: Scripts,
        reporter: Reporter,
        engine: Engine,
        settings: MigratorSettings,
        ledger: Ledger | None,
    ) -> None:
        self.scripts = scripts
        self.reporter = reporter
        self.engine = engine
        self.ddl = settings.ddl  # the migrator's own: never copied
        self.ledger = ledger
        self.rerun_failed_after = settings.history.rerun_failed_after
        self.baseline = settings.baseline

    async def run(
        self, plan: Plan, *, target: str, version_table: VersionTable, hooks: RunHooks
    ) -> None:
        """Upgrade ``plan`` to ``target``; a revision that met a busy table is tried again.

        A revision remembered as partly applied is refused before anything
        runs; one that stops half way now is remembered.
        """
        if self.ledger is not None:
            dirty = await anyio.to_thread.run_sync(self.ledger.dirty, plan.pending)
            # A revision left running is refused under the fence, by env.py's
            # connection: its row may be a live migrator's that lost its lock.
            if dirty is not None and dirty.outcome == "partial":
                raise dirty.refusal()
            await self._refuse_a_repeat(plan.pending)
        # A revision that stops half way now is recorded partial by the run itself.
        await self._tries(target, version_table=version_table, hooks=hooks)

    async def _refuse_a_repeat(self, pending: tuple[str, ...]) -> None:
        """A pending revision that failed moments ago, from the same file, fails
        again at once, nothing run: a server that restarts a worker whose start-up
        failed would otherwise run it (and roll it back) every second or two."""
        assert self.ledger is not None
        lately = partial(self.ledger.failed_lately, pending, self.rerun_failed_after)
        for entry in await anyio.to_thread.run_sync(lately):
            if not (entry.error or "").startswith(f"{MigrationError.__name__}:"):
                continue  # not the revision's own fault (a busy table, a lost connection)
            found = self.scripts.fingerprints().get(entry.revision)
            if found is None or entry.checksum is None or found.checksum() != entry.checksum:
                continue  # the file was changed since: a fix, run it
            ago = (datetime.datetime.now(datetime.timezone.utc) - entry.ended()).total_seconds()
            where = f" on {entry.host} (pid {entry.pid})" if entry.host else ""
            raise MigrationError(
                f"Revision {entry.revision} failed {max(ago, 0.0):.0f} s ago{where}, and its "
                f"file has not changed since: not run again before {self.rerun_failed_after:g} "
                "s have passed (History(rerun_failed_after=)), so that restarts do not run it "
                f"in a loop. That failure: {first_line(entry.error or 'not recorded')}. Fix the "
                "revision (a changed file runs at once), or start again later. Nothing was run.",
                revision=entry.revision,
            )

    def stamps_first(self, plan: Plan) -> bool:
        """Whether ``plan`` starts with the baseline: a database with tables and
        no version table, or an empty one where the baseline makes the tables."""
        creates = self.baseline is not None and self.baseline.create is not None
        return plan.kind == "unversioned" or (plan.kind == "empty" and creates)

    async def stamp_baseline(
        self, plan: Plan, version_table: VersionTable, lock: MigrationLock | None
    ) -> None:
        """Under ``lock``: the baseline's tables made (``Baseline.create``), then the
        version table stamped at its revision; no revision runs, fenced all the same."""
        baseline = self.baseline
        assert baseline is not None  # an unversioned database is refused without one
        if plan.kind == "empty":
            logger.info("The database is empty: making the baseline's tables (%s)", baseline)
        else:
            logger.warning(
                "The database has tables but no version table: stamping it at baseline %s",
                baseline.revision,
            )
        create = baseline.create_tables if baseline.create is not None else None
        await self.stamp(baseline.revision, version_table, lock, prepare=create)

    async def stamp(
        self,
        revision: str,
        version_table: VersionTable,
        lock: MigrationLock | None,
        *,
        prepare: Callable[[Connection], None] | None = None,
    ) -> None:
        """Stamp the version table at ``revision`` (under ``lock``): no revision runs,
        fenced all the same (``prepare`` first, on the same connection)."""
        hooks = RunHooks.lock_only(lock, prepare=prepare)
        stamp = partial(self.scripts.stamp, revision, version_table=version_table, hooks=hooks)
        await anyio.to_thread.run_sync(stamp)

    async def _tries(self, target: str, *, version_table: VersionTable, hooks: RunHooks) -> None:
        tried = 0
        while True:
            ours = StatementLog(self.ledger.name if self.ledger is not None else None)
            live = UpgradeTry(timeout=try_timeout(self.ddl, tried), log=ours)
            work = partial(
                self.scripts.upgrade, target, version_table=version_table, hooks=hooks, live=live
            )
            failed: Exception | None = None
            try:
                # The upgrade in a worker thread; the watcher beside it, on the loop.
                async with anyio.create_task_group() as tg:
                    tg.start_soon(self._watch, live)
                    try:
                        await anyio.to_thread.run_sync(work)
                    except Exception as exc:  # kept out of an ExceptionGroup
                        failed = exc
                    tg.cancel_scope.cancel()
                if failed is None:
                    return
                raise failed
            except ContentionError as exc:
                tried += 1
                if tried > self.ddl.retries:
                    raise self._exhausted(exc, tried) from exc
                await self._pause(exc, tried)
            finally:
                self.reporter.try_ended()

    async def _watch(self, live: UpgradeTry) -> None:
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
            due = int(elapsed // self.ddl.progress_interval)
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
        self.reporter.blocked(found)
        if found:
            table = next((b.table for b in found if b.table), None)
            logger.warning(
                "Revision %s waits for a lock%s held by %s: the lock timeout (%s) ends the "
                "wait, and the revision is tried again later",
                running.revision,
                f" on {table}" if table else "",
                "; ".join(str(b) for b in found),
                _seconds(self.ddl.lock_timeout),
            )

    async def _pause(self, error: ContentionError, tried: int) -> None:
        pause = retry_pause(self.ddl, tried)
        blocked = self.reporter.status.blocked_by
        self.reporter.ddl_retried()
        logger.warning(
            "%s%s; trying again in %.1f s (%d of %d), with a lock timeout of %s",
            error.message.split(". ")[0],
            f" (held by {'; '.join(str(b) for b in blocked)})" if blocked else "",
            pause,
            tried,
            self.ddl.retries,
            _seconds(try_timeout(self.ddl, tried)),
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
            "migrate at a quieter time; raise Ddl(lock_timeout=, retries=) to wait "
            "longer (every query on the table waits as long).",
            revision=error.revision,
        )


def _stopped(error: ShutdownRequestedError, message: str) -> ShutdownRequestedError:
    # The same shutdown, said for where it stopped us.
    return ShutdownRequestedError(message, signal=error.signal)


def _seconds(value: float | None) -> str:
    return "none" if value is None else f"{value:g} s"
