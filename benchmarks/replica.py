"""One benchmark replica: import everything, print "ready", wait for "go", migrate.

``python -m benchmarks.replica automigrator|alembic <alembic.ini> <url>``.
Prints one JSON line: when it finished (``time.monotonic()``, one clock for
every process on Linux), the CPU seconds it used after the gate, whether it
succeeded, and how many revisions it applied. Exits 1 on failure, as a start-up would.
"""

from __future__ import annotations

import json
import logging
import sys
import time

import anyio
import anyio.to_thread
from alembic import command
from alembic.config import Config

from automigrator import AutoMigrator


async def replica(tool: str, ini: str, url: str) -> None:
    # As in a server: everything imported and the event loop running before
    # the start-up begins.
    if tool == "automigrator":
        migrator = AutoMigrator(ini, url=url)
    else:
        cfg = Config(ini)
        cfg.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    print("ready", flush=True)
    await anyio.to_thread.run_sync(sys.stdin.readline)  # the start gate: all released at once
    cpu = time.process_time()
    ok, applied, error, durations = True, 0, "", []
    try:
        if tool == "automigrator":
            status = await migrator.run()
            applied, durations = len(status.applied), [a.duration for a in status.applied]
        else:
            command.upgrade(cfg, "head")
    except Exception as exc:
        ok, error = False, f"{type(exc).__name__}: {str(exc).splitlines()[0][:200]}"
    done, cpu = time.monotonic(), time.process_time() - cpu
    result = {
        "done": done,
        "cpu": cpu,
        "ok": ok,
        "applied": applied,
        "durations": durations,
        "error": error,
    }
    print(json.dumps(result), flush=True)
    if not ok:
        sys.exit(1)


def main() -> None:
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
    tool, ini, url = sys.argv[1:4]
    anyio.run(replica, tool, ini, url)


if __name__ == "__main__":
    main()
