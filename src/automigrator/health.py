"""A health endpoint: the migration status as JSON, 200 when ready, 503 otherwise.

``HealthApp`` is a small pure-ASGI app: mount it as a route (Starlette
``Mount("/health/migrations", HealthApp(migrator))``, FastAPI
``app.mount(...)``), or let :class:`~automigrator.AutoMigrateMiddleware`
answer one path with it (``health_path=``).

The body comes from :class:`~automigrator.MigrationStatus`, which holds no
URL, password, SQL statement or traceback; the one-line error can be left out
too (``show_error=False``).
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

from ._status import MigrationState
from ._types import Receive, Scope, Send

if TYPE_CHECKING:
    from ._lifespan import MigrationRunner

__all__ = ["HealthApp"]

# Ready for traffic: the schema is at the target, or migrations are not this
# process's job (the switch is off).
_READY = (MigrationState.READY, MigrationState.DISABLED)


class HealthApp:
    """The migration status as JSON: 200 when ready, 503 otherwise.

    Args:
        migrator: whose status to report.
        degraded_ok: answer 200 in the *degraded* state (the app serves on an
            old schema after ``LogAndContinue``). Default True: the app is up
            and says so in the body; False to keep it out of the load balancer.
        show_error: include the one-line error (never a secret). Default True.
        retry_after: seconds, for the ``Retry-After`` header of a 503.
    """

    def __init__(
        self,
        migrator: MigrationRunner,
        *,
        degraded_ok: bool = True,
        show_error: bool = True,
        retry_after: int = 5,
    ) -> None:
        self.migrator = migrator
        self.degraded_ok = degraded_ok
        self.show_error = show_error
        self.retry_after = retry_after

    def body(self) -> tuple[int, dict[str, Any]]:
        """The status code and the JSON body for the current status."""
        status = self.migrator.status
        ok = status.state in _READY or (
            self.degraded_ok and status.state is MigrationState.DEGRADED
        )
        data = status.to_dict()
        data["database_revisions"] = data.pop("revisions_after")
        data["applied"] = len(status.applied)
        if not self.show_error:
            data.pop("error")
        return (200 if ok else 503), data

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            raise RuntimeError(f"HealthApp serves HTTP only, not {scope['type']!r}")
        code, data = self.body()
        payload = json.dumps(data).encode()
        headers = [
            (b"content-type", b"application/json"),
            (b"content-length", str(len(payload)).encode()),
            (b"cache-control", b"no-store"),
        ]
        if code == 503:
            headers.append((b"retry-after", str(self.retry_after).encode()))
        await send({"type": "http.response.start", "status": code, "headers": headers})
        body = b"" if scope.get("method") == "HEAD" else payload
        await send({"type": "http.response.body", "body": body})
