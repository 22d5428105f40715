"""A raw ASGI app wrapped in AutoMigrateMiddleware, for runs under a real uvicorn.

AM_INI names the alembic.ini, DATABASE_URL the database. AM_LIFESPAN=none makes
the inner app refuse the lifespan scope, as Django's ASGI handler does.
"""

from __future__ import annotations

import os

from automigrator import AutoMigrateMiddleware, AutoMigrator
from automigrator._types import Receive, Scope, Send


async def inner(scope: Scope, receive: Receive, send: Send) -> None:
    if scope["type"] == "lifespan":
        if os.environ.get("AM_LIFESPAN") == "none":
            raise ValueError("Django can only handle ASGI/HTTP connections, not lifespan.")
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            else:
                await send({"type": "lifespan.shutdown.complete"})
                return
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": b"served"})


app = AutoMigrateMiddleware(
    inner, migrator=AutoMigrator(os.environ["AM_INI"], url=os.environ["DATABASE_URL"])
)
