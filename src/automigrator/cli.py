"""``automigrator``: the same plan, lock and policies as the library, for Jobs and init containers.

Exit codes (also in ``automigrator --help``):

====  ==========================================================
0     done: the database is at the target
1     a migration failed
2     bad settings or usage (config, URL, credentials, target)
10    the database is behind the code (``check``; ``wait`` timed out)
11    the database is ahead of the code (a rollback deploy?)
12    the scripts have several heads
13    the database could not be reached, or the lock not taken in time
14    tables but no version table (pass ``--baseline``)
15    the lint refused a pending revision (``upgrade --lint refuse``)
16    the schema differs from the models (``drift``)
17    an applied revision's file was edited (``verify``; a start refuses)
18    a revision was left partly applied (``verify``; a start refuses)
130   stopped by SIGINT/SIGTERM while waiting
====  ==========================================================

Settings come from flags, else ``AUTOMIGRATOR_*`` environment variables
(``AUTOMIGRATOR_CONFIG``, ``AUTOMIGRATOR_URL``, ``AUTOMIGRATOR_TARGET``), else
the Alembic config. Passwords are never printed.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import logging
import os
import pkgutil
import shlex
import sys
import time
from collections.abc import Sequence
from typing import Any, NoReturn, get_args

import anyio
import sqlalchemy as sa

from ._drift import DriftReport, drift
from ._group import MigratorGroup
from ._migrator import AutoMigrator
from ._preview import Preview, lint, preview
from ._settings import Ddl, History, Lint, LintMode, Switch, Timeouts
from .database._connections import display
from .database._redaction import mask_credentials
from .errors import (
    AutomigratorError,
    ConfigurationError,
    ContentionError,
    DatabaseUnavailableError,
    EditedRevisionError,
    LockLostError,
    LockTimeoutError,
    MigrationError,
    MultipleHeadsError,
    PartialMigrationError,
    SchemaAheadError,
    SchemaBehindError,
    ShutdownRequestedError,
    UnsafeMigrationError,
    UnversionedDatabaseError,
)
from .linting._linter import LintReport
from .policies import Chain, Fail, FailurePolicy, LogAndContinue, PurgeAndRetry, Retry
from .scripts._configfile import read_multidb

__all__ = ["EXIT_CODES", "main"]

EXIT_CODES: dict[type[AutomigratorError], int] = {
    ContentionError: 13,
    MigrationError: 1,
    ConfigurationError: 2,
    SchemaBehindError: 10,
    SchemaAheadError: 11,
    MultipleHeadsError: 12,
    DatabaseUnavailableError: 13,
    LockTimeoutError: 13,
    LockLostError: 13,
    UnversionedDatabaseError: 14,
    UnsafeMigrationError: 15,
    EditedRevisionError: 17,
    PartialMigrationError: 18,
    ShutdownRequestedError: 130,
}
BEHIND = 10
UNSAFE = 15
DRIFT = 16
EDITED = 17
DIRTY = 18

POLICIES: dict[str, FailurePolicy] = {
    "fail": Fail(),
    "continue": LogAndContinue(),
    "retry": Chain(Retry(), Fail()),
    "purge": Chain(Retry(), PurgeAndRetry(), Fail()),
}

EPILOG = """\
commands:
  upgrade   plan, lock, migrate, verify (the library's code path)
  check     exit 0 at head, 10 behind, 11 ahead, 12 several heads, 13 unreachable
  status    revisions, heads and pending revisions (--json for machines)
  plan      the pending revisions, with --sql their SQL: no DDL, no lock
  lint      the pending revisions' unsafe operations (exit 15 if any), weighed by
            the live tables' sizes; --since REV|base or --changed-from REF (what a
            git change adds) lints without a database, --dialect KIND for which
  drift     the live schema against env.py's target_metadata, as autogenerate
            compares them (exit 16 on any difference); nothing runs
  wait      block until another process has migrated (init containers)
  exclusively -- COMMAND...
            run COMMAND holding the migration lock, one process at a time
            (seeding after upgrade); exits with COMMAND's status
  history   every attempt at a revision: when, how long, outcome, who (--json)
  verify    the ledger's checksums against the files (exit 17 edited, 18 a
            revision left partly applied); nothing runs
  resolve REVISION --applied | --not-applied | --accept-checksum --reason TEXT
            a person's word, kept in the ledger: a partly applied revision
            finished by hand (stamped) or undone (runs again), or an edit
            of an applied revision accepted

