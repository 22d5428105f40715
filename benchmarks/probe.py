"""One measurement in a fresh process, printed as one JSON line.

``python -m benchmarks.probe <what> <alembic.ini> <url> [alembic]``, where
<what> is:

- ``app``: start an ASGI app whose own lifespan opens an engine, without
  automigrator (the import of automigrator is not even made);
- ``app+automigrator``: the same app with ``migrator.wrap_lifespan``;
- ``command.upgrade``: ``alembic.command.upgrade(cfg, "heads")``, as a
  prestart script would call it;
- ``import-alembic``: how long ``import alembic`` takes.

With ``alembic`` last, Alembic is imported before the clock starts (as
``command.upgrade`` always has it), to compare the work itself.

Only the start-up itself is timed (imports are done before the clock starts,
as in a server that imported the app). Also printed: the peak RSS of the
process (kB, VmHWM).
"""

from __future__ import annotations

import json
import resource
import sys
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import anyio
import sqlalchemy as sa
from asgi_lifespan import LifespanManager
from starlette.applications import Starlette


@asynccontextmanager
async def app_lifespan(app: Any) -> AsyncIterator[dict[str, Any]]:
    # What the example app does at start: an engine for the handlers.
    engine = sa.create_engine(sys.argv[3])
    yield {"engine": engine}
    engine.dispose()


async def start(app: Starlette) -> float:
    started = time.perf_counter()
    # A 1000-revision run from scratch outlasts LifespanManager's 5 s default.
    async with LifespanManager(app, startup_timeout=600):
        elapsed = time.perf_counter() - started
    return elapsed


def main() -> None:
    what, ini, url = sys.argv[1:4]
    # The driver is imported before the clock in every probe, as an app that
    # imported its models would have done.
    sa.create_engine(url).dispose()
    if sys.argv[4:] == ["alembic"]:
        # What the command.upgrade probe imports before its clock.
        import alembic.command
        import alembic.config
    if what == "import-alembic":
        started = time.perf_counter()
        import alembic.command  # noqa: F401

        seconds = time.perf_counter() - started
    elif what == "app":
        seconds = anyio.run(start, Starlette(lifespan=app_lifespan))
    elif what == "app+automigrator":
        from automigrator import AutoMigrator

        migrator = AutoMigrator(ini, url=url)
        app = Starlette(lifespan=migrator.wrap_lifespan(app_lifespan))
        seconds = anyio.run(start, app)
        if not migrator.status.ready:
            raise SystemExit(f"not ready: {migrator.status}")
    elif what == "command.upgrade":
        from alembic import command
        from alembic.config import Config

        cfg = Config(ini)
        cfg.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
        started = time.perf_counter()
        command.upgrade(cfg, "heads")
        seconds = time.perf_counter() - started
    else:
        raise SystemExit(f"unknown probe {what!r}")
    print(json.dumps({"seconds": seconds, "peak_kb": peak_rss_kb()}))


def peak_rss_kb() -> int:
    # VmHWM, not ru_maxrss: on Linux ru_maxrss survives exec, so a child
    # started by a big parent reports the parent's peak.
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss


if __name__ == "__main__":
    main()
