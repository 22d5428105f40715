"""The ledger's side of a run: what each row records, adoption, and a person's decisions.

The rows of a running revision are written by the run itself
(``scripts/_alembic_run``, on env.py's connection); what is written from
here is written under the migration lock, on a connection of ours that
holds the lock's fence: the adoption of revisions the database held before
the ledger, and ``automigrator resolve``'s decisions, with who and why.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Mapping
from functools import partial
from typing import Literal

import anyio.to_thread

from .._plan import Plan
from .._settings import MigratorSettings
from ..database._ledger import Ledger, LedgerEntry, RevisionFacts, RunFacts
from ..errors import AutomigratorError, ConfigurationError, LockLostError, first_line
from ..locking import fenced
from ..scripts._integrity import Audit
from ..scripts._scripts import Scripts
from ._upgrading import Upgrader
from ._waits import Waiter

logger = logging.getLogger("automigrator")

Resolution = Literal["applied", "not-applied", "accept-checksum"]
"""What a person says of a revision: finished by hand (``applied``), undone by
hand (``not-applied``), or its edited file accepted (``accept-checksum``)."""


class Bookkeeper:
    """Writes what the ledger learns outside a run: adoption and decisions.

    Without a ledger (``History(table=None)``) it records nothing.

    Args:
        scripts: the migrator's scripts (the fingerprints; a stamp).
        ledger: the ledger, or None.
        settings: the migrator's settings (the app's version, the version table).
        waiter: the migrator's waits: the lock held, and its fence.
        upgrader: the migrator's upgrades (a stamp, for a revision finished by hand).
    """

    def __init__(
        self,
        scripts: Scripts,
        ledger: Ledger | None,
        settings: MigratorSettings,
        waiter: Waiter,
        upgrader: Upgrader,
    ) -> None:
        self.scripts = scripts
        self.upgrader = upgrader
        self.verdicts: Mapping[str, str] = {}  # the lint's, of this attempt's revisions
        self.ledger = ledger
        self.settings = settings
        self.waiter = waiter

    def linted(self, verdicts: Mapping[str, str]) -> None:
        """The lint's verdict of each of this attempt's pending revisions (for its row)."""
        self.verdicts = verdicts

    @staticmethod
    def lost(doing: str) -> LockLostError:
        """The lock went (or another process holds its fence) before ``doing``."""
        return LockLostError(
            f"The migration lock was lost before {doing} (its connection was closed: a "
            "server timeout, the network, or this process paused past its reap time): "
            "another process may be migrating. Nothing was written; the next start plans again."
        )

    def by_hand(self) -> RunFacts:
        """What a row written outside a run records: who, no lock wait, no verdict."""
        return RunFacts(None, self.settings.history.app_version)

    def run_facts(self, lock_wait: float | None) -> RunFacts:
        """What every row of a run records."""
        return RunFacts(lock_wait, self.settings.history.app_version, self.verdicts)

    async def adopted_at_head(
        self, plan: Callable[[], Awaitable[Plan]], check: Callable[[Plan], None]
    ) -> bool:
        """Under the lock, for a start that found the database at head but the ledger
        short of its revisions: plan again; at head, adopt them and say True (the
        scripts are never imported); else False (another process moved it on)."""
        again = await plan()
        check(again)
        if again.kind != "at_head":
            return False
        await self.adopt(again)
        return True

    async def check_drift(self) -> None:
        """``History(drift="warn")``, after an upgrade: each difference between the
        schema and env.py's ``target_metadata``, as a warning (nothing fails)."""
        if self.settings.history.drift != "warn":
            return
        ours = (self.ledger.name,) if self.ledger is not None else ()
        compare = partial(self.scripts.drift, self.settings.version_table, ours)
        try:
            found = await anyio.to_thread.run_sync(compare)
        except AutomigratorError as exc:
            logger.warning("History(drift='warn'): could not compare: %s", exc.summary())
            return
        for line in found:
            logger.warning("Drift: the schema differs from env.py's target_metadata: %s", line)
        if not found:
            logger.info("Drift: none (the schema matches env.py's target_metadata)")

    def warn_edits(self, plan: Plan) -> None:
        """``History(on_edit="warn")``: the edited revisions, as a warning."""
        refusal = None if plan.audit is None else plan.audit.edit_refusal()
        if refusal is not None and self.settings.history.on_edit == "warn":
            logger.warning("History(on_edit='warn'): %s", refusal.message)

    def unrecorded(self, plan: Plan) -> bool:
        """The ledger needs the lock: revisions the database holds that it has no row
        for (to adopt), or a revision left running (to refuse, if it still is)."""
        audit = plan.audit
        return (
            self.ledger is not None and audit is not None and bool(audit.unrecorded or audit.dirty)
        )

    async def adopt(self, plan: Plan) -> None:
        """Under the lock: a revision the ledger says was left running refuses the
        start (whatever the files say of it now: replaced, stamped by hand); then
        the revisions the database holds and the ledger lacks (migrated before the
        ledger, or by hand) are recorded ``adopted``, with their files' checksums as
        they are now (trust on first use)."""
        if self.ledger is None or plan.audit is None:
            return
        dirty = plan.audit.dirty
        # A pending revision's running row is refused under the fence, by the
        # run itself: before it, the row may be a live migrator's that lost
        # its lock (then the fence says so, truthfully: transient).
        if dirty is not None and dirty.revision not in plan.pending:
            raise dirty.refusal()
        if plan.audit.unrecorded:
            await anyio.to_thread.run_sync(self._adopt, self.ledger, plan.audit)

    def _adopt(self, ledger: Ledger, audit: Audit) -> int:
        prints = self.scripts.fingerprints()
        facts = [prints[rev].facts() for rev in audit.unrecorded if rev in prints]
        try:
            with ledger.engine.connect() as conn, fenced(self.waiter.held, conn) as ours:
                if not ours:
                    raise self.lost("the ledger's adoption")
                with ledger.writing(conn):
                    count = ledger.adopt(conn, facts, self.by_hand())
        except LockLostError:
            raise
        except Exception as exc:  # the ledger informs: a start goes on without it
            logger.warning(
                "Could not record the database's %d revision(s) in the ledger %s (%s): "
                "edits of them cannot be noticed until it can",
                len(facts),
                ledger.name,
                first_line(exc),
            )
            return 0
        logger.info(
            "The ledger %s now records the %d revision(s) the database held (adopted, with "
            "today's checksums)",
            ledger.name,
            count,
        )
        return count

    async def resolve(self, revision: str, decision: Resolution, reason: str, plan: Plan) -> None:
        """``automigrator resolve``, under the lock: check that ``decision`` fits the
        ledger; for ``applied``, stamp the version table at ``revision``; then
        record it, with who and why."""
        if self.ledger is None:
            raise ConfigurationError("History(table=None): there is no ledger to resolve in.")
        await anyio.to_thread.run_sync(self.decide, revision, decision, reason, plan.audit)
        if decision == "applied":
            await self.upgrader.stamp(revision, self.settings.version_table, self.waiter.held)
        await anyio.to_thread.run_sync(self.record, revision, decision, reason)

    def decide(
        self, revision: str, decision: Resolution, reason: str, audit: Audit | None
    ) -> LedgerEntry | None:
        """Check that ``decision`` fits ``revision``'s state; the row it answers
        (None for an accepted edit). Raises ConfigurationError, naming what to
        do, when it does not fit; nothing is written here."""
        if not reason.strip():
            raise ConfigurationError(
                f"automigrator resolve {revision}: say why with --reason (it is kept in the "
                "ledger with who ran the command); nothing was changed."
            )
        assert self.ledger is not None
        rows = self.ledger.entries(revision)
        entry = rows[-1] if rows else None
        if decision == "accept-checksum":
            edited = [e for e in (audit.edited if audit else ()) if e.revision == revision]
            if not edited:
                raise ConfigurationError(
                    f"Revision {revision}'s file matches the ledger (or it was never applied): "
                    "there is no edit to accept; nothing was changed."
                )
            return None
        if entry is None or entry.outcome not in ("running", "partial"):
            said = "no row" if entry is None else f"its last row says {entry.outcome}"
            raise ConfigurationError(
                f"Revision {revision} is not recorded as partly applied in the ledger "
                f"{self.ledger.name} ({said}): nothing to resolve (check the revision id in the "
                "failure's message); nothing was changed."
            )
        return entry

    def record(self, revision: str, decision: Resolution, reason: str) -> None:
        """Write ``decision`` with who and why (under the lock, fenced)."""
        assert self.ledger is not None
        prints = self.scripts.fingerprints()
        facts = prints[revision].facts() if revision in prints else RevisionFacts(revision)
        outcome = {"applied": "resolved", "not-applied": "undone", "accept-checksum": "accepted"}
        ledger = self.ledger
        with ledger.engine.connect() as conn, fenced(self.waiter.held, conn) as ours:
            if not ours:
                raise self.lost("the ledger's record of a resolve")
            with ledger.writing(conn):
                ledger.record(
                    conn,
                    facts,
                    self.by_hand(),
                    outcome=outcome[decision],
                    detail=reason.strip()[:2000],
                )
