"""The application of the rolling-deploy benchmark (``benchmarks/rolling.py``), one replica.

``uvicorn benchmarks.rolling_app:app --port P --workers 1``, configured by
the environment the benchmark gives it:

- ``ROLLING_VARIANT``: ``plain`` (the lifespan runs Alembic's
  ``command.upgrade(cfg, "head")`` in a thread, then serves; ``/readyz``
  answers 200 once the process answers), ``defaults`` (``AutoMigrator`` with
  its defaults, ``lifespan=migrator.lifespan``, ``/readyz`` its ``HealthApp``)
  or ``background`` (the same with ``block_startup=False`` and a
  ``ReadinessGate``: the port opens at once, 503 until migrated).
- ``ROLLING_INI``: the release's ``alembic.ini`` (the old one knows r1, the
  new one r1..r4); ``ROLLING_URL``: the database; ``ROLLING_NEW``: ``1`` for
  the new release's code (it reads and writes the column r2 adds).

Endpoints: ``GET /item/{id}`` (one row of ``items``), ``POST /item`` (insert
a row, or with ``{"id": n}`` update that one), ``/readyz`` and ``/livez``.
Each answer says in ``x-db-ms`` how long its database work took
(connection checkout included), so the benchmark can tell a query that
waited for a lock from a request that waited for the CPU.
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import sys
import time
from collections.abc import AsyncIterator
from typing import Any

import anyio.to_thread
import sqlalchemy as sa
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

VARIANT = os.environ.get("ROLLING_VARIANT", "defaults")
INI = os.environ.get("ROLLING_INI", "alembic.ini")
URL = os.environ.get("ROLLING_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test")
NEW = os.environ.get("ROLLING_NEW") == "1"

# The migrator's lines (retries, blockers) with the wall clock, to line up
# with the benchmark's timeline.
logging.basicConfig(
    level=logging.INFO,
    format="%(asctime)s.%(msecs)03d %(name)s %(levelname)s %(message)s",
    datefmt="%H:%M:%S",
)

engine = sa.create_engine(URL, pool_size=5, max_overflow=5, pool_timeout=10)
COLUMNS = "id, c0, c1, c2, note" if NEW else "id, c0, c1, c2"
SELECT = sa.text(f"SELECT {COLUMNS} FROM items WHERE id = :id")
INSERT = sa.text(
    "INSERT INTO items (c0, c1, c2, note) VALUES (:v, :v, :v, 'new') RETURNING id"
    if NEW
    else "INSERT INTO items (c0, c1, c2) VALUES (:v, :v, :v) RETURNING id"
)
UPDATE = sa.text(
    "UPDATE items SET c0 = c0 + 1, note = 'new' WHERE id = :id RETURNING id"
    if NEW
    else "UPDATE items SET c0 = c0 + 1 WHERE id = :id RETURNING id"
)


def timed(work: Any) -> tuple[Any, str]:
    """Run ``work(conn)`` in one transaction; the result and its time in ms, as text."""
    began = time.perf_counter()
    with engine.begin() as conn:
        result = work(conn)
    return result, f"{(time.perf_counter() - began) * 1000:.1f}"


async def read(request: Request) -> Response:
    def work(conn: sa.Connection) -> Any:
        return conn.execute(SELECT, {"id": int(request.path_params["id"])}).first()

    row, ms = await anyio.to_thread.run_sync(timed, work)
    body = dict(row._mapping) if row is not None else None
    return JSONResponse(body, status_code=200 if row is not None else 404, headers={"x-db-ms": ms})


async def write(request: Request) -> Response:
    data = await request.json()
    target = data.get("id")

    def work(conn: sa.Connection) -> Any:
        if target is None:
            return conn.execute(INSERT, {"v": int(data.get("v", 0))}).scalar()
        return conn.execute(UPDATE, {"id": int(target)}).scalar()

    row_id, ms = await anyio.to_thread.run_sync(timed, work)
    return JSONResponse({"id": row_id}, headers={"x-db-ms": ms})


async def livez(request: Request) -> Response:
    return JSONResponse({"status": "alive"})


async def answering(request: Request) -> Response:
    # plain: the port opens once the lifespan has migrated, so answering is ready.
    return JSONResponse({"state": "ready"})


ROUTES = [
    Route("/item/{id:int}", read, methods=["GET"]),
    Route("/item", write, methods=["POST"]),
    Route("/livez", livez),
]


def build() -> Starlette:
    if VARIANT == "plain":
        from alembic import command
        from alembic.config import Config

        @contextlib.asynccontextmanager
        async def lifespan(app: Starlette) -> AsyncIterator[None]:
            cfg = Config(INI, stdout=io.StringIO())
            cfg.set_main_option("sqlalchemy.url", URL.replace("%", "%%"))
            try:
                await anyio.to_thread.run_sync(command.upgrade, cfg, "head")
            except Exception as exc:  # env.py's fileConfig has silenced uvicorn's logger
                print(f"upgrade failed: {type(exc).__name__}: {exc}", file=sys.stderr, flush=True)
                raise
            yield
            engine.dispose()

        return Starlette(routes=[*ROUTES, Route("/readyz", answering)], lifespan=lifespan)

    from automigrator import AutoMigrator, HealthApp, ReadinessGate

    background = VARIANT == "background"
    migrator = AutoMigrator(INI, url=URL, block_startup=not background)
    middleware = (
        [Middleware(ReadinessGate, migrator=migrator, exempt=["/livez", "/readyz"])]
        if background
        else []
    )
    return Starlette(
        routes=[*ROUTES, Route("/readyz", HealthApp(migrator).endpoint)],
        middleware=middleware,
        lifespan=migrator.lifespan,
    )


app = build()
