"""A health endpoint: the migration status as JSON, 200 when ready, 503 otherwise.

``HealthApp`` is a small pure-ASGI app. Add it as a route, which answers its
path itself: FastAPI or Starlette ``app.add_route("/readyz",
HealthApp(migrator).endpoint)``, or Starlette ``Route("/readyz",
HealthApp(migrator))``; or let :class:`~automigrator.AutoMigrateMiddleware`
answer one path with it (``health_path=``). Not a ``Mount``: a mount answers
``/readyz`` with a 307 redirect to ``/readyz/`` and an empty body, which some
probes and load balancers count as healthy whatever the state.

The endpoint is anonymous by nature, so by default its body says the state,
the revisions and the error's *kind*, and not the error's text. With
``show_error=True`` the one-line error is added, with every URL, user, host,
port, database name and quoted value (names, row data) taken out. Who blocks
a running revision is shown by pid, state and age only.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

from sqlalchemy.engine import URL
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from ._status import MigrationState
from ._types import Receive, Scope, Send
from .database._redaction import anonymize

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
        show_error: add the one-line error, anonymized (no URL, user, host,
            port, database name or quoted data). Default False: the kind only.
        retry_after: seconds, for the ``Retry-After`` header of a 503.
    """

    def __init__(
        self,
        migrator: MigrationRunner,
        *,
        degraded_ok: bool = True,
        show_error: bool = False,
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
        _errors(data, tuple(self.migrator.database_urls()), shown=self.show_error)
        return (200 if ok else 503), data

    async def endpoint(self, request: Request) -> Response:
        """The same answer as a request-response endpoint, for ``app.add_route(path, ...)``."""
        code, data = self.body()
        headers = {"cache-control": "no-store"}
        if code == 503:
            headers["retry-after"] = str(self.retry_after)
        return JSONResponse(data, status_code=code, headers=headers)

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


def _errors(data: dict[str, Any], urls: tuple[URL, ...], *, shown: bool) -> None:
    """Drop (or anonymize) the error text here and in each member's status.

    A blocker keeps its pid, state and age; the name its client gave itself
    may say where it runs, so it is dropped too.
    """
    error = data.pop("error", None)
    if shown:
        data["error"] = anonymize(error, urls) if error else None
    for blocker in data.get("blocked_by") or ():
        blocker.pop("application", None)
    for member in (data.get("databases") or {}).values():
        _errors(member, urls, shown=shown)
