"""The lint on real histories, against the ground truth of an actual upgrade.

Optuna's, MLflow's and Prefect's Alembic histories (the versions pyproject.toml pins),
from an older revision, on PostgreSQL with their tables filled
(``tests/lintcorpus.py``: the sizes of the issue's measurements, scaled by
SCALE, with the lint's threshold scaled alike; a rewrite or an index build
happens, or not, whatever the rows). The ground truth, what the upgrade did
to each table revision by revision, is checked in under
``tests/data/lint_corpus`` and observed again here, so it cannot go stale.

The targets: every rewrite and index build on a big table named by a
finding (recall 100 %), at most 15 % of the findings false (no event of
their kind on their table in their revision), nothing on a fresh install,
and in CI mode (``--since`` the revision before the last) only the last
revision's findings.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from sqlalchemy.engine import URL

from tests.corpus import CORPUS, corpus_project
from tests.helpers import cli
from tests.lintcorpus import HISTORIES, THRESHOLD, judge

SCALE = 0.01
ROWS = int(THRESHOLD * SCALE)
TRUTH = Path(__file__).parent / "data" / "lint_corpus"


def corpus(*args: str) -> subprocess.CompletedProcess[str]:
    # The revision files import their package, whose warnings this process
    # would take for errors: in a process of their own.
    return subprocess.run(
        [sys.executable, "-W", "ignore", "-m", "tests.lintcorpus", *args],
        capture_output=True,
        text=True,
        check=True,
    )


@pytest.mark.parametrize("name", list(HISTORIES))
def test_the_lint_finds_every_rewrite_and_index_build_of_a_real_history(
    name: str, pg_url: URL, tmp_path: Path
) -> None:
    history = HISTORIES[name]
    ini = corpus_project(name, tmp_path / name, history.template)
    database = pg_url.set(drivername=f"postgresql+{history.driver}")
    url = database.render_as_string(hide_password=False)
    corpus("prepare", name, str(ini), url, str(SCALE))

    out = cli(ini, database, "lint", "--lint-rows", str(ROWS), "--json")
    events = json.loads(corpus("observe", name, str(ini), url).stdout)

    report = json.loads(out.stdout)
    # The ground truth is what it was when checked in.
    assert events == json.loads((TRUTH / f"{name}.json").read_text()), name
    # Named with the reason: a revision that raises offline on purpose (Prefect's
    # concurrent index builds look the index up online first).
    refused = {n["revision"]: n["why"] for n in report["not_linted"]}
    assert set(refused) == set(history.offline_refused), refused
    assert all("online" in why for why in refused.values())
    judged = judge(report, events, ROWS)
    assert judged.big, "the history builds an index or rewrites a big table"
    assert judged.missed == []
    assert len(judged.false) <= 0.15 * len(judged.flagged), judged.false
    assert out.returncode == 15  # what CI reads: findings flagged


@pytest.mark.parametrize("name", list(HISTORIES))
def test_a_fresh_install_and_the_last_revision_alone(
    name: str, pg_url: URL, tmp_path: Path
) -> None:
    ini = corpus_project(name, tmp_path / name, HISTORIES[name].template)

    fresh = cli(ini, pg_url, "lint", "--json")
    [head] = json.loads(cli(ini, pg_url, "status", "--json").stdout)["heads"]
    parent = corpus_parent(ini, head)
    last = cli(ini, pg_url, "lint", "--since", parent, "--dialect", "postgresql", "--json")

    assert fresh.returncode == 0, fresh.stderr
    assert json.loads(fresh.stdout)["findings"] == []
    report = json.loads(last.stdout)
    assert report["revisions"] == [head]
    assert {f["revision"] for f in report["findings"]} <= {head}


def corpus_parent(ini: Path, head: str) -> str:
    code = (
        "import io, sys\n"
        "from alembic.config import Config\n"
        "from alembic.script import ScriptDirectory\n"
        "script = ScriptDirectory.from_config(Config(sys.argv[1], stdout=io.StringIO()))\n"
        "print(script.get_revision(sys.argv[2]).down_revision)\n"
    )
    out = subprocess.run(
        [sys.executable, "-W", "ignore", "-c", code, str(ini), head],
        capture_output=True,
        text=True,
        check=True,
    )
    return out.stdout.split()[-1]


@pytest.mark.parametrize("name", list(CORPUS))
def test_every_revision_of_a_real_history_lints_without_a_database(
    name: str, tmp_path: Path
) -> None:
    # CI mode over the whole history: each revision judged, with squawk. (An
    # sa.Index given to op.create_table, as MLflow's are, once stopped it.)
    template = HISTORIES[name].template if name in HISTORIES else "generic"
    ini = corpus_project(name, tmp_path / name, template)
    url = "postgresql+psycopg://placeholder@localhost/none"

    out = cli(ini, url, "lint", "--since", "base", "--dialect", "postgresql", "--json")

    assert out.returncode in (0, 15), out.stderr
    report = json.loads(out.stdout)
    assert report["squawk"] is not None
    assert len(report["revisions"]) > len(report["not_linted"])
