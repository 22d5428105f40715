"""Helpers for an application's own test suite.

- :func:`upgrade` migrates now, from synchronous code (a session fixture
  that prepares a test database without starting the app);
- :func:`assert_at_head` fails a test unless every database is at the
  scripts' head;
- :func:`assert_no_drift` fails a test when the migrated schema differs
  from env.py's ``target_metadata`` (Alembic's autogenerate comparison, as
  ``automigrator drift``), so a model change without its revision is caught
  in CI, not in production; :func:`assert_models_match` does the same with
  the models given;
- :func:`assert_migrations_are_safe` fails a test when a revision would lock
  a busy table or break the old version still serving (the lint), so an
  unsafe revision is caught in review, not in the deploy.

Each works from a plain test and from an async one (pytest-asyncio, anyio):
the work runs on its own event loop in a worker thread. The app's own
lifespan (``TestClient(app)``, ``LifespanManager(app)``) runs the migrations
as in production; see the Testing page of the docs.
"""

from __future__ import annotations

import concurrent.futures
import functools
from collections.abc import Awaitable, Callable
from typing import TypeVar

import anyio
from sqlalchemy import MetaData

from ._drift import DriftReport, drift
from ._group import MigratorGroup
from ._lifespan import MigrationRunner
from ._migrator import AutoMigrator
from ._status import MigrationStatus
from .linting._linter import LintReport

__all__ = [
    "assert_at_head",
    "assert_migrations_are_safe",
    "assert_models_match",
    "assert_no_drift",
    "upgrade",
]

T = TypeVar("T")


def upgrade(migrator: MigrationRunner) -> MigrationStatus:
    """Run the migrations now (plan, lock, upgrade, verify); return the final status.

    Raises what the run raises (its failure policy decides, as at start-up).
    """
    return _run(migrator.run)


def assert_at_head(migrator: MigrationRunner) -> None:
    """Fail (``AssertionError``) unless every database is at the scripts' head.

    One query per database; nothing is changed. For a group, each member's
    database is checked.
    """
    problems = []
    for name, member in _members(migrator).items():
        plan = _run(member.plan)
        if plan.kind != "at_head":
            where = f"{name}: " if name else ""
            problems.append(
                f"{where}the database is {plan.kind.replace('_', ' ')}: at "
                f"{', '.join(plan.db_revisions) or 'base'}, the scripts' head is "
                f"{', '.join(plan.heads) or 'base'}"
                + (f", pending {', '.join(plan.pending)}" if plan.pending else "")
            )
    if problems:
        raise AssertionError("; ".join(problems))


def assert_models_match(migrator: AutoMigrator, metadata: MetaData) -> None:
    """Fail (``AssertionError``) if the database's schema differs from ``metadata``.

    Run it after the migrations: it compares the migrated database with the
    models as ``alembic revision --autogenerate`` would, and lists each
    difference (a table, column, index or type the models have and the
    migrations do not, or the reverse). Our own tables (the version table
    included) are left out, and the types a database stores under another
    name taken as equal, as :func:`assert_no_drift` does; env.py is not run.
    """
    _fail_on_drift({"": _run(functools.partial(drift, migrator, metadata=metadata))})


def assert_no_drift(migrator: MigrationRunner) -> None:
    """Fail (``AssertionError``) if a database's schema differs from env.py's models.

    What ``automigrator drift`` checks: env.py is run as ``alembic check``
    runs it, and its ``target_metadata`` compared with the migrated database
    (nothing is written). Each difference is listed; for a group, under
    each database's name. A database not at the scripts' head is compared
    all the same, and the message says so: pair it with
    :func:`assert_at_head`.
    """
    _fail_on_drift(
        {
            name: _run(functools.partial(drift, member))
            for name, member in _members(migrator).items()
        }
    )


def _fail_on_drift(reports: dict[str, DriftReport]) -> None:
    drifted = {name: report for name, report in reports.items() if report.differences}
    if not drifted:
        return
    count = sum(len(report.differences) for report in drifted.values())
    shown = "\n".join(
        f"{name}: {report}" if name else str(report) for name, report in drifted.items()
    )
    raise AssertionError(
        f"The migrated schema differs from the models in {count} way(s); add a revision "
        f"(alembic revision --autogenerate) or fix the models:\n{shown}"
    )


def _members(migrator: MigrationRunner) -> dict[str, AutoMigrator]:
    if isinstance(migrator, MigratorGroup):
        return migrator.migrators
    if isinstance(migrator, AutoMigrator):
        return {"": migrator}
    raise TypeError(f"expected an AutoMigrator or a MigratorGroup, got {migrator!r}")


def _run(work: Callable[[], Awaitable[T]]) -> T:
    # Its own loop in its own thread: the caller may be inside a running
    # event loop (an async test), where anyio.run() is refused.
    with concurrent.futures.ThreadPoolExecutor(1, "automigrator-testing") as pool:
        return pool.submit(anyio.run, work).result()


def assert_migrations_are_safe(
    migrator: AutoMigrator, *, since: str = "base", changed_from: str | None = None
) -> LintReport:
    """Fail (``AssertionError``) if the lint flags any revision after ``since``.

    No database is needed: each revision is judged as if the database stood
    just before it, with big tables (the sizes are the deploy's to know).
    Allow a rule in a revision that has made its peace with it by a comment
    in its file (``# automigrator: allow=drop-column``). Pass the revision
    production is at as ``since`` to judge only the new ones, or a git ref
    as ``changed_from`` to judge the revision files added since it (a pull
    request's). Returns the report (allowed findings included) when nothing
    is flagged.
    """
    report = migrator.linter.without_database(since=since, changed_from=changed_from)
    where = f"added since {changed_from}" if changed_from is not None else f"after {since}"
    if report.flagged:
        found = "\n".join(f"- {f} [{f.where}]" for f in report.flagged)
        raise AssertionError(
            f"{len(report.flagged)} unsafe operation(s) in the revisions {where}:\n{found}"
        )
    return report
