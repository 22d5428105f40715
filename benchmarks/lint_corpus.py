"""The lint on real histories, against what an actual upgrade does.

For each history of ``tests/lintcorpus.py`` (Optuna, Prefect, MLflow): a PostgreSQL
database at an older revision, its tables filled (SCALE times the sizes
there: 1 is the issue's sizes, with the lint's default threshold of 100,000
rows), linted by ``automigrator lint``, then upgraded one revision at a time
while the catalogue is watched. Prints, per history: the findings flagged,
how many match an observed event of their kind on their table and revision
(true) or none (false), and the rewrites and index builds on big tables that
no finding named (missed).

    nox -s bench -- lint_corpus [SCALE]     (default 0.01)
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
import uuid
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from tests.corpus import corpus_project
from tests.lintcorpus import HISTORIES, THRESHOLD, judge

SERVER = "postgresql+psycopg://postgres@127.0.0.1:5432/test"


def measure(name: str, scale: float, root: Path) -> dict[str, Any]:
    admin = sa.create_engine(SERVER, isolation_level="AUTOCOMMIT", poolclass=sa.NullPool)
    database = f"am_bench_{uuid.uuid4().hex[:8]}"
    with admin.connect() as conn:
        conn.exec_driver_sql(f"CREATE DATABASE {database}")
    history = HISTORIES[name]
    url = (
        sa.make_url(SERVER)
        .set(database=database, drivername=f"postgresql+{history.driver}")
        .render_as_string(hide_password=False)
    )
    try:
        ini = corpus_project(name, root / name, history.template)
        run = [sys.executable, "-W", "ignore", "-m", "tests.lintcorpus"]
        subprocess.run([*run, "prepare", name, str(ini), url, str(scale)], check=True)
        rows = max(1, int(THRESHOLD * scale))
        lint = subprocess.run(
            [
                sys.executable,
                "-m",
                "automigrator",
                "lint",
                "-c",
                str(ini),
                "--url",
                url,
                "--lint-rows",
                str(rows),
                "--json",
            ],
            capture_output=True,
            text=True,
            check=False,
        )
        report = json.loads(lint.stdout)
        observed = subprocess.run(
            [*run, "observe", name, str(ini), url], capture_output=True, text=True, check=True
        )
        events = json.loads(observed.stdout)
    finally:
        with admin.connect() as conn:
            conn.exec_driver_sql(f"DROP DATABASE {database} WITH (FORCE)")
        admin.dispose()
    return summary(report, events, rows)


def summary(report: dict[str, Any], events: list[dict[str, Any]], rows: int) -> dict[str, Any]:
    judged = judge(report, events, rows)
    return {
        "pending": len(report["revisions"]),
        "flagged": len(judged.flagged),
        "true": len(judged.true),
        "false": [f"{f['revision']} {f['rule']} {f['table']}" for f in judged.false],
        "big_events": len(judged.big),
        "missed": [
            f"{e['revision']} {e['kind']} {e['table']} {e['target']}" for e in judged.missed
        ],
        "not_linted": [f"{n['revision']}: {n['why']}" for n in report["not_linted"]],
    }


def main() -> None:
    scale = float(sys.argv[1]) if len(sys.argv) > 1 else 0.01
    print(f"scale {scale} (threshold {max(1, int(THRESHOLD * scale))} rows)")
    print("| history | pending | flagged | true | false | big rewrites + index builds | missed |")
    print("|---|---|---|---|---|---|---|")
    details = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name in HISTORIES:
            found = measure(name, scale, Path(tmp))
            details[name] = found
            print(
                f"| {name} | {found['pending']} | {found['flagged']} | {found['true']} "
                f"| {len(found['false'])} | {found['big_events']} | {len(found['missed'])} |"
            )
    print(json.dumps(details, indent=1))


if __name__ == "__main__":
    main()