examples:
  automigrator -c alembic.ini upgrade
  AUTOMIGRATOR_URL=postgresql+psycopg://app@db/app automigrator check
  automigrator status --json
  automigrator plan --sql > pending.sql
  automigrator lint --since base
  automigrator lint --changed-from origin/main --dialect postgresql
  automigrator upgrade --post-deploy      (after the rollout)
  automigrator drift --json
  automigrator verify && automigrator history
  automigrator resolve 3f2a --not-applied --reason "dropped the half-made index"
  automigrator wait --timeout 600
  automigrator upgrade && automigrator exclusively -- python -m app.seed

exit codes: 0 done, 1 migration failed, 2 settings, 10 behind, 11 ahead,
12 several heads, 13 unreachable or lock timeout, 14 unversioned, 15 unsafe
(lint), 16 drift, 17 edited, 18 partly applied, 130 stopped
"""


# The library's defaults, read from its settings objects: none is written twice.
TIMEOUTS, DDL, LINT, HISTORY = Timeouts(), Ddl(), Lint(), History()


class _Parser(argparse.ArgumentParser):
    """argparse, minus the passwords: a usage error may quote ``--url`` back."""

    def error(self, message: str) -> NoReturn:
        self.print_usage(sys.stderr)
        self.exit(2, f"{self.prog}: error: {mask_credentials(message)}\n")


def parser() -> argparse.ArgumentParser:
    root = _Parser(
        prog="automigrator",
        description="Bring a database to the Alembic scripts' head, safely; or check it.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    _common(root, defaults=True)
    # The same options after the command too (`upgrade -c alembic.ini`): there
    # they default to nothing, so the ones given before the command stand.
    after = _Parser(add_help=False)
    _common(after, defaults=False)
    commands = root.add_subparsers(dest="command", required=True, metavar="command")
    # What upgrade and lint share: the lint's threshold, and the DDL lock
    # timeout (whose absence the lint flags).
    linted = _Parser(add_help=False)
    linted.add_argument(
        "--lint-rows",
        type=int,
        default=LINT.rows,
        metavar="N",
        help=f"tables with fewer rows pass the rules that depend on size ({LINT.rows})",
    )
    linted.add_argument(
        "--ddl-lock-timeout",
        type=_seconds_or_none,
        default=DDL.lock_timeout,
        metavar="S",
        help="seconds a migration statement may wait for a table lock "
        f"({DDL.lock_timeout:g}; 'none': the server's)",
    )
    # Post-deploy revisions: left pending unless asked for (after the rollout).
    phase = _Parser(add_help=False)
    phase.add_argument(
        "--post-deploy",
        action="store_true",
        help="include the post-deploy revisions (post_deploy = True in their files), which "
        "are otherwise left pending: run this once every replica runs the new version",
    )
    upgrade = commands.add_parser(
        "upgrade", parents=[after, linted, phase], help="migrate to the target"
    )
    upgrade.add_argument(
        "--on-failure",
        choices=sorted(POLICIES),
        default="fail",
        help="fail (default), continue (exit 0, degraded), retry (transient), "
        "purge (back up, purge, migrate from scratch: unattended SQLite boxes)",
    )
    upgrade.add_argument("--baseline", help="stamp an unversioned database at this revision")
    upgrade.add_argument(
        "--then",
        metavar="COMMAND",
        help="once the database is at the target, run COMMAND under the migration lock, one "
        "process at a time (seeding); its exit status is passed on. Split as a shell would, "
        "run without one",
    )
    upgrade.add_argument(
        "--lint",
        choices=get_args(LintMode),
        default=LINT.mode,
        help=f"before any DDL, lint the pending revisions: log (warn), refuse (exit 15, "
        f"nothing changed) or off; default {LINT.mode}",
    )
    upgrade.add_argument(
        "--ddl-lock-retries",
        type=int,
        default=DDL.retries,
        metavar="N",
        help=f"tries again of a revision that met a busy table ({DDL.retries})",
    )
    upgrade.add_argument(
        "--ddl-budget",
        type=float,
        default=DDL.budget,
        metavar="S",
        help="seconds a revision may spend on a busy table, tries and waits for its "
        f"blockers, before the run ends as contention ({DDL.budget:g})",
    )
    commands.add_parser("check", parents=[after, phase], help="is the database at the target?")
    status = commands.add_parser(
        "status", parents=[after, phase], help="revisions, heads, pending"
    )
    status.add_argument("--json", action="store_true", help="machine-readable output")
    plan = commands.add_parser(
        "plan", parents=[after, phase], help="the pending revisions (and their SQL): nothing runs"
    )
    plan.add_argument(
        "--sql", action="store_true", help="each revision's SQL, rendered offline by env.py"
    )
    plan.add_argument("--json", action="store_true", help="machine-readable output")
    linting = commands.add_parser(
        "lint",
        parents=[after, linted, phase],
        help="unsafe pending operations (exit 15)",
    )
    offline = linting.add_mutually_exclusive_group()
    offline.add_argument(
        "--since",
        metavar="REV",
        help="lint every revision after REV ('base': all), without a database, each as if "
        "its tables were big",
    )
    offline.add_argument(
        "--changed-from",
        metavar="REF",
        help="lint the revision files git sees as added since REF (a branch, tag or commit), "
        "without a database, each as if its tables were big: what a change brings",
    )
    linting.add_argument(
        "--dialect",
        choices=sorted(_DRIVERS),
        help="with --since or --changed-from: the database kind the revisions are rendered "
        "and judged for, instead of the URL's (CI with no database and a placeholder URL)",
    )
    linting.add_argument("--json", action="store_true", help="machine-readable output")
    drifting = commands.add_parser(
        "drift",
        parents=[after],
        help="the schema against env.py's target_metadata (exit 16 on any difference)",
    )
    drifting.add_argument("--json", action="store_true", help="machine-readable output")
    wait = commands.add_parser(
        "wait", parents=[after, phase], help="block until the database is at the target"
    )
    wait.add_argument("--timeout", type=float, default=600.0, help="seconds (600)")
    exclusive = commands.add_parser(
        "exclusively",
        parents=[after],
        help="run a command holding the migration lock (seeding)",
    )
    exclusive.add_argument(
        "argv", nargs=argparse.REMAINDER, metavar="-- COMMAND", help="the command and its args"
    )
    resolve = commands.add_parser(
        "resolve", parents=[after], help="a person's word on a revision, kept in the ledger"
    )
    resolve.add_argument("revision", help="the revision the refusal names")
    decision = resolve.add_mutually_exclusive_group(required=True)
    for flag, meaning in (
        ("--applied", "you finished the partly applied revision by hand: stamp it applied"),
        ("--not-applied", "you undid what of it stayed: the next start runs it again"),
        ("--accept-checksum", "the edit of this applied revision is deliberate"),
    ):
        decision.add_argument(
            flag, dest="decision", action="store_const", const=flag[2:], help=meaning
        )
    resolve.add_argument("--reason", required=True, help="why: kept in the ledger with who")
    for name, said in (("history", "every attempt at a revision"), ("verify", "the checksums")):
        listing = commands.add_parser(name, parents=[after], help=said)
        listing.add_argument("--json", action="store_true", help="machine-readable output")
    return root


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit code."""
    args = parser().parse_args(argv)
    _logging(quiet=args.quiet)
    try:
        return anyio.run(_command, args)
    except AutomigratorError as exc:
        code = next((c for t, c in EXIT_CODES.items() if isinstance(exc, t)), 1)
        print(f"automigrator: {exc.message}", file=sys.stderr)
        return code
    except KeyboardInterrupt:
        return 130


