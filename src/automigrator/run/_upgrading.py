"""One upgrade under the lock: tried again on a busy table, and watched while it runs.

The upgrade runs in a worker thread (``Scripts.upgrade``). Beside it, on the
event loop, a watcher logs a heartbeat for a long revision and asks the
server, once a statement has waited half the try's lock timeout, who keeps it
waiting for a table lock; both reach the status. A revision that gave up on
a table lock (``ContentionError``: lock timeout, deadlock, serialization
failure, with nothing of it kept) is tried again, still under the migration
lock: at once when the blockers seen have ended (watched from the server's
activity tables, which queue for no lock), or, with none seen, after a pause
with jitter; with a slightly longer lock timeout each time, within
``Ddl.budget``.
"""

from __future__ import annotations

import datetime
import logging
import math
import random
import time
from collections.abc import Callable, Mapping
from functools import partial
from typing import TYPE_CHECKING

import anyio
import anyio.to_thread
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.exc import DBAPIError

from .._plan import Plan
from .._settings import Ddl, MigratorSettings
from .._status import RunningRevision
from ..database._connections import VersionTable
from ..database._contention import (
    SHOWN,
    Holder,
    StatementLog,
    UpgradeTry,
    blockers,
    effective_timeout,
    still_open,
)
from ..database._ledger import Latest, Ledger
from ..errors import ContentionError, MigrationError, ShutdownRequestedError, first_line
from ..locking import MigrationLock
from ..process._signals import abandonable
from ..scripts._hooks import RunHooks
from ..scripts._scripts import Scripts
from ._reporting import Reporter
from ._waits import poll

if TYPE_CHECKING:
    from ..scripts._alembic_compat import Destination

logger = logging.getLogger("automigrator")

