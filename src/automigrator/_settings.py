"""The settings of a migrator: frozen objects, each validated where it is built.

In the spirit of httpx's ``Timeout`` and ``Limits``: each group of related
options is one small frozen object whose ``__post_init__`` raises a
:class:`~automigrator.ConfigurationError` naming the field at fault, so a
wrong value fails where it is written, never at the first start. The
defaults live here once; the command line reads them from these classes.
:class:`MigratorSettings` gathers one migrator's settings; its collaborators
(the waits, the upgrade, the lint) are handed the same frozen objects, so
what one sees every other sees.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Literal

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from ._checks import choice, count, flag, seconds
from .database._connections import VersionTable
from .errors import ConfigurationError
from .locking import MigrationLock
from .policies import Fail, FailurePolicy

logger = logging.getLogger("automigrator")

Mode = Literal["migrate", "check"]
"""``migrate`` (the default) or ``check``: never migrate, wait for the target."""
WhenDisabled = Literal["skip", "check"]
WhenAhead = Literal["compatible", "refuse", "serve"]
LintMode = Literal["warn", "refuse", "off"]
OnEdit = Literal["refuse", "warn", "off"]
DriftMode = Literal["off", "warn"]
LockOption = MigrationLock | Literal["auto"] | None
"""The ``lock=`` argument: ``"auto"`` (the database's own lock), a lock, or None."""


@dataclass(frozen=True)
class Timeouts:
    """How long each wait of a run may last, in seconds.

    Args:
        connect: keep trying this long while the database refuses connections
            (it is still starting), backing off between tries; ``0`` fails
            at once. Bad credentials are never retried.
        lock: wait this long for another process's migration (the lock).
        check: check mode waits this long for another process to bring the
            database to the target.
        shutdown: with ``block_startup=False``, how long a shutdown waits for
            the running revision; the run stops before the next.
    """

    connect: float = 60.0
    lock: float = 300.0
    check: float = 300.0
    shutdown: float = 30.0

    def __post_init__(self) -> None:
        for name in ("connect", "lock", "check", "shutdown"):
            # 0 means "one try" for connect and "do not wait" for shutdown.
            zero = name in ("connect", "shutdown")
            object.__setattr__(
                self, name, seconds("Timeouts", name, getattr(self, name), zero=zero)
            )


@dataclass(frozen=True)
class Ddl:
    """How the migration's own statements treat a busy table (see Live databases).

    Args:
        lock_timeout: seconds a migration statement may wait for a table lock
            (PostgreSQL ``lock_timeout``, MySQL/MariaDB ``lock_wait_timeout``
            in whole seconds, at least 1, SQLite's busy timeout): every query
            on a busy table queues behind the waiting statement for at most
            that long (up to twice it on later tries); ``None`` leaves the
            server's setting.
        retries: how many times a revision that met a busy table (lock
            timeout, deadlock, serialization failure) with nothing of it kept
            is tried again: each try can stall the table's queries once.
            Between tries the migrator waits, outside the table's lock queue,
            for the transactions that blocked it to end, then tries at once.
        budget: seconds a revision may spend meeting a busy table (its tries and
            the waits between them) before the run ends as ``contention``,
            naming the blocker.
        progress_interval: seconds between "still applying" lines of a long revision.
    """

    lock_timeout: float | None = 0.25
    retries: int = 10
    budget: float = 120.0
    progress_interval: float = 10.0

    def __post_init__(self) -> None:
        if self.lock_timeout is not None:
            timeout = seconds("Ddl", "lock_timeout", self.lock_timeout)
            object.__setattr__(self, "lock_timeout", timeout)
        count("Ddl", "retries", self.retries)
        object.__setattr__(self, "budget", seconds("Ddl", "budget", self.budget))
        interval = seconds("Ddl", "progress_interval", self.progress_interval)
        object.__setattr__(self, "progress_interval", interval)


@dataclass(frozen=True)
class Lint:
    """The lint of the pending revisions, before any DDL (see the Plan and lint page).

    Args:
        mode: ``"warn"`` (log the findings, keep them in the status),
            ``"refuse"`` (:class:`~automigrator.UnsafeMigrationError`, nothing
            changed) or ``"off"``. ``lint="refuse"`` is short for
            ``lint=Lint(mode="refuse")``.
        rows: tables with fewer rows pass the rules that depend on size.
    """

    mode: LintMode = "warn"
    rows: int = 100_000

    def __post_init__(self) -> None:
        choice("Lint", "mode", self.mode, ("warn", "refuse", "off"))
        count("Lint", "rows", self.rows)


@dataclass(frozen=True)
class History:
    """The ledger of every attempt at a revision, and what a start checks against it.

    See the History and integrity page.

    Args:
        table: the ledger's name, in the version table's schema. ``None``: no
            ledger (nothing recorded or checked, and a revision killed half
            way on MySQL/MariaDB is not noticed by the next start).
        on_edit: an applied revision's file changed since it ran:
            ``"refuse"`` (:class:`~automigrator.EditedRevisionError` before
            any DDL), ``"warn"`` (a warning per start), or ``"off"``.
        app_version: your application's version, recorded with each attempt.
        drift: ``"warn"``: after each upgrade, compare the schema with
            env.py's ``target_metadata`` and log each difference.
        when_ahead: a database ahead of the code (an old replica restarted
            during a rollout, a rollback deploy), if it holds every revision
            this code needs: ``"compatible"`` serves when the ledger records
            every revision this code does not know as compatible with the
            version before it (the lint's verdict when it was applied), and
            refuses (:class:`~automigrator.SchemaAheadError`, naming the
            revision) otherwise; ``"refuse"`` refuses; ``"serve"`` serves.
        rerun_failed_after: seconds after a revision failed before a start
            runs the same file again; sooner, the start fails at once with
            that failure, nothing run. A server that restarts a worker whose
            start-up failed (uvicorn 0.30-0.49 with ``--workers``) would
            otherwise run it again every second or two. ``0``: always run.
    """

    table: str | None = "automigrator_history"
    on_edit: OnEdit = "refuse"
    app_version: str | None = None
    drift: DriftMode = "off"
    when_ahead: WhenAhead = "compatible"
    rerun_failed_after: float = 60.0

    def __post_init__(self) -> None:
        if self.table is not None and not (
            isinstance(self.table, str) and self.table.strip() and len(self.table) <= 63
        ):
            raise ConfigurationError(
                f"History(table={self.table!r}): name the ledger's table (at most 63 "
                "characters, PostgreSQL's limit), or None for no ledger."
            )
        choice("History", "on_edit", self.on_edit, ("refuse", "warn", "off"))
        choice("History", "drift", self.drift, ("off", "warn"))
        choice("History", "when_ahead", self.when_ahead, ("compatible", "refuse", "serve"))
        after = seconds("History", "rerun_failed_after", self.rerun_failed_after, zero=True)
        object.__setattr__(self, "rerun_failed_after", after)
        if self.app_version is not None and not (
            isinstance(self.app_version, str) and len(self.app_version) <= 255
        ):
            raise ConfigurationError(
                f"History(app_version={self.app_version!r:.80}): pass a string of at most 255 "
                "characters (your release), or None."
            )


_TRUE = frozenset({"1", "true", "yes", "on"})
_FALSE = frozenset({"0", "false", "no", "off"})


@dataclass(frozen=True)
class Switch:
    """Whether a start runs migrations (fixed, or read once from an environment variable),
    and whether it runs the post-deploy ones.

    ``enabled=True`` or ``enabled=False`` on the migrator is short for
    ``Switch(enabled=...)``.

    Args:
        env_var: the variable read when ``enabled`` is None.
        default: the switch when that variable is unset. ``True``: code that
            installs the migrator means to migrate, and a forgotten variable
            must not leave an app serving an old schema.
        enabled: a fixed value; the variable is then not read.
        when_disabled: the switch off means ``"skip"`` (touch nothing) or
            ``"check"`` (check mode: wait for the target, never migrate).
        post_deploy: whether a run applies post-deploy revisions (files that
            say ``post_deploy = True``). ``False``: a start leaves them pending
            and is ready without them, for ``automigrator upgrade --post-deploy``
            once the rollout is done; an empty database gets them all anyway.
            ``True`` (what ``--post-deploy`` sets): a deployment with no
            rollout, a single instance.
    """

    env_var: str = "RUN_MIGRATIONS"
    default: bool = True
    enabled: bool | None = None
    when_disabled: WhenDisabled = "skip"
    post_deploy: bool = False

    def __post_init__(self) -> None:
        if not isinstance(self.env_var, str) or not self.env_var:
            raise ConfigurationError(f"Switch(env_var={self.env_var!r}): name a variable.")
        flag("Switch", "default", self.default)
        if self.enabled is not None:
            flag("Switch", "enabled", self.enabled)
        choice("Switch", "when_disabled", self.when_disabled, ("skip", "check"))
        flag("Switch", "post_deploy", self.post_deploy)

    def read(self, environ: Mapping[str, str] | None = None) -> tuple[bool, str]:
        """The switch, and a phrase saying where it came from (for the log)."""
        if self.enabled is not None:
            return self.enabled, f"enabled={self.enabled}"
        env = os.environ if environ is None else environ
        raw = env.get(self.env_var)
        if raw is None:
            state = "on" if self.default else "off"
            return self.default, f"{self.env_var} is unset; default {state}"
        # Set but empty is not unset: "RUN_MIGRATIONS=" is a mistake to name, as
        # the docs promise for anything but the switch words.
        return parse_switch(self.env_var, raw), f"{self.env_var}={raw.strip()}"


def parse_switch(name: str, value: str) -> bool:
    """Read a switch value; anything but the known words is an error, never a silent False."""
    word = value.strip().lower()
    if word in _TRUE:
        return True
    if word in _FALSE:
        return False
    raise ConfigurationError(
        f"{name}={value!r} is not a switch value. Use one of 1/0, true/false, yes/no, "
        "on/off (any case), or unset it to use the default."
    )


@dataclass(frozen=True)
class Baseline:
    """Where a database the migrations did not make starts (see the recipe).

    ``baseline="0001"`` is short for ``Baseline("0001")``.

    Args:
        revision: the revision that tables made outside the migrations
            match; a database with tables and no version table is stamped
            there (nothing runs, the rows stay) and upgraded from it.
            ``"base"``: the first revision expects those tables (MLflow).
        create: what makes those tables (a ``MetaData``, whose
            ``create_all(checkfirst=True)`` is run, or a function of a
            ``Connection``), for a create_all-first app: on an empty
            database, and on one with tables but no version table (only what
            is missing), before the stamp. Run under the migration lock, on
            env.py's connection and in its transaction: fenced as a revision.
    """

    revision: str
    create: sa.MetaData | Callable[[Connection], None] | None = None

    def __post_init__(self) -> None:
        if not (isinstance(self.revision, str) and self.revision):
            raise ConfigurationError(
                f"Baseline(revision={self.revision!r}): name a revision id, or 'base'."
            )
        if not (
            self.create is None or isinstance(self.create, sa.MetaData) or callable(self.create)
        ):
            raise ConfigurationError(
                f"Baseline(create={self.create!r}): pass a MetaData (its create_all() is run) "
                "or a function that takes a Connection, or None."
            )

    def create_tables(self, connection: Connection) -> None:
        """Make what ``create`` makes, on ``connection``."""
        if isinstance(self.create, sa.MetaData):
            self.create.create_all(connection, checkfirst=True)
        elif self.create is not None:
            self.create(connection)


@dataclass(frozen=True)
class MigratorSettings:
    """One migrator's settings, validated as a whole; read it as ``migrator.settings``.

    Built by :class:`~automigrator.AutoMigrator` from its arguments (see
    there); frozen, and shared by every part of the migrator.
    """

    # No defaults here: AutoMigrator's signature and the settings classes
    # hold each one once.
    target: str
    switch: Switch
    timeouts: Timeouts
    ddl: Ddl
    lint: Lint
    version_table: VersionTable
    baseline: Baseline | None
    mode: Mode
    history: History
    block_startup: bool

    @property
    def when_ahead(self) -> WhenAhead:
        """``history.when_ahead``."""
        return self.history.when_ahead

    def __post_init__(self) -> None:
        target = self.target
        if target == "base":
            raise ConfigurationError(
                "target='base' would mean a downgrade to nothing: automigrator only upgrades. "
                "Use 'head', 'heads', a revision id or a branch label; downgrade with the "
                "Alembic CLI."
            )
        if not isinstance(target, str) or not target or target[0] in "+-" or ":" in target:
            raise ConfigurationError(
                f"target={target!r} is not a start-up target. Use 'head', 'heads', a revision "
                "id or a branch label; relative targets and ranges would move on every start."
            )
        choice("AutoMigrator", "mode", self.mode, ("migrate", "check"))
        flag("AutoMigrator", "block_startup", self.block_startup)
        for name, kind in (
            ("switch", Switch),
            ("timeouts", Timeouts),
            ("ddl", Ddl),
            ("lint", Lint),
            ("history", History),
            ("version_table", VersionTable),
            ("baseline", (Baseline, type(None))),
        ):
            if not isinstance(getattr(self, name), kind):
                what = kind.__name__ if isinstance(kind, type) else kind[0].__name__
                raise ConfigurationError(
                    f"AutoMigrator({name}={getattr(self, name)!r}): pass a {what}."
                )

    @classmethod
    def build(
        cls,
        *,
        enabled: bool | Switch | None,
        timeouts: Timeouts | None,
        ddl: Ddl | None,
        lint: LintMode | Lint | None,
        version_table: str | VersionTable | None,
        history: History | None = None,
        baseline: str | Baseline | None = None,
        **rest: Any,
    ) -> MigratorSettings:
        """From ``AutoMigrator``'s arguments: None is the object's defaults, and the
        shorthands (``lint="refuse"``, ``version_table="v"``, ``enabled=False``)."""
        if lint is None or isinstance(lint, str):
            lint = Lint() if lint is None else Lint(mode=lint)
        if version_table is None or isinstance(version_table, str):
            version_table = VersionTable(*(() if version_table is None else (version_table,)))
        switch = enabled if isinstance(enabled, Switch) else Switch(enabled=enabled)
        if baseline is not None and not isinstance(baseline, Baseline):
            try:
                baseline = Baseline(baseline)
            except ConfigurationError:
                raise ConfigurationError(
                    f"AutoMigrator(baseline={baseline!r}): name a revision id, pass a "
                    "Baseline, or None."
                ) from None
        return cls(
            baseline=baseline,
            switch=switch,
            timeouts=timeouts if timeouts is not None else Timeouts(),
            ddl=ddl if ddl is not None else Ddl(),
            lint=lint,
            version_table=version_table,
            history=history if history is not None else History(),
            **rest,
        )


def failure_policy(on_failure: object) -> FailurePolicy:
    """``on_failure=``, checked; None is :class:`~automigrator.Fail`."""
    if on_failure is None:
        return Fail()
    if not isinstance(on_failure, FailurePolicy):
        raise ConfigurationError(
            f"on_failure={on_failure!r} is not a failure policy: it needs "
            "'async def handle(self, failure) -> Decision'."
        )
    return on_failure


def lock_option(lock: object, lock_url: object) -> LockOption:
    """``lock=`` (with ``lock_url=``), checked; ``lock=None`` is allowed, with a warning."""
    if not (lock is None or lock == "auto" or isinstance(lock, MigrationLock)):
        raise ConfigurationError(
            f"lock={lock!r} is not a lock. Use 'auto', None, or an object with "
            "acquire(timeout), release() and holder()."
        )
    if lock_url is not None and lock != "auto":
        raise ConfigurationError(
            "lock_url= is for the database's own lock (lock='auto'); a lock you pass as "
            "lock= brings its own connection. Drop one of the two."
        )
    if lock is None:
        logger.warning(
            "Migration lock disabled (lock=None): concurrent replicas may migrate at the same "
            "time and fail."
        )
    return lock
