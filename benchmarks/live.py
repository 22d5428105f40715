"""Live tables: how long the application's queries stall while a migration runs.

Two figures, printed, never asserted:

- **stall**: a table of 1,000 rows; a transaction of the application's reads
  it and stays open for 10 s; a reader runs ``SELECT count(*)`` on it in a
  loop; a revision adds a column. Printed: the longest single SELECT, how
  many SELECTs waited (took over 0.1 s), how long after the blocker's end
  the migration ended, and automigrator's tries, for plain ``alembic
  upgrade`` and for automigrator (default ``Ddl()``), on PostgreSQL and MariaDB.
- **cic**: one revision with five ``CREATE INDEX CONCURRENTLY`` (in an
  autocommit block) on a 20,000-row PostgreSQL table, applied by one
  replica alone and by one of four replicas started together (three wait
  for the lock meanwhile). Printed: the revision's duration, median of the
  rounds.

``nox -s bench -- live [--rounds N] [--only stall|cic]``. The servers come from
AUTOMIGRATOR_TEST_POSTGRES_URL / AUTOMIGRATOR_TEST_MARIADB_URL (defaults:
the local ones); each case gets a fresh database there.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import statistics
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
from pathlib import Path
from typing import NamedTuple

import anyio
import sqlalchemy as sa
from alembic import command
from alembic.config import Config
from sqlalchemy.engine import URL

from automigrator import AutoMigrator
from benchmarks.history import TEMPLATE
from benchmarks.replicas import SERVERS, fresh_database

ROOT = Path(__file__).resolve().parents[1]
BLOCKER_SECONDS = 10.0
SLOW = 0.1  # seconds: a SELECT slower than this waited for a lock

TABLE = """
    op.create_table(
        "items",
        sa.Column("id", sa.Integer, primary_key=True),
        *[sa.Column(f"c{i}", sa.Integer) for i in range(5)],
    )
"""
ADD_COLUMN = '    op.add_column("items", sa.Column("extra", sa.Integer))'
FIVE_INDEXES = """
    with op.get_context().autocommit_block():
        for i in range(5):
            op.create_index(f"ix_items_c{i}", "items", [f"c{i}"], postgresql_concurrently=True)
"""


def project(root: Path, second: str) -> Path:
    """alembic.ini with r1 (the items table) and r2 (``second``)."""
    ini = root / "alembic.ini"
    with contextlib.redirect_stdout(io.StringIO()):  # Alembic's own progress lines
        command.init(Config(str(ini)), str(root / "migrations"), "generic")
    for rev, down, message, body in (
        ("r1", None, "items", TABLE),
        ("r2", "r1", "the change", second),
    ):
        body = textwrap.indent(textwrap.dedent(body).strip("\n"), "    ").lstrip()
        text = TEMPLATE.format(i=message, rev=rev, down=down, body=body)
        (root / "migrations" / "versions" / f"{rev}.py").write_text(text)
    return ini


def at_r1(ini: Path, url: URL, rows: int) -> None:
    cfg = Config(str(ini), stdout=io.StringIO())
    cfg.set_main_option("sqlalchemy.url", url.render_as_string(False).replace("%", "%%"))
    command.upgrade(cfg, "r1")
    engine = sa.create_engine(url, poolclass=sa.NullPool)
    with engine.begin() as conn:
        conn.execute(
            sa.text("INSERT INTO items (id, c0, c1, c2, c3, c4) VALUES (:i, :i, :i, :i, :i, :i)"),
            [{"i": i} for i in range(1, rows + 1)],
        )
    engine.dispose()


class Stall(NamedTuple):
    longest: float
    """The longest single SELECT, seconds."""
    slow: int
    """SELECTs slower than SLOW seconds."""
    took: float
    """The migration's wall time, seconds."""
    tries: int
    """automigrator's tries of the revision (0: plain Alembic, not counted)."""