def _common(parser: argparse.ArgumentParser, *, defaults: bool) -> None:
    env = os.environ.get

    def default(value: object) -> object:
        return value if defaults else argparse.SUPPRESS

    parser.add_argument(
        "-c",
        "--config",
        default=default(env("AUTOMIGRATOR_CONFIG", "alembic.ini")),
        help="alembic.ini or pyproject.toml (default: $AUTOMIGRATOR_CONFIG or alembic.ini)",
    )
    parser.add_argument(
        "--url",
        default=default(env("AUTOMIGRATOR_URL")),
        help="database URL (default: $AUTOMIGRATOR_URL, else the config's)",
    )
    parser.add_argument(
        "--target",
        default=default(env("AUTOMIGRATOR_TARGET", "head")),
        help="head, heads or a revision",
    )
    parser.add_argument(
        "--before-scripts",
        default=default(env("AUTOMIGRATOR_BEFORE_SCRIPTS")),
        metavar="MODULE:FUNCTION",
        help="a function that sets the app up before the scripts load (see before_scripts=)",
    )
    parser.add_argument(
        "--lock-url",
        default=default(env("AUTOMIGRATOR_LOCK_URL")),
        help="a direct URL for the migration lock only, when --url goes through a pooler "
        "(default: $AUTOMIGRATOR_LOCK_URL, else --url)",
    )
    parser.add_argument(
        "--history-table",
        default=default(env("AUTOMIGRATOR_HISTORY_TABLE", HISTORY.table)),
        help="the ledger's table, as History(table=) names it in the app "
        f"(default: $AUTOMIGRATOR_HISTORY_TABLE, else {HISTORY.table})",
    )
    parser.add_argument(
        "--app-version",
        default=default(env("AUTOMIGRATOR_APP_VERSION")),
        help="recorded in the ledger with each attempt (default: $AUTOMIGRATOR_APP_VERSION)",
    )
    parser.add_argument(
        "--lock-timeout",
        type=float,
        default=default(TIMEOUTS.lock),
        help=f"seconds ({TIMEOUTS.lock:g})",
    )
    parser.add_argument(
        "--connect-timeout",
        type=float,
        default=default(None),
        help=f"seconds to wait for the database ({TIMEOUTS.connect:g} for upgrade, wait, "
        f"exclusively and resolve; {_LOOK_CONNECT:g} for the commands that only look)",
    )
    parser.add_argument(
        "-q", "--quiet", action="store_true", default=default(False), help="only errors"
    )


