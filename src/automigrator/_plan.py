"""The plan: where the database stands against the scripts, what that forbids, and reading it."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Literal

import anyio
import anyio.to_thread
import sqlalchemy as sa
from sqlalchemy.engine import Engine
from sqlalchemy.exc import DBAPIError

from .database._connecting import connect_early
from .database._connections import (
    VersionTable,
    check_schema_exists,
    has_other_tables,
    is_memory_sqlite,
    read_revisions,
    sqlite_file,
    translate_error,
)
from .database._ledger import APPLIED, Latest, Ledger
from .errors import (
    AutomigratorError,
    ConfigurationError,
    DatabaseUnavailableError,
    MultipleHeadsError,
    SchemaAheadError,
    UnversionedDatabaseError,
)
from .process._gcfreeze import frozen_heap
from .process._signals import abandonable
from .scripts._integrity import Audit, check
from .scripts._scripts import Scripts

if TYPE_CHECKING:
    from alembic.script import ScriptDirectory

    from .scripts._alembic_compat import Destination


PlanKind = Literal["empty", "behind", "at_head", "ahead_of_code", "multiple_heads", "unversioned"]

# Why a revision ahead of the code is not known to be compatible with it.
_WHY_NOT = {
    "breaking": "the lint found that it breaks the version before it",
    "": "the ledger records no lint verdict of it (applied without the lint, or on an "
    "empty database)",
    "no row": "the ledger holds no row of it (applied by another tool, or before the ledger)",
    "no ledger": "the ledger could not be read (missing, or not readable by this role)",
    "failed": "its latest ledger row says it failed, not that it was applied",
    "partial": "its latest ledger row says it was left partly applied",
    "running": "its latest ledger row says it was still running",
    "undone": "its latest ledger row says it was undone",
}


@dataclass(frozen=True)
class Plan:
    """What the database holds compared with the scripts, and what an upgrade would do."""

    kind: PlanKind
    db_revisions: tuple[str, ...]
    """The version table's rows; empty when there is no version table."""
    heads: tuple[str, ...]
    """The revisions the run aims at: the scripts' heads for ``target="head"`` or
    ``"heads"``, else the revision(s) the target names."""
    pending: tuple[str, ...] = ()
    """Revisions an upgrade would apply, in order."""
    unknown: tuple[str, ...] = ()
    """Database revisions the scripts do not know (``ahead_of_code``); ``pending`` then
    holds what the known ones lack, if anything (behind and ahead at once)."""
    past_target: bool = False
    """``at_head`` because the database is already past a pinned target (never downgraded)."""
    audit: Audit | None = None
    """The ledger against the files (None: no ledger, or a database with no revisions)."""
    ahead: tuple[tuple[str, str | None], ...] = ()
    """``ahead_of_code``: each revision the scripts do not know, newest first, down to
    the ones they know, with the ledger's record of the lint's verdict when it was
    applied (``compatible``, ``breaking``; None: not recorded), or why there is
    none (``no row``, ``no ledger``, or the outcome of a row that is not applied)."""
    post_deploy: tuple[str, ...] = ()
    """Pending post-deploy revisions this run leaves for ``automigrator upgrade
    --post-deploy`` (not in ``pending``): ``at_head`` when nothing else is pending."""
    destination: tuple[str, ...] = ()
    """With ``post_deploy``: the newest revisions ``pending`` reaches, where the upgrade
    stops short of the heads."""

    def upgrade_target(self, target: str) -> Destination:
        """Where an upgrade of this plan goes: ``target``, or short of the post-deploy
        revisions it leaves (the destination, as Alembic takes one or several)."""
        if not self.destination:
            return target
        return self.destination[0] if len(self.destination) == 1 else self.destination

    def served_ahead(self, when_ahead: str) -> Plan:
        """``ahead_of_code`` taken as it is, if ``when_ahead`` allows: nothing to do.

        ``"serve"`` takes any; ``"compatible"`` only where the ledger records
        every unknown revision as compatible with the version before it (a
        refusal then names the one that is not). The unknown revisions stay in
        ``unknown``.
        """
        if self.kind != "ahead_of_code":
            return self
        if when_ahead != "compatible":
            # Only the compatible mode's refusal speaks of the verdicts.
            plan = replace(self, ahead=())
            served = when_ahead == "serve" and not self.pending
            return replace(plan, kind="at_head") if served else plan
        unread = tuple((u, "no ledger") for u in self.unknown)
        plan = self if self.ahead else replace(self, ahead=unread)
        servable = not self.pending and plan.breaking() is None
        return replace(plan, kind="at_head") if servable else plan

    def with_post_deploy(self) -> Plan:
        """This plan with the post-deploy revisions it leaves back in ``pending``."""
        if not self.post_deploy:
            return self
        pending = self.pending + self.post_deploy  # they only follow what is pending
        return replace(self, kind="behind", pending=pending, post_deploy=(), destination=())

    def breaking(self) -> tuple[str, str] | None:
        """The first unknown revision that may break this code, and why; None if none."""
        for revision, verdict in self.ahead:
            if verdict != "compatible":
                return revision, _WHY_NOT.get(verdict or "", _WHY_NOT[""])
        return None

    def start(self, baseline: str | None) -> tuple[str, ...]:
        """Where an upgrade of this plan starts: the revisions, or an unversioned
        database's ``baseline`` (a start stamps it there first)."""
        if self.kind == "unversioned" and baseline is not None:
            return (baseline,)
        return self.db_revisions

    def refusal(
        self,
        *,
        final: bool = True,
        baseline: str | None = None,
        version_table: str = "",
        edits: bool = True,
    ) -> AutomigratorError | None:
        """The error that forbids acting on this plan, or None.

        ``unversioned`` is only final under the lock (``final=True``): without
        it we may have seen another replica's tables before its version table.
        A revision the ledger says was left partly applied, wherever it is; with
        ``edits``, an applied revision edited since it ran (``History(on_edit=
        "refuse")``).
        """
        if self.kind == "multiple_heads":
            return MultipleHeadsError(heads=self.heads)
        if self.kind == "ahead_of_code":
            return SchemaAheadError(
                revisions=self.unknown, missing=self.pending, breaking=self.breaking()
            )
        if self.kind == "unversioned" and baseline is None and final:
            return UnversionedDatabaseError(version_table=version_table)
        dirty = self.audit.dirty if self.audit is not None else None
        if dirty is not None and dirty.outcome == "partial":
            return dirty.refusal()  # (one left running: under the lock, by the migrator)
        if edits and self.audit is not None:
            return self.audit.edit_refusal()
        return None


