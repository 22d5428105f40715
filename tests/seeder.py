"""One app start for the seeding test: migrate, then seed "create root if missing".

``python -m tests.seeder <alembic.ini> <url>``; waits for "go" on stdin like
tests/replica.py. AM_EXCLUSIVE=0 seeds without ``migrator.exclusively()``, as
apps did before it. Prints the migrator's state as JSON.
"""

from __future__ import annotations

import json
import os
import sys

import anyio
import anyio.to_thread
import sqlalchemy as sa

from automigrator import AutoMigrator


def seed(url: str) -> None:
    # Entries and exits go to one file, appended whole: the test reads from
    # it whether two seeders were ever inside at once.
    journal = os.environ["AM_SEED_JOURNAL"]
    with open(journal, "a") as log:
        log.write(f"in {os.getpid()}\n")
    engine = sa.create_engine(url, poolclass=sa.NullPool)
    try:
        with engine.begin() as conn:
            found = conn.execute(sa.text("SELECT count(*) FROM users WHERE name = 'root'"))
            if not found.scalar():
                conn.execute(sa.text("INSERT INTO users (name) VALUES ('root')"))
    finally:
        engine.dispose()
        with open(journal, "a") as log:
            log.write(f"out {os.getpid()}\n")


async def start(ini: str, url: str) -> None:
    migrator = AutoMigrator(ini, url=url)
    print("ready", flush=True)
    await anyio.to_thread.run_sync(sys.stdin.readline)  # all released at once
    await migrator.run()
    if os.environ.get("AM_EXCLUSIVE", "1") == "1":
        async with migrator.exclusively():
            await anyio.to_thread.run_sync(seed, url)
    else:
        await anyio.to_thread.run_sync(seed, url)
    print(json.dumps({"state": migrator.status.state.value}), flush=True)


if __name__ == "__main__":
    anyio.run(start, sys.argv[1], sys.argv[2])
