"""Many replicas starting together on an empty database: automigrator vs plain Alembic.

For 1, 4, 16 and 64 replicas (OS processes) on SQLite, PostgreSQL and
MariaDB, with a 100-revision chain: every replica imports everything first,
then all are released at once. Printed per case: the wall time from the
release until the last replica finished (median and spread over the rounds),
its ratio to one replica, the CPU of all replicas and of one waiter (a
replica that applied nothing: its wait and its check after the lock came
free), the most connections the database had at once (sampled every 5 ms),
and the failures. Plain ``alembic upgrade head`` (``command.upgrade``) is
started the same way in the same run, for comparison.

``nox -s bench -- replicas [--rounds N] [--counts 1,64] [--databases sqlite,postgresql]
[--tools automigrator]``. The servers come from AUTOMIGRATOR_TEST_POSTGRES_URL
and AUTOMIGRATOR_TEST_MARIADB_URL (default: the local servers); each round
gets a fresh database there.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import sqlalchemy as sa
from sqlalchemy.engine import URL
from tests.processes import ConnectionPeak

from automigrator.scripts._headcache import FILE_NAME
from benchmarks.history import make_history

ROOT = Path(__file__).resolve().parents[1]
COUNTS = (1, 4, 16, 64)
TOOLS = ("automigrator", "alembic")
REVISIONS = 100
DEFAULT_PG = "postgresql+psycopg://postgres@127.0.0.1:5432/test"
# The servers' admin URLs: the tests' variables, else the local servers.
SERVERS = {
    "postgresql": ("AUTOMIGRATOR_TEST_POSTGRES_URL", DEFAULT_PG),
    "mariadb": ("AUTOMIGRATOR_TEST_MARIADB_URL", "mysql+pymysql://root@127.0.0.1:3306/test"),
}


@dataclass
class Round:
    wall: float
    cpu: float  # CPU seconds of all replicas together, after the gate
    failures: int
    appliers: int
    errors: list[str]
    waiter_cpu: float | None  # median CPU seconds of a replica that applied nothing
    peak: int  # most connections to the database at once (0: SQLite)


@contextmanager
def fresh_database(kind: str, scratch: Path) -> Iterator[URL]:
    if kind == "sqlite":
        folder = Path(tempfile.mkdtemp(dir=scratch))
        yield sa.make_url(f"sqlite:///{folder / 'app.db'}")
        return
    variable, default = SERVERS[kind]
    admin_url = sa.make_url(os.environ.get(variable, default))
    admin = sa.create_engine(admin_url, isolation_level="AUTOCOMMIT", poolclass=sa.NullPool)
    name = f"bench_{uuid.uuid4().hex[:12]}"
    with admin.connect() as conn:
        conn.exec_driver_sql(f"CREATE DATABASE {name}")
    try:
        yield admin_url.set(database=name)
    finally:
        with admin.connect() as conn:
            force = " WITH (FORCE)" if kind == "postgresql" else ""
            conn.exec_driver_sql(f"DROP DATABASE {name}{force}")
        admin.dispose()


def admin_url(kind: str) -> URL | None:
    if kind not in SERVERS:
        return None
    variable, default = SERVERS[kind]
    return sa.make_url(os.environ.get(variable, default))


def run_round(tool: str, ini: Path, url: URL, count: int, admin: URL | None) -> Round:
    # Every round starts like new pods: nothing remembered from the last one.
    (ini.parent / "migrations" / "__pycache__" / FILE_NAME).unlink(missing_ok=True)
    target = url.render_as_string(hide_password=False)
    argv = [sys.executable, "-m", "benchmarks.replica", tool, str(ini), target]
    procs = [
        subprocess.Popen(
            argv,
            cwd=ROOT,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(count)
    ]
    for proc in procs:  # imports done, migrator or Config built
        assert proc.stdout is not None
        line = proc.stdout.readline().strip()
        if line != "ready":
            raise SystemExit(f"a replica did not start: {line!r} {proc.communicate()[1]}")
    connections = ConnectionPeak(url, admin)
    released = time.monotonic()
    for proc in procs:
        assert proc.stdin is not None
        proc.stdin.write("go\n")
        proc.stdin.flush()
    results = []
    for proc in procs:
        out, _ = proc.communicate(timeout=600)
        results.append(json.loads(out.splitlines()[-1]))
    # Plain Alembic reports no applied count: it has no waiters to tell apart.
    waiters = [r["cpu"] for r in results if r["ok"] and not r["applied"]]
    if tool != "automigrator":
        waiters = []
    return Round(
        waiter_cpu=statistics.median(waiters) if waiters else None,
        peak=connections.stop(),
        wall=max(r["done"] for r in results) - released,
        cpu=sum(r["cpu"] for r in results),
        failures=sum(not r["ok"] for r in results),
        appliers=sum(r["applied"] > 0 for r in results),
        errors=sorted({r["error"] for r in results if r["error"]}),
    )


def available(kind: str, scratch: Path) -> str | None:
    """None when the database can be used, else why not."""
    try:
        with fresh_database(kind, scratch):
            return None
    except Exception as exc:
        return f"{type(exc).__name__}: {str(exc).splitlines()[0]}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--databases", default="sqlite,postgresql,mariadb")
    parser.add_argument("--counts", default=",".join(map(str, COUNTS)))
    parser.add_argument("--tools", default=",".join(TOOLS))
    args = parser.parse_args()
    counts = [int(c) for c in args.counts.split(",")]

    with tempfile.TemporaryDirectory() as tmp:
        scratch = Path(tmp)
        ini = make_history(scratch / "project", REVISIONS)
        print(
            f"{REVISIONS}-revision chain, {args.rounds} round(s) per case, "
            f"{os.cpu_count()} CPU(s); wall = release of all replicas to the last one done\n"
        )
        header = (
            f"{'database':<11}{'tool':<14}{'replicas':>8}  {'median':>8}  "
            f"{'min-max':>13}  {'x 1 rep':>7}  {'CPU s':>6}  {'waiter':>7}  {'conns':>5}  "
            f"{'failed':>7}  {'migrated':>8}"
        )
        print(header)
        print("-" * len(header))
        for kind in args.databases.split(","):
            why = available(kind, scratch)
            if why is not None:
                print(f"{kind:<11}not measured: {why}")
                continue
            for tool in args.tools.split(","):
                single = None
                errors: set[str] = set()
                for count in counts:
                    rounds = []
                    for _ in range(args.rounds):
                        with fresh_database(kind, scratch) as url:
                            rounds.append(run_round(tool, ini, url, count, admin_url(kind)))
                    walls = [r.wall for r in rounds]
                    median = statistics.median(walls)
                    single = single or median
                    cpu = statistics.median(r.cpu for r in rounds)
                    failed = sum(r.failures for r in rounds)
                    migrated = (
                        f"{sum(r.appliers for r in rounds)}/{args.rounds}"
                        if tool == "automigrator"
                        else "n/a"
                    )
                    for r in rounds:
                        errors.update(r.errors)
                    spread = f"{min(walls):.2f}-{max(walls):.2f}s"
                    waited = [r.waiter_cpu for r in rounds if r.waiter_cpu is not None]
                    waiter = f"{statistics.median(waited):.2f}s" if waited else "-"
                    peak = max(r.peak for r in rounds) or "-"
                    print(
                        f"{kind:<11}{tool:<14}{count:>8}  {median:>7.2f}s  {spread:>13}  "
                        f"{median / single:>7.2f}  {cpu:>6.2f}  {waiter:>7}  {peak:>5}  "
                        f"{failed:>3}/{count * args.rounds:<3}  {migrated:>8}"
                    )
                for error in sorted(errors)[:3]:
                    print(f"{'':<25}e.g. {error[:110]}")
        print(
            "\nCPU s: CPU seconds the replica processes used together after the gate (median; "
            "the database server's own CPU is not counted); waiter: CPU seconds of one "
            "replica that applied nothing (median); conns: the most connections the "
            "database had at once over the rounds (sampled every 5 ms); "
            f"with {os.cpu_count()} CPU(s) the wall time cannot be below CPU s / "
            f"{os.cpu_count()}.\nfailed: replicas that exited with an error, over all "
            "rounds; migrated: replicas that applied revisions, over all rounds (one per "
            "round is right)."
        )


if __name__ == "__main__":
    main()