def holds_heads(heads: tuple[str, ...], revisions: tuple[str, ...] | None, target: str) -> bool:
    """Whether the version table holds exactly ``heads`` (and the target allows them)."""
    return (
        bool(revisions)
        and set(revisions or ()) == set(heads)
        and (target == "heads" or len(heads) == 1)
    )


def read_plan(
    scripts: Scripts,
    engine: Engine,
    version_table: VersionTable,
    target: str,
    *,
    first: bool = False,
    ledger: Ledger | None = None,
    post_deploy: bool = False,
) -> Plan:
    """Read the version table and classify it against the scripts (in a worker thread).

    At head with remembered heads this is one query and no graph, and one
    more for the ``ledger``'s latest rows, checked against the files
    (``_integrity.check``: remembered when clean). ``first``
    (the first plan of an attempt) defers the graph for a database with no
    revisions: it is behind whatever the scripts hold, and the replica that
    migrates imports the scripts anyway. ``post_deploy``: plan post-deploy
    revisions too (else a database with revisions leaves them, ``Plan.post_deploy``).
    """
    # On a server the connection is made while the files are listed.
    early = connect_early(engine)
    try:
        # The heap frozen where the plan makes thousands of objects at 1000
        # revisions (a stat result per file here; the ledger's rows, the
        # check): they would set off a full collection of the whole process,
        # which cost more than the plan. Never across a wait (the database,
        # an app's hook): a plan abandoned there would unfreeze late, over
        # the app's own freeze.
        with frozen_heap():
            remembered = scripts.remembered_heads(target)
        # Without remembered heads, the graph is read before the connection is
        # waited for: script errors come before any wait for the database. Not
        # frozen: it may run the app's before_scripts hook, which may wait.
        graph = scripts.graph() if remembered is None and not first else None
    except BaseException:
        if early is not None:
            early.drop()
        raise
    try:
        revisions: tuple[str, ...] | None = None
        has_tables = False
        latest: dict[str, Latest] | None = None
        # A SQLite file not made yet is an empty database. Connecting would
        # create it: a look (check, status, a typo in the URL) leaves no file
        # behind; an upgrade makes it as it migrates.
        if not _sqlite_file_missing(engine):
            with early.take() if early is not None else engine.connect() as conn:
                revisions = read_revisions(conn, version_table)
                if revisions is None:
                    check_schema_exists(conn, version_table)
                # An empty version table (a baseline stamp that did not finish)
                # beside tables is unversioned too: never planned as an empty database.
                ours = ledger.name if ledger is not None else None
                has_tables = not revisions and has_other_tables(conn, version_table, ours)
                if has_tables:
                    # Each statement sees what was committed when it began: a
                    # migration committed between the two reads (its tables and
                    # its version row at once) looked unversioned to `wait`.
                    revisions = read_revisions(conn, version_table)
                    has_tables = not revisions
                if ledger is not None and revisions:
                    latest = ledger.latest(conn)  # last: a missing ledger ends the transaction
        checked = None
        if ledger is not None and revisions:
            checked = check(scripts, latest, revisions, ledger.by_id)
    except DBAPIError as exc:
        error = translate_error(exc, scripts.url, doing="reading the version table")
        if isinstance(error, DatabaseUnavailableError):
            scripts.graph()  # a script error first: waiting would not fix it
        raise error from exc
    if remembered is not None and holds_heads(remembered, revisions, target):
        return Plan("at_head", revisions or (), remembered, audit=checked)  # no graph
    if first and not revisions:
        # Multiple heads are refused under the lock, still before any DDL.
        kind: PlanKind = "unversioned" if has_tables else "empty"
        return Plan(kind, (), remembered or ())
    script = graph or scripts.graph()
    plan = classify(
        script,
        target,
        revisions,
        has_tables=has_tables,
        post_deploy=post_deploy,
        table=version_table,
        quoted=engine.dialect.identifier_preparer.format_table(
            sa.table(version_table.name, schema=version_table.schema)
        ),
    )
    if plan.kind == "ahead_of_code" and ledger is not None and latest:
        ahead, below = _ahead(script, plan.unknown, latest, ledger)
        # What the code needs and the database lacks, seen from where the
        # unknown revisions branch off (the version table holds only heads).
        missing = _missing(script, target, below) if below and not plan.pending else ()
        return replace(plan, audit=checked, ahead=ahead, pending=plan.pending or missing)
    return replace(plan, audit=checked)