# The commands a Job or an init container runs wait for a database that is
# still starting; the ones a person or CI runs to look answer soon.
_WAITING = ("upgrade", "wait", "exclusively", "resolve")
_LOOK_CONNECT = 10.0


# For --dialect: the drivers SQLAlchemy knows for each kind, the first one
# installed is used (a lint without a database imports no driver module, but
# the migrator builds its engine).
_MYSQL_DRIVERS = (("pymysql", "pymysql"), ("mysqldb", "MySQLdb"), ("mariadbconnector", "mariadb"))
_DRIVERS = {
    "postgresql": (("psycopg", "psycopg"), ("psycopg2", "psycopg2"), ("pg8000", "pg8000")),
    "mysql": _MYSQL_DRIVERS,
    "mariadb": _MYSQL_DRIVERS,
    "sqlite": (("pysqlite", "sqlite3"),),
}


def _dialect_url(dialect: str, url: str | None, *, offline: bool) -> str:
    """The URL a ``--dialect`` lint renders with: a placeholder of that kind, never
    connected to; a ``--url`` of another kind is a mistake to name."""
    if not offline:
        raise ConfigurationError(
            "--dialect is for a lint without a database (with --since or --changed-from); "
            "against a database, its URL says the kind."
        )
    if url is not None:
        given = sa.make_url(url).get_backend_name()
        if given != dialect:
            raise ConfigurationError(
                f"--dialect {dialect}, but --url is a {given} URL: drop one of the two."
            )
        return url
    if dialect == "sqlite":
        return "sqlite://"
    found = next(
        (driver for driver, module in _DRIVERS[dialect] if importlib.util.find_spec(module)),
        _DRIVERS[dialect][0][0],
    )
    return f"{dialect}+{found}://ci@localhost/ci"


