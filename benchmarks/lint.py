"""The lint's cost: what ``lint="warn"`` adds to a start that has revisions to apply.

Figures, printed, never asserted:

- **start**: a database at the first revision of a synthetic history of 100
  revisions (tables, columns, indexes), 99 pending; the start with
  ``lint="off"`` and with ``lint="warn"`` (the default), each in a fresh
  database of its own, SQLite and PostgreSQL. Printed: both wall times and
  the difference, median of the rounds; and the lint on its own
  (``automigrator.lint``, sizes read from the live database).
- **history**: ``lint(migrator, since=...)`` over MLflow's real history (the
  tests' corpus), every revision after the first, for the PostgreSQL dialect
  with and without squawk, and SQLite: the CI case, no database.

``nox -s bench -- lint [--rounds N]``. The PostgreSQL server comes from
AUTOMIGRATOR_TEST_POSTGRES_URL (default: the local one).
"""

from __future__ import annotations

import argparse
import contextlib
import io
import logging
import os
import statistics
import tempfile
import time
from functools import partial
from pathlib import Path

import anyio
import sqlalchemy as sa
from tests.corpus import corpus_project

from automigrator import AutoMigrator, lint
from benchmarks.history import make_history
from benchmarks.replicas import available, fresh_database

HISTORY = 100


def timed_start(ini: Path, kind: str, scratch: Path, mode: str) -> tuple[float, float]:
    """(start seconds, lint-alone seconds) on a fresh database at the first revision."""
    with fresh_database(kind, scratch) as url:
        anyio.run(AutoMigrator(ini, url=url, target="r0000", lint="off").run)
        alone = 0.0
        if mode == "warn":
            started = time.perf_counter()
            report = anyio.run(lambda: lint(AutoMigrator(ini, url=url)))
            alone = time.perf_counter() - started
            assert len(report.revisions) == HISTORY - 1, report.revisions
        migrator = AutoMigrator(ini, url=url, lint=mode)  # type: ignore[arg-type]
        started = time.perf_counter()
        status = anyio.run(migrator.run)
        took = time.perf_counter() - started
        assert status.ready, status.error
        return took, alone


def start(kinds: list[str], rounds: int, scratch: Path) -> None:
    with contextlib.redirect_stdout(io.StringIO()):
        ini = make_history(scratch / "history", HISTORY, merges=True)
    print(f"start: {HISTORY - 1} revisions pending, median of {rounds} round(s)")
    print(f"{'database':<12} {'lint off':>10} {'lint warn':>10} {'added':>9} {'lint alone':>11}")
    for kind in kinds:
        off = [timed_start(ini, kind, scratch, "off")[0] for _ in range(rounds)]
        warn = [timed_start(ini, kind, scratch, "warn") for _ in range(rounds)]
        on, alone = statistics.median(w[0] for w in warn), statistics.median(w[1] for w in warn)
        print(
            f"{kind:<12} {statistics.median(off):>9.2f}s {on:>9.2f}s "
            f"{on - statistics.median(off):>8.2f}s {alone:>10.2f}s"
        )


def history(rounds: int, scratch: Path) -> None:
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            ini = corpus_project("mlflow", scratch / "mlflow")
    except LookupError as exc:
        print(f"history: skipped ({exc})")
        return
    versions = sorted((ini.parent / "migrations" / "versions").glob("*.py"))
    first = _first_revision(ini)
    print(f"history: MLflow's {len(versions)} revisions, every one after the first, no database")
    cases = [
        ("postgresql, squawk", "postgresql+psycopg://u@127.0.0.1:9/none", None),
        ("postgresql, no squawk", "postgresql+psycopg://u@127.0.0.1:9/none", "off"),
        ("sqlite", f"sqlite:///{scratch / 'none.db'}", None),
    ]
    for label, url, squawk in cases:
        if squawk:
            os.environ["AUTOMIGRATOR_SQUAWK"] = squawk
        times: list[float] = []
        found = 0
        for _ in range(rounds):
            migrator = AutoMigrator(ini, url=sa.make_url(url))
            started = time.perf_counter()
            report = anyio.run(partial(lint, migrator, since=first))
            times.append(time.perf_counter() - started)
            found = len(report.flagged)
        os.environ.pop("AUTOMIGRATOR_SQUAWK", None)
        per = statistics.median(times) / max(1, len(report.revisions)) * 1000
        print(
            f"{label:<24} {statistics.median(times):>6.2f}s ({per:.1f} ms a revision, "
            f"{found} flagged, squawk {'used' if report.squawk else 'not used'})"
        )


def _first_revision(ini: Path) -> str:
    from alembic.config import Config
    from alembic.script import ScriptDirectory

    script = ScriptDirectory.from_config(Config(str(ini)))
    return next(s.revision for s in script.walk_revisions() if not s.down_revision)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    logging.getLogger("automigrator").setLevel(logging.ERROR)
    with tempfile.TemporaryDirectory() as folder:
        scratch = Path(folder)
        kinds = [k for k in ("sqlite", "postgresql") if available(k, scratch) is None]
        start(kinds, args.rounds, scratch)
        history(args.rounds, scratch)


if __name__ == "__main__":
    main()