def _ahead(
    script: ScriptDirectory, unknown: tuple[str, ...], latest: dict[str, Latest], ledger: Ledger
) -> tuple[tuple[tuple[str, str | None], ...], tuple[str, ...]]:
    """The revisions above the ones the scripts know, followed down the ledger's
    ``parents``, each with its lint verdict (a revision with no applied row ends
    its line, its verdict None); and the known revisions the lines end on."""
    found: list[tuple[str, str | None]] = []
    below: set[str] = set()
    seen: set[str] = set()
    line = list(unknown)
    while line:
        revision = line.pop()
        if revision in seen:
            continue
        seen.add(revision)
        if _known(script, revision):
            below.add(revision)
            continue
        row = latest.get(revision)
        entry = ledger.by_id([row.id]).get(row.id) if row is not None else None
        if entry is None:
            found.append((revision, "no row"))
            continue
        if entry.outcome not in APPLIED:
            found.append((revision, entry.outcome))
            continue
        found.append((revision, entry.old_app))
        line.extend(p for p in entry.parents.split(",") if p)
    return tuple(found), tuple(sorted(below))


def _missing(script: ScriptDirectory, target: str, below: tuple[str, ...]) -> tuple[str, ...]:
    from .scripts import _alembic_compat, _alembic_load

    try:
        steps = _alembic_compat.upgrade_steps(script, target, below)
    except _alembic_load.GRAPH_ERRORS:
        return ()  # past a pinned target
    return tuple(step.revision.revision for step in steps)


def _sqlite_file_missing(engine: Engine) -> bool:
    """A SQLite URL whose file does not exist yet, in a folder that does (a missing
    folder is left to the connection's own error, which names it)."""
    url = engine.url
    if url.get_backend_name() != "sqlite" or is_memory_sqlite(url):
        return False
    path = Path(sqlite_file(url))
    return not path.exists() and path.parent.is_dir()


