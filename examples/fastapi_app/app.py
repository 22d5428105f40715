"""A small FastAPI service whose schema automigrator brings up to date at start-up.

Run it with ``nox -s demo`` (or ``uvicorn app:app --app-dir examples/fastapi_app``).
Settings are read here, at the application's edge:

- ``DATABASE_URL``: default a SQLite file in ``examples/fastapi_app/data/``.
- ``RUN_MIGRATIONS``: 1/0 (read by automigrator; unset means on).
- ``ON_MIGRATION_FAILURE``: ``fail`` (default) or ``continue`` (degraded).
- ``BLOCK_STARTUP``: 1 (default: serve once the schema is ready) or 0 (serve at
  once; requests get 503 until the schema is ready, ``/livez`` always answers).
- ``WHEN_DISABLED``: what ``RUN_MIGRATIONS=0`` means: ``skip`` (default) or
  ``check`` (wait until another process, e.g. a Job, has migrated).
- ``WHEN_AHEAD``: a database ahead of this code (an old replica mid-rollout, a
  rollback deploy): ``compatible`` (default: served if the ledger records its
  revisions as compatible with this version), ``refuse`` or ``serve``.

The manifests in ``deploy/kubernetes/`` run this app.
"""

from __future__ import annotations

import logging
import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from models import Author, Book
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from automigrator import (
    AutoMigrator,
    Fail,
    FailurePolicy,
    HealthApp,
    History,
    LogAndContinue,
    ReadinessGate,
    Switch,
)

HERE = Path(__file__).resolve().parent
logging.basicConfig(level=logging.INFO, format="%(levelname)s:     %(name)s: %(message)s")


def database_url() -> str:
    url = os.environ.get("DATABASE_URL")
    if url:
        return url
    data = HERE / "data"
    data.mkdir(exist_ok=True)
    return f"sqlite+aiosqlite:///{data / 'app.db'}"


def failure_policy() -> FailurePolicy:
    choice = os.environ.get("ON_MIGRATION_FAILURE", "fail")
    policies: dict[str, FailurePolicy] = {"fail": Fail(), "continue": LogAndContinue()}
    if choice not in policies:
        raise SystemExit(f"ON_MIGRATION_FAILURE={choice!r}: use 'fail' or 'continue'")
    return policies[choice]


migrator = AutoMigrator(
    HERE / "alembic.ini",
    url=database_url(),
    on_failure=failure_policy(),
    block_startup=os.environ.get("BLOCK_STARTUP", "1") != "0",
    enabled=Switch(
        when_disabled="check" if os.environ.get("WHEN_DISABLED") == "check" else "skip"
    ),
    history=History(
        when_ahead=os.environ.get("WHEN_AHEAD", "compatible"),  # type: ignore[arg-type]
        app_version=os.environ.get("APP_VERSION"),
    ),
)


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[dict[str, Any]]:
    # The application's own start-up runs after migrations: the schema is there.
    engine = create_async_engine(migrator.url)
    yield {"engine": engine}
    await engine.dispose()


app = FastAPI(title="automigrator example", lifespan=migrator.wrap_lifespan(lifespan))
# With BLOCK_STARTUP=0: 503 until the schema is ready; the liveness probe passes.
app.add_middleware(ReadinessGate, migrator=migrator, exempt=["/livez", "/readyz"])
# The readiness probe: 200 when the schema is ready, 503 (JSON, anonymous) until then.
app.add_route("/readyz", HealthApp(migrator).endpoint)


@app.get("/livez")
async def livez() -> dict[str, str]:
    return {"status": "alive"}


@app.get("/books")
async def books(request: Request) -> list[dict[str, Any]]:
    engine: AsyncEngine = request.state.engine
    query = (
        sa.select(Book.title, Book.isbn, Author.name)
        .join(Author, Book.author_id == Author.id)
        .order_by(Book.id)
    )
    async with engine.connect() as conn:
        result = await conn.execute(query)
        return [{"title": t, "isbn": i, "author": a} for t, i, a in result]


@app.get("/status")
async def status(request: Request) -> JSONResponse:
    migration = request.state.automigrator.status
    return JSONResponse(migration.to_dict(), status_code=200 if migration.ready else 503)
