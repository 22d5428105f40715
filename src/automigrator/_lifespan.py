"""The server-facing lifespan of a migrator: before the app, or beside it behind a gate.

``MigrationRunner`` is the one base of :class:`~automigrator.AutoMigrator`
and :class:`~automigrator.MigratorGroup`: the lifespan, the background run
behind a readiness gate, ``wait_ready`` and the stop on shutdown are the same
for both; each brings its own ``run()``, ``status`` and ``request_stop()``.
"""

from __future__ import annotations

import abc
import logging
from collections.abc import AsyncIterator, Callable, Mapping
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import Any

import anyio
import anyio.abc
from sqlalchemy.engine import URL

from ._status import MigrationState, MigrationStatus
from .errors import AutomigratorError, ShutdownRequestedError
from .process._logging import show_by_default
from .process._servers import looping_server, stop_this_server

logger = logging.getLogger("automigrator")

STATE_KEY = "automigrator"
"""The key under which the lifespan publishes the migrator in the lifespan state."""

AppLifespan = Callable[[Any], AbstractAsyncContextManager[Mapping[str, Any] | None]]


class MigrationRunner(abc.ABC):
    """The part of a migrator that servers use: lifespan, background run, readiness.

    :class:`~automigrator.AutoMigrateMiddleware`, :class:`~automigrator.ReadinessGate`
    and :class:`~automigrator.HealthApp` take any runner: an
    :class:`~automigrator.AutoMigrator` or a :class:`~automigrator.MigratorGroup`.
    A subclass gives :attr:`status`, :meth:`run` and :meth:`request_stop`.

    Args:
        block_startup: start the application once the schema is ready
            (True), or at once with the run in the background (False).
        shutdown_timeout: in the background, how long a shutdown waits for
            the running revision to finish.
    """

    def __init__(self, *, block_startup: bool, shutdown_timeout: float) -> None:
        self.block_startup = block_startup
        self.shutdown_timeout = float(shutdown_timeout)
        self._done: anyio.Event | None = None  # set when a run ends, for wait_ready()
        self._background: anyio.abc.TaskGroup | None = None  # running() in the background

    @property
    @abc.abstractmethod
    def status(self) -> MigrationStatus:
        """The latest snapshot."""

    @abc.abstractmethod
    async def run(self) -> MigrationStatus:
        """Migrate once, applying the failure policy; returns the final status."""

    @abc.abstractmethod
    def request_stop(self) -> None:
        """Ask a running migration to stop before its next revision."""

    def database_urls(self) -> tuple[URL, ...]:
        """The databases this runner migrates (the health endpoint hides their names)."""
        return ()

    def _begin(self) -> anyio.Event:
        """A run starts: the event that ``wait_ready`` waits for."""
        if self._done is None or self._done.is_set():
            self._done = anyio.Event()
        return self._done

    @asynccontextmanager
    async def lifespan(self, app: Any = None) -> AsyncIterator[dict[str, Any]]:
        """An ASGI lifespan: migrate, then let the application start.

        The migrator is published in the lifespan state under ``"automigrator"``
        (``request.state.automigrator.status`` in a handler). With
        ``block_startup=False`` the application starts at once; see
        :meth:`running`.
        """
        started = False
        try:
            async with self.running():
                started = True
                yield {STATE_KEY: self}
        except AutomigratorError as exc:
            if started:
                raise
            # Starlette prints the start-up error's whole traceback, causes
            # and all: 140 lines of anyio, Alembic and our frames, the reason
            # at the very end. Ours was logged as it happened, and its message
            # names the revision, the line and the fix: raised from here alone.
            raise exc.with_traceback(None) from None

    @asynccontextmanager
    async def running(self) -> AsyncIterator[None]:
        """Migrate for the block: before it (``block_startup``) or beside it.

        In the background, a failure that the policy did not degrade is
        logged at CRITICAL, the status says ``failed``, and the process's
        server is asked to stop (SIGTERM to the process, where a handler of
        it is installed), as a failed start would have; a worker of a
        server that would start it again fails its liveness instead (the
        gate answers 503 on every path): never alive and never ready.
        Leaving the block lets the running revision finish (up to
        ``shutdown_timeout``) and stops before the next one.
        """
        show_by_default()  # a server with nothing set up would show none of our lines
        looping = looping_server()
        if looping is not None:
            logger.warning(
                "%s restarts a worker whose start-up failed, for ever (uvicorn 0.30 to 0.49 "
                "with --workers; 0.50 stops instead): a failing revision is run once, and "
                "each restart within History(rerun_failed_after=) fails at once without "
                "running it, but the restarts go on. Upgrade uvicorn to 0.50 or later, or "
                "migrate before the server starts (automigrator upgrade)",
                looping,
            )
        if self.block_startup:
            await self.run()
            yield
            return
        self._done = anyio.Event()
        async with anyio.create_task_group() as tg:
            self._background = tg
            tg.start_soon(self._run_in_background)
            try:
                yield
            finally:
                await self.stop()
                self._background = None

    async def wait_ready(self, timeout: float | None = None) -> MigrationStatus:  # noqa: ASYNC109
        """Wait until the run has ended (ready, degraded or failed); return the status.

        Raises ``TimeoutError`` after ``timeout`` seconds.
        """
        if self._done is None:
            self._done = anyio.Event()  # the run has not started yet
        with anyio.fail_after(timeout):
            await self._done.wait()
        return self.status

    def wrap_lifespan(self, app_lifespan: AppLifespan) -> Callable[[Any], Any]:
        """Migrate first, then enter the application's own lifespan.

        ``FastAPI(lifespan=migrator.wrap_lifespan(lifespan))``; the two state
        dicts are merged.
        """

        @asynccontextmanager
        async def lifespan(app: Any) -> AsyncIterator[dict[str, Any]]:
            async with self.lifespan(app) as ours, app_lifespan(app) as theirs:
                yield {**ours, **(theirs or {})}

        return lifespan

    async def _run_in_background(self) -> None:
        try:
            await self.run()
        except ShutdownRequestedError:
            pass  # logged by run()
        except Exception as exc:
            # A failure the policy did not degrade: alive and never ready is a
            # zombie. The server stops, as a failed start would; a worker, which
            # its server would restart in a loop, fails its liveness instead.
            why_not = stop_this_server()
            logger.critical(
                "Migrations failed in the background (%s): %s",
                exc.summary() if isinstance(exc, AutomigratorError) else repr(exc),
                "stopping the server (SIGTERM to this process), as a failed start-up "
                "would, so that it is restarted. Fix the cause."
                if why_not is None
                else f"not stopping the server ({why_not}): every request now gets 503, "
                "the paths the gate exempts (a liveness probe) too, so that the "
                "orchestrator restarts it. Fix the cause.",
            )

    async def stop(self) -> None:
        """Stop a background run: at once while it waits, between revisions while it migrates.

        Waits up to ``shutdown_timeout`` for the running revision. Does
        nothing when no background run is going on.
        """
        tg = self._background
        if tg is None or self._done is None or self._done.is_set():
            return
        if self.status.state is not MigrationState.MIGRATING:
            tg.cancel_scope.cancel()  # waiting or planning: nothing to finish
            return
        self.request_stop()
        logger.warning(
            "Shutting down during a migration: waiting up to %g s for the running revision "
            "to finish; the run stops before the next one",
            self.shutdown_timeout,
        )
        with anyio.move_on_after(self.shutdown_timeout):
            await self._done.wait()
        if not self._done.is_set():
            logger.error(
                "The running revision did not finish within the shutdown timeout (%g s); "
                "leaving it to the process's exit (transactional DDL rolls it back)",
                self.shutdown_timeout,
            )
            tg.cancel_scope.cancel()