def classify(
    script: ScriptDirectory,
    target: str,
    db_revisions: tuple[str, ...] | None,
    *,
    has_tables: bool,
    post_deploy: bool = False,
    table: VersionTable | None = None,
    quoted: str | None = None,
) -> Plan:
    """Compare the database's revisions with the scripts; no DDL, no env.py.

    Without ``post_deploy``, the pending post-deploy revisions that no other
    pending one needs are left out (``Plan.post_deploy``), unless the database
    has no revision: then nothing old serves from it.
    """
    # Imports Alembic: only when the remembered heads could not decide.
    from .scripts import _alembic_compat, _alembic_load, _postdeploy

    heads = tuple(sorted(script.get_heads()))
    if not heads:
        raise _alembic_load.no_revisions(script)
    current = db_revisions or ()
    if target == "head" and len(heads) > 1:
        return Plan("multiple_heads", current, heads)
    unknown = tuple(rev for rev in current if not _known(script, rev))
    if unknown:
        # The rows the code knows must already hold the target: a database
        # both behind and ahead is refused even where ahead is served.
        known = tuple(rev for rev in current if rev not in unknown)
        missing: tuple[str, ...] = ()
        if known:
            try:
                steps = _alembic_compat.upgrade_steps(script, target, known)
                missing = tuple(step.revision.revision for step in steps)
            except _alembic_load.GRAPH_ERRORS:
                missing = ()  # the known rows are past a pinned target
        return Plan("ahead_of_code", current, heads, unknown=unknown, pending=missing)
    if not db_revisions and has_tables:
        return Plan("unversioned", current, heads)
    _refuse_overlaps(script, current, table or VersionTable(), quoted)
    try:
        targets = tuple(sorted(r.revision for r in script.get_revisions(target) if r is not None))
        steps = _alembic_compat.upgrade_steps(script, target, current)
    except _alembic_load.GRAPH_ERRORS as exc:
        if _is_ancestor_of(script, target, current):
            # The database is already past a pinned target: nothing to do,
            # and we never downgrade (said plainly by the migrator).
            return Plan("at_head", current, targets, past_target=True)
        raise ConfigurationError(
            f"Unknown migration target {target!r}: {exc}. Use 'head', 'heads', a revision "
            "id or a branch label the scripts define."
        ) from exc
    pending = tuple(step.revision.revision for step in steps)
    if not pending:
        return Plan("at_head", current, targets, past_target=set(current) != set(targets))
    if current and not post_deploy:
        now, left, destination = _postdeploy.split(script, pending)
        if left:
            kind: PlanKind = "behind" if now else "at_head"
            return Plan(
                kind, current, targets, pending=now, post_deploy=left, destination=destination
            )
    return Plan("behind" if current else "empty", current, targets, pending=pending)


def _refuse_overlaps(
    script: ScriptDirectory, current: Sequence[str], table: VersionTable, quoted: str | None
) -> None:
    """Rows of which one is below another: no place in the history, and Alembic's own
    words ("overlaps with other requested revisions") name no cause and no fix."""
    if len(current) < 2:
        return
    below: set[str] = set()
    for rev in current:
        ancestors = script.revision_map.iterate_revisions(rev, "base")
        below.update(r.revision for r in ancestors if r is not None and r.revision != rev)
    stale = sorted(rev for rev in current if rev in below)
    if not stale:
        return
    kept = sorted(rev for rev in current if rev not in below)
    rows = ", ".join(repr(rev) for rev in stale)
    raise ConfigurationError(
        f"The version table {table} holds {', '.join(sorted(current))}, but {', '.join(stale)} "
        f"{'is' if len(stale) == 1 else 'are'} below {', '.join(kept)} in the history: a "
        "database is at one place in each branch, and two processes that migrated at once "
        "without a lock leave such rows. If the schema is at "
        f"{', '.join(kept)}, delete the others (DELETE FROM {quoted or table} WHERE "
        f"version_num IN ({rows})). Nothing was changed."
    )


def _known(script: ScriptDirectory, rev: str) -> bool:
    from .scripts import _alembic_load

    try:
        found = script.get_revision(rev)
    except _alembic_load.GRAPH_ERRORS:
        return False
    return found is not None and found.revision == rev


def _is_ancestor_of(script: ScriptDirectory, target: str, current: Sequence[str]) -> bool:
    from .scripts import _alembic_load

    if not current:
        return False
    try:
        wanted = {r.revision for r in script.get_revisions(target) if r is not None}
        below = {r.revision for r in script.revision_map.iterate_revisions(tuple(current), "base")}
    except _alembic_load.GRAPH_ERRORS:
        return False
    return bool(wanted) and wanted <= below


async def revisions_soon(
    engine: Engine, version_table: VersionTable, limit: float
) -> tuple[str, ...] | None:
    """The version table's rows if the database answers within ``limit`` seconds; else None.

    Best effort, for the status after a failure: nothing is raised.
    """

    def read() -> tuple[str, ...] | None:
        try:
            with engine.connect() as conn:
                return read_revisions(conn, version_table) or ()
        except Exception:
            return None

    with anyio.move_on_after(limit):
        return await abandonable(read)
    return None