def _seconds_or_none(text: str) -> float | None:
    if text.strip().lower() == "none":
        return None
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not seconds: give a number or 'none'"
        ) from None


async def _command(args: argparse.Namespace) -> int:
    # The switch the app obeys, obeyed here too: a Job or init container that
    # shares the pods' environment migrates only if they would. Only
    # ``upgrade`` migrates; the other commands change no schema, but a value
    # that is not a switch is a mistake wherever it is read.
    switch = Switch()
    switch.read()
    post_deploy = getattr(args, "post_deploy", False)
    options: dict[str, Any] = {
        "url": args.url,
        "target": args.target,
        "enabled": Switch(
            enabled=None if args.command == "upgrade" else True, post_deploy=post_deploy
        ),
        "before_scripts": _resolve(args.before_scripts),
    }
    connect = args.connect_timeout
    if connect is None:
        connect = TIMEOUTS.connect if args.command in _WAITING else _LOOK_CONNECT
    timeouts = Timeouts(
        connect=connect,
        lock=args.lock_timeout,
        check=args.timeout if args.command == "wait" else TIMEOUTS.check,
    )
    options["timeouts"] = timeouts
    options["history"] = History(table=args.history_table, app_version=args.app_version)
    if args.lock_url:
        options["lock_url"] = args.lock_url
    if args.command == "lint" and args.dialect is not None:
        options["url"] = _dialect_url(
            args.dialect, args.url, offline=bool(args.since or args.changed_from)
        )
    if args.command in ("upgrade", "lint"):
        upgrading = args.command == "upgrade"
        options["ddl"] = Ddl(
            lock_timeout=args.ddl_lock_timeout,
            retries=args.ddl_lock_retries if upgrading else DDL.retries,
            budget=args.ddl_budget if upgrading else DDL.budget,
        )
        mode = args.lint if args.command == "upgrade" else LINT.mode
        options["lint"] = Lint(mode=mode, rows=args.lint_rows)
    if args.command == "upgrade":
        options.update(on_failure=POLICIES[args.on_failure], baseline=args.baseline)
        then = _then(args.then)  # a mistake in it is found before any migration
        runner = _runner(args.config, options)
        single = _one_lock(runner, args.config, "--then") if then else None
        status = await runner.run()
        state = status.state.value
        if single is not None and state == "ready":
            return await _holding_the_lock(single, then, at_target=True)
        if then:
            # Disabled: this process does no start-up schema work. Degraded:
            # the schema is not what the command was written for.
            logging.getLogger("automigrator").warning(
                "Not running --then (%s): the migration is %s", then[0], state
            )
        return 0 if state in ("ready", "degraded", "disabled") else 1
    if args.command == "wait":
        options.update(mode="check")
        await _runner(args.config, options).run()
        return 0
    runner = _runner(args.config, options)
    members = runner.migrators if isinstance(runner, MigratorGroup) else {"": runner}
    if args.command == "exclusively":
        return await _exclusively(args.config, options, args.argv)
    if args.command == "resolve":
        refusals: list[ConfigurationError] = []
        for migrator in members.values():  # a group: the database(s) that know it
            try:
                await migrator.resolve(args.revision, args.decision, reason=args.reason)
            except ConfigurationError as exc:
                refusals.append(exc)
        if len(refusals) == len(members):
            raise refusals[0]
        said = {
            "applied": "stamped applied",
            "not-applied": "the next start runs it again",
            "accept-checksum": "its file as it is now is the one the ledger trusts",
        }
        print(f"automigrator: {args.revision} resolved ({said[args.decision]}); in the history")
        return 0
    if args.command == "history":
        return _history(members, as_json=args.json)
    if args.command == "verify":
        return await _verify(members, as_json=args.json)
    if args.command == "plan":
        previews = {name: await preview(m, sql=args.sql) for name, m in members.items()}
        _print_previews(previews, as_json=args.json)
        return 0
    if args.command == "lint":
        linted = {
            name: await lint(m, since=args.since, changed_from=args.changed_from)
            for name, m in members.items()
        }
        _print_lint(linted, as_json=args.json)
        return UNSAFE if any(r.flagged for r in linted.values()) else 0
    if args.command == "drift":
        drifted = {name: await drift(m) for name, m in members.items()}
        _print_drift(drifted, as_json=args.json)
        return DRIFT if any(r.differences for r in drifted.values()) else 0
    reports: dict[str, dict[str, Any]] = {}
    behind: list[str] = []
    for name, migrator in members.items():
        plan = await migrator.plan()
        if args.command == "check":
            # Ahead, several heads, unversioned: each has its own exit code.
            migrator.raise_for_plan(plan)
            if plan.past_target:
                print(
                    f"automigrator: {name + ': ' if name else ''}the database is at "
                    f"{', '.join(plan.db_revisions)}, past the target {', '.join(plan.heads)}: "
                    "nothing to do (automigrator never downgrades)",
                    file=sys.stderr,
                )
            if plan.kind == "at_head" and not plan.past_target:
                left = plan.post_deploy
                print(
                    f"automigrator: {name + ': ' if name else ''}at the target: the "
                    f"database is at {', '.join(plan.db_revisions)}"
                    + (
                        f" (post-deploy, left for --post-deploy: {', '.join(left)})"
                        if left
                        else ""
                    ),
                    file=sys.stderr,
                )
            if plan.kind != "at_head":
                behind.append(
                    f"{name + ': ' if name else ''}the database is at "
                    f"{', '.join(plan.db_revisions) or 'base'}, the target is "
                    f"{', '.join(plan.heads)} ({len(plan.pending)} revision(s) pending)"
                )
            continue
        reports[name] = {
            "database": display(migrator.url),
            "plan": plan.kind,
            "revisions": list(plan.db_revisions),
            "heads": list(plan.heads),
            "pending": list(plan.pending),
            "post_deploy": list(plan.post_deploy),
            "unknown": list(plan.unknown),
        }
    if args.command == "check":
        for line in behind:
            print(f"automigrator: behind: {line}", file=sys.stderr)
        return BEHIND if behind else 0
    if args.json:
        _print_json(reports)
        return 0
    for name, report in reports.items():
        if name:
            print(f"[{name}]")
        width = max(len(k) for k in report)
        for key, value in report.items():
            shown = ", ".join(value) if isinstance(value, list) else value
            print(f"{key:<{width}}  {shown or '-'}")
    return 0