def stall(kind: str, tool: str, scratch: Path) -> Stall:
    """The longest SELECT while the migration meets a 10 s blocker; the migration's time."""
    with fresh_database(kind, scratch) as url:
        ini = project(Path(tempfile.mkdtemp(dir=scratch)), ADD_COLUMN)
        at_r1(ini, url, 1000)
        engine = sa.create_engine(url, poolclass=sa.NullPool)
        longest, slow = 0.0, 0
        stop = threading.Event()

        def read() -> None:
            nonlocal longest, slow
            with engine.connect() as conn:
                while not stop.is_set():
                    began = time.perf_counter()
                    conn.execute(sa.text("SELECT count(*) FROM items")).scalar()
                    conn.commit()
                    took = time.perf_counter() - began
                    longest = max(longest, took)
                    slow += took > SLOW

        blocker = engine.connect()
        blocker.execute(sa.text("SELECT count(*) FROM items")).scalar()  # open, and stays
        ends = threading.Timer(BLOCKER_SECONDS, blocker.rollback)
        reader = threading.Thread(target=read)
        reader.start()
        ends.start()
        began = time.perf_counter()
        tries = 0
        if tool == "automigrator":
            tries = 1 + anyio.run(AutoMigrator(ini, url=url).run).ddl_retries
        else:
            cfg = Config(str(ini), stdout=io.StringIO())
            cfg.set_main_option("sqlalchemy.url", url.render_as_string(False).replace("%", "%%"))
            command.upgrade(cfg, "head")
        took = time.perf_counter() - began
        stop.set()
        reader.join()
        ends.join()
        blocker.close()
        engine.dispose()
        return Stall(longest, slow, took, tries)


def cic(replicas: int, scratch: Path) -> float:
    """The five-index revision's duration in the replica that applied it."""
    with fresh_database("postgresql", scratch) as url:
        ini = project(Path(tempfile.mkdtemp(dir=scratch)), FIVE_INDEXES)
        at_r1(ini, url, 20_000)
        argv = [
            sys.executable,
            "-m",
            "benchmarks.replica",
            "automigrator",
            str(ini),
            url.render_as_string(hide_password=False),
        ]
        procs = [
            subprocess.Popen(
                argv, cwd=ROOT, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
            )
            for _ in range(replicas)
        ]
        for proc in procs:
            assert proc.stdout is not None
            assert proc.stdout.readline().strip() == "ready"
        for proc in procs:
            assert proc.stdin is not None
            proc.stdin.write("go\n")
            proc.stdin.flush()
        durations: list[float] = []
        for proc in procs:
            out, _ = proc.communicate(timeout=300)
            durations += json.loads(out.strip().splitlines()[-1]).get("durations", [])
        return max(durations)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--only", choices=("stall", "cic"), help="one of the two figures")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        scratch = Path(folder)
        if args.only != "cic":
            print(f"stall: the SELECTs while a {BLOCKER_SECONDS:g} s blocker holds the table")
            for kind in SERVERS:
                for tool in ("alembic", "automigrator"):
                    found = [stall(kind, tool, scratch) for _ in range(args.rounds)]
                    tries = statistics.median(f.tries for f in found)
                    print(
                        f"  {kind:<10} {tool:<12} longest SELECT "
                        f"{max(f.longest for f in found):6.2f} s (median "
                        f"{statistics.median(f.longest for f in found):5.2f} s), "
                        f"{statistics.median(f.slow for f in found):4.0f} SELECTs > {SLOW:g} s, "
                        "migration ends "
                        f"{statistics.median(f.took for f in found) - BLOCKER_SECONDS:5.2f} s "
                        f"after the blocker" + (f", {tries:g} tries" if tries else "")
                    )
        if args.only == "stall":
            return
        print("cic: five CREATE INDEX CONCURRENTLY, 20,000 rows, PostgreSQL")
        for count in (1, 4):
            times = [cic(count, scratch) for _ in range(args.rounds)]
            print(
                f"  {count} replica(s) ({count - 1} waiting): the revision took "
                f"{statistics.median(times):.2f} s (median of {args.rounds}; "
                f"{min(times):.2f}-{max(times):.2f})"
            )


if __name__ == "__main__":
    main()
