"""What an upgrade would do, without doing it: the pending revisions, their SQL, their lint.

``preview(migrator)`` reads the plan (one short connection, as a start
does), then lists each pending revision with its id, message and file; with
``sql=True``, each one's SQL as Alembic's offline mode renders it, one
revision at a time (``_alembic_run.render_offline``). No DDL runs and no lock is
taken: another process may be migrating meanwhile, and the preview says what
this one would have done from the revisions it read. ``lint(migrator)``
judges the same revisions (``linting/``), weighed by the live tables' sizes.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from functools import partial
from typing import Any

import anyio.to_thread

from ._migrator import AutoMigrator
from ._plan import PlanKind
from .database._connections import display
from .errors import ConfigurationError
from .linting._linter import LintReport
from .scripts._pending import PendingRevision


@dataclass(frozen=True)
class Preview:
    """The plan for one database, and what an upgrade would run."""

    database: str
    """The URL, password hidden."""
    plan: PlanKind
    revisions: tuple[str, ...]
    """The database's revisions now."""
    heads: tuple[str, ...]
    """The target's revisions."""
    pending: tuple[PendingRevision, ...]
    """In the order an upgrade applies them."""
    post_deploy: tuple[str, ...] = ()
    """Post-deploy revisions an upgrade leaves pending (``upgrade --post-deploy`` runs them)."""

    def script(self) -> list[str]:
        """The pending revisions' SQL as one script, each under a comment naming it.

        Where env.py runs the whole upgrade in one transaction (Alembic's
        default), one ``BEGIN`` and one ``COMMIT`` around all of it, as
        ``alembic upgrade --sql`` prints; else each revision's own.
        """
        rendered = [step for step in self.pending if step.sql is not None]
        whole = bool(rendered) and all(step.in_run_transaction for step in rendered)
        lines = ["BEGIN;", ""] if whole else []
        for step in self.pending:
            lines.append(f"-- {step.revision} {step.message} ({step.path})")
            if step.not_renderable:
                lines.append(f"--   cannot be rendered offline: {step.not_renderable}")
            elif step.sql is not None:
                lines.append(_unwrapped(step.sql) if whole else step.sql.rstrip("\n"))
        return [*lines, "", "COMMIT;"] if whole else lines

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-ready values."""
        data = asdict(self)
        data["revisions"], data["heads"] = list(self.revisions), list(self.heads)
        data["post_deploy"] = list(self.post_deploy)
        data["pending"] = [
            {**asdict(step), "down_revisions": list(step.down_revisions)} for step in self.pending
        ]
        return data


def _unwrapped(sql: str) -> str:
    """A revision's SQL without the run's BEGIN before it and COMMIT after it."""
    text = sql.strip()
    text = text.removeprefix("BEGIN;").removesuffix("COMMIT;")
    return text.strip("\n")


async def preview(migrator: AutoMigrator, *, sql: bool = False) -> Preview:
    """The pending revisions of ``migrator``'s database; with ``sql``, each one's SQL.

    Raises what a start would refuse with, before rendering anything: a
    database ahead of the code, several heads, tables without a version
    table (and no ``baseline=``), an unreachable database. A revision that
    that reads the database is rendered with its reads answered by the live
    database (read-only, bounded: ``scripts._alembic_reads``); one that still
    cannot be rendered (env.py has no offline path, a read of a table the plan
    creates first) has ``not_renderable`` set, and the others are still rendered.
    """
    plan = await migrator.plan()
    migrator.raise_for_plan(plan)
    pending: list[PendingRevision] = []
    if plan.kind != "at_head":
        current = plan.start(migrator.baseline)
        scripts = migrator.scripts

        def render() -> list[PendingRevision]:
            from .scripts import _alembic_run  # imports Alembic: only when something is pending

            script = scripts.imported()
            with scripts.set_up():
                return _alembic_run.render_offline(
                    scripts.config,
                    script,
                    plan.upgrade_target(migrator.target),
                    current,
                    url=scripts.url,
                    sql=sql,
                    reads=migrator.linter.engine,
                )

        pending = await anyio.to_thread.run_sync(render)
    return Preview(
        database=display(migrator.url),
        plan=plan.kind,
        revisions=plan.db_revisions,
        heads=plan.heads,
        pending=tuple(pending),
        post_deploy=plan.post_deploy,
    )


async def lint(
    migrator: AutoMigrator, *, since: str | None = None, changed_from: str | None = None
) -> LintReport:
    """The lint of the revisions an upgrade of ``migrator``'s database would apply.

    Each finding names the revision, the rule, the table and its rows (read
    from the live database), why it is unsafe and the safe way; see
    :attr:`LintReport.flagged <automigrator.LintReport.flagged>`. Nothing
    runs and no lock is taken. Refuses as :func:`preview` does.

    ``since``: lint, without a database, every revision after ``since``
    (``"base"`` for all of them), each as if the database stood just before
    it with big tables (for CI, where no live database tells the sizes).
    ``changed_from``: the same, for the revision files git sees as added
    since that ref (a branch, a tag, a commit): what a change brings.
    """
    linter = migrator.linter
    if since is not None and changed_from is not None:
        raise ConfigurationError(
            "lint: give since= (every revision after one) or changed_from= (the revisions a "
            "change adds), not both."
        )
    if since is not None or changed_from is not None:
        offline = partial(
            linter.without_database, since=since or "base", changed_from=changed_from
        )
        return await anyio.to_thread.run_sync(offline)
    plan = await migrator.plan()
    migrator.raise_for_plan(plan)
    if plan.kind in ("at_head", "empty"):
        # An empty database (a new install) has no table to lock and no old
        # version to break: a start does not lint it either.
        return LintReport(display(migrator.url), (), (), (), None, linter.settings.lint.rows)
    current = plan.start(migrator.baseline)
    target = plan.upgrade_target(migrator.target)
    return await anyio.to_thread.run_sync(lambda: linter.report(current, target=target))
