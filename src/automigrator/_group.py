"""``MigratorGroup``: several databases, one start-up, all or nothing.

Each member is a whole :class:`~automigrator.AutoMigrator` (its own config,
lock, timeouts and failure policy). The group plans every database before
any of them changes, then runs the members one after the other in the
stated order; the application starts only when every one is ready (or
degraded, if its policy says so).
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable, Mapping
from typing import Any

from sqlalchemy.engine import URL

from ._checks import seconds
from ._lifespan import MigrationRunner
from ._migrator import AutoMigrator
from ._status import MigrationState, MigrationStatus
from .database._connections import display
from .errors import ConfigurationError, ShutdownRequestedError
from .events import Listener
from .scripts._configfile import read_multidb

logger = logging.getLogger("automigrator")

__all__ = ["MigratorGroup"]

# The group's state from its members': the first that applies wins.
_RUNNING = (MigrationState.MIGRATING, MigrationState.WAITING, MigrationState.PENDING)


class MigratorGroup(MigrationRunner):
    """Several databases migrated at start-up, in the stated order, all or nothing.

    ``MigratorGroup({"users": AutoMigrator(...), "billing": AutoMigrator(...)})``
    is used like one migrator: ``lifespan=group.lifespan``,
    ``AutoMigrateMiddleware(app, migrator=group)``, ``HealthApp(group)``.

    - Every database is planned first (one query each at head). One that
      cannot go ahead (unreachable, ahead of the code, several heads) is
      handled first, by its own failure policy, before any database changes.
    - Then each member runs in the order given, taking its own lock (never
      two at once, so replicas cannot deadlock), with its own policy.
    - Under :class:`~automigrator.Fail`, the first failure fails the start-up
      and the databases after it are left untouched. Databases already
      migrated stay migrated: there is no transaction across databases.
    - ``status`` is the whole group's (the worst member's state); its
      ``databases`` holds each member's status by name, as the health
      endpoint shows.

    Args:
        migrators: name to migrator, in the order to migrate.
        block_startup: as for :class:`~automigrator.AutoMigrator`; the
            members' own ``block_startup`` is not used.
        shutdown_timeout: in the background, how long a shutdown waits for
            the running revision; default: the longest of the members'
            ``timeouts.shutdown``.
    """

    def __init__(
        self,
        migrators: Mapping[str, AutoMigrator],
        *,
        block_startup: bool = True,
        shutdown_timeout: float | None = None,
    ) -> None:
        if not isinstance(migrators, Mapping) or not migrators:
            raise ConfigurationError(
                f"MigratorGroup needs a mapping of name to AutoMigrator, got {migrators!r}."
            )
        seen: dict[tuple[str, str], str] = {}
        for name, migrator in migrators.items():
            if not isinstance(name, str) or not name:
                raise ConfigurationError(f"MigratorGroup: {name!r} is not a database name.")
            if not isinstance(migrator, AutoMigrator):
                raise ConfigurationError(
                    f"MigratorGroup: {name!r} is {migrator!r}, not an AutoMigrator."
                )
            where = (display(migrator.url), str(migrator.version_table))
            if where in seen:
                raise ConfigurationError(
                    f"MigratorGroup: {seen[where]!r} and {name!r} both migrate {where[0]} "
                    f"with the version table {where[1]!r}. Give each its own database or "
                    "version_table=."
                )
            seen[where] = name
        if shutdown_timeout is None:
            shutdown_timeout = max(m.settings.timeouts.shutdown for m in migrators.values())
        else:
            shutdown_timeout = seconds(
                "MigratorGroup", "shutdown_timeout", shutdown_timeout, zero=True
            )
        super().__init__(block_startup=block_startup, shutdown_timeout=shutdown_timeout)
        self.migrators: dict[str, AutoMigrator] = dict(migrators)
        self._stopping = False
        self._duration: float | None = None

    @classmethod
    def from_multidb(
        cls,
        config: str | os.PathLike[str],
        *,
        urls: Mapping[str, str | URL] | None = None,
        block_startup: bool = True,
        shutdown_timeout: float | None = None,
        **options: Any,
    ) -> MigratorGroup:
        """A group for Alembic's ``multidb`` template: one member per listed database.

        The config's ``databases = engine1, engine2`` gives the names and the
        order; each ``[engine1]`` section its ``sqlalchemy.url``, unless
        ``urls`` gives it. Each member runs the template's env.py, unchanged,
        with only its own database listed, so each database is planned,
        locked and migrated on its own. ``options`` go to every
        :class:`~automigrator.AutoMigrator` (``on_failure``, timeouts...).
        """
        listed = read_multidb(config)
        extra = sorted(set(urls or {}) - set(listed))
        if extra:
            raise ConfigurationError(
                f"urls= names {', '.join(map(repr, extra))}, which {str(config)!r} does not "
                f"list in 'databases' ({', '.join(listed)})."
            )
        members: dict[str, AutoMigrator] = {}
        for name, found in listed.items():
            url = (urls or {}).get(name, found)
            if url is None:
                raise ConfigurationError(
                    f"No URL for the database {name!r}: set sqlalchemy.url in the [{name}] "
                    f"section of {str(config)!r}, or pass urls={{{name!r}: ...}}."
                )
            members[name] = AutoMigrator(config, url=url, multidb_name=name, **options)
        return cls(members, block_startup=block_startup, shutdown_timeout=shutdown_timeout)

    def __repr__(self) -> str:
        return f"MigratorGroup({self.migrators!r})"

    @property
    def statuses(self) -> dict[str, MigrationStatus]:
        """Each database's latest status, by name, in order."""
        return {name: m.status for name, m in self.migrators.items()}

    @property
    def status(self) -> MigrationStatus:
        """The group's status: the worst member's state; per database in ``databases``."""
        statuses = self.statuses
        states = [s.state for s in statuses.values()]
        failed = next(
            (
                (name, s)
                for name, s in statuses.items()
                if s.state in (MigrationState.FAILED, MigrationState.DEGRADED)
            ),
            None,
        )
        state = next(
            (
                state
                for state in (MigrationState.FAILED, *_RUNNING, MigrationState.DEGRADED)
                if state in states
            ),
            MigrationState.DISABLED
            if all(s is MigrationState.DISABLED for s in states)
            else MigrationState.READY,
        )
        waiting = next((s.waiting_for for s in statuses.values() if s.waiting_for), None)
        return MigrationStatus(
            state=state,
            applied=tuple(a for s in statuses.values() for a in s.applied),
            duration=self._duration if state not in _RUNNING else None,
            error=f"{failed[0]}: {failed[1].error}" if failed else None,
            error_kind=failed[1].error_kind if failed else None,
            attempts=sum(s.attempts for s in statuses.values()),
            waiting_for=waiting if state is MigrationState.WAITING else None,
            databases=statuses,
        )

    def subscribe(self, listener: Listener) -> Callable[[], None]:
        """Call ``listener(event)`` for every member's events; returns an unsubscribe."""
        undo = [m.subscribe(listener) for m in self.migrators.values()]

        def unsubscribe() -> None:
            for each in undo:
                each()

        return unsubscribe

    async def run(self) -> MigrationStatus:
        """Plan every database, then migrate each in order; raise on the first failure.

        A member's failure policy decides for its database; when it decides
        to fail, the error is raised here and the later databases are not
        touched.
        """
        started = time.monotonic()
        done = self._begin()
        self._stopping, self._duration = False, None
        try:
            blocked = [name for name, m in self.migrators.items() if not await m.preflight()]
            if blocked:
                logger.warning(
                    "Database(s) %s cannot be migrated as planned: handling them first, "
                    "before any database is changed",
                    ", ".join(blocked),
                )
            order = blocked + [name for name in self.migrators if name not in blocked]
            for name in order:
                if self._stopping:
                    raise ShutdownRequestedError(
                        f"The application is shutting down: {name} and the databases after "
                        "it were not migrated.",
                        signal=0,
                    )
                logger.info("Database %s", name)
                await self.migrators[name].run()
            return self.status
        finally:
            self._duration = time.monotonic() - started
            done.set()

    def database_urls(self) -> tuple[URL, ...]:
        """Every member's database URL."""
        return tuple(m.url for m in self.migrators.values())

    def request_stop(self) -> None:
        """Ask the run to stop: the running member before its next revision, no member after."""
        self._stopping = True
        for migrator in self.migrators.values():
            migrator.request_stop()