_HISTORY_COLUMNS = ("id", "at", "revision", "outcome", "duration", "host", "pid", "app_version")


def _history(members: dict[str, AutoMigrator], *, as_json: bool) -> int:
    entries = {name: m.ledger.entries() if m.ledger else [] for name, m in members.items()}
    if as_json:
        print(json.dumps({n: [e.to_dict() for e in rows] for n, rows in entries.items()}))
        return 0
    for name, rows in entries.items():
        if name:
            print(f"[{name}]")
        if not rows:
            print("(no ledger, or nothing recorded yet)")
            continue
        table = [_HISTORY_COLUMNS] + [_history_row(e.to_dict()) for e in rows]
        widths = [max(len(row[i]) for row in table) for i in range(len(_HISTORY_COLUMNS))]
        for row in table:
            print(
                "  ".join(
                    cell.ljust(width) for cell, width in zip(row, widths, strict=True)
                ).rstrip()
            )
    return 0


def _history_row(entry: dict[str, Any]) -> tuple[str, ...]:
    def shown(key: str) -> str:
        value = entry[key]
        if value is None:
            return "-"
        return f"{value:.3f}s" if key == "duration" else str(value)

    return tuple(shown(key) for key in _HISTORY_COLUMNS)


async def _verify(members: dict[str, AutoMigrator], *, as_json: bool) -> int:
    code, report = 0, {}
    for name, migrator in members.items():
        plan = await migrator.plan()
        audit = plan.audit
        edits = [edit.describe() for edit in audit.edited] if audit else []
        dirty = audit.dirty.refusal().message if audit and audit.dirty else None
        report[name] = {
            "ledger": bool(audit and audit.ledger),
            "edited": edits,
            "partly_applied": dirty,
            "unrecorded": list(audit.unrecorded) if audit else [],
            "unchecked": list(audit.unchecked) if audit else [],
        }
        code = max(code, DIRTY if dirty else EDITED if edits else 0)
        if not as_json:
            where = f"{name}: " if name else ""
            for line in edits + ([dirty] if dirty else []):
                print(f"automigrator: {where}{line}", file=sys.stderr)
            if audit and audit.unrecorded:
                print(
                    f"automigrator: {where}{len(audit.unrecorded)} applied revision(s) are not "
                    "in the ledger yet (the next start adopts them)",
                    file=sys.stderr,
                )
            if audit and audit.unchecked:
                print(
                    f"automigrator: {where}{len(audit.unchecked)} applied revision(s) have no "
                    "checksum (sourceless files): not checked",
                    file=sys.stderr,
                )
            if not edits and not dirty:
                print(f"automigrator: {where}every recorded revision matches its file")
    if as_json:
        print(json.dumps(report))
    return code