# The watcher looks this often, and asks for blockers once a revision has run
# this long; both shorter with a short lock timeout, so a wait is seen before it ends.
_TICK = 1.0
_BLOCKERS_AFTER = 1.0
# A blocker lookup that has not answered by then is given up (it only informs).
_LOOKUP_LIMIT = 2.0
# Between tries: how often the blockers seen are looked at, until they are gone.
_GONE_POLL = 0.1


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
        self.backend = engine.url.get_backend_name()
        self.ddl = settings.ddl  # the migrator's own: never copied
        self.ledger = ledger
        self.rerun_failed_after = settings.history.rerun_failed_after
        self.baseline = settings.baseline

    async def run(
        self,
        plan: Plan,
        *,
        target: Destination,
        version_table: VersionTable,
        hooks: RunHooks,
    ) -> None:
        """Upgrade ``plan`` to ``target``; a revision that met a busy table is tried again.

        A revision remembered as partly applied is refused before anything
        runs; one that stops half way now is remembered.
        """
        if self.ledger is not None:
            # One read of the ledger for both checks (a connection each cost
            # 5 ms on PostgreSQL); under the lock, nothing else writes to it.
            latest = await anyio.to_thread.run_sync(self.ledger.read_latest) or {}
            dirty = await anyio.to_thread.run_sync(self.ledger.dirty, plan.pending, latest)
            # A revision left running is refused under the fence, by env.py's
            # connection: its row may be a live migrator's that lost its lock.
            if dirty is not None and dirty.outcome == "partial":
                raise dirty.refusal()
            await self._refuse_a_repeat(plan.pending, latest)
        # A revision that stops half way now is recorded partial by the run itself.
        await self._tries(target, version_table=version_table, hooks=hooks)

    async def _refuse_a_repeat(
        self, pending: tuple[str, ...], latest: Mapping[str, Latest]
    ) -> None:
        """A pending revision that failed moments ago, from the same file, fails
        again at once, nothing run: a server that restarts a worker whose start-up
        failed would otherwise run it (and roll it back) every second or two."""
        assert self.ledger is not None
        lately = partial(self.ledger.failed_lately, pending, self.rerun_failed_after, latest)
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

    async def _tries(
        self, target: Destination, *, version_table: VersionTable, hooks: RunHooks
    ) -> None:
        tried = 0
        began = time.monotonic()
        while True:
            ours = StatementLog(self.ledger.name if self.ledger is not None else None)
            timeout = effective_timeout(self.backend, try_timeout(self.ddl, tried))
            live = UpgradeTry(timeout=timeout, log=ours)
            work = partial(
                self.scripts.upgrade, target, version_table=version_table, hooks=hooks, live=live
            )
            self.reporter.try_begins(live.timeout)
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
                spent = time.monotonic() - began
                if tried > self.ddl.retries or spent >= self.ddl.budget:
                    raise self._exhausted(exc, tried, spent) from exc
                await self._between_tries(exc, tried, live, began=began)
            finally:
                self.reporter.try_ended()

    async def _watch(self, live: UpgradeTry) -> None:
        beats: tuple[str, int] = ("", 0)
        timeout = live.timeout or 4 * _TICK
        # A statement is looked at once it has waited half the try's timeout (so
        # its blockers are known before the timeout ends it), then every _TICK.
        tick, after = min(_TICK, timeout / 4), min(_BLOCKERS_AFTER, timeout / 2)
        looked: tuple[float | None, float] = (None, 0.0)  # which statement, when
        while True:
            await anyio.sleep(tick)
            running = self.reporter.status.running
            if running is None:
                continue
            statement, now = live.statement, time.monotonic()
            if live.seen is not None and live.seen[0] != statement and live.seen[1]:
                live.seen = None  # the statement that waited got its lock
                self.reporter.blocked(())
            if (
                live.session is not None
                and statement is not None
                and now - statement >= after
                and (looked[0] != statement or now - looked[1] >= _TICK)
            ):
                looked = (statement, now)
                await self._look_for_blockers(running, live, statement)
            elapsed = running.elapsed
            due = int(elapsed // self.ddl.progress_interval)
            if beats[0] != running.revision:
                beats = (running.revision, 0)
            if due > beats[1]:
                beats = (running.revision, due)
                logger.info(
                    "Still applying %s %s: %.0f s", running.revision, running.message, elapsed
                )

    async def _look_for_blockers(
        self, running: RunningRevision, live: UpgradeTry, statement: float
    ) -> None:
        session = live.session
        assert session is not None
        found: tuple[Holder, ...] | None = None
        with anyio.move_on_after(_LOOKUP_LIMIT):
            try:
                found = await abandonable(lambda: blockers(self.engine, session))
            except DBAPIError as exc:  # it only informs: the migration goes on
                logger.debug("Could not ask who blocks the migration: %s", exc)
        if found is None or live.statement != statement:
            return  # no answer, or the statement got its lock meanwhile
        live.seen = (statement, found)
        if self.reporter.status.running != running:
            return  # the revision finished meanwhile
        before = {b.pid for b in self.reporter.status.blocked_by}
        shown = tuple(h.blocker for h in found[:SHOWN])
        if shown != self.reporter.status.blocked_by:
            self.reporter.blocked(shown)
        if shown and {b.pid for b in shown} != before:
            table = next((b.table for b in shown if b.table), None)
            logger.warning(
                "Revision %s waits for a lock%s held by %s: this try's lock timeout (%s) ends "
                "the wait, so no query on the table queues behind it for longer",
                running.revision,
                f" on {table}" if table else "",
                "; ".join(str(b) for b in shown),
                _seconds(live.timeout),
            )

    async def _between_tries(
        self, error: ContentionError, tried: int, live: UpgradeTry, *, began: float
    ) -> None:
        """After a try that met a busy table: wait for its blockers to end without
        queueing for any lock (or, not knowing them, pause), then try again; a
        blocker still there when the budget is spent ends the run."""
        left = self.ddl.budget - (time.monotonic() - began)
        self.reporter.ddl_retried()  # decided: the next try, once the blockers are gone
        holders = live.holders()
        first = error.message.split(". ")[0]
        next_timeout = _seconds(effective_timeout(self.backend, try_timeout(self.ddl, tried)))
        try:
            if holders:
                # MariaDB names candidates, not the blocker: the one that ends may
                # be it, so the next try comes when any of them ends.
                exact = all(h.exact for h in holders)
                logger.warning(
                    "%s; waiting for %s%s to end, outside the table's lock queue (no query "
                    "waits behind the migration meanwhile), then trying again at once (%d of "
                    "%d, with a lock timeout of %s; at most %.0f s more)",
                    first,
                    "" if exact or len(holders) == 1 else "one of ",
                    _named(holders),
                    tried,
                    self.ddl.retries,
                    next_timeout,
                    left,
                )
                if not await self._wait_gone(holders, left, every=exact):
                    # Another try would only stall the table once more.
                    raise self._exhausted(error, tried, time.monotonic() - began)
                logger.info("The blocking transaction ended: trying %s again", error.revision)
                return
            pause = min(retry_pause(self.ddl, tried), left)
            logger.warning(
                "%s; trying again in %.1f s (%d of %d), with a lock timeout of %s",
                first,
                pause,
                tried,
                self.ddl.retries,
                next_timeout,
            )

            async def nothing(left: float) -> None:
                return None

            await poll(nothing, limit=pause, waiting_for="a busy table", pause=lambda _: math.inf)
        except ShutdownRequestedError as exc:
            applied = len(self.reporter.status.applied)
            raise _stopped(
                exc,
                f"The server is shutting down: stopped before trying revision "
                f"{error.revision} again ({applied} revision(s) were applied before it). "
                "The next start continues from there.",
            ) from exc

    async def _wait_gone(self, holders: tuple[Holder, ...], limit: float, *, every: bool) -> bool:
        """Until every one (``every``) or any one of ``holders`` has ended its transaction
        (True), or ``limit`` seconds; the status lists those still open, each dropped
        once it is gone."""
        remaining = holders

        async def gone(left: float) -> bool | None:
            nonlocal remaining
            found: tuple[Holder, ...] | None = None
            with anyio.move_on_after(_LOOKUP_LIMIT):
                try:
                    found = await abandonable(lambda: still_open(self.engine, remaining))
                except DBAPIError as exc:  # not known: look again
                    logger.debug("Could not ask whether the blockers are gone: %s", exc)
            if found is None:
                return None
            if found != remaining:
                remaining = found
                self.reporter.blocked(tuple(h.blocker for h in found[:SHOWN]))
            return True if not found or (not every and found != holders) else None

        ended = await poll(
            gone,
            limit=limit,
            waiting_for="a busy table",
            pause=lambda tries: _GONE_POLL if tries else 0.0,
        )
        return bool(ended)

    def _exhausted(self, error: ContentionError, tried: int, spent: float) -> ContentionError:
        blocked = self.reporter.status.blocked_by
        who = f" Last seen holding it: {'; '.join(str(b) for b in blocked)}." if blocked else ""
        return ContentionError(
            f"{error.message.split('. ')[0]}, {tried} time(s) in a row over {spent:.1f} s: "
            f"the table stayed busy.{who} Nothing of the revision stayed. End the blocking "
            "transaction or migrate at a quieter time; raise Ddl(budget=, retries=) to wait "
            "longer (each try stalls the table's queries for its lock timeout at most).",
            revision=error.revision,
        )


def _stopped(error: ShutdownRequestedError, message: str) -> ShutdownRequestedError:
    # The same shutdown, said for where it stopped us.
    return ShutdownRequestedError(message, signal=error.signal)


def _named(holders: tuple[Holder, ...]) -> str:
    more = len(holders) - SHOWN
    return "; ".join(str(h.blocker) for h in holders[:SHOWN]) + (
        f" and {more} more" if more > 0 else ""
    )


def _seconds(value: float | None) -> str:
    return "none" if value is None else f"{value:g} s"
