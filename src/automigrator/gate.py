"""``ReadinessGate``: hold requests back until the schema is ready.

With ``block_startup=False`` the server starts at once and migrations run in
the background; until they are done, no request may reach a handler that
expects the new schema. The gate answers HTTP requests with ``503 Service
Unavailable`` and ``Retry-After``, and closes WebSocket connections with code
1013 (try again later); the paths it exempts (a liveness probe, metrics)
pass through, until a failure that the policy did not degrade: then those
answer 503 too, so that a liveness probe restarts a process that could not
stop itself.

:class:`~automigrator.AutoMigrateMiddleware` includes the gate. An app that
uses ``lifespan=migrator.lifespan`` adds it on its own:
``app.add_middleware(ReadinessGate, migrator=migrator, exempt=["/livez"])``.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from typing import TYPE_CHECKING

from ._status import MigrationState
from ._types import ASGIApp, Receive, Scope, Send

if TYPE_CHECKING:
    from ._lifespan import MigrationRunner

__all__ = ["ReadinessGate"]

# The application may serve: the schema is at the target, migrations are not
# this process's job, or the policy chose to continue on the old schema.
OPEN = (MigrationState.READY, MigrationState.DISABLED, MigrationState.DEGRADED)
TRY_AGAIN_LATER = 1013


class ReadinessGate:
    """Answer 503 (HTTP) or close with 1013 (WebSocket) until migrations are done.

    Args:
        app: the ASGI application behind the gate.
        migrator: whose status opens the gate (ready, degraded or disabled).
            After a failure under ``Fail`` it stays shut, exempt paths
            included: a liveness probe fails, so that a process the failure
            could not stop (a worker of a multi-process server) is restarted.
        exempt: paths that pass while migrations run (exact, or a prefix
            ending in ``/``): a liveness probe, metrics.
        retry_after: seconds, for the ``Retry-After`` header.
    """

    def __init__(
        self,
        app: ASGIApp,
        *,
        migrator: MigrationRunner,
        exempt: Iterable[str] = (),
        retry_after: int = 5,
    ) -> None:
        self.app = app
        self.migrator = migrator
        self.exempt = tuple(exempt)
        self.retry_after = retry_after
        self._open = False  # once open, open for good: no status read per request

    def is_open(self) -> bool:
        """Whether requests pass (and from now on, always will)."""
        if not self._open and self.migrator.status.state in OPEN:
            self._open = True
        return self._open

    def failed(self) -> bool:
        """The run failed for good: no path passes, a liveness probe included."""
        return self.migrator.status.state is MigrationState.FAILED

    def exempts(self, path: str) -> bool:
        return any(
            path == rule or (rule.endswith("/") and path.startswith(rule)) for rule in self.exempt
        )

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if (
            scope["type"] not in ("http", "websocket")
            or self.is_open()
            or (self.exempts(scope.get("path", "")) and not self.failed())
        ):
            await self.app(scope, receive, send)
        elif scope["type"] == "http":
            await self._unavailable(send)
        else:
            await self._try_again_later(receive, send)

    async def _unavailable(self, send: Send) -> None:
        status = self.migrator.status
        body = json.dumps(
            {
                "detail": "The database schema is being brought up to date; try again shortly.",
                "state": status.state.value,
            }
        ).encode()
        headers = [
            (b"content-type", b"application/json"),
            (b"content-length", str(len(body)).encode()),
            (b"retry-after", str(self.retry_after).encode()),
            (b"cache-control", b"no-store"),
        ]
        await send({"type": "http.response.start", "status": 503, "headers": headers})
        await send({"type": "http.response.body", "body": body})

    @staticmethod
    async def _try_again_later(receive: Receive, send: Send) -> None:
        message = await receive()
        if message["type"] != "websocket.connect":
            return
        # A close before accept is a plain HTTP 403; accepting first lets the
        # client see the close code that says "try again later".
        await send({"type": "websocket.accept"})
        await send({"type": "websocket.close", "code": TRY_AGAIN_LATER, "reason": "migrating"})