def _print_json(by_name: dict[str, dict[str, Any]]) -> None:
    # One database: its object; a group: {"databases": {name: object}}.
    print(json.dumps(by_name.get("", {"databases": by_name})))


def _print_previews(previews: dict[str, Preview], *, as_json: bool) -> None:
    if as_json:
        _print_json({name: p.to_dict() for name, p in previews.items()})
        return
    # Valid SQL as a whole: everything but the SQL itself is a comment.
    for name, shown in previews.items():
        where = f"{name}: " if name else ""
        print(
            f"-- {where}{shown.database}: {shown.plan}, at "
            f"{', '.join(shown.revisions) or 'base'}, target {', '.join(shown.heads)}, "
            f"{len(shown.pending)} revision(s) pending"
            + (
                f"; post-deploy, left for --post-deploy: {', '.join(shown.post_deploy)}"
                if shown.post_deploy
                else ""
            )
        )
        for line in shown.script():
            print(line)


def _print_lint(reports: dict[str, LintReport], *, as_json: bool) -> None:
    if as_json:
        _print_json({name: r.to_dict() for name, r in reports.items()})
        return
    for name, report in reports.items():
        where = f"{name}: " if name else ""
        squawk = "with squawk" if report.squawk else "without squawk"
        print(
            f"{where}{report.database}: {len(report.revisions)} revision(s) linted "
            f"({squawk}; tables under {report.threshold:,} rows pass the size rules), "
            f"{len(report.flagged)} finding(s)"
        )
        for f in report.findings:
            label = {
                "flagged": "UNSAFE",
                "allowed": "allowed",
                "small": "passed",
                "post_deploy": "post-deploy",
            }[f.verdict]
            print(f"{label}: {f} [{f.where}]")
        for revision, why in report.not_linted:
            print(f"not linted past its failure: revision {revision} ({why})")


def _print_drift(reports: dict[str, DriftReport], *, as_json: bool) -> None:
    if as_json:
        _print_json({name: r.to_dict() for name, r in reports.items()})
        return
    for name, report in reports.items():
        print(f"{name}: {report}" if name else report)


async def _exclusively(config: str, options: dict[str, Any], argv: list[str]) -> int:
    # The shell's start-up seeding, one process at a time, as exclusively()
    # does in an application: the lock is held while COMMAND runs.
    command = argv[1:] if argv[:1] == ["--"] else argv
    if not command:
        raise ConfigurationError(
            "exclusively needs a command to run: automigrator exclusively -- python -m app.seed"
        )
    return await _holding_the_lock(
        _one_lock(_runner(config, options), config, "the command"), command
    )


