"""``AutoMigrateMiddleware``: migrate on ``lifespan.startup``, for any ASGI app.

Pure ASGI; it imports no framework. Only the lifespan scope is intercepted;
every other scope goes straight to the application.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Sequence

from ._lifespan import STATE_KEY, MigrationRunner
from ._types import ASGIApp, Message, Receive, Scope, Send
from .errors import AutomigratorError
from .gate import ReadinessGate
from .health import HealthApp

logger = logging.getLogger("automigrator")

__all__ = ["AutoMigrateMiddleware"]


class AutoMigrateMiddleware:
    """Run migrations when the server sends ``lifespan.startup``, then start the app.

    On failure (under the ``Fail`` policy) it sends ``lifespan.startup.failed``
    with a one-paragraph reason, so the server prints it and exits non-zero;
    it never lets an exception escape before that message, which uvicorn's
    ``--lifespan auto`` would take for "lifespan unsupported" and serve anyway.
    If the wrapped app does not speak lifespan (it raises on, or ignores, the
    lifespan scope, as Django's ASGI handler does), the middleware completes
    the lifespan itself.

    Args:
        app: the ASGI application to wrap.
        migrator: the :class:`~automigrator.AutoMigrator` (or
            :class:`~automigrator.MigratorGroup`) to run.
        health_path: a path the middleware answers itself with the migration
            status (a :class:`~automigrator.HealthApp`); off by default.
        health: the :class:`~automigrator.HealthApp` for that path, to set its
            options; default ``HealthApp(migrator)``.
        exempt: with the migrator's ``block_startup=False``, paths that pass
            while migrations run (a liveness probe); every other request gets
            503 (WebSocket: close code 1013) until the schema is ready, and
            after a failure the policy did not degrade, those paths too. See
            :class:`~automigrator.ReadinessGate`.

    Usable as ``Middleware(AutoMigrateMiddleware, migrator=...)`` in Starlette.
    """

    def __init__(
        self,
        app: ASGIApp,
        *,
        migrator: MigrationRunner,
        health_path: str | None = None,
        health: HealthApp | None = None,
        exempt: Sequence[str] = (),
    ) -> None:
        if not isinstance(migrator, MigrationRunner):
            raise TypeError(
                f"migrator= must be an AutoMigrator or a MigratorGroup, got {migrator!r}"
            )
        if health_path is not None and not health_path.startswith("/"):
            raise ValueError(f"health_path must start with '/', got {health_path!r}")
        self.app = app
        self.migrator = migrator
        self.health_path = health_path
        self.health = health if health is not None else HealthApp(migrator)
        self.gate = ReadinessGate(app, migrator=migrator, exempt=exempt)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await self._lifespan(scope, receive, send)
        elif scope["type"] == "http" and scope.get("path") == self.health_path:
            await self.health(scope, receive, send)
        elif self.migrator.block_startup:
            await self.app(scope, receive, send)
        else:
            await self.gate(scope, receive, send)

    async def _lifespan(self, scope: Scope, receive: Receive, send: Send) -> None:
        startup = await receive()
        if startup["type"] != "lifespan.startup":  # not a server we understand: stay out
            await self.app(scope, _Replay(startup, receive), send)
            return
        async with contextlib.AsyncExitStack() as stack:
            try:
                # Blocking: migrates here. Otherwise starts the run beside the app.
                await stack.enter_async_context(self.migrator.running())
            except Exception as exc:
                await send({"type": "lifespan.startup.failed", "message": _reason(exc)})
                raise
            await self._serve_lifespan(scope, startup, receive, send)

    async def _serve_lifespan(
        self, scope: Scope, startup: Message, receive: Receive, send: Send
    ) -> None:
        if "state" in scope:
            scope["state"][STATE_KEY] = self.migrator

        app_receive = _Replay(startup, receive)
        app_sent: set[str] = set()

        async def app_send(message: Message) -> None:
            app_sent.add(message["type"])
            if message["type"] == "lifespan.shutdown.complete":
                # Not before a background migration has stopped (between revisions).
                await self.migrator.stop()
            await send(message)

        try:
            await self.app(scope, app_receive, app_send)
        except Exception as exc:
            if app_receive.used or app_sent:
                if not app_sent & {"lifespan.startup.complete", "lifespan.startup.failed"}:
                    # The app's own start-up crashed without saying so: say it,
                    # or uvicorn would serve as if lifespan were unsupported.
                    await send(
                        {
                            "type": "lifespan.startup.failed",
                            "message": f"The application raised during start-up: {exc!r}",
                        }
                    )
                raise
            logger.info(
                "The application does not support the ASGI lifespan protocol (%r); "
                "automigrator completes the lifespan for it",
                exc,
            )
        else:
            if app_receive.used or app_sent:
                return
        await self._complete_alone(receive, send)

    async def _complete_alone(self, receive: Receive, send: Send) -> None:
        await send({"type": "lifespan.startup.complete"})
        while (await receive())["type"] != "lifespan.shutdown":
            pass
        await self.migrator.stop()
        await send({"type": "lifespan.shutdown.complete"})


class _Replay:
    """A ``receive`` that first hands over a message we already took."""

    def __init__(self, first: Message, receive: Receive) -> None:
        self.first = first
        self.receive = receive
        self.used = False

    async def __call__(self) -> Message:
        if not self.used:
            self.used = True
            return self.first
        return await self.receive()


def _reason(exc: Exception) -> str:
    if isinstance(exc, AutomigratorError):
        return f"automigrator: migrations failed, the application will not start. {exc.message}"
    return (
        "automigrator: migrations failed, the application will not start. "
        f"{type(exc).__name__}: {exc}"
    )