def _then(text: str | None) -> list[str]:
    if text is None:
        return []
    try:
        command = shlex.split(text)
    except ValueError as exc:
        raise ConfigurationError(f"--then {text!r} cannot be split into words: {exc}.") from exc
    if not command:
        raise ConfigurationError(
            "--then needs a command to run: automigrator upgrade --then 'python -m app.seed'"
        )
    return command


def _one_lock(runner: AutoMigrator | MigratorGroup, config: str, what: str) -> AutoMigrator:
    """The one migrator whose lock a command holds; a group has several locks."""
    if isinstance(runner, MigratorGroup):
        raise ConfigurationError(
            f"{config!r} lists several databases (the multidb template): give --url for the "
            f"one whose lock {what} should hold."
        )
    return runner


async def _holding_the_lock(
    migrator: AutoMigrator, command: list[str], *, at_target: bool = False
) -> int:
    async with migrator.exclusively():
        if at_target:
            # The lock was let go after the upgrade and taken again: another
            # process may have started a newer migration in between, and
            # left it half done. The command was written for the target.
            plan = await migrator.plan()
            migrator.raise_for_plan(plan)  # ahead of this code now, and the like
            if plan.kind != "at_head":
                raise SchemaBehindError(
                    f"Not running --then ({command[0]}): between the upgrade and the command "
                    f"the database left the target (it is {plan.kind.replace('_', ' ')}: "
                    f"{', '.join(plan.db_revisions) or 'base'}); another process is migrating "
                    "it, or stopped half way. Start again once it is at the target."
                )
        try:
            done = await anyio.run_process(command, stdout=None, stderr=None, check=False)
        except OSError as exc:
            raise ConfigurationError(f"Could not run {command[0]!r}: {exc}.") from exc
    # Killed by a signal: the shell's 128 + N (SIGKILL: 137), not Python's -N & 255.
    return done.returncode if done.returncode >= 0 else 128 - done.returncode


def _runner(config: str, options: dict[str, Any]) -> AutoMigrator | MigratorGroup:
    # The multidb template's config lists its databases; with --url there is
    # one database, as the user said.
    if options["url"] is None and _is_multidb(config):
        if "lock_url" in options:
            raise ConfigurationError(
                f"--lock-url names one database, but {config!r} lists several (the multidb "
                "template): give --url and --lock-url together, for one of them."
            )
        options = {k: v for k, v in options.items() if k != "url"}
        return MigratorGroup.from_multidb(config, **options)
    return AutoMigrator(config, **options)


def _is_multidb(config: str) -> bool:
    try:
        read_multidb(config)
    except ConfigurationError:
        return False
    return True


def _resolve(name: str | None) -> Any:
    if not name:
        return None
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())  # as 'python -m' would: the app's own package
    try:
        return pkgutil.resolve_name(name)
    except (ImportError, AttributeError, ValueError) as exc:
        raise ConfigurationError(
            f"--before-scripts {name!r}: {type(exc).__name__}: {exc}. Give it as "
            "'package.module:function', importable from the working folder."
        ) from exc


class _Progress(logging.Handler):
    """Our log lines on stderr; on a terminal, the applied revisions overwrite one line."""

    def __init__(self) -> None:
        super().__init__()
        self.tty = sys.stderr.isatty()
        self.started = time.monotonic()
        self.open_line = False

    def emit(self, record: logging.LogRecord) -> None:
        message = record.getMessage()
        elapsed = time.monotonic() - self.started
        if self.tty and message.startswith("Applied "):
            # "Applied 3/40 r3 add email in 0.01 s" -> one line, rewritten.
            sys.stderr.write(f"\r\x1b[2K[{elapsed:6.1f} s] {message}")
            self.open_line = True
        else:
            if self.open_line:
                sys.stderr.write("\n")
                self.open_line = False
            sys.stderr.write(f"[{elapsed:6.1f} s] {message}\n")
        sys.stderr.flush()


def _logging(*, quiet: bool) -> None:
    logger = logging.getLogger("automigrator")
    logger.addHandler(_Progress())
    logger.setLevel(logging.ERROR if quiet else logging.INFO)
    logger.propagate = False
